"""embed / verify / recover on state dicts (tensor name -> numpy array)."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np

from common.errors import InputError
from common.integrity.watermark import bits
from common.integrity.watermark import layout as layout_mod
from common.integrity.watermark.codec import Check, Codec, Model
from common.integrity.watermark.layout import Layout, TensorSpec

DEFAULT_K = 8
MANIFEST_KEY = "fedseal.watermark"  # file metadata: the manifest of a watermarked model


@dataclass
class TensorDamage:
    tampered_blocks: list[int]
    tampered_ranges: list[list[int]]  # [start, stop) parameter ranges of the flattened tensor


@dataclass
class WatermarkReport:
    """What a check found. For recover, `intact` says whether the output verifies intact, the
    other counts describe the input, and `restored_blocks` / `unrestored` the restoration."""

    intact: bool
    total_blocks: int
    tampered_blocks: int
    recoverable: bool
    tensors: dict[str, TensorDamage] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    restored_blocks: int | None = None  # recover: blocks restored bit-exactly
    unrestored: dict[str, TensorDamage] | None = None  # recover: what is still tampered in the output

    def to_json(self) -> dict:
        out = asdict(self)
        if self.restored_blocks is None:
            out.pop("restored_blocks")
            out.pop("unrestored")
        return out


# --- helpers ---------------------------------------------------------------------------------


def _as_bytes(context: bytes | str) -> bytes:
    return context.encode() if isinstance(context, str) else bytes(context)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise InputError("the watermark key must be 32 bytes")
    return bytes(key)


def specs_of(state: dict[str, np.ndarray]) -> list[TensorSpec]:
    """The manifest entries of a state dict, in canonical (sorted) order."""
    return _specs({name: (np.shape(arr), np.asarray(arr).dtype) for name, arr in state.items()})


def _specs(spec: dict[str, tuple]) -> list[TensorSpec]:
    return [TensorSpec(n, np.dtype(spec[n][1]).name, tuple(int(x) for x in spec[n][0])) for n in sorted(spec)]


def manifest_of(state: dict[str, np.ndarray], k: int = DEFAULT_K) -> str:
    """The manifest a watermarked file keeps beside its tensors (JSON text, not secret)."""
    return layout_mod.manifest_to_json(specs_of(state), k)


def manifest_of_spec(spec: dict[str, tuple], k: int = DEFAULT_K) -> str:
    """manifest_of for a tensor list given as {name: (shape, dtype)}, without the tensors."""
    return layout_mod.manifest_to_json(_specs(spec), k)


@functools.lru_cache(maxsize=8)
def _layout(manifest: str, key: bytes) -> Layout:
    specs, k = layout_mod.manifest_from_json(manifest)
    return layout_mod.build(specs, k, key)


def _words(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(-1).view(np.uint32)


def _fits(spec: TensorSpec, arr: np.ndarray | None) -> bool:
    return arr is not None and arr.dtype.name == spec.dtype and arr.size == spec.numel


def _to_model(lay: Layout, state: dict[str, np.ndarray]) -> Model:
    rows = np.zeros((lay.rows, bits.BLOCK), dtype=np.uint32)
    present = np.zeros(lay.rows, dtype=bool)
    specs = {s.name: s for s in lay.specs}
    arrays = {name: (np.asarray(state[name]) if name in state else None) for name in specs}
    for c in lay.carriers:
        arr = arrays[c.name]
        if not _fits(specs[c.name], arr):
            continue
        words = _words(arr)
        n = c.full_blocks * bits.BLOCK
        rows[c.row_start : c.row_start + c.full_blocks] = words[:n].reshape(-1, bits.BLOCK)
        present[c.row_start : c.row_start + c.full_blocks] = True
        if c.tail_row is not None:
            rows[c.tail_row, : c.tail_len] = words[n:]
            present[c.tail_row] = True
    side, side_present = [], np.zeros(len(lay.side), dtype=bool)
    for i, item in enumerate(lay.side):
        arr = arrays[item.name]
        if _fits(specs[item.name], arr):
            flat = np.ascontiguousarray(arr).reshape(-1)
            side.append(flat[item.start : item.stop].tobytes())
            side_present[i] = True
        else:
            side.append(bytes(item.nbytes))
    return Model(rows, side, present, side_present)


def _to_state(lay: Layout, model: Model, fallback: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for spec in lay.specs:
        arr = fallback.get(spec.name)
        flat[spec.name] = (
            np.ascontiguousarray(arr).reshape(-1).copy()
            if _fits(spec, arr)
            else np.zeros(spec.numel, dtype=spec.dtype)
        )
    for c in lay.carriers:
        words = flat[c.name].view(np.uint32)
        n = c.full_blocks * bits.BLOCK
        words[:n] = model.rows[c.row_start : c.row_start + c.full_blocks].reshape(-1)
        if c.tail_row is not None:
            words[n:] = model.rows[c.tail_row, : c.tail_len]
    for item, payload in zip(lay.side, model.side, strict=True):
        flat[item.name][item.start : item.stop] = np.frombuffer(payload, dtype=flat[item.name].dtype)
    return {s.name: flat[s.name].reshape(s.shape) for s in lay.specs}


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _damage(lay: Layout, bad_rows: np.ndarray, bad_side: np.ndarray) -> dict[str, TensorDamage]:
    blocks: dict[str, list[int]] = {}
    ranges: dict[str, list[tuple[int, int]]] = {}
    for c in lay.carriers:
        idx = np.flatnonzero(bad_rows[c.row_start : c.row_start + c.full_blocks]).tolist()
        if c.tail_row is not None and bad_rows[c.tail_row]:
            idx.append(c.full_blocks)
        for b in idx:
            blocks.setdefault(c.name, []).append(b)
            ranges.setdefault(c.name, []).append((b * bits.BLOCK, min((b + 1) * bits.BLOCK, c.numel)))
    for item, bad in zip(lay.side, bad_side, strict=True):
        if bad:
            blocks.setdefault(item.name, []).append(item.start // bits.BLOCK)
            ranges.setdefault(item.name, []).append((item.start, item.stop))
    return {
        name: TensorDamage(sorted(set(blocks[name])), _merge_ranges(ranges[name])) for name in sorted(blocks)
    }


# --- manifest problems -------------------------------------------------------------------------


def _reconcile(lay: Layout, state: dict[str, np.ndarray], codec: Codec) -> tuple[dict, list[str]]:
    """Map the file's tensors onto the manifest; say what was renamed, dropped, added, changed."""
    problems: list[str] = []
    state = dict(state)
    expected = {s.name: s for s in lay.specs}
    missing = [n for n in expected if n not in state]
    extra = [n for n in state if n not in expected]
    for name in list(missing):
        spec = expected[name]
        for other in extra:
            arr = np.asarray(state[other])
            if arr.dtype.name != spec.dtype or arr.size != spec.numel:
                continue
            trial = dict(state)
            trial[name] = arr
            if _tensor_mostly_verifies(lay, codec, trial, name):
                problems.append(f"tensor {other!r} was renamed from {name!r}")
                state[name] = state.pop(other)
                missing.remove(name)
                extra.remove(other)
                break
    for name in missing:
        problems.append(f"tensor {name!r} is missing (dropped)")
    for name in extra:
        problems.append(f"tensor {name!r} was added (not part of the watermarked model)")
        state.pop(name)
    for name, spec in expected.items():
        if name not in state:
            continue
        arr = np.asarray(state[name])
        if arr.dtype.name != spec.dtype:
            problems.append(f"tensor {name!r} was re-typed from {spec.dtype} to {arr.dtype.name}")
        elif arr.size != spec.numel:
            problems.append(f"tensor {name!r} was resized from {list(spec.shape)} to {list(arr.shape)}")
        elif tuple(arr.shape) != spec.shape:
            problems.append(f"tensor {name!r} was reshaped from {list(spec.shape)} to {list(arr.shape)}")
    return state, problems


