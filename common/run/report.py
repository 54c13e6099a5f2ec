"""A run's report: one self-contained HTML page (Flower-free).

`write_report(RUN_DIR)` reads summary.json (or, for a run still going, rounds.jsonl and
run-config.json), audit.jsonl and the model files, draws the plots with matplotlib (Agg, no
display; imported only here) and writes RUN_DIR/report.html with every image embedded as a
base64 PNG data URI: no network, nothing beside it. Every value from the run folder is escaped
with html.escape. The library never prints; `fedseal report` (common/cli/report.py) does.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common.errors import InputError
from common.run import records
from common.run.stages import ORDER as STAGE_ORDER

REPORT = "report.html"
RUN_CONFIG = "run-config.json"
BLOCK = 64  # parameters per watermark block
SECURITY_STAGES = ("watermark", "verify", "seal", "encrypt", "check", "decrypt")
STAGE_COLORS = {"watermark": "#1f77b4", "verify": "#17becf", "train": "#2ca02c", "seal": "#9467bd",
                "encrypt": "#8c564b", "check": "#d62728", "decrypt": "#e377c2", "aggregate": "#ff7f0e",
                "evaluate": "#7f7f7f", "other": "#dddddd"}
EVENT_TEXT = {
    "update_rejected": "reply rejected",
    "update_recovered": "reply restored and accepted",
    "global_recovered": "site restored the tampered global model",
    "global_refused": "site refused the global model",
    "round_skipped": "round skipped (too few accepted replies)",
    "replies_missing": "no reply within the round timeout",
    "shares_rejected": "key shares rejected (masked mode)",
    "site_dropped": "site left out of the round after it started (masked mode: its masks are removed)",
    "sum_decrypted": "site decrypted the blinded sum for the server (he mode; it sees only sum + mask)",
    "decrypt_failed": "site's decryption of the blinded sum failed (he mode)",
    "dp_budget_spent": "site's privacy budget is spent; it no longer trains",
    "site_failed": "site could not take part (its own data or configuration)",
    "run_stopped": "run stopped: it could not make progress",
    "site_unknown": "node left out of the federation: it names no site with keys here",
    "sites_absent": "sites of the round's cohort with no connected node",
    "cohort": "sites sampled into the round",
    "site_enrolled": "node proved with the site's seal key that it is this site (once per run)",
    "enrolment_rejected": "node's proof of its site id failed: it takes no part (named by node)",
    "site_rejected": "site left out: its example count is above max-site-weight, or it spoiled a round before",
    "aggregate_check_failed": "aggregate refused: the check values did not hold (he: the sub-sums are searched)",
    "sites_excluded": "group of sites left out: one of them spoils the sum; min-clients forbids naming fewer (he)",
}
BAD_EVENTS = {"update_rejected", "global_refused", "round_skipped", "replies_missing", "shares_rejected",
              "decrypt_failed", "site_failed", "run_stopped", "site_unknown", "sites_absent",
              "enrolment_rejected", "site_rejected", "aggregate_check_failed", "sites_excluded"}


def event_text(event: Any) -> str:
    """What an audit event means, in words (an event this version does not know: its name, spelled out)."""
    return EVENT_TEXT.get(event) or str(event).replace("_", " ")


def _plain(details: dict[str, Any]) -> str:
    """An audit record's other fields as 'name value; name value' (lists comma-separated)."""
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k}: {value(x)}" for k, x in v.items())
        return ", ".join(map(value, v)) if isinstance(v, (list, tuple)) else str(v)
    return "; ".join(f"{k.replace('_', ' ')} {value(v)}" for k, v in details.items() if v not in (None, "", [], {}))


@dataclass
class RunData:
    """What a report is built from."""

    folder: Path
    settings: dict[str, Any]
    rounds: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    finished: bool
    summary: dict[str, Any] = field(default_factory=dict)
    tensor_blocks: dict[str, int] = field(default_factory=dict)  # tensor -> watermark blocks, model order


@dataclass
class Report:
    """A built report: the page and the names of its plots."""

    html: str
    plots: list[str]


