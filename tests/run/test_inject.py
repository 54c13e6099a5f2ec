"""common/run/inject.py: the --inject syntax, and `fedseal simulate` refusing bad injections
before anything starts (exit 2, one line). Also what each injection does to a model."""

from __future__ import annotations

import numpy as np
import pytest

from common.cli import main
from common.errors import InputError
from common.learning.models import get_arrays, initial_model
from common.run import inject
from common.run.inject import Injection
from common.run.settings import RunSettings


def test_parse_repeatable_and_comma_forms_agree():
    listed = inject.parse(["tamper-update:0:2", "replay-update:1:3", "forge-update:2:4"])
    assert listed == (Injection("tamper-update", 0, 2), Injection("replay-update", 1, 3),
                      Injection("forge-update", 2, 4))
    assert inject.parse("tamper-update:0:2, replay-update:1:3,forge-update:2:4") == listed
    assert inject.parse(["tamper-update:0:2,replay-update:1:3", "forge-update:2:4"]) == listed
    assert inject.parse("") == () and inject.parse([]) == ()


def test_every_kind_parses_and_round_trips_through_the_run_config():
    specs = [f"{kind}:{i}:{i + 2}" for i, kind in enumerate(inject.KINDS)]
    parsed = inject.parse(specs)
    assert [i.kind for i in parsed] == list(inject.KINDS)
    assert inject.to_text(parsed) == ",".join(specs)
    assert inject.parse(inject.to_text(parsed)) == parsed
    settings = RunSettings(inject=inject.to_text(parsed), secure_mode="masked")  # drop-late is masked-only
    assert RunSettings.from_run_config(settings.to_run_config()).injections == parsed


def test_wanted_matches_kind_client_and_round_exactly():
    inj = inject.parse("tamper-update:1:3")
    assert inject.wanted(inj, "tamper-update", 1, 3)
    assert not inject.wanted(inj, "tamper-update", 1, 2)
    assert not inject.wanted(inj, "tamper-update", 0, 3)
    assert not inject.wanted(inj, "forge-update", 1, 3)


@pytest.mark.parametrize("spec,msg", [
    ("bogus:1:1", "KIND one of tamper-update, replay-update, forge-update, tamper-global, corrupt-global"),
    ("tamper-update:1", "expected KIND:CLIENT:ROUND"),
    ("tamper-update:1:2:3", "expected KIND:CLIENT:ROUND"),
    ("Tamper-Update:1:2", "expected KIND:CLIENT:ROUND"),
    ("tamper-update:x:2", "CLIENT and ROUND must be integers"),
    ("tamper-update:1:two", "CLIENT and ROUND must be integers"),
    ("tamper-update:-1:2", "CLIENT must be >= 0"),
    ("tamper-update:1:0", "ROUND >= 1"),
    ("replay-update:1:1", "a replay needs a previous round"),
])
def test_parse_rejects_bad_items_with_a_clear_message(spec, msg):
    with pytest.raises(InputError) as info:
        inject.parse([spec])
    assert msg in str(info.value)
    assert repr(spec) in str(info.value)  # names the item at fault
    with pytest.raises(InputError):  # also inside a comma list, and from the run config
        inject.parse(f"forge-update:0:1,{spec}")
    with pytest.raises(InputError):
        RunSettings.from_run_config({"inject": spec})


def test_replay_from_round_two_is_fine():
    assert inject.parse("replay-update:0:2") == (Injection("replay-update", 0, 2),)


@pytest.mark.parametrize("args,msg", [
    (["--inject", "bogus:1:1"], "bad --inject 'bogus:1:1'"),
    (["--inject", "tamper-update:9:1"], "--inject tamper-update:9:1: client 9 does not exist (clients are 0..2)"),
    (["--inject", "forge-update:0:1", "--inject", "replay-update:2:1"], "a replay needs a previous round"),
    (["--inject", "tamper-update:0:1,corrupt-global:3:2"], "client 3 does not exist"),
    (["--inject", "tamper-global:0:7"], "round 7 never runs (--rounds 4)"),
])
def test_simulate_refuses_bad_injections_before_starting(args, msg, capsys, tmp_path, monkeypatch):
    from common.launch import simulate as cli_simulate

    def no_simulation(*a, **k):
        raise AssertionError("a simulation started despite a bad --inject")

    monkeypatch.setattr(cli_simulate, "run_child", no_simulation)
    out = tmp_path / "run"
    code = main(["simulate", "--clients", "3", "--rounds", "4", "--out", str(out), *args])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedseal: error: "), captured.err
    assert msg in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists()


# --- what the injections do to a model ---------------------------------------------------------


@pytest.fixture(params=["breast-cancer", "digits"])
def model(request):
    return get_arrays(initial_model(request.param, 0))


def _changed_blocks(a, b):
    out = set()
    for name in a:
        diff = a[name].reshape(-1).view(np.uint32) != b[name].reshape(-1).view(np.uint32)
        out |= {(name, int(i) // inject.BLOCK) for i in np.flatnonzero(diff)}
    return out


@pytest.mark.parametrize("seed", range(5))
def test_flip_bits_flips_eight_bits_in_one_block(model, seed):
    before = {n: a.copy() for n, a in model.items()}
    out = inject.flip_bits(model, np.random.default_rng(seed))
    assert all(np.array_equal(model[n], before[n]) for n in model)  # the input is untouched
    flipped = sum(int(np.unpackbits((out[n].reshape(-1).view(np.uint32) ^ model[n].reshape(-1).view(np.uint32))
                                    .view(np.uint8)).sum()) for n in model)
    assert flipped == 8
    assert len(_changed_blocks(model, out)) == 1
    assert inject.flip_bits(model, np.random.default_rng(seed)).keys() == model.keys()
    again = inject.flip_bits(model, np.random.default_rng(seed))
    assert all(np.array_equal(again[n], out[n]) for n in model)  # seeded: reproducible


def test_tamper_and_corrupt_global_sizes(model):
    total = len(inject._float_blocks(model))
    small = _changed_blocks(model, inject.tamper_global(model, np.random.default_rng(0)))
    large = _changed_blocks(model, inject.corrupt_global(model, np.random.default_rng(0)))
    assert 1 <= len(small) <= max(1, round(0.05 * total))
    assert len(large) >= 0.45 * total


def test_drop_late_needs_masked_mode():
    assert RunSettings(secure_mode="masked", inject="drop-late:1:2").injections == (Injection("drop-late", 1, 2),)
    assert RunSettings(inject="drop:1:2").injections == (Injection("drop", 1, 2),)
    with pytest.raises(InputError, match="drop-late"):
        RunSettings(inject="drop-late:1:2")
