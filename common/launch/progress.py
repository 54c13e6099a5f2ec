"""Progress displays of `fedseal simulate` (common/launch/simulate.py).

PlainProgress prints one line per finished round (stdout not a terminal: the format tests and
scripts parse). RichProgress (a terminal) shows a live line - round, stage, seconds in the
round, last accuracy - from the run folder's progress.json (written by the server as each
stage starts) and rounds.jsonl, prints each finished round above it, and the final table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from common.run import federated_eval, records

STAGE_TEXT = {"watermark": "watermark + sign", "enrol": "sites prove their ids", "train": "sites verify, train, seal",
              "check": "check seals",
              "aggregate": "aggregate", "evaluate": "evaluate", "centralized reference": "centralized reference"}


class PlainProgress:
    """One plain line per finished round (nothing with `quiet`)."""

    def __init__(self, out: TextIO, line: Callable[[dict[str, Any]], str], *, quiet: bool = False) -> None:
        self.out, self.line, self.quiet = out, line, quiet

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def round_done(self, rec: dict[str, Any]) -> None:
        if not self.quiet:
            print(self.line(rec), file=self.out, flush=True)

    def tick(self) -> None:
        pass


class RichProgress:
    """A live progress line with `rich` (stdout is a terminal)."""

    def __init__(self, folder: Path, num_rounds: int, line: Callable[[dict[str, Any]], str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
        )

        self.folder, self.num_rounds, self.line = folder, num_rounds, line
        self.console = Console()
        self.progress = Progress(
            SpinnerColumn(), TextColumn("round {task.fields[round]}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("[cyan]{task.fields[stage]}"), TextColumn("{task.fields[secs]:>6.1f} s"),
            TextColumn("accuracy {task.fields[acc]}"), console=self.console, transient=True,
        )
        self.task = self.progress.add_task("rounds", total=num_rounds, round="-", stage="starting Flower and Ray",
                                           secs=0.0, acc="-")
        self._key: tuple[Any, Any] | None = None
        self._since = time.monotonic()

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def round_done(self, rec: dict[str, Any]) -> None:
        style = "red" if rec.get("rejected") else "yellow" if rec.get("recovered") else "green"
        self.progress.console.print(f"[{style}]{self.line(rec)}[/]", highlight=False)
        acc = (rec.get("federated_eval") or {}).get("accuracy", rec.get("accuracy"))
        self.progress.update(self.task, completed=rec["round"], acc=fmt(acc, 6))

    def tick(self) -> None:
        try:
            now = json.loads((self.folder / records.PROGRESS).read_text())
            key = (now["round"], now["stage"])
        except (OSError, ValueError, KeyError, TypeError):
            key = self._key
        if key is not None and key[0] != (self._key or (None,))[0]:
            self._since = time.monotonic()  # a new round: its seconds start now
        self._key = key
        fields = {"secs": time.monotonic() - self._since}
        if key is not None:
            fields |= {"round": f"{key[0]}/{self.num_rounds}", "stage": STAGE_TEXT.get(key[1], str(key[1]))}
        self.progress.update(self.task, **fields)


def sites_line(summary: dict[str, Any]) -> str:
    """How many sites were registered, sampled into each round and used (the fewest and most)."""
    used = [r["clients_used"] for r in summary["rounds"]] or [0]
    line = (f"sites: {summary['clients_registered']} registered, {summary['clients_per_round']} sampled per round, "
            f"used per round {min(used)}" + (f"-{max(used)}" if max(used) != min(used) else ""))
    if summary.get("nodes_unknown"):
        line += f"; {summary['nodes_unknown']} node(s) without site keys left out (audit: site_unknown)"
    return line


def print_rich_table(summary: dict[str, Any]) -> None:
    """The final table (terminal): every round, then final vs centralized accuracy."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="FedSeal run", title_justify="left")
    for name in ("round", "fed acc", "fed loss", "accuracy", "loss", "seconds", "KB up", "KB down", "sites", "rejected",
                 "recovered"):
        table.add_column(name, justify="left" if name in ("rejected", "recovered") else "right")
    for r in summary["rounds"]:
        recovered = ", ".join(f"{x['client']}:{x['what']}" for x in r.get("recovered", []))
        fed = r.get("federated_eval") or {}
        table.add_row(str(r["round"]), fmt(fed.get("accuracy"), 0), fmt(fed.get("loss"), 0), fmt(r["accuracy"], 0),
                      fmt(r["loss"], 0), f"{r['seconds']:.1f}",
                      f"{r['bytes_up'] / 1024:.1f}", f"{r['bytes_down'] / 1024:.1f}", str(r["clients_used"]),
                      f"[red]{', '.join(map(str, r['rejected']))}[/]" if r["rejected"] else "",
                      f"[yellow]{recovered}[/]" if recovered else "")
    table.caption = "\n".join(final_lines(summary))
    Console().print(table)


def final_lines(summary: dict[str, Any]) -> list[str]:
    """The lines under the table: how many sites took part; the final federated evaluation; final vs
    centralized accuracy, or why the coordinator scored nothing."""
    lines = [sites_line(summary)] if "clients_registered" in summary else []
    if summary.get("final_federated_eval"):
        lines.append("final " + federated_eval.describe(summary["final_federated_eval"]))
    if summary.get("final_accuracy") is not None and summary.get("centralized_accuracy") is not None:
        gap = 100 * (summary["final_accuracy"] - summary["centralized_accuracy"])
        lines.append(f"final accuracy {summary['final_accuracy']:.4f}   centralized {summary['centralized_accuracy']:.4f}   "
                     f"difference {gap:+.2f} points   ({summary['test_examples']} test examples)")
    elif summary.get("final_accuracy") is None:
        lines.append(f"no server-side accuracy: {summary.get('server_evaluation', 'the coordinator holds no data')}")
    return lines


def fmt(value: float | None, width: int) -> str:
    return f"{value:>{width}.4f}" if value is not None else f"{'-':>{width}}"

