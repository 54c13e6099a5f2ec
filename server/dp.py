"""The server's side of differential privacy (common/learning/dp.py has the settings and the sites' side).

- Client-level DP (`--dp client:NOISE,CLIP`): the same math as Flower's
  `DifferentialPrivacyClientSideFixedClipping` strategy wrapper (sites clip, as its
  `fixedclipping_mod` does; the server averages and adds Gaussian noise of std
  NOISE x CLIP / n), written as a plain function because FedSeal runs its own round loop.
  In `none` mode the server sees each update, so it clips it again (a no-op for an honest
  site): a site that skips its clipping cannot raise the sensitivity.
- The epsilon ledger: what each site reports after a round (sample-level), the client-level
  epsilon (RDP accountant, sample rate K/N of the round's cohort, one step per round), and the
  summary fields.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord

from common import wire
from common.learning.dp import DpSpec, client_epsilon, clip_update
from server.aggregation import Update


def reported_epsilon(reply: Message) -> float | None:
    """The epsilon a site reports (its metrics, or its budget refusal); None if none or bad."""
    if reply.has_error():
        return None
    for key in (wire.METRICS, wire.CONFIG):
        record = reply.content.get(key)
        if isinstance(record, (MetricRecord, ConfigRecord)) and wire.DP_EPSILON in record:
            value = record[wire.DP_EPSILON]
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value >= 0:
                return float(value)
    return None


def noisy_mean(base: dict[str, np.ndarray], updates: list[Update], spec: DpSpec,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """base + the unweighted mean of the updates (arrays - base, each clipped to L2 norm
    spec.clip) + Gaussian noise of std spec.noise x spec.clip / n on every value.

    Unweighted: with FedAvg's example weights one site's influence, hence the sensitivity,
    would depend on its (claimed) example count. Sorted by site, so the result does not
    depend on the order the replies arrived in."""
    from flwr.supercore.differential_privacy import compute_stdv

    if not updates:
        raise ValueError("noisy_mean needs at least one update")
    ordered = sorted(updates, key=lambda u: u.site)
    std = compute_stdv(spec.noise, spec.clip, len(ordered))
    out = {}
    clipped = [clip_update(u.arrays, base, spec.clip) for u in ordered]
    for name, start in base.items():  # in base order: the noise drawn for a seed stays the same
        if name not in ordered[0].arrays:  # an integer or bool buffer: not averaged (averaged_spec)
            continue
        start64 = np.asarray(start, dtype=np.float64)
        mean = sum(np.asarray(c[name], dtype=np.float64) - start64 for c in clipped) / len(clipped)
        out[name] = (start64 + mean + rng.normal(0.0, std, size=start64.shape)).astype(np.float32)
    return out


def summary_fields(spec: DpSpec | None, rounds: list[Any], sample_rate: float = 1.0) -> dict[str, Any]:
    """summary.json's DP fields: `dp`, `dp_unit` (what one unit of protection is: an example or
    a whole site), `delta`, `clip`, `epsilon` (site -> epsilon) and `epsilon_max`; sample-level
    also `target_epsilon`, client-level `noise_multiplier` and `epsilon_all_rounds`."""
    if spec is None:
        return {"dp": ""}
    epsilon: dict[str, float] = {}
    for r in rounds:  # each site's latest epsilon (it only grows)
        for site, eps in (getattr(r, "epsilon", None) or {}).items():
            epsilon[site] = max(eps, epsilon.get(site, 0.0))
    out: dict[str, Any] = {"dp": str(spec), "delta": spec.delta, "clip": spec.clip}
    if spec.kind == "sample":
        out.update(dp_unit="example", target_epsilon=spec.epsilon)
    else:
        out.update(dp_unit="site", noise_multiplier=spec.noise,
                   epsilon_all_rounds=client_epsilon(spec, len(rounds), sample_rate), sample_rate=sample_rate)
    out["epsilon"] = dict(sorted(epsilon.items(), key=lambda kv: (len(kv[0]), kv[0])))
    out["epsilon_max"] = max(epsilon.values()) if epsilon else None
    return out


def round_epsilon(spec: DpSpec | None, server_round: int, reported: dict[str, float],
                  used: list[str], sample_rate: float = 1.0) -> dict[str, float]:
    """A round's `epsilon` (site -> epsilon): sample-level, what the sites reported; client-level,
    the accountant's epsilon after `server_round` rounds at `sample_rate` (the cohort's share of
    the sites, K/N) for every site whose update was used (an upper bound for a site that sat some
    rounds out)."""
    if spec is None:
        return {}
    if spec.kind == "sample":
        return dict(sorted(reported.items(), key=lambda kv: (len(kv[0]), kv[0])))
    eps = client_epsilon(spec, server_round, sample_rate)
    return {site: eps for site in sorted(used, key=lambda s: (len(s), s))}


def client_dp_aggregate(spec: DpSpec, published: dict[str, np.ndarray], updates: list[Update], seed: int,
                        server_round: int) -> dict[str, np.ndarray]:
    """A client-level DP round's new global model: `noisy_mean` around the values the sites
    trained from (the published model with the watermark's bits cleared). The noise is drawn
    from the run seed, so a run is reproducible: whoever knows the seed can subtract it, so keep
    the seed as secret as the model's training data (DP assumes the noise is unknown)."""
    from common.integrity import watermark
    from common.learning.training import derive_seed

    rng = np.random.default_rng(derive_seed(seed, "dp-noise", server_round))
    return noisy_mean(watermark.strip(published), updates, spec, rng)
