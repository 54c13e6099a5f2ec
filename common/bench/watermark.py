"""`fedseal bench watermark`: speed and recovery curve on a ResNet-18-like state dict."""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np

from common.integrity.watermark import api

CURVE_FRACTIONS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30)
RESNET18_PARAMS = 11_689_512


def resnet18_like(params: int = 11_700_000, seed: int = 0) -> dict[str, np.ndarray]:
    """ResNet-18's tensors (widths scaled to reach about `params`), He-scaled weights,
    BatchNorm affine and running statistics, int64 batch counters."""
    rng = np.random.default_rng(seed)
    scale = math.sqrt(params / RESNET18_PARAMS)
    w = [max(4, round(c * scale)) for c in (64, 128, 256, 512)]
    state: dict[str, np.ndarray] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        std = math.sqrt(2.0 / (cin * k * k))
        state[name] = rng.normal(0, std, (cout, cin, k, k)).astype(np.float32)

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = rng.normal(1.0, 0.1, c).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0.0, 0.05, c).astype(np.float32)
        state[f"{name}.running_mean"] = rng.normal(0.0, 0.2, c).astype(np.float32)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(1000, dtype=np.int64)

    conv("conv1.weight", w[0], 3, 7)
    bn("bn1", w[0])
    cin = w[0]
    for layer, cout in enumerate(w, start=1):
        for blk in range(2):
            p = f"layer{layer}.{blk}"
            conv(f"{p}.conv1.weight", cout, cin, 3)
            bn(f"{p}.bn1", cout)
            conv(f"{p}.conv2.weight", cout, cout, 3)
            bn(f"{p}.bn2", cout)
            if blk == 0 and cin != cout:
                conv(f"{p}.downsample.0.weight", cout, cin, 1)
                bn(f"{p}.downsample.1", cout)
            cin = cout
    state["fc.weight"] = rng.normal(0, math.sqrt(1.0 / cin), (1000, cin)).astype(np.float32)
    state["fc.bias"] = rng.normal(0, 0.01, 1000).astype(np.float32)
    return state


def tamper_blocks(state: dict[str, np.ndarray], fraction: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Overwrite a random `fraction` of all 64-parameter float32 blocks with random values."""
    out = {n: a.copy() for n, a in state.items()}
    names = [n for n, a in out.items() if a.dtype == np.float32 and a.size >= 64]
    counts = np.array([out[n].size // 64 for n in names])
    chosen = rng.choice(counts.sum(), int(round(fraction * counts.sum())), replace=False)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for i, name in enumerate(names):
        local = chosen[(chosen >= starts[i]) & (chosen < starts[i + 1])] - starts[i]
        if local.size:
            flat = out[name].reshape(-1)[: counts[i] * 64].reshape(-1, 64)
            flat[local] = rng.normal(0, 0.1, (local.size, 64)).astype(np.float32)
    return out


def _timed(fn, repeat: int = 3):
    best, result = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def _bit_exact(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[n].tobytes() == b[n].tobytes() for n in a)


def run(params: int = 11_700_000, runs_per_point: int = 3, seed: int = 0) -> dict:
    """Measure embed/verify/recover against a copy and a hash of the same bytes, and the curve."""
    state = resnet18_like(params, seed)
    key = bytes(range(32))
    ctx = b"bench/round-1"
    nbytes = sum(a.nbytes for a in state.values())
    blob = np.concatenate([a.reshape(-1).view(np.uint8) for a in state.values()])
    copy_s, _ = _timed(lambda: {n: a.copy() for n, a in state.items()})
    hash_s, _ = _timed(lambda: hashlib.blake2b(blob).digest())
    embed_s, marked = _timed(lambda: api.embed(state, key, ctx))
    verify_s, report = _timed(lambda: api.verify(marked, key, ctx))
    assert report.intact, "a freshly watermarked model must verify"
    rng = np.random.default_rng(seed + 1)
    tampered = tamper_blocks(marked, 0.10, rng)
    recover_s, (restored, _) = _timed(lambda: api.recover(tampered, key, ctx), repeat=1)
    curve = []
    for fraction in CURVE_FRACTIONS:
        exact = 0
        for _ in range(runs_per_point):
            restored, _ = api.recover(tamper_blocks(marked, fraction, rng), key, ctx)
            exact += _bit_exact(restored, marked)
        curve.append([fraction, exact / runs_per_point])
    return {
        "params": int(sum(a.size for a in state.values())),
        "bytes": int(nbytes),
        "embed_s": embed_s,
        "verify_s": verify_s,
        "recover_10pct_s": recover_s,
        "copy_s": copy_s,
        "hash_s": hash_s,
        "recovery_curve": curve,
        "runs_per_point": runs_per_point,
    }
