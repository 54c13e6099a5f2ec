"""End to end: `fedseal simulate` with 3 sites and 3 rounds, twice (same seed, same results); the
built-in task gives today's rounds (tests/fixtures/baseline_rounds.json), bit for bit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from common.integrity import watermark
from common.integrity.keys import load_secret
from common.learning.models import array_spec, get_arrays, initial_model
from common.run import records
from common.run.modelio import load_state
from tests.simrun import ROOT, Runs, simulate

ROUNDS = 3  # baseline_rounds.json's breast-cancer run: 3 sites, 3 rounds, seed 0
BASELINE = json.loads((ROOT / "tests" / "fixtures" / "baseline_rounds.json").read_text())["runs"]


def _simulate(out: Path) -> subprocess.CompletedProcess:
    return simulate("--dataset", "breast-cancer", "--clients", "3", "--rounds", str(ROUNDS), "--seed", "0", out=out)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim")
    runs = Runs()
    try:
        for name in ("a", "b"):  # at the same time, each in its own processes
            runs.start(name, _simulate, base / name)
        yield [(base / name, runs.get(name)) for name in ("a", "b")]
    finally:
        runs.close()


def test_progress_lines_and_final_table(two_runs):
    out = two_runs[0][1].stdout
    lines = out.splitlines()
    assert sum(line.startswith("round ") and "accuracy" in line and " s " in line for line in lines) == ROUNDS
    assert "final accuracy" in out and "centralized" in out


def test_every_record_written(two_runs):
    folder = two_runs[0][0]
    summary = json.loads((folder / records.SUMMARY).read_text())
    assert summary["dataset"] == "breast-cancer" and summary["clients"] == 3
    assert summary["secure_mode"] == "none" and summary["status"] == "finished" and "reason" not in summary
    assert json.loads((folder / records.PROGRESS).read_text())["stage"] == "finished"  # not "centralized reference"
    assert summary["final_accuracy"] > 0.9  # chance is about 0.63 (majority class)
    assert summary["centralized_accuracy"] > 0.9
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    expected_bytes = sum(a.nbytes for a in get_arrays(initial_model("breast-cancer", 0)).values()) * 3
    for r in rounds:
        assert r["clients_used"] == 3 and r["rejected"] == [] and r["recovered"] == []
        assert r["seconds"] > 0 and 0 <= r["loss"] < 1
        assert expected_bytes <= r["bytes_up"] < expected_bytes * 1.2 and r["bytes_down"] == r["bytes_up"]
    assert records.read_jsonl(folder / records.ROUNDS) == rounds
    audit = records.read_jsonl(folder / records.AUDIT)  # a clean run: each site proves its id once, nothing else
    assert sorted(a["client"] for a in audit) == ["0", "1", "2"] and {a["event"] for a in audit} == {"site_enrolled"}
    model, metadata = load_state(folder / records.MODEL)
    assert array_spec(model) == array_spec(get_arrays(initial_model("breast-cancer", 0)))
    assert sorted(p.name for p in (folder / records.CHECKPOINTS).iterdir()) == [
        *(f"global-round-{r:04d}.safetensors" for r in range(1, ROUNDS + 1)),
        *(f"round-{r:04d}.safetensors" for r in range(1, ROUNDS + 1))]
    # the final model is the last aggregate, watermarked for the run and verifiable with its key
    last = records.load_arrays(folder / records.CHECKPOINTS / f"round-{ROUNDS:04d}.safetensors")
    assert all(np.array_equal(v, watermark.strip(model)[k]) for k, v in watermark.strip(last).items())
    wm_key = load_secret(folder / "keys" / "server" / "watermark.key")
    assert watermark.verify(model, wm_key, metadata[records.CONTEXT_KEY]).intact


def test_same_seed_same_results(two_runs):
    (a, _), (b, _) = two_runs
    sa, sb = (json.loads((f / records.SUMMARY).read_text()) for f in (a, b))
    assert sa["final_accuracy"] == sb["final_accuracy"]
    assert [r["loss"] for r in sa["rounds"]] == [r["loss"] for r in sb["rounds"]]
    ma, mb = records.load_arrays(a / records.MODEL), records.load_arrays(b / records.MODEL)
    # each run has its own random keys, so only the watermark's own low bits differ
    sa, sb = watermark.strip(ma), watermark.strip(mb)
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_builtin_task_gives_todays_rounds(two_runs):
    """The first run is baseline_rounds.json's breast-cancer run (before tasks existed)."""
    run = BASELINE[0]
    assert (run["dataset"], run["clients"], run["rounds"]) == ("breast-cancer", 3, ROUNDS)
    folder, proc = two_runs[0]
    summary = json.loads((folder / records.SUMMARY).read_text())
    rounds = summary["rounds"]
    assert [r["loss"] for r in rounds] == run["loss"]  # bit for bit
    assert [r["accuracy"] for r in rounds] == pytest.approx(run["accuracy"], abs=1e-6)  # was a float32 mean
    assert summary["centralized_loss"] == run["centralized_loss"]
    # every site scored the model it received on its share of the test split: all shares together are
    # the split, so round r's federated evaluation is the coordinator's score of round r-1's model
    for before, after in zip(rounds, rounds[1:]):
        assert after["federated_eval"]["accuracy"] == pytest.approx(before["accuracy"], abs=1e-6)
        assert after["federated_eval"]["examples"] == summary["test_examples"]
        assert set(after["site_eval"]) == {"0", "1", "2"}
    assert summary["final_federated_eval"] == rounds[-1]["federated_eval"]
    assert {"accuracy", "loss", "f1_macro", "roc_auc", "pr_auc"} <= set(summary["final_federated_eval"])
    assert "federated accuracy" in proc.stdout
