"""Differential privacy: the `dp` run-config key, DP-SGD at a site, client-level clipping.

Flower-free. Two kinds (`--dp` / run-config `dp`; "" = off):

- `sample:EPS,DELTA[,CLIP]`: DP-SGD with Opacus at each site. Per-example gradients are
  clipped to L2 norm CLIP (default 1.0) and Gaussian noise is added at every step. The noise
  multiplier is calibrated ONCE for the whole run (Opacus' RDP accountant, Poisson sampling at
  rate 1/batches-per-epoch, rounds x local-epochs x batches-per-epoch steps), so that after the
  last round each site's epsilon is at most EPS. A site's epsilon after round r is recomputed
  from (noise, sample rate, steps so far) with a fresh RDPAccountant: stateless and exact.
- `client:NOISE,CLIP[,DELTA]`: client-level DP. Each site clips its update (trained weights -
  global weights) to L2 norm CLIP; the server adds Gaussian noise with std NOISE x CLIP / n to
  the unweighted mean of the n clipped updates (server/dp.py). Epsilon (at DELTA, default
  1e-5) comes from the RDP accountant with sample rate 1 and one step per round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from common.errors import InputError

KINDS = ("sample", "client")
DEFAULT_SAMPLE_CLIP = 1.0  # per-example gradient norm bound of `sample:` DP-SGD
DEFAULT_CLIENT_DELTA = 1e-5  # the delta a `client:` run reports its epsilon at


@dataclass(frozen=True)
class DpSpec:
    """A parsed `dp` setting.

    Attributes:
        kind: "sample" (DP-SGD at each site) or "client" (clipped updates, server noise).
        epsilon: sample: the target epsilon after all rounds; client: None (it is an output).
        delta: the delta epsilon is stated at.
        noise: client: the noise multiplier; sample: None (calibrated per site from epsilon).
        clip: sample: per-example gradient norm bound; client: update norm bound.
    """

    kind: str
    epsilon: float | None
    delta: float
    noise: float | None
    clip: float

    def __str__(self) -> str:
        if self.kind == "sample":
            return f"sample:{self.epsilon:g},{self.delta:g},{self.clip:g}"
        return f"client:{self.noise:g},{self.clip:g},{self.delta:g}"


def parse_dp(spec: str) -> DpSpec | None:
    """Parse a `dp` setting ("" -> None); InputError naming what is wrong."""
    if not isinstance(spec, str):
        raise InputError(f"dp must be a string like 'sample:3,1e-5' or 'client:1.0,0.5', got {spec!r}")
    text = spec.strip()
    if not text:
        return None
    kind, sep, rest = text.partition(":")
    kind = kind.strip()
    if not sep or kind not in KINDS:
        raise InputError(f"dp {spec!r}: expected sample:EPS,DELTA[,CLIP] or client:NOISE,CLIP[,DELTA]")
    values = []
    for part in rest.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise InputError(f"dp {spec!r}: {part.strip()!r} is not a number") from None
    if any(not math.isfinite(v) for v in values):
        raise InputError(f"dp {spec!r}: every value must be a finite number")
    if kind == "sample":
        if len(values) not in (2, 3):
            raise InputError(f"dp {spec!r}: expected sample:EPS,DELTA[,CLIP], e.g. sample:3,1e-5")
        epsilon, delta, clip = values[0], values[1], values[2] if len(values) == 3 else DEFAULT_SAMPLE_CLIP
        if epsilon <= 0:
            raise InputError(f"dp {spec!r}: epsilon must be > 0, got {epsilon:g}")
        _check_delta(spec, delta)
        _check_clip(spec, clip)
        return DpSpec("sample", epsilon, delta, None, clip)
    if len(values) not in (2, 3):
        raise InputError(f"dp {spec!r}: expected client:NOISE,CLIP[,DELTA], e.g. client:1.0,0.5")
    noise, clip, delta = values[0], values[1], values[2] if len(values) == 3 else DEFAULT_CLIENT_DELTA
    if noise <= 0:
        raise InputError(f"dp {spec!r}: the noise multiplier must be > 0 (0 gives no privacy), got {noise:g}")
    _check_clip(spec, clip)
    _check_delta(spec, delta)
    return DpSpec("client", None, delta, noise, clip)


def _check_delta(spec: str, delta: float) -> None:
    if not 0 < delta < 1:
        raise InputError(f"dp {spec!r}: delta must be > 0 and < 1, got {delta:g}")


def _check_clip(spec: str, clip: float) -> None:
    if clip <= 0:
        raise InputError(f"dp {spec!r}: the clipping norm must be > 0, got {clip:g}")


# --- accounting ---------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def rdp_epsilon(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of `steps` Gaussian steps (noise multiplier, sample rate) at `delta`, from a fresh
    Opacus RDPAccountant (0.0 for no steps). Cached: a pure function, slow-ish (about 0.1 s)."""
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(float(noise), float(sample_rate), int(steps))]
    return float(accountant.get_epsilon(delta=delta))


