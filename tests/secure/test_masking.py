"""common/secure/masking.py, common/secure/secret_shares.py, common/secure/secagg.py: quantization bound and error,
mask streams keyed by the full secret (not Flower's 32-bit fold), per-chunk seals, Shamir
shares, share encryption, and whole masked rounds in process with tampering and dropouts."""

from __future__ import annotations

import os

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from common.errors import InputError
from common.kdf import derive_round_key
from common.secure import masking, secagg
from common.secure import secret_shares as ss
from common.secure.masking import MaskSealError, Quantizer

RUN, ROUND = "run-test", 3
CTX = masking.round_context(RUN, ROUND)


# --- quantization ------------------------------------------------------------------------------


@pytest.mark.parametrize("sites", [1, 2, 5, 100, 1000])
def test_sum_of_k_sites_at_the_clipping_range_does_not_wrap(sites):
    q = Quantizer(sites, clip=16.0)
    weights = np.full(sites, 1.0 / sites)
    for sign in (1.0, -1.0):
        delta = np.full(64, sign * 1e9, np.float32)  # far beyond the range: clipped to +-R
        total = sum(q.quantize(delta, float(w)).view(np.int32).astype(np.int64) for w in weights)
        assert np.all(np.abs(total) < 2**31), "the int32 sum would wrap"
        mean = q.dequantize(np.array(total, np.int64).astype(np.int32).view(np.uint32), 1.0)
        np.testing.assert_allclose(mean, sign * 16.0, rtol=0, atol=q.error_bound() + 16 * 2**-23)


def test_single_site_full_weight_and_levels_fit_float32_cast():
    q = Quantizer(1)
    words = q.quantize(np.array([16.0, -16.0, 1e30, -1e30], np.float32), 1.0).view(np.int32)
    assert words.max() <= 2**31 - 1 and words.min() >= -(2**31 - 1)
    assert abs(int(words[0])) == abs(int(words[1]))


def test_nan_or_bad_weight_refused():
    q = Quantizer(3)
    with pytest.raises(InputError):
        q.quantize(np.array([0.0, np.nan], np.float32), 0.5)
    with pytest.raises(InputError):
        q.quantize(np.zeros(4, np.float32), 1.5)
    with pytest.raises(InputError):
        Quantizer(0)


