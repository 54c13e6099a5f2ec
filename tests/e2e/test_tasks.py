"""End to end: the task interface in real simulations. A user's task, whose coordinator holds no
data, is scored only by federated evaluation; a site failing on its own data tells the server one
line naming no local path. (That a built-in task gives today's rounds is checked on the runs of
tests/e2e/test_simulation.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.run import records
from tests.simrun import ROOT, simulate

USER_TASK = '''
import torch
from torch.utils.data import TensorDataset
from common.task import Task


class Blobs(Task):
    """Two Gaussian blobs per site; site 2's data "file" is missing."""

    name = "blobs"

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

    def load_data(self, site):
        if site.partition_id == 2:
            open("/srv/hospital-c/secret-cohort/patients.csv")  # FileNotFoundError naming the path
        g = torch.Generator().manual_seed(100 + site.partition_id)
        y = torch.arange(60) % 2
        x = torch.randn(60, 4, generator=g) + 2.0 * y[:, None]
        return TensorDataset(x[:45], y[:45]), TensorDataset(x[45:], y[45:])
'''


def test_user_task_without_coordinator_data_and_a_site_failing_on_its_data(tmp_path):
    task_file = tmp_path / "blobs_task.py"
    task_file.write_text(USER_TASK)
    out = tmp_path / "run"
    proc = simulate("--task", f"{task_file}:Blobs", "--clients", "3", "--rounds", "2", "--seed", "0", "--no-report",
                    out=out)
    summary = json.loads((out / records.SUMMARY).read_text())
    assert summary["dataset"] == "blobs" and summary["task"] == f"{task_file}:Blobs"
    assert summary["final_accuracy"] is None and summary["centralized_accuracy"] is None
    assert summary["test_examples"] is None and "coordinator no test data" in summary["server_evaluation"]
    final = summary["final_federated_eval"]
    assert final["examples"] == 30 and final["accuracy"] > 0.8  # sites 0 and 1: 15 validation examples each
    for r in summary["rounds"]:
        assert r["accuracy"] is None and r["clients_used"] == 2 and set(r["site_eval"]) == {"0", "1"}
    audit = records.read_jsonl(out / records.AUDIT)
    failed = [a for a in audit if a["event"] == "site_failed"]
    assert [(a["round"], a["client"]) for a in failed] == [(1, "2"), (2, "2")]
    reason = failed[0]["reason"]
    assert reason.startswith("site could not load its data: FileNotFoundError") and "\n" not in reason
    assert "hospital" not in reason and "secret" not in reason and "/srv" not in reason
    server_side = (out / records.SUMMARY).read_text() + (out / records.ROUNDS).read_text() + \
        (out / records.AUDIT).read_text()
    assert "secret-cohort" not in server_side
    assert "no server-side accuracy" in proc.stdout and "final federated accuracy" in proc.stdout


@pytest.mark.parametrize("spec,message", [("missing_task.py:T", "no such file missing_task.py"),
                                          ("common.task:SiteInfo", "SiteInfo is not a subclass of common.task.Task")])
def test_a_bad_task_is_one_line_and_exit_2(tmp_path, spec, message):
    proc = subprocess.run([sys.executable, "-m", "common.cli", "simulate", "--task", spec, "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"fedseal: error: task {spec!r}: {message}"]
    assert not (tmp_path / "run").exists()