def _tensor_mostly_verifies(lay: Layout, codec: Codec, state: dict, name: str) -> bool:
    found = codec.check(_to_model(lay, state))
    c = next((c for c in lay.carriers if c.name == name), None)
    if c is None:  # a side tensor: its own HMAC decides
        return not any(bad for item, bad in zip(lay.side, found.bad_side) if item.name == name)
    sl = slice(c.row_start, c.row_start + c.full_blocks)
    rows = found.bad_rows[sl]
    return rows.size > 0 and rows.mean() < 0.5


def _prepare(state, key, context, manifest, k):
    key = _check_key(key)
    if manifest is None:
        manifest = manifest_of(state, k)
    try:
        lay = _layout(manifest, key)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"the watermark manifest is not valid: {exc}") from None
    codec = Codec(lay, key, _as_bytes(context))
    state, problems = _reconcile(lay, state, codec)
    return lay, codec, state, problems


def _report(lay: Layout, found: Check, problems: list[str]) -> WatermarkReport:
    problems = list(problems)
    if not found.header_readable:
        problems.append("the watermark header could not be read: every copy is damaged")
    elif not found.manifest_ok:
        problems.append("the tensor list does not match the one that was watermarked")
    bad = int(found.bad_rows.sum() + found.bad_side.sum())
    total = lay.rows + len(lay.side)
    if bad == total:
        problems.append("no block verifies: wrong key or context, or the model was never watermarked")
    return WatermarkReport(
        intact=bad == 0 and not problems,
        total_blocks=total,
        tampered_blocks=bad,
        recoverable=found.recoverable,
        tensors=_damage(lay, found.bad_rows, found.bad_side),
        problems=problems,
    )


