"""Aggregation of accepted site payloads on numpy.

Each secure mode brings its own aggregator (masked sum, homomorphic sum); `none` mode
uses `aggregate(name, updates)` below: FedAvg, or a robust rule (median, trimmed mean,
Krum) computed by Flower's aggregation functions (`flwr.server.strategy.aggregate`).
All are plain functions on arrays, so they are tested without a federation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

from common.run.settings import AGGREGATORS  # the names live with the run settings


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
    """Average arrays weighted by num_examples: summed in float64, rounded to float32 once.

    Not robust: a single site can move the result arbitrarily far.

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
        acc = np.zeros_like(ordered[0].arrays[name], dtype=np.float64)
        for u in ordered:
            acc += u.num_examples * u.arrays[name].astype(np.float64)
        out[name] = (acc / total).astype(np.float32)
    return out


# Robust rules: unweighted (num_examples is ignored, so a site cannot buy influence by
# claiming more examples). Updates are sorted by site first, so the order replies
# arrived in never changes the result; names are handed to Flower in sorted order.


def _results(updates: list[Update]) -> tuple[list[str], list[tuple[list[np.ndarray], int]]]:
    """Updates sorted by site as Flower's (NDArrays, num_examples) list, names sorted."""
    if not updates:
        raise ValueError("aggregation needs at least one update")
    ordered = sorted(updates, key=lambda u: (u.site, u.digest()))
    names = sorted(ordered[0].arrays)
    shapes = [np.shape(ordered[0].arrays[n]) for n in names]
    for u in ordered:
        if sorted(u.arrays) != names or [np.shape(u.arrays[n]) for n in names] != shapes:
            raise ValueError(f"update from {u.site!r} has different array names or shapes")
    return names, [([u.arrays[n].astype(np.float32) for n in names], u.num_examples) for u in ordered]


def _to_dict(names: list[str], arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {n: np.asarray(a).astype(np.float32) for n, a in zip(names, arrays, strict=True)}


def median(updates: list[Update]) -> dict[str, np.ndarray]:
    """Coordinate-wise median (Flower's `aggregate_median`), unweighted.

    Resists a minority of outlier sites per coordinate: fewer than half the sites can
    push any coordinate only as far as the honest values around the middle.
    """
    names, results = _results(updates)
    return _to_dict(names, aggregate_median(results))


def trimmed_mean(updates: list[Update], trim_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed mean (Flower's `aggregate_trimmed_avg`), unweighted.

    Per coordinate, drops the int(trim_fraction * n) lowest and highest values and
    averages the rest; resists up to that many outlier sites on each side per
    coordinate. trim_fraction must be in [0, 0.5); with few sites it may trim nothing
    (e.g. 0.2 with 4 sites), which makes it a plain unweighted mean.
    """
    names, results = _results(updates)
    return _to_dict(names, aggregate_trimmed_avg(results, trim_fraction))


def krum(updates: list[Update], byzantine: int = 1) -> dict[str, np.ndarray]:
    """Krum (Flower's `aggregate_krum`): return the single update closest to its peers.

    Each update is scored by the summed squared distance to its n - f - 2 nearest
    others; the lowest score wins, unweighted. Resists up to f = `byzantine` arbitrary
    (Byzantine) sites, but only when n > 2f + 2; with fewer updates this falls back
    to the coordinate-wise median (no error, no message).
    """
    if byzantine < 0:
        raise ValueError("krum_byzantine must be >= 0")
    if len(updates) <= 2 * byzantine + 2:
        return median(updates)
    names, results = _results(updates)
    return _to_dict(names, aggregate_krum(results, num_malicious=byzantine, to_keep=0))


def aggregate(
    name: str, updates: list[Update], *, trim_fraction: float = 0.2, krum_byzantine: int = 1
) -> dict[str, np.ndarray]:
    """Aggregate with one of AGGREGATORS; float32 arrays with the inputs' names/shapes."""
    if name == "fedavg":
        return fedavg(updates)
    if name == "median":
        return median(updates)
    if name == "trimmed-mean":
        return trimmed_mean(updates, trim_fraction)
    if name == "krum":
        return krum(updates, krum_byzantine)
    raise ValueError(f"unknown aggregator {name!r}; choose from {', '.join(AGGREGATORS)}")
