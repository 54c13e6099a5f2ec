"""End to end through `fedseal simulate`: integrity in `none` mode (DESIGN.md §2.2-§2.4).

Four simulations of breast-cancer (each costs ~15-20 s of Ray start-up plus ~0.2 s a round), started
at once and made two at a time (tests/simrun.py Runs):
- clean:    5 sites, 6 rounds, no injection (the reference);
- injected: the same with all five injections, rejected/recovered/refused as they should be;
- resumed:  the same as clean plus `--on-tamper recover` with tamper-update and tamper-global
            injections, interrupted with SIGINT after round 2 and continued with --resume. A
            recovered payload is bit-exactly the sealed one, so this run must equal the clean
            run exactly: that checks recovery and resume together;
- long:     2 sites, 50 clean rounds: no honest reply is ever rejected.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from common.cli import main
from common.integrity import watermark
from common.integrity.keys import load_secret
from common.run import records
from common.run.modelio import load_state
from tests.simrun import Runs, simulate, simulate_interrupted

ROUNDS = 6
BASE = ["--dataset", "breast-cancer", "--clients", "5", "--rounds", str(ROUNDS), "--seed", "0", "--no-report"]
INJECTIONS = ["--inject", "tamper-update:0:2", "--inject", "replay-update:1:3", "--inject", "forge-update:2:4",
              "--inject", "tamper-global:3:2", "--inject", "corrupt-global:4:3"]
RECOVERABLE = ["--on-tamper", "recover", "--inject", "tamper-global:2:1", "--inject", "tamper-update:1:2",
               "--inject", "tamper-update:3:5", "--inject", "tamper-global:4:6"]


def _rounds(folder: Path) -> list[dict]:
    return records.read_jsonl(folder / records.ROUNDS)


def _audit(folder: Path) -> list[dict]:
    """The audit's events other than `site_enrolled` (each site proving its id at the start of a
    run, or of a resumed run; tests/server/test_enrolment.py and tests/e2e/test_hostile.py check those)."""
    return [a for a in records.read_jsonl(folder / records.AUDIT) if a["event"] != "site_enrolled"]


def _summary(folder: Path) -> dict:
    return json.loads((folder / records.SUMMARY).read_text())


def _interrupted_and_resumed(b: Path) -> dict:
    """The `resumed` run: interrupted after round 2, then continued with --resume; what the
    interruption left."""
    code = simulate_interrupted(*BASE, *RECOVERABLE, out=b, after_round=2)
    interrupted = {"code": code, "rounds": len(_rounds(b)), "summary": (b / records.SUMMARY).exists(),
                   "keys": {p.relative_to(b): p.read_bytes() for p in sorted((b / "keys").rglob("*.key"))}}
    if code == 0:  # the run ended before the Ctrl-C landed: interrupt it by hand after round 2
        lines = (b / records.ROUNDS).read_text().splitlines(keepends=True)
        (b / records.ROUNDS).write_text("".join(lines[:2]))
        for name in (records.SUMMARY, records.MODEL):
            (b / name).unlink()
        for r in range(3, ROUNDS + 1):
            (b / records.CHECKPOINTS / f"round-{r:04d}.safetensors").unlink()
        kept = [a for a in _audit(b) if a.get("round", 0) <= 2]
        (b / records.AUDIT).write_text("".join(json.dumps(a) + "\n" for a in kept))
    print(f"interrupted run: exit {code}, {interrupted['rounds']} rounds recorded")
    interrupted["resume_output"] = simulate("--resume", str(b), "--no-report").stdout
    return interrupted


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Every simulation of this file, started at once (each in its own processes), the longest first:
    (Runs, their folder); each test waits for those it reads."""
    base = tmp_path_factory.mktemp("integrity")
    runs = Runs()
    try:
        runs.start("resumed", _interrupted_and_resumed, base / "resumed")
        runs.start("long", simulate, "--dataset", "breast-cancer", "--clients", "2", "--rounds", "50", "--local-epochs",
                   "1", "--seed", "1", "--no-report", out=base / "long")
        runs.start("injected", simulate, *BASE, *INJECTIONS, out=base / "injected")
        runs.start("clean", simulate, *BASE, out=base / "clean")
        yield runs, base
    finally:
        runs.close()


