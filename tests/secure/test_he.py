"""common/secure/he.py: CKKS keys, seeded encryption, server-side sums, decryption and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from common.errors import InputError
from common.secure import he, he_serial


@pytest.fixture(scope="module")
def keys():
    return he.make_keys()


@pytest.fixture(scope="module")
def other_keys():
    """Other parameters: a 46-bit prime instead of 50 (another parms_id)."""
    return he.make_keys(_prime_bits=46)


def test_parameters_meet_seal_128_bit_bound(keys):
    _, public = keys
    ctx = he._load(public)
    data = ctx.seal.first_context_data()
    assert data.parms().poly_modulus_degree() == 4096
    bits = data.total_coeff_modulus_bit_count()
    assert bits == he.PRIME_BITS <= sealapi.CoeffModulus.MaxBitCount(4096, sealapi.SEC_LEVEL_TYPE.TC128) == 109
    assert data.qualifiers().sec_level == sealapi.SEC_LEVEL_TYPE.TC128
    assert len(data.parms().coeff_modulus()) == 1  # the data level is the only level


def test_public_context_holds_no_secret(keys):
    secret, public = keys
    he.assert_no_secret(public)
    assert len(public) < 200  # parameters only: no secret, public or Galois key
    with pytest.raises(InputError, match="secret key"):
        he.assert_no_secret(secret)


@pytest.mark.parametrize("bad", [b"", b"garbage", b"FSHE\x01", b"FSHE\x01P" + b"\x00" * 40])
def test_assert_no_secret_refuses_malformed(bad):
    with pytest.raises(InputError):
        he.assert_no_secret(bad)


def test_public_context_with_secret_appended_is_refused(keys):
    secret, public = keys
    with pytest.raises(InputError):
        he.assert_no_secret(public + secret[len(public):])


def test_server_cannot_encrypt_or_decrypt(keys):
    secret, public = keys
    with pytest.raises(InputError, match="secret HE context"):
        he.encrypt(np.ones(3, np.float32), 1.0, public)
    summed = he.add([he.encrypt(np.ones(3, np.float32), 1.0, secret)], public)
    with pytest.raises(InputError, match="secret HE context"):
        he.decrypt_raw(summed, public)


@pytest.mark.parametrize("length", [1, 7, he.CHUNK - 1, he.CHUNK, he.CHUNK + 1])
def test_round_trip(keys, length):
    secret, public = keys
    x = np.random.default_rng(length).normal(0, 0.1, length).astype(np.float32)
    cts = he.encrypt(x, 3.0, secret)
    assert len(cts) == he.n_chunks(length)
    out = he.decrypt(he.add([cts], public), secret, length)
    assert out.dtype == np.float64 and out.shape == (length,)
    assert np.max(np.abs(out - 3.0 * x.astype(np.float64))) < 1e-6


def test_seeded_upload_under_two_float32(keys):
    secret, _ = keys
    x = np.random.default_rng(1).normal(0, 0.05, 2 * he.CHUNK).astype(np.float32)
    cts = he.encrypt(x, 100.0, secret)
    assert sum(map(len, cts)) / x.nbytes <= 2.0  # unseeded would be ~3.4x (two polynomials)


def test_hundred_site_weighted_sum_error(keys):
    """100 sites, realistic deltas and example counts: error of the weighted mean <= 1e-6."""
    secret, public = keys
    rng = np.random.default_rng(42)
    length = 2 * he.CHUNK + 123
    updates = [rng.normal(0, 0.02, length).astype(np.float32) for _ in range(100)]
    counts = rng.integers(10, 2000, size=100)
    uploads = [he.encrypt(u, float(n), secret) for u, n in zip(updates, counts)]
    mean = he.decrypt(he.add(uploads, public), secret, length) / counts.sum()
    expected = sum(u.astype(np.float64) * n for u, n in zip(updates, counts)) / counts.sum()
    assert np.max(np.abs(mean - expected)) <= 1e-6
    # Unweighted (weight 1 each): the sum itself is within 1e-6 (measured 8e-8 at scale 2^36).
    plain = [he.encrypt(u, 1.0, secret) for u in updates[:100]]
    total = he.decrypt(he.add(plain, public), secret, length)
    exact = sum(u.astype(np.float64) for u in updates)
    assert np.max(np.abs(total - exact)) <= 1e-6


def test_ciphertext_of_other_parameters_is_refused(keys, other_keys):
    secret, public = keys
    foreign = he.encrypt(np.ones(5, np.float32), 1.0, other_keys[0])
    mine = he.encrypt(np.ones(5, np.float32), 1.0, secret)
    with pytest.raises(InputError, match="site 1 chunk 0"):
        he.add([mine, foreign], public)


def test_ciphertext_of_other_scale_is_refused(keys):
    secret, public = keys
    other_secret, _ = he.make_keys(scale_bits=32)
    odd = he.encrypt(np.ones(5, np.float32), 1.0, other_secret)  # same prime, other scale
    with pytest.raises(InputError, match="scale"):
        he.add([he.encrypt(np.ones(5, np.float32), 1.0, secret), odd], public)


@pytest.mark.parametrize("cut", [0, 10, 16, 100, -1, -1000])
def test_truncated_ciphertext_is_refused(keys, cut):
    secret, public = keys
    (ct,) = he.encrypt(np.ones(5, np.float32), 1.0, secret)
    with pytest.raises(InputError):
        he.add([[ct[:cut]]], public)


def test_garbled_ciphertext_is_refused(keys):
    secret, public = keys
    (ct,) = he.encrypt(np.ones(5, np.float32), 1.0, secret)
    rng = np.random.default_rng(0)
    with pytest.raises(InputError):
        he.add([[bytes(rng.integers(0, 256, len(ct), dtype=np.uint8))]], public)
    with pytest.raises(InputError):
        he.add([[ct[:16] + bytes(len(ct) - 16)]], public)
    with pytest.raises(InputError):
        he.add([["not bytes"]], public)


def test_wrong_chunk_count_is_refused(keys):
    secret, public = keys
    two = he.encrypt(np.ones(he.CHUNK + 1, np.float32), 1.0, secret)
    one = he.encrypt(np.ones(5, np.float32), 1.0, secret)
    with pytest.raises(InputError, match="site 1 sent 1 ciphertexts, expected 2"):
        he.add([two, one], public)
    with pytest.raises(InputError, match="expected"):
        he.add([[], []], public)
    with pytest.raises(InputError, match="cannot hold"):
        he.decrypt(he.add([two], public), secret, 5)
    with pytest.raises(InputError):
        he.add([], public)


def test_range_limits(keys):
    secret, public = keys
    ctx = he._load(public)
    with pytest.raises(InputError, match="per-site limit"):
        he.encrypt(np.full(4, 1.0, np.float32), ctx.site_limit * 1.01, secret)
    with pytest.raises(InputError, match="NaN"):
        he.encrypt(np.array([np.nan], np.float32), 1.0, secret)
    with pytest.raises(InputError, match="weight"):
        he.encrypt(np.ones(2, np.float32), -1.0, secret)
    (ct,) = he.encrypt(np.ones(2, np.float32), 1.0, secret)
    with pytest.raises(InputError, match="max_sites"):
        he.add([[ct]] * (ctx.max_sites + 1), public)
    # At the limit, max_sites sites still sum without wrap-around.
    top = he.encrypt(np.array([1.0, -1.0], np.float32), ctx.site_limit, secret)
    total = he.decrypt(he.add([top] * ctx.max_sites, public), secret, 2)
    assert np.allclose(total, [ctx.capacity, -ctx.capacity], rtol=1e-9)


def test_blinded_sum_decrypts_to_noise_and_unblinds_to_the_sum(keys):
    """The decrypting site sees the sum's coefficients shifted by a mask uniform mod q (SEAL's
    coefficients are in NTT form, so a mean near q/2 alone would tell nothing); the server
    recovers the sum."""
    secret, public = keys
    rng = np.random.default_rng(7)
    length = he.CHUNK + 77
    updates = [rng.normal(0, 0.02, length).astype(np.float32) for _ in range(3)]
    total = he.Sum(public, he.n_chunks(length))
    for u in updates:
        total.add_site(he.encrypt(u, 50.0, secret))
    blinded, mask = total.blinded()
    raw = he.decrypt_raw(blinded, secret)
    plain_raw = he.decrypt_raw(total.total(), secret)
    assert not np.array_equal(raw, plain_raw)
    q = he._load(public).modulus
    shift = np.where(raw >= plain_raw, raw - plain_raw, raw + (np.uint64(q) - plain_raw))
    assert np.array_equal(shift, mask) and mask.dtype == np.uint64 and np.all(mask < np.uint64(q))
    # the mask is uniform mod q: over 10^6 draws the mean is q/2 within 17 standard deviations
    draws = he._uniform_mod(q, (1_000_000,))
    assert np.all(draws < np.uint64(q)) and draws.mean() / q == pytest.approx(0.5, abs=0.005)
    assert len(np.unique(draws >> np.uint64(46))) == 1024  # every top-10-bit bucket is hit
    out = he.unblind(raw, mask, public, length)
    expected = sum(u.astype(np.float64) * 50.0 for u in updates)
    assert np.max(np.abs(out - expected)) < 1e-5
    with pytest.raises(InputError, match="do not match"):
        he.unblind(raw[:1], mask, public, length)
    with pytest.raises(InputError, match="out of range"):
        he.unblind(np.full_like(raw, q), mask, public, length)


def test_sum_skips_a_bad_site_and_keeps_the_rest(keys, other_keys):
    secret, public = keys
    x = np.linspace(-1, 1, 9).astype(np.float32)
    total = he.Sum(public, 1)
    total.add_site(he.encrypt(x, 1.0, secret))
    with pytest.raises(InputError, match="site 1 chunk 0"):
        total.add_site(he.encrypt(x, 1.0, other_keys[0]), "site 1")
    with pytest.raises(InputError, match="expected 1"):
        total.add_site([], "site 2")
    total.add_site(he.encrypt(x, 2.0, secret))
    assert total.sites == 2
    out = he.decrypt(total.total(), secret, 9)
    assert np.max(np.abs(out - 3.0 * x)) < 1e-6


def test_parallel_encryption_and_decryption_give_the_same_results(keys):
    secret, public = keys
    x = np.random.default_rng(3).normal(0, 0.1, he.PARALLEL_MIN_CHUNKS * he.CHUNK + 5).astype(np.float32)
    cts = he.encrypt(x, 2.0, secret, workers=2)
    assert len(cts) == he.n_chunks(x.size)
    summed = he.add([cts, cts], public)
    raw = he.decrypt_raw(summed, secret, workers=2)
    assert np.array_equal(raw, he.decrypt_raw(summed, secret))
    out = he.unblind(raw, np.zeros_like(raw), public, x.size)
    assert np.max(np.abs(out - 4.0 * x)) < 1e-5  # a sum of two sites


def test_server_sum_is_the_c0_parts_and_the_sites_seeds(keys):
    """The server adds c0 modulo q and keeps one seed record per chunk and site (no c1 parts)."""
    secret, public = keys
    x = np.linspace(-1, 1, he.CHUNK + 3).astype(np.float32)
    uploads = [he.encrypt(x, 1.0, secret), he.encrypt(x, 2.0, secret)]
    summed = he.add(uploads, public)
    q = np.uint64(he._load(public).modulus)
    parts = [[he_serial.seeded_parts(c, he._load(public).parms_id, 2.0**he.SCALE_BITS, int(q),
                                     he.POLY_MODULUS_DEGREE, "t") for c in site] for site in uploads]
    expected = np.stack([(a[0] + b[0]) % q for a, b in zip(*parts)])
    assert np.array_equal(summed.c0, expected)
    assert summed.seeds == [b"".join(p[1] for p in site) for site in parts]
    assert len(summed.seeds[0]) == 2 * he_serial.SEED_RECORD_BYTES
    assert np.max(np.abs(he.decrypt(summed, secret, x.size) - 3.0 * x)) < 1e-6


def test_malformed_ciphertext_bodies_are_refused(keys):
    """What SEAL's own loader would refuse, the server's reader refuses too."""
    secret, public = keys
    ctx = he._load(public)
    (ct,) = he.encrypt(np.ones(5, np.float32), 1.0, secret)
    c0, seed = he_serial.seeded_parts(ct, ctx.parms_id, ctx.scale, ctx.modulus, he.POLY_MODULUS_DEGREE, "t")
    plain = he_serial.seeded_ciphertext(ctx.parms_id, ctx.scale, c0, seed)  # uncompressed: accepted too
    assert np.array_equal(he.add([[plain]], public).c0[0], c0)
    too_big = c0.copy()
    too_big[7] = ctx.modulus
    bad_type = seed[:16] + b"\x07" + seed[17:]
    other_scale = he_serial.seeded_ciphertext(ctx.parms_id, ctx.scale * 2, c0, seed)
    for data, reason in [(he_serial.seeded_ciphertext(ctx.parms_id, ctx.scale, too_big, seed), "modulus"),
                         (he_serial.seeded_ciphertext(ctx.parms_id, ctx.scale, c0, bad_type), "seed"),
                         (other_scale, "scale"),
                         (plain + b"\x00", "header or size"),
                         (ct + b"\x00", "header or size")]:
        with pytest.raises(InputError, match=reason):
            he.add([[data]], public)


def test_compressed_size_lies_are_refused(keys):
    """A zstd frame that declares another size (a decompression bomb, say) is refused unread."""
    import zstandard

    secret, public = keys
    (ct,) = he.encrypt(np.ones(5, np.float32), 1.0, secret)
    frame = zstandard.ZstdCompressor().compress(bytes(10**6))
    bomb = ct[:8] + (16 + len(frame)).to_bytes(8, "little") + frame
    with pytest.raises(InputError, match="other parameters"):
        he.add([[bomb]], public)


def test_decrypt_raw_refuses_malformed_sums(keys):
    secret, public = keys
    summed = he.add([he.encrypt(np.ones(5, np.float32), 1.0, secret)], public)
    for c0, seeds in [(summed.c0.astype(np.int64), summed.seeds), (summed.c0[:, :100], summed.seeds),
                      (summed.c0, []), (summed.c0, [summed.seeds[0][:-1]]), (summed.c0, ["text"])]:
        with pytest.raises(InputError, match="a sum to decrypt"):
            he.decrypt_raw(he.Summed(c0, seeds), secret)
    bad_seed = summed.seeds[0][:16] + b"\x09" + summed.seeds[0][17:]
    with pytest.raises(InputError, match="invalid ciphertext"):
        he.decrypt_raw(he.Summed(summed.c0, [bad_seed]), secret)
