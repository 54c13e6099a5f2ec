"""The run report: a real simulation with injected attacks, then report.html and `fedseal report`."""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib

import pytest

from common.cli import main
from common.run import records
from common.run.report import REPORT, write_report
from tests.simrun import simulate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(data: bytes) -> tuple[int, int]:
    """A valid PNG start: the signature, then an IHDR chunk with a correct CRC; returns (width, height)."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:16 + length]
    (crc,) = struct.unpack(">I", data[16 + length:20 + length])
    assert crc == zlib.crc32(kind + body)
    width, height = struct.unpack(">II", body[:8])
    assert width > 0 and height > 0 and data.endswith(b"IEND\xaeB`\x82")
    return width, height


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory):
    """3 sites, 3 rounds: a tampered reply and a tampered global model in round 2; in round 3 a forged
    reply and a corrupted global model leave one reply, so the round is skipped."""
    out = tmp_path_factory.mktemp("report") / "run"
    proc = simulate("--clients", "3", "--rounds", "3", "--local-epochs", "2", "--inject", "tamper-update:0:2",
                    "--inject", "tamper-global:1:2", "--inject", "forge-update:2:3", "--inject", "corrupt-global:1:3",
                    out=out)
    return out, proc


def test_simulate_writes_report_with_valid_plots(attacked_run):
    out, proc = attacked_run
    page = (out / REPORT).read_text(encoding="utf-8")
    assert f"Report: {out / REPORT}" in proc.stdout
    # stdout is not a terminal: today's plain lines, one per round
    assert sum(line.startswith("round ") and " s " in line for line in proc.stdout.splitlines()) == 3
    sources = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(sources) == 4  # learning, sites, tamper map, cost
    assert len(re.findall(r"<img\b", page)) == len(sources)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        width, height = _check_png(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert width >= 400 and height >= 100
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched


def test_report_shows_every_audit_event_and_the_tamper_map(attacked_run):
    out, _ = attacked_run
    page = (out / REPORT).read_text(encoding="utf-8")
    audit = records.read_jsonl(out / records.AUDIT)
    events = {a["event"] for a in audit}
    assert {"update_rejected", "global_recovered", "global_refused", "round_skipped"} <= events
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page)
    for a in audit:  # each event has its own row naming the event, its round and its site
        cells = [f"<td>{a['event']}</td>", f"<td>{a['round']}</td>"]
        if "client" in a:
            cells.append(f"<td>{a['client']}</td>")
        assert any(all(c in row for c in cells) for row in rows), a
    tampered = [a for a in audit if a.get("tampered")]
    assert tampered
    for a in tampered:
        for tensor, blocks in a["tampered"].items():
            assert f"<td>{tensor}</td><td>{', '.join(map(str, blocks))}</td>" in page
    # at a glance: rejected sites, the restored global model, the cost per stage
    assert "site 0 (round 2)" in page and "site 2 (round 3)" in page
    assert "site 1 global-model (round 2)" in page
    summary = json.loads((out / records.SUMMARY).read_text())
    for stage in ("watermark", "verify", "train", "seal", "check", "aggregate", "evaluate"):
        assert stage in summary["rounds"][0]["stages"]
        assert f"<th>{stage}</th>" in page


def test_report_command_and_bad_folders(attacked_run, tmp_path, capsys):
    out, _ = attacked_run
    target = tmp_path / "copy.html"
    assert main(["report", str(out), "--out", str(target)]) == 0
    assert capsys.readouterr().out.strip() == f"Report: {target}"
    assert target.read_text().startswith("<!DOCTYPE html>")
    for bad in (tmp_path / "missing", tmp_path):
        assert main(["report", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fedseal: error: "), err
    (tmp_path / records.ROUNDS).write_text("")
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished round" in capsys.readouterr().err


def test_run_in_progress_and_old_records(tmp_path):
    """No summary yet and rounds.jsonl lines from before stage timings: still a report."""
    old = {"round": 1, "accuracy": 0.9, "loss": 0.3, "seconds": 2.0, "bytes_up": 10, "bytes_down": 10,
           "clients_used": 2, "rejected": ["<b>7</b>"], "recovered": []}
    (tmp_path / records.ROUNDS).write_text(json.dumps(old) + "\n" + '{"round": 2, "acc')
    (tmp_path / records.AUDIT).write_text(json.dumps({"event": "update_rejected", "round": 1, "client": "<b>7</b>",
                                                      "reason": "x", "tampered": {"w": [3]}}) + "\n")
    page = write_report(tmp_path).read_text()
    assert "has not finished" in page and "<b>7</b>" not in page and "&lt;b&gt;7&lt;/b&gt;" in page
    assert records.RoundRecord(**old).stages == {}  # resume loads rounds written before `stages`


def test_no_report_flag(tmp_path, monkeypatch, capsys):
    from common.launch import simulate as cli_simulate

    def fake_child(settings, clients, folder, **kwargs):  # what the ServerApp writes (server/app.py)
        rec = records.RoundRecord(1, 0.9, 0.3, 1.0, 10, 10, 2).to_json()
        (folder / records.ROUNDS).write_text(json.dumps(rec) + "\n")
        records.atomic_write_json(folder / records.SUMMARY, {
            "rounds": [rec], "final_accuracy": 0.9, "centralized_accuracy": 0.95, "test_examples": 113})
        if settings.report:
            write_report(folder)
        return 0

    monkeypatch.setattr(cli_simulate, "run_child", fake_child)
    for flags, written in ((["--no-report"], False), (["--quiet"], True)):
        out = tmp_path / f"run{len(flags[0])}"
        assert main(["simulate", "--clients", "2", "--rounds", "1", "--out", str(out), *flags]) == 0
        assert (out / REPORT).exists() == written
        text = capsys.readouterr().out
        assert ("FedSeal simulate:" in text) == (flags != ["--quiet"]) and "final accuracy" in text


def test_what_happened_gives_every_event_a_meaning_and_no_raw_json(tmp_path):
    from common.run.report import EVENT_TEXT, build_report, load_run

    rounds = [{"round": 1, "accuracy": 0.5, "loss": 0.7, "seconds": 1.0, "bytes_up": 10, "bytes_down": 10,
               "clients_used": 0, "rejected": [], "recovered": [], "stages": {}, "epsilon": {}}]
    summary = {"status": "stopped", "reason": "1 rounds in a row skipped", "dataset": "breast-cancer", "clients": 3,
               "secure_mode": "he", "num_rounds": 3, "rounds": rounds}
    records.atomic_write_json(tmp_path / records.SUMMARY, summary)
    audit = [{"event": "sum_decrypted", "round": 1, "client": "2", "sites": 3},
             {"event": "replies_missing", "round": 1, "stage": "train", "count": 1, "nodes": [123],
              "clients": ["1"]},
             {"event": "round_skipped", "round": 1, "reason": "no site decrypted the sum"},
             {"event": "site_unknown", "round": 1, "client": "9"},
             {"event": "site_vanished", "round": 1, "client": "8"},  # an event this version has no text for
             {"event": "run_stopped", "round": 1, "reason": "1 rounds in a row skipped"}]
    (tmp_path / records.AUDIT).write_text("".join(json.dumps(a) + "\n" for a in audit))
    page = build_report(load_run(tmp_path)).html
    happened = page.split("<h2>What happened</h2>", 1)[1].split("<h2>", 1)[0]
    assert "{" not in happened and "[" not in happened  # no raw JSON or Python dicts
    assert "site 2: site decrypted the blinded sum" in happened and "sites 3" in happened
    assert "no reply within the round timeout (stage train; count 1; nodes 123; clients 1)" in happened
    assert "skipped</b>: no site decrypted the sum" in happened and "site 8: site vanished" in happened
    assert "site 9: node left out of the federation" in happened
    assert "run was <b>stopped</b>" in happened and "stopped: it could not make progress" in page
    audit_table = page.split("audit.jsonl", 1)[-1]
    assert all(EVENT_TEXT[e] in page for e in ("sum_decrypted", "replies_missing", "run_stopped"))
    assert '{"' not in audit_table


def test_report_of_a_run_whose_coordinator_holds_no_data(tmp_path):
    """accuracy/loss null (no coordinator data): the report shows the sites' federated evaluation."""
    fed = {"accuracy": 0.875, "loss": 0.31, "examples": 40}
    rounds = [{"round": r, "accuracy": None, "loss": None, "seconds": 1.0, "bytes_up": 10, "bytes_down": 10,
               "clients_used": 2, "rejected": [], "recovered": [], "federated_eval": fed,
               "site_eval": {"0": {"accuracy": 1.0, "examples": 30}}} for r in (1, 2)]
    (tmp_path / records.ROUNDS).write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (tmp_path / records.AUDIT).write_text("")
    summary = {"dataset": "blobs", "num_rounds": 2, "final_accuracy": None, "centralized_accuracy": None,
               "final_federated_eval": fed, "server_evaluation": "deployment: the coordinator loads no data set",
               "rounds": rounds}
    records.atomic_write_json(tmp_path / records.SUMMARY, summary)
    page = write_report(tmp_path).read_text()
    assert "0.8750" in page and "federated accuracy (40 validation examples at the sites)" in page
    assert "deployment: the coordinator loads no data set" in page
    from common.launch.simulate import format_progress, format_table

    assert "no server-side accuracy: deployment" in format_table(summary)
    assert format_progress(rounds[0], 2).startswith("round   1/2  federated accuracy 0.8750 loss 0.3100 (40 examples)")
