"""A run that cannot make progress: after `max-skipped-rounds` skipped rounds in a row, stop and say why.

The why comes from the audit records of those rounds: which sites did not answer, which were
rejected or refused the round, and for what reason; summary.json gets `"status": "stopped"`.
"""

from __future__ import annotations

from typing import Any

from common.errors import FedSealError, one_line

STATUS_FINISHED, STATUS_STOPPED = "finished", "stopped"
_FAILED = ("update_rejected", "global_refused", "dp_budget_spent", "site_failed", "site_dropped", "shares_rejected",
           "decrypt_failed")


class RunStalled(FedSealError):
    """The run stopped: too many rounds in a row were skipped (the message says which sites and why)."""


class SkipCounter:
    """Counts skipped rounds in a row; `stalled` once `limit` of them have come one after another."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rounds: list[int] = []

    def round_done(self, server_round: int, skipped: bool) -> None:
        """Note whether a round updated the model (a round that did resets the count)."""
        self.rounds = self.rounds + [server_round] if skipped else []

    @property
    def stalled(self) -> bool:
        return len(self.rounds) >= self.limit


def stall_reason(skipped_rounds: list[int], audit: list[dict[str, Any]], min_clients: int) -> str:
    """One line: the skipped rounds, and per site what went wrong in them (the last reason seen)."""
    wanted = set(skipped_rounds)
    failing: dict[str, str] = {}
    missing: set[str] = set()
    for record in audit:
        if record.get("round") not in wanted:
            continue
        event = record.get("event")
        if event == "replies_missing":
            nodes = record.get("nodes", [])
            names = record.get("clients") or [f"node-{n}" for n in nodes]  # site ids, in the order of `nodes`
            missing.update(f"node {n}" if name.startswith("node-") else f"site {name} (node {n})"
                           for n, name in zip(nodes, names))
        elif event in _FAILED and record.get("client") is not None:
            failing[str(record["client"])] = f"{event}: {record.get('reason') or 'no reason given'}"
    parts = [f"{len(skipped_rounds)} rounds in a row skipped (rounds {skipped_rounds[0]}-{skipped_rounds[-1]}): "
             f"fewer than min-clients={min_clients} accepted replies"]
    if failing:
        parts.append("failing: " + "; ".join(f"site {site} ({why})" for site, why in sorted(failing.items())))
    if missing:
        parts.append("no reply from: " + ", ".join(sorted(missing)))
    if not failing and not missing:
        parts.append("no site was rejected or silent (e.g. no site decrypted the sum): see audit.jsonl")
    return one_line(". ".join(parts), limit=1000)