def load_run(folder: str | Path) -> RunData:
    """Read a run folder; InputError (one line) when it is not one or has no finished round."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    summary_path, rounds_path = folder / records.SUMMARY, folder / records.ROUNDS
    summary: dict[str, Any] = {}
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{summary_path}: unreadable: {exc}") from None
        if not isinstance(summary, dict):
            raise InputError(f"{summary_path}: not a FedSeal summary")
    elif not rounds_path.exists():
        raise InputError(f"{folder}: not a FedSeal run folder (no {records.SUMMARY} or {records.ROUNDS})")
    rounds = summary.get("rounds") if summary else None
    if not isinstance(rounds, list):
        rounds = records.read_jsonl(rounds_path)
    if not rounds:
        raise InputError(f"{folder}: no finished round to report yet ({records.ROUNDS} is empty)")
    settings = {k: v for k, v in summary.items() if k != "rounds"}
    if not settings:
        try:
            saved = json.loads((folder / RUN_CONFIG).read_text(encoding="utf-8"))
            settings = {"clients": saved.get("clients"), **saved.get("run_config", {})}
        except (OSError, ValueError, AttributeError):
            settings = {}
    return RunData(folder=folder, settings=settings, rounds=rounds, audit=records.read_jsonl(folder / records.AUDIT),
                   finished=bool(summary), summary=summary, tensor_blocks=_tensor_blocks(folder))


def _tensor_blocks(folder: Path) -> dict[str, int]:
    """Watermark blocks per tensor of the run's model (64 parameters each; a smaller tensor is one)."""
    candidates = sorted((folder / records.CHECKPOINTS).glob("global-round-*.safetensors")) + [folder / records.MODEL]
    for path in candidates:
        if not path.exists():
            continue
        try:
            from safetensors import safe_open

            with safe_open(str(path), "np") as fh:
                return {name: max(1, math.ceil(math.prod(fh.get_slice(name).get_shape()) / BLOCK))
                        for name in fh.keys()}
        except Exception:  # a damaged file: the tamper map falls back to the blocks named
            continue
    return {}


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Build the report of the run in `folder` and write it (default RUN_DIR/report.html) atomically."""
    run = load_run(folder)
    path = Path(out) if out else run.folder / REPORT
    records.atomic_write_bytes(path, build_report(run).html.encode("utf-8"))
    return path


# ---------------------------------------------------------------- figures


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import (
        Figure,  # no pyplot: no global state, no display backend
    )

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols)
    return fig, axes


def plot_learning(run: RunData) -> str:
    """Accuracy and loss per round: the sites' federated evaluation of the model they received,
    the coordinator's own test split where it has one, and the centralized reference."""
    fig, (acc, loss) = _figure(11, 3.6, 2)
    xs = [r["round"] for r in run.rounds]
    for ax, key, label in ((acc, "accuracy", "accuracy"), (loss, "loss", "loss")):
        fed = [(r["round"], (r.get("federated_eval") or {}).get(key)) for r in run.rounds]
        fed = [(x, y) for x, y in fed if y is not None]
        if fed:
            ax.plot([x for x, _ in fed], [y for _, y in fed], "s-", color="#ff7f0e",
                    label="federated evaluation (sites' validation data, model received in round)")
        served = [r for r in run.rounds if r.get(key) is not None]
        ax.plot([r["round"] for r in served], [r[key] for r in served], "o-", color="#1f77b4",
                label="global model on the coordinator's test split")
        ref = run.settings.get(f"centralized_{key}")
        if isinstance(ref, (int, float)):
            ax.axhline(ref, color="#2ca02c", linestyle="--", label=f"centralized reference {ref:.4f}")
        bad = [r for r in served if r.get("rejected")]
        if bad:
            ax.plot([r["round"] for r in bad], [r[key] for r in bad], "x", color="#d62728", markersize=11,
                    mew=2.5, label="round with rejected sites")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def round_sites(run: RunData) -> list[dict[str, int]]:
    """Per round: sites accepted intact, accepted after recovery, rejected, refusing."""
    out = []
    for r in run.rounds:
        refused = sum(1 for a in run.audit if a.get("event") == "global_refused" and a.get("round") == r["round"])
        recovered = len({str(x.get("client")) for x in r.get("recovered", []) if isinstance(x, dict)})
        out.append({"round": r["round"], "intact": max(0, r["clients_used"] - recovered), "recovered": recovered,
                    "rejected": len(r.get("rejected", [])), "refused": refused})
    return out


