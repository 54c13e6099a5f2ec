"""common/run/records.py (run folder) and server/checks.py (reply checks)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from common.run import records


def test_recorder_writes_every_record(tmp_path):
    rec = records.RunRecorder(tmp_path / "run")
    folder = rec.folder
    assert (folder / "rounds.jsonl").read_text() == "" and (folder / "audit.jsonl").read_text() == ""
    rec.record_round(records.RoundRecord(1, 0.9, 0.3, 1.5, 100, 200, 3))
    rec.record_round(records.RoundRecord(2, 0.95, 0.2, 1.0, 100, 200, 3, rejected=["7"]))
    rec.audit("reply-rejected", round=2, site="7", reason="bad")
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    rec.checkpoint(arrays, 2)
    rec.save_model(arrays, {"dataset": "x"})
    rec.write_summary({"final_accuracy": 0.95})
    rounds = records.read_jsonl(folder / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["rejected"] == ["7"]
    assert set(rounds[0]) == {"round", "accuracy", "loss", "seconds", "bytes_up", "bytes_down",
                              "clients_used", "sampled", "used", "rejected", "recovered", "stages", "epsilon",
                              "federated_eval", "site_eval"}
    assert records.read_jsonl(folder / "audit.jsonl") == [{"event": "reply-rejected", "round": 2, "site": "7",
                                                          "reason": "bad"}]
    assert np.array_equal(records.load_arrays(folder / "model.safetensors")["w"], arrays["w"])
    assert (folder / "checkpoints" / "round-0002.safetensors").exists()
    assert json.loads((folder / "summary.json").read_text()) == {"final_accuracy": 0.95}
    assert not [p for p in folder.rglob(".*tmp")]  # no temp files left
    assert (folder / "summary.json").stat().st_mode & 0o044  # ordinary, readable file


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    records.atomic_write_json(path, {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        records.atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_read_jsonl_ignores_unfinished_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"round": 1}\n{"round": ')
    assert records.read_jsonl(path) == [{"round": 1}]


def test_folder_is_free(tmp_path):
    assert records.folder_is_free(tmp_path / "new") and records.folder_is_free(tmp_path)
    (tmp_path / "x").write_text("1")
    assert not records.folder_is_free(tmp_path)


# --- server/checks.py --------------------------------------------------------------------

SPEC = {"w": ((2, 3), "float32"), "b": ((3,), "float32")}


def _reply(arrays, num_examples=10):
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": num_examples})})
    return Message(content, dst_node_id=0, message_type="train")


GOOD = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


@pytest.mark.usefixtures("flower_task_identity")
def test_check_reply_accepts_well_formed():
    from server.checks import check_reply, payload_bytes

    verdict = check_reply(_reply(GOOD), SPEC)
    assert verdict.accepted and verdict.update.num_examples == 10
    assert np.array_equal(verdict.update.arrays["w"], GOOD["w"])
    assert payload_bytes(_reply(GOOD).content["arrays"]) > 24


@pytest.mark.usefixtures("flower_task_identity")
@pytest.mark.parametrize("arrays,n,reason", [
    ({"w": GOOD["w"]}, 10, "missing \\['b'\\]"),
    ({**GOOD, "x": GOOD["b"]}, 10, "unexpected \\['x'\\]"),
    ({**GOOD, "b": np.zeros(4, np.float32)}, 10, "array 'b': got float32\\[4\\]"),
    ({**GOOD, "b": np.zeros(3, np.float64)}, 10, "array 'b': got float64"),
    ({**GOOD, "w": np.full((2, 3), np.nan, np.float32)}, 10, "NaN or Inf"),
    (GOOD, 0, "num-examples must be a positive integer"),
])
def test_check_reply_rejects_malformed(arrays, n, reason):
    from server.checks import check_reply

    verdict = check_reply(_reply(arrays, n), SPEC)
    assert not verdict.accepted
    assert re.search(reason, verdict.reason), verdict.reason


@pytest.mark.usefixtures("flower_task_identity")
def test_check_reply_rejects_garbled_bytes_and_error_replies():
    from flwr.app import Array, Error, Message

    from server.checks import check_reply

    msg = _reply(GOOD)
    arr = msg.content["arrays"]["w"]
    msg.content["arrays"]["w"] = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=b"garbage")
    verdict = check_reply(msg, SPEC)
    assert not verdict.accepted and "cannot decode" in verdict.reason
    err = Message(Error(code=0, reason="site crashed"), reply_to=_reply(GOOD))
    verdict = check_reply(err, SPEC)
    assert not verdict.accepted and "site crashed" in verdict.reason


def test_save_arrays_keeps_0_dim_shapes_and_every_dtype(tmp_path):
    """np.ascontiguousarray made a 0-dim tensor [1]: a watermarked BatchNorm model then failed
    its check after a save (`was reshaped from [] to [1]`)."""
    arrays = {"count": np.array(5, dtype=np.int64), "scale": np.array(0.5, dtype=np.float32),
              "flags": np.array([True, False]), "kernel": np.ones((2, 1, 3, 3), dtype=np.float32)}
    records.save_arrays(tmp_path / "m.safetensors", arrays)
    back = records.load_arrays(tmp_path / "m.safetensors")
    assert {n: (a.shape, a.dtype) for n, a in back.items()} == {n: (a.shape, a.dtype) for n, a in arrays.items()}
    assert back["count"] == 5 and back["scale"] == np.float32(0.5)
