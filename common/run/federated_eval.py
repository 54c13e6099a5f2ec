"""Federated evaluation: every site scores the global model it received on its own validation
data and reports plaintext metrics; the server combines them weighted by validation examples.

A round's `federated_eval` is {metric: example-weighted mean, "examples": total}; a metric only
some sites report (e.g. roc_auc, undefined on a one-class validation set) is averaged over those
sites' examples. `site_eval` keeps each site's own {metric: value, "examples": n}.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

EXAMPLES = "examples"
MAX_METRICS = 32  # a reply with more metrics is cut to the first 32 names (sorted): bounded records
MAX_NAME = 64


def clean(metrics: Mapping[str, Any], examples: Any) -> dict[str, float] | None:
    """A site's reported metrics as stored: finite numbers under short names, plus a positive
    integer `examples`; None when the report is unusable (no examples, nothing finite)."""
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        return None
    out = {}
    for name in sorted(metrics)[:MAX_METRICS]:
        value = metrics[name]
        if (isinstance(name, str) and 0 < len(name) <= MAX_NAME and name != EXAMPLES and not isinstance(value, bool)
                and isinstance(value, (int, float)) and math.isfinite(value)):
            out[name] = float(value)
    return {**out, EXAMPLES: examples} if out else None


def combine(per_site: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Example-weighted means of every metric over the sites that report it, and the total
    examples; {} when no site reported."""
    if not per_site:
        return {}
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for report in per_site.values():
        n = int(report[EXAMPLES])
        for name, value in report.items():
            if name != EXAMPLES:
                sums[name] = sums.get(name, 0.0) + value * n
                weights[name] = weights.get(name, 0) + n
    out = {name: sums[name] / weights[name] for name in sorted(sums)}
    return {**out, EXAMPLES: sum(int(r[EXAMPLES]) for r in per_site.values())}


def describe(federated: Mapping[str, float], accuracy: float | None = None, loss: float | None = None) -> str:
    """One line for logs and progress: the federated accuracy/loss (and pr_auc, recall where
    reported) over n examples, and the coordinator's accuracy where it has data."""
    parts = []
    if federated:
        shown = [f"{name} {federated[name]:.4f}" for name in ("accuracy", "loss", "pr_auc", "recall")
                 if name in federated]
        parts.append("federated " + " ".join(shown) + f" ({int(federated[EXAMPLES])} examples)")
    if accuracy is not None:
        parts.append(f"server accuracy {accuracy:.4f} loss {loss:.4f}")
    return "; ".join(parts) or "no evaluation"