@pytest.fixture(scope="module")
def runs(started):
    runs, base = started
    out = {"clean": base / "clean", "injected": base / "injected", "resumed": base / "resumed"}
    runs.get("clean")
    out["injected_output"] = runs.get("injected").stdout
    out["interrupted"] = runs.get("resumed")
    return out


# --- a. every injection is caught, in its round, and named --------------------------------------


def test_injected_replies_rejected_in_their_round_and_only_those(runs):
    rounds = _rounds(runs["injected"])
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert [r["rejected"] for r in rounds] == [[], ["0"], ["1"], ["2"], [], []]
    # round 2: site 0 rejected; round 3: site 1 rejected and site 4 refused; round 4: site 2 rejected
    assert [r["clients_used"] for r in rounds] == [5, 4, 3, 4, 5, 5]
    assert _summary(runs["injected"])["rounds"] == rounds


def test_injections_are_named_in_the_audit(runs):
    audit = _audit(runs["injected"])
    rejected = [(a["round"], a["client"]) for a in audit if a["event"] == "update_rejected"]
    assert rejected == [(2, "0"), (3, "1"), (4, "2")]
    by_round = {a["round"]: a for a in audit if a["event"] == "update_rejected"}
    assert "blocks fail the check" in by_round[2]["reason"]  # tampered: located, not everything
    tampered = {n: b for n, b in by_round[2]["tampered"].items() if b}
    assert len(tampered) == 1 and len(next(iter(tampered.values()))) == 1  # one tensor, one block
    for rnd in (3, 4):  # replayed / forged: nothing verifies for this site, round and run
        assert "replayed or forged" in by_round[rnd]["reason"]
    assert [(a["round"], a["client"]) for a in audit if a["event"] == "global_recovered"] == [(2, "3")]
    refused = [a for a in audit if a["event"] == "global_refused"]
    assert [(a["round"], a["client"]) for a in refused] == [(3, "4")]
    assert "beyond recovery" in refused[0]["reason"]
    assert {a["event"] for a in audit} == {"update_rejected", "global_recovered", "global_refused"}


def test_tampered_global_model_recovered_by_its_site(runs):
    recovered = [r["recovered"] for r in _rounds(runs["injected"])]
    assert recovered == [[], [{"client": "3", "what": "global-model"}], [], [], [], []]


def test_injections_cost_at_most_one_point_of_accuracy(runs):
    clean, injected = _summary(runs["clean"]), _summary(runs["injected"])
    assert clean["final_accuracy"] > 0.9
    assert abs(injected["final_accuracy"] - clean["final_accuracy"]) <= 0.01
    assert all(r["rejected"] == [] and r["recovered"] == [] for r in clean["rounds"])
    assert _audit(runs["clean"]) == []


def _progress_lines(stdout: str) -> dict[int, str]:
    found = (re.match(r"round\s+(\d+)/\d+\s", line) for line in stdout.splitlines())
    return {int(m.group(1)): m.string for m in found if m}


def test_progress_lines_show_rejections_and_recoveries(runs):
    lines = _progress_lines(runs["injected_output"])
    assert sorted(lines) == list(range(1, ROUNDS + 1))
    assert "rejected 0" in lines[2] and "recovered 3:global-model" in lines[2]
    assert "rejected 1" in lines[3] and "rejected 2" in lines[4]
    assert not any("rejected" in lines[r] or "recovered" in lines[r] for r in (1, 5, 6))
    # the resumed run prints the rounds it runs itself, not those done before the interruption
    out = runs["interrupted"]["resume_output"]
    assert "resuming" in out and "final accuracy" in out
    resumed = _progress_lines(out)
    assert sorted(resumed) == list(range(runs["interrupted"]["rounds"] + 1 if runs["interrupted"]["code"] else 3,
                                         ROUNDS + 1))
    for r, what in ((5, "recovered 3:update"), (6, "recovered 4:global-model")):
        assert r not in resumed or what in resumed[r]
    assert ROUNDS in resumed


