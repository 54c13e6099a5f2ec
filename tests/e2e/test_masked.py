"""End to end through `fedseal simulate --secure-mode masked` (DESIGN.md §2.1, §2.3, §2.4).

Three simulations of breast-cancer, 5 sites (each ~20-60 s, mostly Ray starting; started at once):
- none:    tamper-update at site 2 in round 1, site 3 drops in round 2 (the reference);
- masked:  the same, plus site 1 vanishing after sending its masked vector in round 3. The same
           sites are summed in every round, so the global models must agree with `none` to the
           quantization bound (round 1 starts from the same model: <= 1e-5 per parameter) and
           the final accuracy within 0.1 point;
- attacks: masked with a replayed and a forged masked vector, a tampered and a corrupted global
           model: each caught in its round, the round still completes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.run import records
from tests.simrun import Runs, simulate

BASE = ["--dataset", "breast-cancer", "--clients", "5", "--rounds", "3", "--seed", "0", "--no-report", "--quiet"]
SHARED = ["--inject", "tamper-update:2:1", "--inject", "drop:3:2"]


def _rounds(folder: Path) -> list[dict]:
    return records.read_jsonl(folder / records.ROUNDS)


def _audit(folder: Path) -> list[dict]:
    return records.read_jsonl(folder / records.AUDIT)


def _events(folder: Path, event: str) -> list[tuple[int, str]]:
    return [(a["round"], a.get("client")) for a in _audit(folder) if a["event"] == event]


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The three simulations, started at once (each in its own processes): (Runs, their folder)."""
    root = tmp_path_factory.mktemp("masked-e2e")
    runs = Runs()
    try:
        runs.start("masked", simulate, *BASE, *SHARED, "--inject", "drop-late:1:3", "--secure-mode", "masked",
                   out=root / "masked")
        runs.start("attacks", simulate, *BASE[:5], "2", *BASE[6:], "--secure-mode", "masked", "--inject",
                   "corrupt-global:3:1", "--inject", "replay-update:0:2", "--inject", "forge-update:4:2", "--inject",
                   "tamper-global:1:2", out=root / "attacks")
        runs.start("none", simulate, *BASE, *SHARED, "--secure-mode", "none", out=root / "none")
        yield runs, root
    finally:
        runs.close()


@pytest.fixture(scope="module")
def runs(started) -> dict[str, Path]:
    runs, root = started
    for name in ("none", "masked"):
        runs.get(name)
    return {"none": root / "none", "masked": root / "masked"}


def test_masked_sums_the_same_sites_as_none(runs):
    for mode in ("none", "masked"):
        assert [r["clients_used"] for r in _rounds(runs[mode])] == [4, 4, 5], mode
    assert _events(runs["masked"], "update_rejected") == [(1, "2")]
    assert (2, "3") in _events(runs["masked"], "site_dropped")
    assert (3, "1") in _events(runs["masked"], "site_dropped")  # after sending its masked vector
    assert not _events(runs["masked"], "round_skipped")


def test_tampered_masked_vector_is_named_in_the_audit(runs):
    [record] = [a for a in _audit(runs["masked"]) if a["event"] == "update_rejected"]
    assert record["client"] == "2" and record["round"] == 1
    assert "fail their seal" in record["reason"] and record["tampered"] == {"masked-vector": [0]}
    assert _rounds(runs["masked"])[0]["rejected"] == ["2"]


def test_round_one_global_equals_none_to_the_quantization_bound(runs):
    path = Path("checkpoints") / "round-0001.safetensors"
    none, masked = records.load_arrays(runs["none"] / path), records.load_arrays(runs["masked"] / path)
    assert set(none) == set(masked)
    for name in none:
        assert masked[name].dtype == np.float32
        assert np.abs(masked[name].astype(np.float64) - none[name]).max() <= 1e-5, name


def test_final_accuracy_equals_none_within_a_tenth_of_a_point(runs):
    none, masked = _rounds(runs["none"])[-1], _rounds(runs["masked"])[-1]
    assert abs(masked["accuracy"] - none["accuracy"]) <= 0.001
    assert abs(masked["loss"] - none["loss"]) <= 1e-3


def test_replay_forge_and_global_tampering_in_masked_mode(started):
    runs, root = started
    runs.get("attacks")  # 5 sites, 2 rounds, masked: see the fixture for its injections
    out = root / "attacks"
    rounds = _rounds(out)
    assert [r["clients_used"] for r in rounds] == [4, 3]
    assert sorted(rounds[1]["rejected"]) == ["0", "4"]
    assert _events(out, "global_refused") == [(1, "3")]
    assert _events(out, "global_recovered") == [(2, "1")]
    assert sorted(_events(out, "update_rejected")) == [(2, "0"), (2, "4")]
    assert rounds[1]["accuracy"] > 0.9