def _realistic_deltas(sites: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Heavy-tailed deltas like a few local epochs of SGD: most values ~1e-3, some ~1."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(sites):
        d = rng.standard_t(3, size) * 2e-3
        d[rng.integers(0, size, size // 1000)] = rng.normal(0, 0.5, size // 1000)
        out.append(d.astype(np.float32))
    return out


@pytest.mark.parametrize("sites,examples", [(5, [91, 91, 91, 91, 92]), (20, list(range(10, 30)))])
def test_aggregate_error_of_the_weighted_mean_is_below_1e5(sites, examples):
    size = 200_000
    deltas = _realistic_deltas(sites, size)
    q = Quantizer(sites)
    weights = np.array(examples, np.float64) / sum(examples)
    total = masking.sum_vectors((q.quantize(d, float(w)) for d, w in zip(deltas, weights)), size)
    mean = q.dequantize(total, float(weights.sum()))
    exact = sum(w * d.astype(np.float64) for d, w in zip(deltas, weights))
    err = np.abs(mean.astype(np.float64) - exact).max()
    assert err <= 1e-5
    assert err <= q.error_bound() + np.abs(exact).max() * 2**-23  # rounding + float32 output


def test_aggregate_error_of_real_model_deltas():
    """Deltas of the breast-cancer MLP after local training at three sites."""
    from common.learning.data import load_partition
    from common.learning.models import array_spec, flatten, get_arrays, initial_model, set_arrays
    from common.learning.training import tensor_dataset, train

    base = get_arrays(initial_model("breast-cancer", 0))
    spec = array_spec(base)
    deltas, counts = [], []
    for pid in range(3):
        x, y = load_partition("breast-cancer", pid, 3, "iid", 0)
        model = initial_model("breast-cancer", 0)
        set_arrays(model, base)
        train(model, tensor_dataset(x, y), epochs=5, lr=0.05, batch_size=32, seed=pid)
        trained = get_arrays(model)
        deltas.append(flatten(trained, spec, np.float32) - flatten(base, spec, np.float32))
        counts.append(len(y))
    q = Quantizer(3)
    weights = [c / sum(counts) for c in counts]
    total = masking.sum_vectors((q.quantize(d, w) for d, w in zip(deltas, weights)), deltas[0].size)
    exact = sum(w * d.astype(np.float64) for d, w in zip(deltas, weights))
    assert np.abs(q.dequantize(total, sum(weights)) - exact).max() <= 1e-5
    assert max(np.abs(d).max() for d in deltas) < q.clip  # no clipping on real deltas


# --- masks -------------------------------------------------------------------------------------


def test_mask_stream_test_vector():
    """Pins the mask format: HKDF labels, a 16-byte HKDF-SHA256 key, AES-128-CTR with the segment
    index as 96-bit nonce and a 32-bit block counter from 2, little-endian words (values checked
    with pycryptodome's AES-CTR and a by-hand HKDF)."""
    key = masking.self_mask_key(bytes(range(32)), masking.round_context("run", 1), "0")
    assert key.hex() == SELF_KEY_VECTOR
    words = masking.mask_words(key, masking.SEGMENT + 4)
    assert words[:4].tolist() == SELF_WORDS_VECTOR
    assert words[-4:].tolist() == SELF_WORDS_SEGMENT_1


SELF_KEY_VECTOR = "cf5e7f93207f962848cfb67ddae2d2e5"
SELF_WORDS_VECTOR = [4111511202, 3392652839, 1611944060, 1412012343]
SELF_WORDS_SEGMENT_1 = [2612355922, 599078091, 3402152433, 2385544133]


def _fold32(seed: bytes) -> int:
    out = 0
    for i in range(0, len(seed), 4):
        out ^= int.from_bytes(seed[i:i + 4], "little")
    return out


def test_masks_are_not_reproducible_from_a_32_bit_fold_of_the_seed():
    rng = np.random.default_rng(7)
    seed = bytes(rng.integers(0, 256, 32, dtype=np.uint8))
    # a second seed with the same 32-bit XOR fold: Flower's masks cannot tell them apart
    delta = int(rng.integers(1, 2**32)).to_bytes(4, "little")
    twin = bytes(a ^ b for a, b in zip(seed[:4], delta)) + bytes(a ^ b for a, b in zip(seed[4:8], delta)) + seed[8:]
    assert _fold32(twin) == _fold32(seed) and twin != seed
    flwr_a = pseudo_rand_gen(seed, 2**32, [(1000,)])[0]
    flwr_b = pseudo_rand_gen(twin, 2**32, [(1000,)])[0]
    assert np.array_equal(flwr_a, flwr_b)  # the weakness: 32 bits decide the mask
    ours_a = masking.mask_words(masking.self_mask_key(seed, CTX, "1"), 1000)
    ours_b = masking.mask_words(masking.self_mask_key(twin, CTX, "1"), 1000)
    assert not np.array_equal(ours_a, ours_b)
    # nor is ours the MT19937 stream of the fold, whatever the output width
    mt = np.random.RandomState(_fold32(seed)).randint(0, 2**32 - 1, 1000, dtype=np.int64)
    assert not np.array_equal(ours_a.astype(np.int64), mt)
    assert not np.array_equal(ours_a.astype(np.int64), flwr_a)
    assert np.mean(ours_a == ours_b) < 0.01


def test_every_byte_of_the_secret_changes_the_mask():
    secret = os.urandom(32)
    base = masking.mask_words(masking.self_mask_key(secret, CTX, "0"), 256)
    pair = masking.mask_words(masking.pair_mask_key(secret, CTX, "0", "1"), 256)
    for i in range(32):
        flipped = bytearray(secret)
        flipped[i] ^= 0x01
        other = masking.mask_words(masking.self_mask_key(bytes(flipped), CTX, "0"), 256)
        assert np.mean(other == base) < 0.05, f"byte {i} does not key the self mask"
        other = masking.mask_words(masking.pair_mask_key(bytes(flipped), CTX, "0", "1"), 256)
        assert np.mean(other == pair) < 0.05, f"byte {i} does not key the pairwise mask"


def test_mask_keys_bind_run_round_and_sites():
    secret = os.urandom(32)
    key = masking.pair_mask_key(secret, CTX, "0", "1")
    assert key == masking.pair_mask_key(secret, CTX, "1", "0")  # one mask per pair
    assert key != masking.pair_mask_key(secret, masking.round_context(RUN, ROUND + 1), "0", "1")
    assert key != masking.pair_mask_key(secret, masking.round_context("other", ROUND), "0", "1")
    assert key != masking.pair_mask_key(secret, CTX, "0", "2")
    assert masking.self_mask_key(secret, CTX, "0") != masking.self_mask_key(secret, CTX, "1")


def test_pairwise_masks_cancel_and_fused_path_equals_separate_steps():
    size = 3 * masking.WORK_CHUNK + 17  # crosses pipeline chunks, odd tail
    d = np.random.default_rng(1).normal(0, 0.01, (2, size)).astype(np.float32)
    q = Quantizer(2)
    pair = masking.pair_mask_key(os.urandom(32), CTX, "0", "1")
    a = masking.mask_update(d[0], 0.5, q, [(pair, masking.pair_sign("0", "1"))])
    b = masking.mask_update(d[1], 0.5, q, [(pair, masking.pair_sign("1", "0"))])
    plain = q.quantize(d[0], 0.5) + q.quantize(d[1], 0.5)
    assert np.array_equal(a + b, plain)
    assert np.array_equal(a - q.quantize(d[0], 0.5), masking.mask_words(pair, size) * np.uint32(
        masking.pair_sign("0", "1") % (2**32)))
    self_key = masking.self_mask_key(os.urandom(32), CTX, "0")
    masked = masking.mask_update(d[0], 0.5, q, [(self_key, 1)])
    assert np.array_equal(masking.apply_masks(masked.copy(), [(self_key, -1)]), q.quantize(d[0], 0.5))


def test_vectors_split_across_threads_equal_one_pass(monkeypatch):
    """Large vectors are masked in one part per core, cut at keystream segments: the words equal
    the single-threaded pass, and a part's NaN still raises."""
    size = 5 * masking.WORK_CHUNK + 17
    d = np.random.default_rng(2).normal(0, 0.01, size).astype(np.float32)
    q = Quantizer(3)
    masks = [(masking.self_mask_key(os.urandom(32), CTX, "0"), 1), (os.urandom(16), -1)]
    monkeypatch.setattr(masking, "SEGMENT", masking.WORK_CHUNK)  # 6 segments
    monkeypatch.setattr(masking, "_CORES", 1)
    one = masking.mask_update(d, 0.5, q, masks)
    monkeypatch.setattr(masking, "_CORES", 3)
    assert np.array_equal(masking.mask_update(d, 0.5, q, masks), one)
    expected = q.quantize(d, 0.5) + masking.mask_words(masks[0][0], size) - masking.mask_words(masks[1][0], size)
    assert np.array_equal(one, expected)
    assert np.array_equal(masking.apply_masks(one.copy(), [(k, -s) for k, s in masks]), q.quantize(d, 0.5))
    d[-1] = np.nan  # in the last part, not the calling thread's
    with pytest.raises(InputError):
        masking.mask_update(d, 0.5, q, masks)


def test_numeric_ids_order_as_numbers():
    assert masking.pair_sign("2", "10") == 1 and masking.pair_sign("10", "2") == -1
    with pytest.raises(InputError):
        masking.pair_sign("3", "3")


# --- chunk seals -------------------------------------------------------------------------------


def test_chunk_seal_catches_one_flipped_bit_and_names_the_chunk():
    vec = np.random.default_rng(2).integers(0, 2**32, 3 * masking.SEAL_CHUNK + 5, dtype=np.uint32)
    key = os.urandom(32)
    seal = masking.seal_chunks(vec, key)
    assert len(seal) == masking.seal_length(vec.size) == 16 + 4 * 16
    masking.check_chunks(vec, seal, key)
    bad = vec.copy()
    bad[2 * masking.SEAL_CHUNK + 9] ^= np.uint32(1 << 13)
    with pytest.raises(MaskSealError) as err:
        masking.check_chunks(bad, seal, key)
    assert err.value.chunks == (2,)
    with pytest.raises(MaskSealError) as err:  # forged: a key that is not the site's
        masking.check_chunks(vec, masking.seal_chunks(vec, os.urandom(32)), key)
    assert err.value.chunks == (0, 1, 2, 3)
    with pytest.raises(MaskSealError):  # truncated vector
        masking.check_chunks(vec[:-1], seal, key)
    with pytest.raises(MaskSealError):  # chunks swapped
        swapped = np.concatenate([vec[masking.SEAL_CHUNK:2 * masking.SEAL_CHUNK], vec[:masking.SEAL_CHUNK],
                                  vec[2 * masking.SEAL_CHUNK:]])
        masking.check_chunks(swapped, seal, key)


def test_seal_binds_the_round_key():
    seal_key = os.urandom(32)
    vec = np.arange(100, dtype=np.uint32)
    k3 = derive_round_key(seal_key, RUN, 3, "0", "masked")
    k2 = derive_round_key(seal_key, RUN, 2, "0", "masked")
    with pytest.raises(MaskSealError):  # a replay of round 2's vector in round 3
        masking.check_chunks(vec, masking.seal_chunks(vec, k2), k3)


def test_message_tags():
    key = os.urandom(32)
    tag = masking.tag_message(key, "p", b"a", "b", 7)
    masking.check_message(tag, key, "p", b"a", "b", 7)
    for args in ((b"a", "b", 8), (b"ab", "", 7)):
        with pytest.raises(MaskSealError):
            masking.check_message(tag, key, "p", *args)


# --- shares ------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold,count", [(1, 3), (2, 2), (3, 5), (6, 11)])
def test_shamir_any_threshold_subset_rebuilds(threshold, count):
    secret = os.urandom(32)
    shares = ss.split_secret(secret, threshold, count)
    assert all(len(s) == ss.SHARE_LEN for s in shares)
    rng = np.random.default_rng(threshold)
    for _ in range(3):
        pick = [shares[i] for i in rng.choice(count, threshold, replace=False)]
        assert ss.combine_shares(pick, threshold) == secret
    if threshold > 1:
        with pytest.raises(ss.ShareError):
            ss.combine_shares(shares[:threshold - 1], threshold)
        wrong = ss.combine_shares(shares[1:threshold] + [ss.split_secret(os.urandom(32), threshold, count)[0]],
                                  threshold)
        assert wrong != secret


def test_share_encryption_binds_sender_receiver_and_round():
    a_priv, a_pub = ss.new_key_pair()
    b_priv, b_pub = ss.new_key_pair()
    assert ss.agree(a_priv, b_pub) == ss.agree(b_priv, a_pub)
    blob = ss.encrypt_for(ss.agree(a_priv, b_pub), CTX, "0", "1", b"shares")
    assert ss.decrypt_from(ss.agree(b_priv, a_pub), CTX, "0", "1", blob) == b"shares"
    for ctx, snd, rcv, data in ((CTX, "0", "2", blob), (CTX, "2", "1", blob),
                                (masking.round_context(RUN, ROUND + 1), "0", "1", blob),
                                (CTX, "0", "1", blob[:-1] + bytes([blob[-1] ^ 1]))):
        with pytest.raises(ss.ShareError):
            ss.decrypt_from(ss.agree(b_priv, a_pub), ctx, snd, rcv, data)
    with pytest.raises(ss.ShareError):
        ss.agree(a_priv, bytes(32))  # low-order point


# --- whole rounds in process -------------------------------------------------------------------


def _round_key(seal_keys, site):
    return derive_round_key(seal_keys[site], RUN, ROUND, site, "masked")


def run_round(deltas, examples, *, drop_after_shares=(), vanish_before_unmask=(), tamper=(), degree=None,
              lying_holders=(), liars=None, checks=None, zeroed=()):
    """A whole masked round in process; returns (result, survivors, exact integer sum, rejected).
    `lying_holders` reveal corrupted seed shares; the server's share check puts them in `liars`."""
    ids = [str(i) for i in range(len(deltas))]
    seal_keys = {s: os.urandom(32) for s in ids}
    sites = {s: secagg.MaskedSite.start(s, RUN, ROUND) for s in ids}
    adverts = [sites[s].advertise(_round_key(seal_keys, s), examples[int(s)]) for s in ids]
    for adv in adverts:
        secagg.check_advert(adv, _round_key(seal_keys, adv.site), RUN, ROUND)
    roster = secagg.Roster.build(RUN, ROUND, adverts, degree=degree)
    shares = {s: sites[s].share_keys(roster.to_bytes(), _round_key(seal_keys, s)) for s in ids}
    for s, out in shares.items():
        masking.check_message(out.tag, _round_key(seal_keys, s), secagg.SHARES, *secagg.shares_fields(CTX, s, out))
    uploads = {}
    for s in ids:
        if s in drop_after_shares:
            continue
        inbox = {src: out.ciphertexts[s] for src, out in shares.items() if s in out.ciphertexts}
        assert sites[s].receive_shares(inbox) == []
        uploads[s] = sites[s].mask(deltas[int(s)], _round_key(seal_keys, s), None if checks is None else checks[s])
        if s in zeroed:  # sent without its masks, sealed as its own
            uploads[s].vector[:] = 0
            uploads[s].seal = masking.seal_chunks(uploads[s].vector, _round_key(seal_keys, s))
    for s in tamper:
        uploads[s].vector[len(uploads[s].vector) // 2] ^= np.uint32(1 << 7)
    rejected, masked, partners = [], {}, {}
    for s, up in uploads.items():  # the server's checks, before anything is summed
        try:
            masking.check_chunks(up.vector, up.seal, _round_key(seal_keys, s))
            masking.check_message(up.tag, _round_key(seal_keys, s), secagg.MASKED,
                                  *secagg.upload_fields(CTX, s, up.vector.size, up.partners))
        except MaskSealError:
            rejected.append(s)
            continue
        masked[s], partners[s] = up.vector, up.partners
    survivors = sorted(masked, key=masking.order_key)
    dropouts = [s for s in ids if s not in masked]
    seed_shares, key_shares = {}, {}
    for s in survivors:
        if s in vanish_before_unmask:
            continue
        seeds, keys, tag = sites[s].reveal(survivors, dropouts, _round_key(seal_keys, s))
        masking.check_message(tag, _round_key(seal_keys, s), secagg.REVEAL, *secagg.reveal_fields(CTX, s, seeds, keys))
        if s in lying_holders:
            seeds = {o: share[:2] + bytes(b ^ 0x5A for b in share[2:]) for o, share in seeds.items()}
        seeds, bad = secagg.check_revealed(CTX, s, secagg.SEED_SHARE, seeds, shares)
        keys, bad_keys = secagg.check_revealed(CTX, s, secagg.KEY_SHARE, keys, shares)
        if (bad or bad_keys) and liars is not None:
            liars.append(s)
        for owner, share in seeds.items():
            seed_shares.setdefault(owner, []).append(share)
        for owner, share in keys.items():
            key_shares.setdefault(owner, []).append(share)
    result = secagg.unmask(roster, masked, partners, seed_shares, key_shares,
                           {s: o.commitment for s, o in shares.items()}, dropouts)
    exact = sum(roster.quantizer.quantize(deltas[int(s)], roster.weight(s)).view(np.int32).astype(np.int64)
                for s in survivors)
    return result, survivors, exact, rejected, roster


def _deltas(n, size=5000, seed=3):
    return list(np.random.default_rng(seed).normal(0, 0.01, (n, size)).astype(np.float32))


def _check_exact(result, survivors, exact, roster, deltas):
    assert np.array_equal(result.total.astype(np.int64), exact)
    weights = {s: roster.weight(s) for s in survivors}
    mean = sum(weights[s] * deltas[int(s)].astype(np.float64) for s in survivors) / sum(weights.values())
    assert np.abs(result.mean - mean).max() <= 1e-5


def test_full_round_gives_the_exact_sum():
    deltas = _deltas(5)
    result, survivors, exact, rejected, roster = run_round(deltas, [10, 20, 30, 40, 50])
    assert survivors == ["0", "1", "2", "3", "4"] and rejected == []
    _check_exact(result, survivors, exact, roster, deltas)


def test_flipped_bit_is_caught_by_the_seal_and_the_others_sum_is_exact():
    deltas = _deltas(5)
    result, survivors, exact, rejected, roster = run_round(deltas, [10] * 5, tamper=["2"])
    assert rejected == ["2"] and survivors == ["0", "1", "3", "4"]
    _check_exact(result, survivors, exact, roster, deltas)


def test_dropout_after_sharing_keys():
    deltas = _deltas(5)
    result, survivors, exact, _, roster = run_round(deltas, [10] * 5, drop_after_shares=["1", "4"])
    assert survivors == ["0", "2", "3"]
    _check_exact(result, survivors, exact, roster, deltas)


def test_dropout_after_sending_the_masked_vector():
    deltas = _deltas(5)
    result, survivors, exact, _, roster = run_round(deltas, [10] * 5, vanish_before_unmask=["3"])
    assert "3" in survivors
    _check_exact(result, survivors, exact, roster, deltas)


def test_dropouts_at_every_stage_with_a_secaggplus_graph():
    deltas = _deltas(9, seed=5)
    result, survivors, exact, rejected, roster = run_round(
        deltas, list(range(1, 10)), drop_after_shares=["0"], vanish_before_unmask=["5"], tamper=["7"], degree=6)
    assert all(len(n) == 6 for n in roster.neighbours.values()) and roster.threshold == 4
    assert rejected == ["7"] and survivors == ["1", "2", "3", "4", "5", "6", "8"]
    _check_exact(result, survivors, exact, roster, deltas)


def test_too_few_shares_cannot_unmask():
    deltas = _deltas(3)
    with pytest.raises(secagg.ProtocolError):  # threshold 2 of 3: two survivors vanish before unmask
        run_round(deltas, [5, 5, 5], vanish_before_unmask=["0", "1"])


def test_a_site_never_reveals_both_shares_of_one_site_nor_twice():
    deltas = _deltas(3)
    seal_keys = {s: os.urandom(32) for s in "012"}
    sites = {s: secagg.MaskedSite.start(s, RUN, ROUND) for s in "012"}
    roster = secagg.Roster.build(RUN, ROUND, [sites[s].advertise(_round_key(seal_keys, s), 5) for s in "012"])
    outs = {s: sites[s].share_keys(roster.to_bytes(), _round_key(seal_keys, s)) for s in "012"}
    site = sites["0"]
    site.receive_shares({src: o.ciphertexts["0"] for src, o in outs.items() if src != "0"})
    restored = secagg.MaskedSite.from_state(site.to_state())
    assert restored == site
    restored.mask(deltas[0], _round_key(seal_keys, "0"))
    with pytest.raises(secagg.ProtocolError):
        restored.reveal(["0", "1"], ["1"], _round_key(seal_keys, "0"))
    with pytest.raises(secagg.ProtocolError):
        restored.reveal(["0"], ["1", "2"], _round_key(seal_keys, "0"))  # below threshold
    restored.reveal(["0", "1"], ["2"], _round_key(seal_keys, "0"))
    with pytest.raises(secagg.ProtocolError):
        restored.reveal(["0", "1", "2"], [], _round_key(seal_keys, "0"))


def test_roster_is_checked_by_the_site():
    sites = {s: secagg.MaskedSite.start(s, RUN, ROUND) for s in "01"}
    keys = {s: os.urandom(32) for s in "01"}
    roster = secagg.Roster.build(RUN, ROUND, [sites[s].advertise(keys[s], 3) for s in "01"])
    assert secagg.Roster.from_bytes(roster.to_bytes()) == roster
    other = secagg.MaskedSite.start("0", RUN, ROUND)  # same id, other keys: a substituted roster
    with pytest.raises(secagg.ProtocolError):
        other.share_keys(roster.to_bytes(), keys["0"])
    late = secagg.MaskedSite.start("0", RUN, ROUND + 1)
    with pytest.raises(secagg.ProtocolError):
        late.share_keys(roster.to_bytes(), keys["0"])
    with pytest.raises(secagg.ProtocolError):
        secagg.Roster.from_bytes(b"{not json")


def test_upload_is_uint32_and_no_larger_than_float32():
    deltas = _deltas(3, size=100_000)
    seal_keys = {s: os.urandom(32) for s in "012"}
    sites = {s: secagg.MaskedSite.start(s, RUN, ROUND) for s in "012"}
    roster = secagg.Roster.build(RUN, ROUND, [sites[s].advertise(_round_key(seal_keys, s), 5) for s in "012"])
    outs = {s: sites[s].share_keys(roster.to_bytes(), _round_key(seal_keys, s)) for s in "012"}
    sites["1"].receive_shares({src: o.ciphertexts["1"] for src, o in outs.items() if src != "1"})
    up = sites["1"].mask(deltas[1], _round_key(seal_keys, "1"))
    assert up.vector.dtype == np.uint32 and up.vector.nbytes == deltas[1].nbytes
    assert (up.vector.nbytes + len(up.seal)) / deltas[1].nbytes <= 1.001


def _resealed(advert, key, **change):
    """`advert` with fields changed, sealed again with the site's own round key (a hostile site)."""
    fields = {"site": advert.site, "mask_key": advert.mask_key, "enc_key": advert.enc_key,
              "examples": advert.examples, **change}
    bad = secagg.Advert(**fields, tag=b"")
    return secagg.Advert(**fields, tag=masking.tag_message(key, secagg.ADVERT, *bad.fields(CTX)))


@pytest.mark.parametrize("change, reason", [
    ({"examples": 0}, "examples must be an integer >= 1"),
    ({"mask_key": b"\x01" * 7}, "7 bytes"),
    ({"enc_key": b"\x02" * 40}, "40 bytes"),
    ("same-pair", "two public keys are identical"),
    ("copied", "equals one of site '0'"),
    ("same-site", "already advertised"),
])
def test_a_validly_sealed_bad_advert_is_refused_for_its_site_only(change, reason):
    seal_keys = {s: os.urandom(32) for s in "01"}
    sites = {s: secagg.MaskedSite.start(s, RUN, ROUND) for s in "01"}
    honest = sites["0"].advertise(_round_key(seal_keys, "0"), 5)
    secagg.check_advert(honest, _round_key(seal_keys, "0"), RUN, ROUND, [])
    mine = sites["1"].advertise(_round_key(seal_keys, "1"), 5)
    key = _round_key(seal_keys, "1")
    if change == "same-pair":
        bad = _resealed(mine, key, enc_key=mine.mask_key)
    elif change == "copied":
        bad = _resealed(mine, key, mask_key=honest.enc_key)
    elif change == "same-site":
        bad, key = honest, _round_key(seal_keys, "0")
    else:
        bad = _resealed(mine, key, **change)
    with pytest.raises(secagg.ProtocolError, match=reason):
        secagg.check_advert(bad, key, RUN, ROUND, [honest])
    secagg.check_advert(mine, _round_key(seal_keys, "1"), RUN, ROUND, [honest])  # the honest advert still fits


def test_a_site_drops_a_peer_with_an_unusable_key_instead_of_failing():
    """A roster holding a low-order (all-zero) key for one peer: the site shares with the others
    and masks without that peer; it does not fail the round."""
    seal_keys = {s: os.urandom(32) for s in "012"}
    sites = {s: secagg.MaskedSite.start(s, RUN, ROUND) for s in "012"}
    adverts = [sites[s].advertise(_round_key(seal_keys, s), 5) for s in "012"]
    good = secagg.Roster.build(RUN, ROUND, adverts)
    roster = secagg.Roster(RUN, ROUND, good.sites, {**good.mask_keys, "2": bytes(32)},
                           {**good.enc_keys, "2": b"\x01" + bytes(31)}, good.examples, good.neighbours, 2)
    out = sites["0"].share_keys(roster.to_bytes(), _round_key(seal_keys, "0"))
    assert set(out.ciphertexts) == {"1"}
    out1 = sites["1"].share_keys(roster.to_bytes(), _round_key(seal_keys, "1"))
    sites["0"].receive_shares({"1": out1.ciphertexts["0"]})
    sites["0"].key_shares["2"] = sites["0"].key_shares["1"]  # as if peer 2's shares had arrived
    upload = sites["0"].mask(np.zeros(10, np.float32), _round_key(seal_keys, "0"))
    assert upload.partners == ("1",)


def test_a_holder_revealing_bad_seed_shares_is_named_and_the_others_rebuild():
    """Every dealt share carries its dealer's digest (sealed in the share-keys message): the
    server finds each corrupted revealed share, names its holder, and rebuilds from the rest."""
    deltas, liars = _deltas(5), []
    result, survivors, exact, rejected, roster = run_round(deltas, [10, 20, 30, 40, 50], lying_holders=("1",),
                                                           liars=liars)
    assert liars == ["1"] and rejected == [] and survivors == ["0", "1", "2", "3", "4"]
    _check_exact(result, survivors, exact, roster, deltas)


def test_a_share_digest_binds_dealer_holder_and_kind():
    share = ss.split_secret(os.urandom(32), 2, 3)[0]
    base = secagg.share_digest(CTX, "0", "1", secagg.SEED_SHARE, share)
    assert base != secagg.share_digest(CTX, "0", "2", secagg.SEED_SHARE, share)
    assert base != secagg.share_digest(CTX, "2", "1", secagg.SEED_SHARE, share)
    assert base != secagg.share_digest(CTX, "0", "1", secagg.KEY_SHARE, share)


def test_check_values_in_reserved_slots_catch_a_vector_sent_without_its_masks():
    deltas = _deltas(4, size=300)
    checks = {str(i): secagg.check_values() for i in range(4)}
    padded = [np.concatenate([d, np.zeros(secagg.CHECK_SLOTS, np.float32)]) for d in deltas]
    result, survivors, exact, _, roster = run_round(deltas, [5, 6, 7, 8], checks=checks)
    assert secagg.checks_hold(result.total, [checks[s] for s in survivors])
    assert np.array_equal(result.total[:-secagg.CHECK_SLOTS].astype(np.int64), exact)
    result, survivors, _, rejected, _ = run_round(deltas, [5, 6, 7, 8], checks=checks, zeroed=("2",))
    assert rejected == [] and not secagg.checks_hold(result.total, [checks[s] for s in survivors])
    assert padded[0].size == result.total.size


@pytest.mark.parametrize("size", [9, 20, 39, 400, 70_000])
def test_masked_vectors_are_never_called_unmasked(size):
    """A really masked vector (a plain update plus a self-mask and pairwise masks) passes, at every
    length, in 300 draws (the bound's false alarm rate is below 2^-40)."""
    quantizer, rng = Quantizer(sites=5), np.random.default_rng(size)
    for _ in range(300 if size < 1000 else 5):
        masks = [(os.urandom(masking.MASK_KEY_LEN), sign) for sign in (1, 1, -1)]
        vector = masking.mask_update(rng.normal(0, 0.05, size).astype(np.float32), 0.2, quantizer, masks)
        assert masking.unmasked_problem(vector) is None


@pytest.mark.parametrize("size", [20, 39, 400, 70_000])
def test_a_plain_update_or_a_zero_vector_is_called_unmasked(size):
    """What a site that leaves its masks out sends - its quantized update, or zeros - is named in
    one line, from 20 words on (shorter vectors are never judged)."""
    quantizer, rng = Quantizer(sites=5), np.random.default_rng(size)
    plain = masking.mask_update(rng.normal(0, 0.05, size).astype(np.float32), 0.2, quantizer, ())
    for vector in (plain, np.zeros(size, np.uint32)):
        problem = masking.unmasked_problem(vector)
        assert problem is not None and problem.startswith("its vector is not masked") and "\n" not in problem
    assert masking.unmasked_problem(np.zeros(9, np.uint32)) is None