@dataclass(frozen=True)
class SitePlan:
    """A site's DP-SGD plan for the whole run: same for every round, from its data size."""

    sample_rate: float  # Poisson sampling rate = 1 / batches per epoch
    steps_per_round: int  # local epochs x batches per epoch
    total_steps: int  # rounds x steps_per_round
    noise: float  # noise multiplier reaching the target epsilon after total_steps

    def epsilon_after(self, server_round: int, delta: float) -> float:
        """This site's epsilon once it has trained in rounds 1..server_round (an upper bound if
        it sat some of them out)."""
        return rdp_epsilon(self.noise, self.sample_rate, server_round * self.steps_per_round, delta)


def site_plan(spec: DpSpec, num_examples: int, *, rounds: int, local_epochs: int, batch_size: int) -> SitePlan:
    """Calibrate a site's noise multiplier once for the run (Opacus get_noise_multiplier, RDP)."""
    if spec.kind != "sample":
        raise ValueError("site_plan is for sample-level DP")
    if num_examples < 1:
        raise InputError("DP-SGD needs at least one training example at the site")
    batches = math.ceil(num_examples / batch_size)
    sample_rate = 1.0 / batches
    steps_per_round = local_epochs * batches
    total = rounds * steps_per_round
    return SitePlan(sample_rate, steps_per_round, total, _calibrate(spec.epsilon, spec.delta, sample_rate, total))