def plot_sites(run: RunData) -> str:
    """Per round: sites used (intact / recovered), rejected, refusing the global model."""
    fig, ax = _figure(11, 3.4)
    rows = round_sites(run)
    xs = [r["round"] for r in rows]
    bottom = [0] * len(rows)
    for key, color, label in (("intact", "#2ca02c", "used"), ("recovered", "#ffbf00", "used after recovery"),
                              ("rejected", "#d62728", "rejected"), ("refused", "#8c564b", "refused global model")):
        values = [r[key] for r in rows]
        bars = ax.bar(xs, values, bottom=bottom, color=color, label=label, edgecolor="white")
        for bar, v in zip(bars, values):
            if v:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + v / 2, str(v), ha="center", va="center",
                        fontsize=9, color="black")
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel("sites")
    ax.set_title("sites per round")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def tamper_rows(run: RunData) -> list[dict[str, Any]]:
    """Audit records naming tampered tensors and blocks: round, client, event, tensor -> blocks."""
    return [a for a in run.audit if isinstance(a.get("tampered"), dict) and a["tampered"]]


def plot_tamper(run: RunData) -> str | None:
    """The tamper map: one row per (round, site) whose reply failed the fragile check, the model's
    blocks left to right (tensor boundaries marked), failed blocks in red."""
    rows = tamper_rows(run)
    if not rows:
        return None
    layout = dict(run.tensor_blocks)
    for a in rows:  # tensors the file did not name (or no model file): as many blocks as named
        for name, blocks in a["tampered"].items():
            top = max((int(b) for b in blocks), default=0) + 1
            layout[name] = max(layout.get(name, 0), top)
    starts, total = {}, 0
    for name, n in layout.items():
        starts[name], total = total, total + n
    fig, ax = _figure(11, 0.9 + 0.55 * len(rows))
    import numpy as np

    grid = np.zeros((len(rows), total))
    for i, a in enumerate(rows):
        for name, blocks in a["tampered"].items():
            for b in blocks:
                grid[i, starts[name] + int(b)] = 1 if a.get("event") == "update_rejected" else 0.5
    from matplotlib.colors import ListedColormap

    ax.imshow(grid, aspect="auto", cmap=ListedColormap(["#e8f5e9", "#ffbf00", "#d62728"]), vmin=0, vmax=1,
              interpolation="nearest")
    for name, s in starts.items():
        ax.axvline(s - 0.5, color="black", linewidth=0.8)
    ax.set_xticks([starts[n] + layout[n] / 2 - 0.5 for n in layout])
    ax.set_xticklabels(list(layout), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"round {a.get('round')} site {a.get('client')}" + (" (recovered)" if a.get("event") ==
                        "update_recovered" else "") for a in rows], fontsize=9)
    ax.set_title(f"tamper map: failed blocks of {BLOCK} parameters (red: reply rejected, amber: restored)")
    return _png(fig)


def stage_seconds(r: dict[str, Any]) -> dict[str, float]:
    """A round's seconds per stage in drawing order, plus 'other' (transport, scheduling, records)."""
    stages = {k: float(v) for k, v in (r.get("stages") or {}).items() if isinstance(v, (int, float))}
    ordered = {k: stages[k] for k in STAGE_ORDER if k in stages} | {k: v for k, v in stages.items()
                                                                      if k not in STAGE_ORDER}
    if ordered:
        ordered["other"] = max(0.0, float(r["seconds"]) - sum(ordered.values()))
    return ordered