# --- d. --on-tamper recover: the tampered reply is restored and accepted ----------------------


def test_recover_mode_restores_tampered_updates(runs):
    rounds = _rounds(runs["resumed"])
    assert all(r["rejected"] == [] for r in rounds)
    assert [r["clients_used"] for r in rounds] == [5] * ROUNDS
    assert [r["recovered"] for r in rounds] == [
        [{"client": "2", "what": "global-model"}], [{"client": "1", "what": "update"}], [], [],
        [{"client": "3", "what": "update"}], [{"client": "4", "what": "global-model"}]]
    audit = _audit(runs["resumed"])
    updates = [a for a in audit if a["event"] == "update_recovered"]
    assert [(a["round"], a["client"]) for a in updates] == [(2, "1"), (5, "3")]
    assert all(sum(map(len, a["tampered"].values())) == 1 for a in updates)
    assert [(a["round"], a["client"]) for a in audit if a["event"] == "global_recovered"] == [(1, "2"), (6, "4")]
    assert {a["event"] for a in audit} == {"update_recovered", "global_recovered"}


# --- c. resume gives identical results -----------------------------------------------------------


def test_the_run_was_really_interrupted(runs):
    info = runs["interrupted"]
    if info["code"] == 130:  # Ctrl-C landed mid-run
        assert 2 <= info["rounds"] < ROUNDS and not info["summary"]


def test_resumed_run_equals_the_uninterrupted_one(runs):
    a, b = runs["clean"], runs["resumed"]
    ra, rb = _rounds(a), _rounds(b)
    assert [r["round"] for r in rb] == list(range(1, ROUNDS + 1))  # each round once, in order
    assert [(r["accuracy"], r["loss"]) for r in rb] == [(r["accuracy"], r["loss"]) for r in ra]
    sa, sb = _summary(a), _summary(b)
    assert sb["final_accuracy"] == sa["final_accuracy"] and sb["rounds"] == rb
    ma, meta_a = load_state(a / records.MODEL)
    mb, meta_b = load_state(b / records.MODEL)
    wa, wb = watermark.strip(ma), watermark.strip(mb)
    assert sorted(wa) == sorted(wb) and all(np.array_equal(wa[n], wb[n]) for n in wa)
    assert sorted(p.name for p in (b / records.CHECKPOINTS).glob("round-*.safetensors")) == [
        f"round-{r:04d}.safetensors" for r in range(1, ROUNDS + 1)]


def test_resume_reuses_the_runs_own_keys(runs):
    b = runs["resumed"]
    keys_now = {p.relative_to(b): p.read_bytes() for p in sorted((b / "keys").rglob("*.key"))}
    assert keys_now == runs["interrupted"]["keys"] and keys_now
    model, metadata = load_state(b / records.MODEL)
    wm_key = load_secret(b / "keys" / "server" / "watermark.key")
    assert watermark.verify(model, wm_key, metadata[records.CONTEXT_KEY]).intact


def test_resume_refuses_a_finished_run_and_a_non_run_folder(runs, tmp_path, capsys):
    for folder, msg in ((runs["clean"], "already finished all 6 rounds"), (tmp_path, "not a FedSeal run folder")):
        code = main(["simulate", "--resume", str(folder)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and msg in err[0], err
    assert (runs["clean"] / records.SUMMARY).exists()  # refusing does not damage the finished run


# --- b. no honest reply is ever rejected ----------------------------------------------------------


def test_no_honest_reply_rejected_over_fifty_rounds(started):
    runs, base = started
    runs.get("long")  # breast-cancer, 2 sites, 50 rounds, 1 local epoch, seed 1
    out = base / "long"
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == list(range(1, 51))
    assert all(r["rejected"] == [] and r["recovered"] == [] and r["clients_used"] == 2 for r in rounds)
    assert _audit(out) == []
