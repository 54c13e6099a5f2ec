"""What every row of `fedseal bench secure` shares: the same updates for every mode, best-of
timing, and the row's keys."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    """The same updates for every mode: K sites' float32 deltas, their example counts, a base model."""

    base: np.ndarray
    deltas: list[np.ndarray]
    counts: np.ndarray

    @classmethod
    def make(cls, params: int, clients: int, seed: int = 0) -> "Workload":
        rng = np.random.default_rng(seed)
        return cls(rng.normal(0, 0.1, params).astype(np.float32),
                   [rng.normal(0, 0.02, params).astype(np.float32) for _ in range(clients)],
                   rng.integers(10, 2000, size=clients))

    @property
    def params(self) -> int:
        return self.base.size

    def exact_mean(self) -> np.ndarray:
        """Plaintext FedAvg of the deltas in float64."""
        return sum(d.astype(np.float64) * n for d, n in zip(self.deltas, self.counts)) / self.counts.sum()


def best(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    """(best seconds, last result) of `repeat` calls."""
    seconds, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, out


def row(w: Workload, upload_bytes: int, client_s: float, server_s: float, final_s: float,
        mean: np.ndarray) -> dict:
    """One mode's figures (server_s: ingest of all sites; final_s: decryption/unmasking)."""
    return {
        "wire_ratio": upload_bytes / (4 * w.params),
        "upload_bytes": upload_bytes,
        "client_ns_per_param": client_s / w.params * 1e9,
        "server_ns_per_param": server_s / (w.params * len(w.deltas)) * 1e9,
        "round_s": client_s + server_s + final_s,
        "final_s": final_s,  # decryption (he: blind, one site decrypts, unblind) or unmasking
        "max_abs_error": float(np.max(np.abs(mean - w.exact_mean()))),
    }