def plot_cost(run: RunData) -> str:
    """Seconds per round split by stage (left: measured work; right: bytes each way)."""
    fig, (sec, share, byt) = _figure(14, 3.6, 3)
    xs = [r["round"] for r in run.rounds]
    per_round = [stage_seconds(r) for r in run.rounds]
    names = [s for s in list(STAGE_ORDER) + sorted({k for p in per_round for k in p}) if any(s in p for p in per_round)
             and s != "other"]
    names = list(dict.fromkeys(names))
    if names:
        bottom = [0.0] * len(xs)
        for s in names:
            values = [p.get(s, 0.0) for p in per_round]
            sec.bar(xs, values, bottom=bottom, color=STAGE_COLORS.get(s, "#bcbd22"), label=s, edgecolor="white")
            bottom = [b + v for b, v in zip(bottom, values)]
        totals, bottom = [sum(p.get(s, 0.0) for s in names) or 1.0 for p in per_round], [0.0] * len(xs)
        for s in names:  # the same, as a share of each round's measured work (round 1 warms up)
            values = [100 * p.get(s, 0.0) / t for p, t in zip(per_round, totals)]
            share.bar(xs, values, bottom=bottom, color=STAGE_COLORS.get(s, "#bcbd22"), edgecolor="white")
            bottom = [b + v for b, v in zip(bottom, values)]
        sec.set_title("seconds per round by stage\n(site stages: slowest site)")
        sec.legend(fontsize=8, ncols=2)
        share.set_title("share of each round's measured work")
        share.set_ylabel("%")
        share.set_xlabel("round")
        share.set_xticks(xs)
    else:
        sec.bar(xs, [r["seconds"] for r in run.rounds], color="#7f7f7f", label="round (no stage timings recorded)")
        sec.set_title("seconds per round")
        sec.legend(fontsize=8)
    sec.set_xlabel("round")
    sec.set_ylabel("seconds")
    sec.set_xticks(xs)
    width = 0.38
    byt.bar([x - width / 2 for x in xs], [r["bytes_down"] / 1024 for r in run.rounds], width, label="down (to sites)",
            color="#1f77b4")
    byt.bar([x + width / 2 for x in xs], [r["bytes_up"] / 1024 for r in run.rounds], width, label="up (from sites)",
            color="#ff7f0e")
    byt.set_title("KiB per round")
    byt.set_xlabel("round")
    byt.set_ylabel("KiB")
    byt.set_xticks(xs)
    byt.legend(fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------- page

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px}
h1{margin-bottom:4px}h2{margin-top:34px;border-bottom:2px solid #eee;padding-bottom:4px}
.sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:18px 0}
.card{border-radius:8px;padding:10px 16px;min-width:150px;background:#f4f6f8;border-left:6px solid #999}
.card .v{font-size:24px;font-weight:700}.card .k{font-size:13px;color:#555}
.ok{border-left-color:#2ca02c}.bad{border-left-color:#d62728}.warn{border-left-color:#ffbf00}
.info{border-left-color:#1f77b4}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f8}tr.bad td{background:#fdecea}tr.warn td{background:#fff8e1}tr.ok td{background:#edf7ed}
img{max-width:100%;display:block;margin:8px 0}
ul.verdict li{margin:4px 0}code{background:#f4f6f8;padding:1px 4px;border-radius:3px}
"""


def _e(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.4f}"
    elif isinstance(value, (dict, list)):
        value = json.dumps(value)
    return html.escape(str(value))


def _table(head: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"


def _card(value: Any, label: str, kind: str) -> str:
    return f'<div class="card {kind}"><div class="v">{_e(value)}</div><div class="k">{_e(label)}</div></div>'


def overhead(run: RunData) -> tuple[float, float]:
    """(security seconds, measured seconds) over the run's stages (sites: slowest site per stage)."""
    sec = total = 0.0
    for r in run.rounds:
        for k, v in stage_seconds(r).items():
            if k == "other":
                continue
            total += v
            sec += v if k in SECURITY_STAGES else 0.0
    return sec, total


def _verdict(run: RunData) -> list[str]:
    """One plain sentence per security event."""
    lines = []
    for a in run.audit:
        ev, who, rnd = a.get("event"), _e(a.get("client")), _e(a.get("round"))
        if ev == "update_rejected":
            blocks = sum(len(b) for b in (a.get("tampered") or {}).values())
            lines.append(f"Round {rnd}: the reply of site {who} was <b>rejected</b> ({_e(a.get('reason'))})"
                         + (f"; {blocks} block{'s' if blocks != 1 else ''} failed" if blocks else "") + ".")
        elif ev == "update_recovered":
            lines.append(f"Round {rnd}: the reply of site {who} was tampered, <b>restored bit-exactly</b> and used.")
        elif ev == "global_recovered":
            lines.append(f"Round {rnd}: site {who} received a tampered global model, <b>restored it bit-exactly</b> "
                         "and trained.")
        elif ev == "global_refused":
            lines.append(f"Round {rnd}: site {who} <b>refused</b> the global model ({_e(a.get('reason'))}).")
        elif ev == "round_skipped":
            why = (_e(a["reason"]) if a.get("reason") else
                   f"{_e(a.get('accepted'))} accepted replies, {_e(a.get('min_clients'))} needed")
            lines.append(f"Round {rnd} was <b>skipped</b>: {why}; the global model stayed as it was.")
        elif ev == "run_stopped":
            lines.append(f"After round {rnd} the run was <b>stopped</b>: {_e(a.get('reason'))}.")
        else:
            details = {k: v for k, v in a.items() if k not in ("event", "round", "client")}
            lines.append(f"Round {rnd}: " + (f"site {who}: " if a.get("client") is not None else "")
                         + _e(event_text(ev)) + (f" ({_e(_plain(details))})" if _plain(details) else "") + ".")
    return [ln.replace("site None", "a site") for ln in lines]


def build_report(run: RunData) -> Report:
    """The report page of `run`."""
    s = run.settings
    name = s.get("run_name") or run.folder.name
    plots = {"learning": plot_learning(run), "sites": plot_sites(run), "tamper": plot_tamper(run),
             "cost": plot_cost(run)}
    rejected = [(r["round"], c) for r in run.rounds for c in r.get("rejected", [])]
    recovered = [(r["round"], x) for r in run.rounds for x in r.get("recovered", []) if isinstance(x, dict)]
    refused = [a for a in run.audit if a.get("event") == "global_refused"]
    skipped = [a for a in run.audit if a.get("event") == "round_skipped"]
    sec, measured = overhead(run)
    last = run.rounds[-1]
    ref = s.get("centralized_accuracy")
    fed = last.get("federated_eval") or {}
    cards = [
        _card(f"{fed['accuracy']:.4f}" if "accuracy" in fed else "n/a",
              f"federated accuracy ({fed.get('examples', 0)} validation examples at the sites)", "info"),
        _card(f"{last['accuracy']:.4f}" if last.get("accuracy") is not None else "n/a",
              "final accuracy on the coordinator's test split" + (f" (centralized {ref:.4f})"
                                                                  if isinstance(ref, (int, float)) else "")
              if last.get("accuracy") is not None else str(s.get("server_evaluation", "no server data")), "info"),
        _card(f"{len(run.rounds)}/{s.get('num_rounds', s.get('num-rounds', '?'))}", "rounds"
              + ("" if run.finished else " (run in progress)")
              + (" (stopped: it could not make progress)" if s.get("status") == "stopped" else ""),
              "info" if run.finished and s.get("status") != "stopped" else "warn"),
        _card(len(rejected), "replies rejected" + (": " + ", ".join(f"site {c} (round {r})" for r, c in rejected)
                                                   if rejected else ""), "bad" if rejected else "ok"),
        _card(len(recovered), "tampered models restored" + (": " + ", ".join(
            f"site {x.get('client')} {x.get('what')} (round {r})" for r, x in recovered) if recovered else ""),
              "warn" if recovered else "ok"),
        _card(len(refused), "global models refused" + (": " + ", ".join(
            f"site {a.get('client')} (round {a.get('round')})" for a in refused) if refused else ""),
              "bad" if refused else "ok"),
        _card(len(skipped), "rounds skipped", "bad" if skipped else "ok"),
        _card(f"{100 * sec / measured:.1f} %" if measured else "n/a",
              f"security share of measured work ({sec:.3f} s of {measured:.3f} s)", "info"),
    ]
    verdict = _verdict(run)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>FedSeal report: {_e(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>FedSeal run report: {_e(name)}</h1>",
        f"<p class='sub'>{_e(s.get('dataset', '?'))}, {_e(s.get('clients', '?'))} sites, secure mode "
        f"{_e(s.get('secure_mode', s.get('secure-mode', '?')))}, aggregator {_e(s.get('aggregator', '?'))}. "
        f"Folder <code>{_e(run.folder.resolve())}</code>. Report written {datetime.now():%Y-%m-%d %H:%M:%S}"
        + ("" if run.finished else "; <b>the run has not finished</b> (built from rounds.jsonl)") + ".</p>",
        "<div class='cards'>" + "".join(cards) + "</div>",
        "<h2>What happened</h2>",
        "<ul class='verdict'>" + "".join(f"<li>{ln}</li>" for ln in verdict) + "</ul>" if verdict else
        "<p>No security event: every site accepted every global model and every reply passed its seal check.</p>",
        "<h2>Learning</h2>", f"<img alt='accuracy and loss per round' src='{plots['learning']}'>",
        "<h2>Sites per round</h2>", f"<img alt='sites per round' src='{plots['sites']}'>",
        _rounds_table(run),
        "<h2>Tamper map</h2>",
    ]
    if plots["tamper"]:
        rows = tamper_rows(run)
        parts += [f"<img alt='tamper map' src='{plots['tamper']}'>",
                  _table(["round", "site", "event", "tensor", "failed blocks"],
                         [[a.get("round"), a.get("client"), a.get("event"), t, ", ".join(map(str, b))]
                          for a in rows for t, b in a["tampered"].items()],
                         ["bad" if a.get("event") == "update_rejected" else "warn"
                          for a in rows for _ in a["tampered"]])]
    else:
        parts.append("<p>No reply failed the fragile check.</p>")
    parts.append("<p class='sub'>Global models a site restored or refused are checked on the site; the site "
                 "reports that it did, not which blocks (see the audit table).</p>")
    parts += ["<h2>Cost per round</h2>", f"<img alt='seconds and bytes per round' src='{plots['cost']}'>",
              _cost_table(run), "<h2>Audit events</h2>", _audit_table(run),
              "<h2>Settings</h2>",
              _table(["setting", "value"], [[k, v] for k, v in s.items() if k not in ("rounds",)]),
              "</body></html>"]
    return Report(html="\n".join(parts), plots=[k for k, v in plots.items() if v])


def _rounds_table(run: RunData) -> str:
    rows, classes = [], []
    for r, sites in zip(run.rounds, round_sites(run)):
        fed = r.get("federated_eval") or {}
        rows.append([r["round"], fed.get("accuracy"), fed.get("loss"), r["accuracy"], r["loss"], r["clients_used"], ", ".join(map(str, r.get("rejected", []))),
                     ", ".join(f"{x.get('client')}:{x.get('what')}" for x in r.get("recovered", [])
                               if isinstance(x, dict)), sites["refused"]])
        classes.append("bad" if r.get("rejected") or sites["refused"] else "warn" if r.get("recovered") else "")
    return _table(["round", "federated accuracy", "federated loss", "accuracy", "loss", "sites used", "rejected",
                   "recovered", "refused global"], rows,
                  classes)


def _cost_table(run: RunData) -> str:
    per_round = [stage_seconds(r) for r in run.rounds]
    names = list(dict.fromkeys([s for s in STAGE_ORDER if any(s in p for p in per_round)]
                               + [k for p in per_round for k in p if k not in STAGE_ORDER]))
    rows = [[r["round"], f"{r['seconds']:.3f}"] + [f"{p[n]:.4f}" if n in p else "" for n in names]
            + [r["bytes_down"], r["bytes_up"]] for r, p in zip(run.rounds, per_round)]
    note = ("<p class='sub'>Seconds: the round's wall time and its stages; site stages (verify, train, seal) are "
            "the slowest site's own figures; <i>other</i> is transport, scheduling, waiting and writing records "
            "(round 1 includes starting the workers).</p>")
    return _table(["round", "seconds"] + names + ["bytes down", "bytes up"], rows) + note


def _audit_table(run: RunData) -> str:
    if not run.audit:
        return "<p>audit.jsonl is empty.</p>"
    rows, classes = [], []
    for a in run.audit:
        ev = a.get("event")
        details = {k: v for k, v in a.items() if k not in ("event", "round", "client", "reason", "tampered")}
        tampered = "; ".join(f"{t}: {', '.join(map(str, b))}" for t, b in (a.get("tampered") or {}).items())
        rows.append([a.get("round", ""), a.get("client", ""), ev, event_text(ev), a.get("reason", ""),
                     tampered, _plain(details)])
        classes.append("bad" if ev in BAD_EVENTS else "warn")
    return _table(["round", "site", "event", "meaning", "reason", "tampered tensor: blocks", "details"], rows, classes)