@lru_cache(maxsize=64)
def _calibrate(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Opacus' binary search for the noise multiplier (a few seconds: cached per process)."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant="rdp"))
    except ValueError as exc:
        raise InputError(f"dp: cannot reach epsilon {epsilon:g} at delta {delta:g}: {exc}") from None


def sample_plan(spec: DpSpec | None, num_examples: int, settings) -> SitePlan | None:
    """The DP-SGD plan of a site holding `num_examples` under RunSettings `settings`; None unless
    the run uses sample-level DP."""
    if spec is None or spec.kind != "sample":
        return None
    return site_plan(spec, num_examples, rounds=settings.num_rounds, local_epochs=settings.local_epochs,
                     batch_size=settings.batch_size)


def budget_spent(spec: DpSpec, plan: SitePlan, server_round: int) -> str:
    """Why a site must not train in `server_round` ("" when it may): its epsilon after the
    round would exceed the budget."""
    after = plan.epsilon_after(server_round, spec.delta)
    if after <= spec.epsilon:
        return ""
    return (f"DP budget spent: training in round {server_round} would raise this site's epsilon from "
            f"{plan.epsilon_after(server_round - 1, spec.delta):.3f} to {after:.3f}, over the budget of "
            f"{spec.epsilon:g} (delta {spec.delta:g})")


def client_epsilon(spec: DpSpec, rounds_done: int, sample_rate: float = 1.0) -> float:
    """Client-level epsilon after `rounds_done` rounds, one Gaussian release of noise multiplier
    NOISE per round, each site sampled into a round's cohort with probability `sample_rate`
    (1: every site in every round; K/N with cohorts of K of N sites)."""
    return rdp_epsilon(spec.noise, sample_rate, rounds_done, spec.delta)


# --- models -------------------------------------------------------------------------------------


def check_task(task) -> None:
    """InputError if `--dp sample` cannot wrap the task: Opacus cannot compute per-example
    gradients for its model, or the task trains with its own loop (DP-SGD replaces the default)."""
    from common.learning.task import Task
    from common.learning.tasks import seeded_model

    if type(task).train is not Task.train:
        raise InputError(f"dp sample: task {task.name!r} trains with its own train(); DP-SGD replaces FedSeal's "
                         "default loop, so remove the override or run without --dp sample")
    check_module(seeded_model(task, 0), task.name)


# What to use instead of a layer Opacus cannot train privately, by the start of its class name.
REPLACEMENTS = {
    "BatchNorm": "GroupNorm (or LayerNorm, InstanceNorm): BatchNorm mixes the examples of a batch",
    "SyncBatchNorm": "GroupNorm (or LayerNorm, InstanceNorm): BatchNorm mixes the examples of a batch",
    "LSTM": "opacus.layers.DPLSTM", "GRU": "opacus.layers.DPGRU", "RNN": "opacus.layers.DPRNN",
    "MultiheadAttention": "opacus.layers.DPMultiheadAttention",
}


def check_module(model, what: str) -> None:
    """InputError, one line, naming every layer Opacus cannot train privately (its path in the
    model and its class, found by Opacus' ModuleValidator) and what to use instead."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    bad: dict[str, list[str]] = {}  # class name -> paths of its layers
    for path, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is not None and validator(module):
            bad.setdefault(type(module).__name__, []).append(repr(path) if path else "the model itself")
    if not bad:
        return
    layers = ", ".join(f"{name} {' '.join(paths)}" for name, paths in bad.items())
    advice: dict[str, list[str]] = {}  # replacement -> the classes it replaces
    for name in bad:
        advice.setdefault(_replacement(name), []).append(name)
    instead = "; ".join(f"instead of {', '.join(names)} use {use}" for use, names in advice.items())
    raise InputError(f"dp sample: the {what} model has layers Opacus cannot train privately ({layers}); {instead}")


def _replacement(class_name: str) -> str:
    for prefix, use in REPLACEMENTS.items():
        if class_name.startswith(prefix):
            return use
    return "a layer Opacus supports (opacus.validators)"


# --- training -----------------------------------------------------------------------------------


def train_private(model, data, *, plan: SitePlan, clip: float, epochs: int, lr: float,
                  batch_size: int, seed: int) -> float:
    """DP-SGD: Opacus' make_private wraps the model, the optimizer and the data loader over the
    torch Dataset `data` (Poisson sampling at plan.sample_rate); the loop itself is the plain one
    (training.train_epochs). Deterministic for a seed (seeded sampling and noise generators).
    Returns the mean loss of the last epoch."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    from common.learning.training import make_optimizer, seed_everything, train_epochs

    model.train()  # Opacus refuses a model in eval mode (the site has just evaluated it)
    gen = seed_everything(seed)
    noise_gen = torch.Generator().manual_seed(seed ^ 0x5EED_D9)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
    engine = PrivacyEngine(accountant="rdp")
    private_model, optimizer, private_loader = engine.make_private(
        module=model, optimizer=make_optimizer(model, lr), data_loader=loader, noise_multiplier=plan.noise,
        max_grad_norm=clip, poisson_sampling=True, noise_generator=noise_gen,
    )
    if not math.isclose(private_loader.sample_rate, plan.sample_rate, rel_tol=1e-12):
        raise RuntimeError(f"Opacus samples at rate {private_loader.sample_rate}, the plan counts {plan.sample_rate}")
    try:
        last = train_epochs(private_model, private_loader, epochs=epochs, lr=lr, optimizer=optimizer)
    finally:
        private_model.to_standard_module()  # remove Opacus' hooks: `model` is a plain module again
    steps = sum(n for _, _, n in engine.accountant.history)
    if steps != epochs * len(private_loader):
        raise RuntimeError(f"DP-SGD took {steps} steps, the plan counts {epochs * len(private_loader)}")
    return last


def clip_update(trained: dict[str, np.ndarray], base: dict[str, np.ndarray], clip: float) -> dict[str, np.ndarray]:
    """base + (trained - base) scaled to L2 norm at most `clip` (over all arrays together): the
    arithmetic of Flower's compute_clip_model_update (what its fixedclipping mods do), step by step,
    so this library stays Flower-free (tests/learning/test_dp.py checks the two agree bit for bit).
    Only the averaged (floating) tensors are the update; integer and bool buffers pass unchanged."""
    from common.learning.models import is_averaged

    names = [n for n in trained if is_averaged(np.asarray(trained[n]).dtype)]
    params = [np.asarray(trained[n], dtype=np.float64) for n in names]
    bases = [np.asarray(base[n], dtype=np.float64) for n in names]
    deltas = [p - b for p, b in zip(params, bases, strict=True)]
    norm = float(np.sqrt(sum(np.linalg.norm(d.flat) ** 2 for d in deltas)))
    if norm > 0:  # Flower divides by the norm
        scale = min(1, clip / norm)
        params = [b + d * scale for b, d in zip(bases, deltas)]
    clipped = {n: p.astype(np.float32) for n, p in zip(names, params, strict=True)}
    return {n: clipped.get(n, trained[n]) for n in trained}
