"""common/integrity/seal.py on the real models and real keys: the signed, watermarked global model and
the sites' sealed replies (DESIGN.md §2.2-§2.3, §4). No Flower."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.errors import InputError, TamperError
from common.integrity import seal, watermark
from common.integrity.seal import (
    SealError,
    digest_arrays,
    global_context,
    open_update,
    publish_global,
    receive_global,
    seal_context,
    seal_update,
)
from common.learning.models import array_spec, get_arrays, initial_model
from common.run import inject

RUN = "run-7"
DATASETS = ("breast-cancer", "digits")


@pytest.fixture(scope="module", params=DATASETS)
def model(request):
    return get_arrays(initial_model(request.param, 0))


def _bits(arrays):
    """Bit patterns, so equality is bit-exact (and NaN-safe)."""
    return {n: np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else a.dtype).copy()
            for n, a in arrays.items()}


def assert_bit_exact(a, b):
    assert sorted(a) == sorted(b)
    ba, bb = _bits(a), _bits(b)
    for name in ba:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert np.array_equal(ba[name], bb[name]), f"{name} differs"


def all_secrets(server, clients):
    out = [server.watermark_key, *server.seal_keys.values()]
    for c in clients.values():
        out += [c.watermark_key, c.seal_key]
    return out


def assert_no_key_in(exc: SealError, server, clients):
    text = f"{exc} {exc.reason} {exc!r} {exc.report.to_json() if exc.report else ''}"
    for key in all_secrets(server, clients):
        assert key.hex() not in text and repr(key) not in text and key.hex().upper() not in text


# --- the global model ----------------------------------------------------------------------------


def test_publish_receive_round_trip_is_bit_exact(fed, model):
    server, clients = fed
    published, signature = publish_global(model, server.watermark_key, server.signing_key, RUN, 3)
    assert len(signature) == 64
    # the watermark lives in the low bits only: the published model is close to the real one
    for name, arr in model.items():
        assert np.allclose(published[name], arr, rtol=1e-4, atol=1e-30)
    site = clients["1"]
    opened = receive_global(published, signature, site.watermark_key, site.server_public_key, RUN, 3,
                            expected=array_spec(model))
    assert opened.recovered is False
    assert_bit_exact(opened.arrays, published)
    assert_bit_exact(opened.values(), watermark.strip(model))


@pytest.mark.parametrize("seed", range(5))
def test_tampered_global_is_recovered_bit_exactly(fed, model, seed):
    server, clients = fed
    published, signature = publish_global(model, server.watermark_key, server.signing_key, RUN, 2)
    tampered = inject.tamper_global(published, np.random.default_rng(seed))
    assert not all(np.array_equal(tampered[n], published[n]) for n in published)
    site = clients["2"]
    opened = receive_global(tampered, signature, site.watermark_key, site.server_public_key, RUN, 2,
                            expected=array_spec(model))
    assert opened.recovered is True
    assert opened.report is not None and opened.report.tampered_blocks >= 1
    assert_bit_exact(opened.arrays, published)


@pytest.mark.parametrize("seed", range(3))
def test_corrupted_global_is_refused(fed, model, seed):
    server, clients = fed
    published, signature = publish_global(model, server.watermark_key, server.signing_key, RUN, 2)
    corrupted = inject.corrupt_global(published, np.random.default_rng(seed))
    site = clients["0"]
    with pytest.raises(SealError) as info:
        receive_global(corrupted, signature, site.watermark_key, site.server_public_key, RUN, 2, expected=array_spec(model))
    assert "beyond recovery" in str(info.value)
    assert info.value.report is not None and not info.value.report.recoverable
    assert isinstance(info.value, TamperError)  # the CLI maps it to exit status 1
    assert_no_key_in(info.value, server, clients)


def test_signature_by_another_key_is_refused(fed, model):
    server, clients = fed
    impostor = Ed25519PrivateKey.generate()
    # a key holder (any site has K_wm) can watermark a model, but cannot sign as the server
    published, signature = publish_global(model, server.watermark_key, impostor, RUN, 4)
    site = clients["0"]
    with pytest.raises(SealError) as info:
        receive_global(published, signature, site.watermark_key, site.server_public_key, RUN, 4, expected=array_spec(model))
    assert "signature" in str(info.value)
    assert_no_key_in(info.value, server, clients)


def test_signature_of_another_model_is_refused(fed, model):
    server, clients = fed
    site = clients["0"]
    pub3, sig3 = publish_global(model, server.watermark_key, server.signing_key, RUN, 3)
    other = {n: a * np.float32(0.5) for n, a in model.items()}
    pub_other, _ = publish_global(other, server.watermark_key, server.signing_key, RUN, 3)
    with pytest.raises(SealError, match="signature"):
        receive_global(pub_other, sig3, site.watermark_key, site.server_public_key, RUN, 3, expected=array_spec(model))


def test_model_of_another_round_is_refused(fed, model):
    server, clients = fed
    site = clients["0"]
    pub3, sig3 = publish_global(model, server.watermark_key, server.signing_key, RUN, 3)
    with pytest.raises(SealError) as info:  # replayed as round 4, with its genuine signature
        receive_global(pub3, sig3, site.watermark_key, site.server_public_key, RUN, 4, expected=array_spec(model))
    assert info.value.report.tampered_blocks == info.value.report.total_blocks
    with pytest.raises(SealError):  # and as round 3 of another run
        receive_global(pub3, sig3, site.watermark_key, site.server_public_key, "run-8", 3, expected=array_spec(model))
    # the round-4 signature over the round-3 model does not help either
    _, sig4 = publish_global(model, server.watermark_key, server.signing_key, RUN, 4)
    with pytest.raises(SealError):
        receive_global(pub3, sig4, site.watermark_key, site.server_public_key, RUN, 4, expected=array_spec(model))


def test_digest_covers_names_dtypes_shapes_and_bytes(model):
    d = digest_arrays(model)
    assert d == digest_arrays({n: model[n].copy() for n in reversed(list(model))})
    name = sorted(n for n in model if model[n].ndim > 1)[0]
    assert d != digest_arrays({**model, name: model[name].reshape(-1)})
    assert d != digest_arrays({**model, name: model[name].astype(np.float64)})
    assert d != digest_arrays({**{n: a for n, a in model.items() if n != name}, name + "x": model[name]})
    flipped = model[name].copy()
    flipped.reshape(-1).view(np.uint32)[0] ^= 1
    assert d != digest_arrays({**model, name: flipped})


# --- a site's sealed update ----------------------------------------------------------------------


def _sealed(fed, model, cid="1", rnd=3):
    server, clients = fed
    return seal_update(model, clients[cid].seal_key, RUN, rnd, cid)


def test_intact_update_is_accepted(fed, model):
    server, _ = fed
    sealed = _sealed(fed, model)
    opened = open_update(sealed, array_spec(model), server.seal_key("1"), RUN, 3, "1")
    assert opened.recovered is False
    assert_bit_exact(opened.arrays, sealed)


@pytest.mark.parametrize("seed", range(4))
def test_flipped_bits_are_rejected_naming_tensors_and_blocks(fed, model, seed):
    server, clients = fed
    sealed = _sealed(fed, model)
    rng = np.random.default_rng(seed)
    name = sorted(n for n in model if model[n].size >= 64)[seed % 2]
    tampered = {n: a.copy() for n, a in sealed.items()}
    block = int(rng.integers(model[name].size // 64))
    tampered[name].reshape(-1).view(np.uint32)[block * 64 + int(rng.integers(64))] ^= np.uint32(1 << 20)
    with pytest.raises(SealError) as info:
        open_update(tampered, array_spec(model), server.seal_key("1"), RUN, 3, "1")
    report = info.value.report
    assert report is not None and not report.intact and report.tampered_blocks >= 1
    assert name in report.tensors and report.tensors[name].tampered_blocks
    assert "blocks fail the check" in info.value.reason
    assert_no_key_in(info.value, server, clients)


@pytest.mark.parametrize("seed", range(4))
def test_injected_tamper_update_is_detected(fed, model, seed):
    server, _ = fed
    sealed = _sealed(fed, model)
    tampered = inject.flip_bits(sealed, np.random.default_rng(seed))
    with pytest.raises(SealError) as info:
        open_update(tampered, array_spec(model), server.seal_key("1"), RUN, 3, "1")
    assert info.value.report.tensors


def test_replayed_update_is_rejected(fed, model):
    server, clients = fed
    previous = _sealed(fed, model, rnd=2)
    with pytest.raises(SealError) as info:
        open_update(previous, array_spec(model), server.seal_key("1"), RUN, 3, "1")
    assert "replayed" in info.value.reason
    with pytest.raises(SealError):  # recovery does not turn a replay into an accepted reply
        open_update(previous, array_spec(model), server.seal_key("1"), RUN, 3, "1", recover=True)
    assert_no_key_in(info.value, server, clients)


def test_forged_update_is_rejected(fed, model):
    server, clients = fed
    forged = seal_update(model, secrets.token_bytes(32), RUN, 3, "1")
    for recover in (False, True):
        with pytest.raises(SealError) as info:
            open_update(forged, array_spec(model), server.seal_key("1"), RUN, 3, "1", recover=recover)
        assert info.value.report.tampered_blocks == info.value.report.total_blocks
        assert_no_key_in(info.value, server, clients)


def test_update_claiming_another_site_is_rejected(fed, model):
    server, clients = fed
    sealed = _sealed(fed, model, cid="1")
    # site 1's genuine reply presented as site 2's (checked with site 2's key and id) ...
    with pytest.raises(SealError):
        open_update(sealed, array_spec(model), server.seal_key("2"), RUN, 3, "2", recover=True)
    # ... or sealed by site 1 with its own key but for site 2's id
    wrong_id = seal_update(model, clients["1"].seal_key, RUN, 3, "2")
    with pytest.raises(SealError):
        open_update(wrong_id, array_spec(model), server.seal_key("1"), RUN, 3, "1", recover=True)
    with pytest.raises(SealError):
        open_update(wrong_id, array_spec(model), server.seal_key("2"), RUN, 3, "2", recover=True)


@pytest.mark.parametrize("seed", range(6))
def test_small_tamper_is_recovered_bit_exactly(fed, model, seed):
    server, _ = fed
    sealed = _sealed(fed, model)
    tampered = inject.flip_bits(sealed, np.random.default_rng(seed))
    opened = open_update(tampered, array_spec(model), server.seal_key("1"), RUN, 3, "1", recover=True)
    assert opened.recovered is True
    assert opened.report is not None and opened.report.tampered_blocks >= 1
    assert_bit_exact(opened.arrays, sealed)


def test_tamper_beyond_the_bound_is_still_rejected_with_recover(fed, model):
    server, _ = fed
    sealed = _sealed(fed, model)
    wrecked = inject.corrupt_global(sealed, np.random.default_rng(0))  # half of all blocks overwritten
    with pytest.raises(SealError) as info:
        open_update(wrecked, array_spec(model), server.seal_key("1"), RUN, 3, "1", recover=True)
    assert info.value.report.tampered_blocks >= info.value.report.total_blocks // 3


def test_values_clear_exactly_the_eight_low_bits(fed, model):
    server, _ = fed
    sealed = _sealed(fed, model)
    opened = open_update(sealed, array_spec(model), server.seal_key("1"), RUN, 3, "1")
    values = opened.values()
    for name, arr in sealed.items():
        words, cleared = arr.reshape(-1).view(np.uint32), values[name].reshape(-1).view(np.uint32)
        assert values[name].dtype == np.float32 and values[name].shape == arr.shape
        assert np.array_equal(cleared, words & np.uint32(0xFFFFFF00)), name
    # the low byte really carries the seal (not zero everywhere), so clearing it matters
    assert any((a.reshape(-1).view(np.uint32) & 0xFF).any() for a in sealed.values())
    # values() does not touch the arrays it was built from
    assert_bit_exact(opened.arrays, sealed)


@pytest.mark.parametrize("bad", ["a:b", ":", "", "run:1"])
def test_contexts_reject_names_with_colons(bad):
    with pytest.raises(InputError):
        global_context(bad, 1)
    with pytest.raises(InputError):
        seal_context(bad, 1, "0")
    with pytest.raises(InputError):
        seal_context("run", 1, bad)


def test_contexts_are_distinct_per_run_round_and_site():
    contexts = {global_context("r", 1), global_context("r", 2), global_context("s", 1),
                seal_context("r", 1, "0"), seal_context("r", 1, "1"), seal_context("r", 2, "0"),
                seal_context("s", 1, "0")}
    assert len(contexts) == 7


# --- chunk seals (ciphertexts, masked vectors) ---------------------------------------------------

def _chunks():
    return [bytes([i]) * 100 for i in range(5)]


def test_chunk_seals_accept_exact_bytes_and_name_a_flipped_chunk():
    key = os.urandom(32)
    chunks = _chunks()
    tags = seal.seal_chunks(chunks, key, "run", 3, "2", "he")
    seal.check_chunks(chunks, tags, key, "run", 3, "2", "he")
    bad = list(chunks)
    bad[3] = bytes([bad[3][0] ^ 1]) + bad[3][1:]
    with pytest.raises(seal.SealError, match=r"1 of 5 chunks fail the seal \(chunk 3\)"):
        seal.check_chunks(bad, tags, key, "run", 3, "2", "he")


@pytest.mark.parametrize("change", ["round", "site", "kind", "key", "order", "truncated"])
def test_chunk_seals_bind_round_site_kind_key_and_position(change):
    key = os.urandom(32)
    chunks = _chunks()
    tags = seal.seal_chunks(chunks, key, "run", 3, "2", "he")
    args = dict(chunks=chunks, tags=tags, seal_key=key, run_id="run", server_round=3, client_id="2", kind="he")
    if change == "round":
        args["server_round"] = 4
    elif change == "site":
        args["client_id"] = "1"
    elif change == "kind":
        args["kind"] = "masked"
    elif change == "key":
        args["seal_key"] = os.urandom(32)
    elif change == "order":
        args["chunks"], args["tags"] = chunks[::-1], tags[::-1]
    else:
        args["chunks"], args["tags"] = chunks[:4], tags[:4]
    with pytest.raises(seal.SealError):
        seal.check_chunks(**args)


def test_digest_tells_a_0_dim_tensor_from_a_1_element_one():
    scalar = {"bn.num_batches_tracked": np.array(7, dtype=np.int64)}
    assert digest_arrays(scalar) != digest_arrays({"bn.num_batches_tracked": np.array([7], dtype=np.int64)})
