"""The fragile watermark: fidelity, detection, location and bit-exact recovery (tamper suite)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.bench.watermark import resnet18_like, tamper_blocks
from common.errors import InputError
from common.integrity import watermark as wm
from common.integrity.watermark import bits

KEY = bytes(range(32))
CTX = "run-1/round-3"


def make_model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(0, 0.2, (32, 16, 3, 3)).astype(np.float32),  # 4608 params
        "mid.weight": rng.normal(0, 0.1, (64, 96)).astype(np.float32),  # 6144
        "fc.weight": rng.normal(0, 0.05, (20, 128)).astype(np.float32),  # 2560: 18.6 % of the model
        "fc.bias": rng.normal(0, 0.01, 40).astype(np.float32),  # short block only
        "out.weight": rng.normal(0, 0.1, (10, 40)).astype(np.float32),
        "out.bias": np.array([0.5, -0.25], dtype=np.float32),  # too small for a tag: side data
        "bn.num_batches_tracked": np.array(123, dtype=np.int64),
        "emb.half": rng.normal(0, 1, 33).astype(np.float16),
    }


@pytest.fixture(scope="module")
def marked() -> dict[str, np.ndarray]:
    return wm.embed(make_model(), KEY, CTX)


def same_bits(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[n].dtype == b[n].dtype and a[n].shape == b[n].shape
                                      and a[n].tobytes() == b[n].tobytes() for n in a)


def copy(state: dict) -> dict:
    return {n: a.copy() for n, a in state.items()}


def words(state: dict, name: str) -> np.ndarray:
    return state[name].reshape(-1).view(np.uint32)


# --- packing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", bits.ALLOWED_K)
def test_bit_packing_round_trips(k):
    rng = np.random.default_rng(k)
    w = rng.integers(0, 2**32, (50, 64), dtype=np.uint64).astype(np.uint32)
    hi = w & ~bits.low_mask(k)
    assert np.array_equal(bits.unpack_high(bits.pack_high(w, k), k), hi)
    cap = rng.integers(0, 256, (50, bits.capacity_bytes(k)), dtype=np.uint8)
    low = bits.pack_low(cap, k)
    assert not (low & ~bits.low_mask(k)).any()
    assert np.array_equal(bits.unpack_low(hi | low, k), cap)


# --- fidelity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", bits.ALLOWED_K)
def test_embed_changes_only_low_bits_and_verifies(k):
    model = make_model(1)
    out = wm.embed(model, KEY, CTX, k=k)
    assert list(out) == sorted(model)
    for name, arr in model.items():
        assert out[name].dtype == arr.dtype and out[name].shape == arr.shape
        if arr.dtype != np.float32:
            assert out[name].tobytes() == arr.tobytes()
            continue
        changed = words(out, name) ^ words(model, name)
        assert not (changed >> np.uint32(k)).any(), "sign, exponent and high mantissa untouched"
        assert np.isfinite(out[name]).all()
    report = wm.verify(out, KEY, CTX, k=k)
    assert report.intact and report.tampered_blocks == 0 and not report.problems


def test_relative_change_at_most_2_pow_minus_15(marked):
    model = make_model()
    for name, arr in model.items():
        if arr.dtype == np.float32:
            rel = np.abs(marked[name].astype(np.float64) - arr) / np.abs(arr.astype(np.float64))
            assert rel.max() <= 2.0**-15


def test_layout_test_vector():
    """The embedded bits never drift silently: a fixed model, key and context give fixed bytes."""
    out = wm.embed(make_model(7), KEY, "vector")
    digest = hashlib.sha256(b"".join(n.encode() + out[n].tobytes() for n in out)).hexdigest()
    assert digest == WATERMARK_VECTOR


WATERMARK_VECTOR = "6187cea580bf73d593d305497f15fc68f06c31d73ff3c3ab099ae9019bb9bfaf"


def test_no_false_positive_over_1000_clean_verifications():
    false_alarms = 0
    for seed in range(200):
        model = make_model(seed)
        for r in range(5):
            ctx = f"run-{seed}/round-{r}"
            false_alarms += not wm.verify(wm.embed(model, KEY, ctx), KEY, ctx).intact
    assert false_alarms == 0


def test_refuses_a_model_without_float32_capacity():
    with pytest.raises(InputError, match="no float32"):
        wm.embed({"a": np.arange(500, dtype=np.int64), "b": np.ones(10, np.float32)}, KEY, CTX)


def test_key_must_be_32_bytes():
    with pytest.raises(InputError, match="32 bytes"):
        wm.embed(make_model(), b"short", CTX)


# --- detection, location, recovery -------------------------------------------------------------


def assert_detected_at(report, expected: dict[str, set[int]]):
    assert not report.intact
    assert {n: set(d.tampered_blocks) for n, d in report.tensors.items()} == expected


def assert_restored(state, marked):
    out, report = wm.recover(state, KEY, CTX)
    assert report.intact, report.to_json()
    assert same_bits(out, marked)
    assert wm.verify(out, KEY, CTX).intact
    return report


float_names = ["conv.weight", "mid.weight", "fc.weight", "fc.bias", "out.weight"]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(float_names), data=st.data(), bit=st.integers(0, 31))
def test_any_single_bit_flip_is_detected_located_and_restored(marked, name, data, bit):
    """Bit flips anywhere: watermark bits, mantissa, exponent, sign."""
    t = copy(marked)
    index = data.draw(st.integers(0, t[name].size - 1))
    words(t, name)[index] ^= np.uint32(1 << bit)
    report = wm.verify(t, KEY, CTX)
    assert_detected_at(report, {name: {index // 64}})
    assert report.recoverable
    assert_restored(t, marked)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), fraction=st.floats(0.01, 0.12))
def test_random_block_overwrites_are_restored_on_a_small_model(marked, seed, fraction):
    """A 219-block model: its few codewords fluctuate, so stay well under the bound here."""
    t = tamper_blocks(marked, fraction, np.random.default_rng(seed))
    report = wm.verify(t, KEY, CTX)
    changed = sum(int((t[n] != marked[n]).any()) for n in float_names)
    assert changed > 0 and not report.intact
    assert_restored(t, marked)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_20_percent_of_blocks_tampered_at_random_is_restored_bit_exactly(seed):
    state = resnet18_like(2_000_000, seed=seed)
    good = wm.embed(state, KEY, CTX)
    t = tamper_blocks(good, 0.20, np.random.default_rng(seed))
    report = wm.verify(t, KEY, CTX)
    assert report.recoverable and report.tampered_blocks >= 0.19 * report.total_blocks
    out, _ = wm.recover(t, KEY, CTX)
    assert same_bits(out, good)


def test_exponent_flips_are_restored(marked):
    t = copy(marked)
    for i in (0, 700, 4000):
        words(t, "conv.weight")[i] ^= np.uint32(1 << 30)  # the exponent's top bit: a huge weight
    assert_detected_at(wm.verify(t, KEY, CTX), {"conv.weight": {0, 700 // 64, 4000 // 64}})
    assert_restored(t, marked)


def test_whole_tensor_replacement_is_restored(marked):
    t = copy(marked)
    t["fc.weight"] = np.random.default_rng(3).normal(0, 0.05, t["fc.weight"].shape).astype(np.float32)
    share = marked["fc.weight"].size / sum(a.size for a in marked.values())
    assert 0.15 < share <= 0.2
    report = wm.verify(t, KEY, CTX)
    assert set(report.tensors) == {"fc.weight"}
    assert report.tensors["fc.weight"].tampered_ranges == [[0, t["fc.weight"].size]]
    assert_restored(t, marked)


@pytest.mark.parametrize(
    "attack",
    [
        lambda a: (a * np.float32(1.001)).astype(np.float32),
        lambda a: (a + np.random.default_rng(0).normal(0, 1e-7, a.shape)).astype(np.float32),
    ],
    ids=["scale-1.001", "noise-1e-7"],
)
def test_small_layer_changes_are_detected_and_restored(marked, attack):
    t = copy(marked)
    t["out.weight"] = attack(t["out.weight"])
    report = wm.verify(t, KEY, CTX)
    assert set(report.tensors) == {"out.weight"}
    assert_restored(t, marked)


def test_pruning_to_zero_is_located(marked):
    t = copy(marked)
    flat = t["conv.weight"].reshape(-1)
    flat[np.abs(flat) < 0.001] = 0.0  # magnitude pruning of the smallest weights
    pruned_blocks = {i // 64 for i in np.flatnonzero(flat != marked["conv.weight"].reshape(-1))}
    assert_detected_at(wm.verify(t, KEY, CTX), {"conv.weight": pruned_blocks})
    assert_restored(t, marked)


def test_block_swap_is_detected(marked):
    t = copy(marked)
    flat = t["fc.weight"].reshape(-1)
    a, b = flat[0:64].copy(), flat[640:704].copy()
    flat[0:64], flat[640:704] = b, a
    assert_detected_at(wm.verify(t, KEY, CTX), {"fc.weight": {0, 10}})
    assert_restored(t, marked)


def test_side_tensors_are_authenticated_and_restored(marked):
    t = copy(marked)
    t["bn.num_batches_tracked"] = np.array(124, dtype=np.int64)
    t["out.bias"] = np.array([0.5, 9.0], dtype=np.float32)
    t["emb.half"] = t["emb.half"] * np.float16(2)
    report = wm.verify(t, KEY, CTX)
    assert set(report.tensors) == {"bn.num_batches_tracked", "out.bias", "emb.half"}
    assert_restored(t, marked)


def test_rename_is_reported_and_undone(marked):
    t = copy(marked)
    t["fc.renamed"] = t.pop("fc.weight")
    manifest = wm.manifest_of(marked)
    report = wm.verify(t, KEY, CTX, manifest=manifest)
    assert any("renamed from 'fc.weight'" in p for p in report.problems)
    assert not report.intact
    out, rep = wm.recover(t, KEY, CTX, manifest=manifest)
    assert same_bits(out, marked)


def test_drop_add_reshape_retype_are_reported(marked):
    manifest = wm.manifest_of(marked)
    t = copy(marked)
    del t["out.weight"]
    t["extra"] = np.zeros(100, np.float32)
    t["conv.weight"] = t["conv.weight"].reshape(32, -1)
    t["fc.weight"] = t["fc.weight"].astype(np.float16).astype(np.float32)  # dtype round trip
    t["fc.bias"] = t["fc.bias"].astype(np.float64)
    report = wm.verify(t, KEY, CTX, manifest=manifest)
    text = " ".join(report.problems)
    assert "'out.weight' is missing" in text
    assert "'extra' was added" in text
    assert "'conv.weight' was reshaped" in text
    assert "'fc.bias' was re-typed from float32 to float64" in text
    assert "fc.weight" in report.tensors and "conv.weight" not in report.tensors
    assert not report.intact


def test_dropped_tensor_is_restored_from_recovery_data(marked):
    manifest = wm.manifest_of(marked)
    t = copy(marked)
    del t["out.weight"]
    out, report = wm.recover(t, KEY, CTX, manifest=manifest)
    assert report.intact and same_bits(out, marked)


def test_another_context_or_key_fails_everywhere(marked):
    for key, ctx in ((KEY, "run-1/round-4"), (bytes(32), CTX)):
        report = wm.verify(marked, key, ctx)
        assert not report.intact
        assert report.tampered_blocks == report.total_blocks
        assert any("wrong key or context" in p for p in report.problems)


def test_beyond_the_bound_restores_what_it_can_and_never_makes_things_worse(marked):
    rng = np.random.default_rng(5)
    t = tamper_blocks(marked, 0.40, rng)
    flat = words(t, "conv.weight")
    blown = np.flatnonzero(t["conv.weight"].reshape(-1) != marked["conv.weight"].reshape(-1))[:20]
    flat[blown] |= np.uint32(0x7F000000)  # exponent blown up to ~1e38
    before = wm.verify(t, KEY, CTX)
    assert not before.recoverable
    out, report = wm.recover(t, KEY, CTX)
    assert not report.intact and report.unrestored
    for name in float_names:
        assert np.isfinite(out[name]).all()
        limit = 4 * np.abs(marked[name]).max()
        assert np.abs(out[name]).max() <= limit
        intact = np.repeat([b not in set(before.tensors.get(name, wm.TensorDamage([], [])).tampered_blocks)
                            for b in range(-(-marked[name].size // 64))], 64)[: marked[name].size]
        assert np.array_equal(out[name].reshape(-1)[intact], marked[name].reshape(-1)[intact])


def test_strip_keeps_every_shape_and_dtype_0_dim_included(marked):
    """strip() made a 0-dim float32 [1]: the sealed reply of a model with a 0-dim parameter then
    failed the server's shape check."""
    state = {**make_model(), "scale": np.array(1.5, dtype=np.float32), "flags": np.array([True, False])}
    out = wm.strip(wm.embed(state, KEY, CTX))
    assert {n: (a.shape, a.dtype) for n, a in out.items()} == {n: (a.shape, a.dtype) for n, a in state.items()}
    assert out["scale"] == np.float32(1.5) and out["bn.num_batches_tracked"] == 123


def test_too_many_small_tensors_for_the_capacity_is_refused_in_one_line():
    """60 BatchNorm layers beside one 64-parameter tensor: their tags need more blocks than the
    model has. It raised a bare numpy ValueError (a traceback from `fedseal watermark`)."""
    state = {"fc.weight": np.ones((8, 8), np.float32)}
    for i in range(60):
        state |= {f"bn{i}.weight": np.ones(8, np.float32), f"bn{i}.num_batches_tracked": np.array(0, np.int64)}
    with pytest.raises(InputError, match=r"too little float32 capacity .* need \d+ blocks .* it has 1$"):
        wm.embed(state, KEY, CTX)
