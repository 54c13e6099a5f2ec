"""End to end: a run that cannot make progress stops, says which site failed and why, and exits 1."""

from __future__ import annotations

import json

from common.run import records
from tests.simrun import simulate


def test_consecutive_skipped_rounds_stop_the_run(tmp_path):
    out = tmp_path / "run"
    # 3 sites, min-clients 3: site 0's tampered reply is rejected in rounds 1 and 2, so both are skipped
    proc = simulate("--dataset", "breast-cancer", "--clients", "3", "--min-clients", "3", "--rounds", "4",
                    "--local-epochs", "1", "--max-skipped-rounds", "2", "--inject", "tamper-update:0:1",
                    "--inject", "tamper-update:0:2", out=out, returncode=1)
    assert "secure mode none" in proc.stdout  # the start line names the secure mode
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedseal: error: run stopped: 2 rounds in a row skipped (rounds 1-2)")
    assert "site 0 (update_rejected: seal check failed" in err[0]
    summary = json.loads((out / records.SUMMARY).read_text())
    assert summary["status"] == "stopped" and "site 0 (update_rejected" in summary["reason"]
    assert [r["round"] for r in summary["rounds"]] == [1, 2]  # round 3 never ran
    audit = records.read_jsonl(out / records.AUDIT)
    assert audit[-1]["event"] == "run_stopped" and audit[-1]["round"] == 2
    assert json.loads((out / records.PROGRESS).read_text())["stage"] == "stopped"
    assert (out / "report.html").exists()
