"""RunRecorder.resume: what survives an interruption, and what is run again."""

from __future__ import annotations

import json

import numpy as np

from common.run import records
from common.run.records import RoundRecord, RunRecorder


def _round(n: int) -> RoundRecord:
    return RoundRecord(round=n, accuracy=0.9, loss=0.1, seconds=0.1, bytes_up=1, bytes_down=1, clients_used=3,
                       rejected=["1"] if n == 2 else [])


def test_resume_drops_a_half_finished_round_and_its_audit_records(tmp_path):
    rec = RunRecorder(tmp_path)
    rec.audit("update_rejected", round=1, client="0", reason="x")
    for n in (1, 2):
        rec.checkpoint({"w": np.full(3, n, np.float32)}, n)
        rec.record_round(_round(n))
        rec.audit("update_rejected", round=n + 1, client="2", reason="y")  # audited during round n + 1
    # interrupted in round 3: its line is written but its checkpoint is not, and its audit
    # record is there: round 3 runs again, and must not be audited twice
    with open(tmp_path / records.ROUNDS, "a") as fh:
        fh.write(json.dumps(_round(3).to_json()) + "\n")
    rec.audit("replies_missing", count=1)  # an event without a round is kept

    again = RunRecorder(tmp_path, resume=True)
    done, arrays = again.resume()
    assert [r.round for r in done] == [1, 2] and done[1].rejected == ["1"]
    assert np.array_equal(arrays["w"], np.full(3, 2, np.float32))
    assert [r["round"] for r in records.read_jsonl(tmp_path / records.ROUNDS)] == [1, 2]
    audit = records.read_jsonl(tmp_path / records.AUDIT)
    assert [(a["event"], a.get("round")) for a in audit] == [
        ("update_rejected", 1), ("update_rejected", 2), ("replies_missing", None)]


def test_resume_before_any_round_finished_starts_over(tmp_path):
    rec = RunRecorder(tmp_path)
    rec.audit("global_refused", round=1, client="0", reason="z")
    done, arrays = RunRecorder(tmp_path, resume=True).resume()
    assert done == [] and arrays is None
    assert (tmp_path / records.ROUNDS).read_text() == "" and (tmp_path / records.AUDIT).read_text() == ""
