"""Aggregation of accepted site payloads, done by FedSeal on numpy (no Flower strategy).

Each secure mode brings its own aggregator (masked sum, homomorphic sum); `none` mode
uses FedAvg below. Flower-free, so it is tested without a federation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Update:
    """One accepted site payload: its arrays and the examples it trained on."""

    site: str
    arrays: dict[str, np.ndarray]
    num_examples: int

    def digest(self) -> str:
        """SHA-256 over names and bytes: a canonical order independent of node ids."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.arrays[name]).tobytes())
        return h.hexdigest()


def fedavg(updates: list[Update]) -> dict[str, np.ndarray]:
    """Average arrays weighted by num_examples, in float32.

    Updates are summed in a canonical order (by content digest) so the result is
    bit-identical whatever order the replies arrived in.
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    ordered = sorted(updates, key=lambda u: (u.digest(), u.site))
    total = float(sum(u.num_examples for u in ordered))
    names = list(ordered[0].arrays)
    out: dict[str, np.ndarray] = {}
    for name in names:
        acc = np.zeros_like(ordered[0].arrays[name], dtype=np.float32)
        for u in ordered:
            acc += np.float32(u.num_examples / total) * u.arrays[name].astype(np.float32)
        out[name] = acc
    return out