# --- public API --------------------------------------------------------------------------------


def embed(state: dict[str, np.ndarray], key: bytes, context: bytes | str, k: int = DEFAULT_K) -> dict[str, np.ndarray]:
    """Return a copy of `state` carrying the fragile watermark in the k low bits of its float32s."""
    key = _check_key(key)
    layout_mod.check_k(k)
    state = {n: np.asarray(a) for n, a in state.items()}
    lay = _layout(manifest_of(state, k), key)
    codec = Codec(lay, key, _as_bytes(context))
    model = _to_model(lay, state)
    model.rows = codec.embed(model)
    return _to_state(lay, model, state)


def verify(
    state: dict[str, np.ndarray], key: bytes, context: bytes | str, manifest: str | None = None, k: int = DEFAULT_K
) -> WatermarkReport:
    """Check every block; report which are tampered, where, and whether recover can undo it."""
    lay, codec, state, problems = _prepare(state, key, context, manifest, k)
    return _report(lay, codec.check(_to_model(lay, state)), problems)


def recover(
    state: dict[str, np.ndarray], key: bytes, context: bytes | str, manifest: str | None = None, k: int = DEFAULT_K
) -> tuple[dict[str, np.ndarray], WatermarkReport]:
    """Restore tampered blocks bit-exactly where the code allows; report what was not restored."""
    lay, codec, state, problems = _prepare(state, key, context, manifest, k)
    model = _to_model(lay, state)
    before = codec.check(model)
    restored, unrestored_rows = codec.restore(model)
    out = _to_state(lay, restored, state)
    _sanitize(lay, out, unrestored_rows)
    after = codec.check(_to_model(lay, out))
    report = _report(lay, before, problems)  # what was found in the input
    left = int(after.bad_rows.sum() + after.bad_side.sum())
    report.restored_blocks = report.tampered_blocks - left
    report.unrestored = _damage(lay, after.bad_rows, after.bad_side)
    report.intact = left == 0 and after.manifest_ok  # the output verifies intact
    return out, report


def strip(state: dict[str, np.ndarray], k: int = DEFAULT_K) -> dict[str, np.ndarray]:
    """A copy with the k low bits of every float32 cleared: the model's values without the
    watermark's bits, so what is computed from them does not depend on the key or context."""
    mask = ~bits.low_mask(k)
    out = {}
    for name, arr in state.items():
        arr = np.asarray(arr)
        if arr.dtype == np.float32:
            arr = (np.require(arr, requirements="C").view(np.uint32) & mask).view(np.float32)  # 0-dim stays 0-dim
        else:
            arr = arr.copy()
        out[name] = arr
    return out


def _sanitize(lay: Layout, state: dict[str, np.ndarray], unrestored_rows: np.ndarray) -> None:
    """In blocks that could not be restored, zero values a tamperer blew up (non-finite or far
    beyond the largest intact value of the tensor), so a partial restore never makes things worse."""
    for c in lay.carriers:
        rows = unrestored_rows[c.row_start : c.row_start + c.full_blocks]
        tail_bad = c.tail_row is not None and unrestored_rows[c.tail_row]
        if not rows.any() and not tail_bad:
            continue
        flat = state[c.name].reshape(-1)
        bad = np.repeat(rows, bits.BLOCK)
        bad = np.concatenate([bad, np.full(c.numel - bad.size, bool(tail_bad))])
        good_vals = np.abs(flat[~bad])
        limit = 4 * float(good_vals.max()) if good_vals.size else np.inf
        with np.errstate(invalid="ignore"):
            wrecked = bad & (~np.isfinite(flat) | (np.abs(flat) > limit))
        flat[wrecked] = 0.0
