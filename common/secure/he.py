"""Additive homomorphic aggregation of model updates (CKKS, Microsoft SEAL via `tenseal.sealapi`).

Flower-free. Sites hold the secret context (parameters + the federation's CKKS secret key); the
server holds the public context (parameters only: no secret key, no public key, no Galois keys)
and only adds ciphertexts.

    secret_ctx, public_ctx = make_keys()                         # once, by the federation
    chunks = encrypt(update_f32, n_examples, secret_ctx)         # each site
    total = Sum(public_ctx, n_chunks(len(update_f32)))           # server (assert_no_secret first)
    total.add_site(chunks)                                       #   ... for each site
    blinded, mask = total.blinded()                              #   the sum plus a random mask
    raw = decrypt_raw(blinded, secret_ctx)                       # one site: random-looking coefficients
    mean = unblind(raw, mask, public_ctx, len(update_f32)) / sum_n  # server

Three levers against the common TenSEAL default (N=8192 [60,40,40], 14.4x the float32 bytes):
- seeded secret-key ciphertexts: `Encryptor.encrypt_symmetric(plain)` returns a `Serializable`
  whose save() ships a 64-byte PRNG seed instead of the second polynomial c1;
- complex packing: slot k carries x[2k] in its real part and x[2k+1] in its imaginary part, so one
  N=4096 ciphertext holds 4096 reals;
- one prime: the coefficient modulus is a single 56-bit prime (no special prime: SEAL accepts a
  one-prime chain, key level = data level, and sums need no key switching). 56 bits at N=4096 is
  far under SEAL's 128-bit HE-standard bound `CoeffModulus.MaxBitCount(4096) = 109`; SEAL itself
  checks it when the context is built with `sec_level=TC128`.

Precision and range: values are encoded at scale 2^SCALE_BITS (36). A decrypted sum is exact to
about 1e-7 absolute (100 sites, measured 8e-8; noise grows like sqrt(sites)), i.e. ~1e-9 or less
on the weighted mean once divided by sum n >= 100: small enough that the mean, rounded to float32
and stripped of its watermark bits, equals plaintext FedAvg bit for bit in all but about 1 in
100,000 values (tests/server/modes/test_he.py; 50 bits at 2^30 missed about 1 in 1,600). The sum
must stay below q / 2 / scale = 2^19 in absolute value or it wraps around silently; `encrypt`
keeps a factor-2 margin and refuses a site whose |vector * weight| exceeds
`capacity / max_sites` (2^18 / 128 = 2048 with the default 128 sites), and `add` refuses more
than max_sites sites. Scale weights accordingly (e.g. weight = n_examples, or n_examples / 1000 for big sites).

The server adds only the c0 parts of the seeded ciphertexts (numpy, modulo q; common/secure/he_serial.py
reads them from SEAL's bytes) and forwards every site's seeds with the sum: the decrypting site
lets SEAL expand them into the c1 parts. Server ingest is thus a seal check, a zstd
decompression and one vector add per site. SEAL serializes with its compile-time default
compression (zstd in TenSEAL 0.3.18 wheels; sealapi exposes no compr_mode argument) and saves and
loads through file paths only: byte round trips go through a private (0600) file on tmpfs.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as sealapi

from common.secure.he_serial import (
    SEED_RECORD_BYTES,
    HEError,
    plaintext,
    plaintext_coefficients,
    put,
    save,
    scratch,
    seeded_ciphertext,
    seeded_parts,
)

POLY_MODULUS_DEGREE = 4096
PRIME_BITS = 56
SCALE_BITS = 36
MAX_SITES = 128
SLOTS = POLY_MODULUS_DEGREE // 2
CHUNK = 2 * SLOTS  # reals per ciphertext (complex packing)

_MAGIC = b"FSHE\x01"
_PUBLIC, _SECRET = b"P", b"S"
_HEAD = struct.Struct("<5scHHI")  # magic, kind, scale_bits, max_sites, len(params)
_LEN = struct.Struct("<I")


def _parameters(prime_bits: int = PRIME_BITS) -> sealapi.EncryptionParameters:
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(POLY_MODULUS_DEGREE)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(POLY_MODULUS_DEGREE, [prime_bits]))
    return parms


def _seal_context(parms) -> sealapi.SEALContext:
    ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise HEError(f"HE parameters rejected by SEAL: {ctx.parameters_error_message()}")
    return ctx


def make_keys(
    scale_bits: int = SCALE_BITS, max_sites: int = MAX_SITES, *, _prime_bits: int = PRIME_BITS
) -> tuple[bytes, bytes]:
    """New federation keys: (secret context bytes for the sites, public context bytes for the server).

    The public context holds the encryption parameters only (no secret, public or Galois key).
    """
    if not 20 <= scale_bits <= _prime_bits - 10:
        raise HEError(f"scale_bits must be in [20, {_prime_bits - 10}], got {scale_bits}")
    if not 1 <= max_sites <= 65535:
        raise HEError(f"max_sites must be in [1, 65535], got {max_sites}")
    parms = _parameters(_prime_bits)
    ctx = _seal_context(parms)
    secret_key = sealapi.KeyGenerator(ctx).secret_key()
    with scratch() as path:
        parms_bytes = save(parms, path)
        sk_bytes = save(secret_key, path)
    public = _HEAD.pack(_MAGIC, _PUBLIC, scale_bits, max_sites, len(parms_bytes)) + parms_bytes
    secret = (_HEAD.pack(_MAGIC, _SECRET, scale_bits, max_sites, len(parms_bytes)) + parms_bytes
              + _LEN.pack(len(sk_bytes)) + sk_bytes)
    return secret, public


def _split(ctx_bytes: bytes) -> tuple[bytes, int, int, bytes, bytes]:
    """(kind, scale_bits, max_sites, params bytes, secret key bytes or b'') of a FedSeal HE context."""
    if not isinstance(ctx_bytes, (bytes, bytearray, memoryview)):
        raise HEError("an HE context must be bytes")
    ctx_bytes = bytes(ctx_bytes)
    if len(ctx_bytes) < _HEAD.size or not ctx_bytes.startswith(_MAGIC):
        raise HEError("not a FedSeal HE context (bad magic or too short)")
    _, kind, scale_bits, max_sites, n_parms = _HEAD.unpack_from(ctx_bytes)
    end = _HEAD.size + n_parms
    if kind not in (_PUBLIC, _SECRET) or len(ctx_bytes) < end:
        raise HEError("malformed FedSeal HE context (kind or length)")
    parms_bytes, rest = ctx_bytes[_HEAD.size:end], ctx_bytes[end:]
    sk_bytes = b""
    if rest:
        if len(rest) < _LEN.size or _LEN.unpack_from(rest)[0] != len(rest) - _LEN.size:
            raise HEError("malformed FedSeal HE context (trailing bytes)")
        sk_bytes = rest[_LEN.size:]
    if (kind == _SECRET) != bool(sk_bytes):
        raise HEError("malformed FedSeal HE context (kind does not match contents)")
    return kind, scale_bits, max_sites, parms_bytes, sk_bytes


def max_sites(ctx_bytes: bytes) -> int:
    """The most sites one sum under this context (secret or public) may hold."""
    return _split(ctx_bytes)[2]


def assert_no_secret(public_context_bytes: bytes) -> None:
    """Raise HEError (an InputError) unless these are well-formed FedSeal HE context bytes
    that hold no secret key. The server calls this on the context it is given."""
    kind, _, _, _, sk_bytes = _split(public_context_bytes)
    if kind != _PUBLIC or sk_bytes:
        raise HEError("this HE context holds the secret key: the server must get the public context")


@dataclass(frozen=True)
class _Ctx:
    seal: sealapi.SEALContext
    parms_id: tuple
    scale: float
    max_sites: int
    secret_key: object | None
    encoder: sealapi.CKKSEncoder
    evaluator: sealapi.Evaluator
    encryptor: sealapi.Encryptor | None
    decryptor: sealapi.Decryptor | None

    @functools.cached_property
    def modulus(self) -> int:
        """The coefficient modulus q (one prime)."""
        return int(self.seal.first_context_data().parms().coeff_modulus()[0].value())

    @property
    def capacity(self) -> float:
        """Largest |sum| that decodes without wrapping around (with a factor-2 margin)."""
        return self.modulus / 4 / self.scale

    @property
    def site_limit(self) -> float:
        return self.capacity / self.max_sites


@functools.lru_cache(maxsize=8)
def _load(ctx_bytes: bytes) -> _Ctx:
    kind, scale_bits, max_sites, parms_bytes, sk_bytes = _split(ctx_bytes)
    try:
        with scratch() as path:
            parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
            put(parms_bytes, path)
            parms.load(path)
            if parms.scheme() != sealapi.SCHEME_TYPE.CKKS or parms.poly_modulus_degree() != POLY_MODULUS_DEGREE:
                raise HEError("HE context is not CKKS with N=4096")
            seal = _seal_context(parms)
            secret_key = None
            if kind == _SECRET:
                secret_key = sealapi.SecretKey()
                put(sk_bytes, path)
                secret_key.load(seal, path)
    except HEError:
        raise
    except Exception as exc:  # SEAL's std::exceptions arrive as ValueError/RuntimeError/...
        raise HEError(f"corrupt HE context: {exc}") from exc
    return _Ctx(seal, tuple(seal.first_parms_id()), float(2.0 ** scale_bits), max_sites, secret_key,
                sealapi.CKKSEncoder(seal), sealapi.Evaluator(seal),
                sealapi.Encryptor(seal, secret_key) if secret_key is not None else None,
                sealapi.Decryptor(seal, secret_key) if secret_key is not None else None)


def _secret(ctx_bytes: bytes) -> _Ctx:
    ctx = _load(bytes(ctx_bytes))
    if ctx.secret_key is None:
        raise HEError("this operation needs the secret HE context (held by sites only)")
    return ctx


def check_secret(secret_ctx: bytes) -> None:
    """Raise HEError unless these are well-formed FedSeal HE context bytes holding the secret key."""
    _secret(secret_ctx)


def n_chunks(length: int) -> int:
    """Ciphertexts needed for a vector of `length` reals."""
    return max(1, math.ceil(length / CHUNK))


PARALLEL_MIN_CHUNKS = 64  # below this many ciphertexts, starting worker processes costs more than it saves


@functools.cache
def _pool(workers: int) -> ProcessPoolExecutor:
    # fork: the workers inherit the loaded SEAL module; they only ever run `encrypt` and `decrypt_raw`
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def _spans(count: int, workers: int) -> list[tuple[int, int]]:
    """`count` chunks cut into at most `workers` contiguous (start, stop) spans."""
    per = -(-count // workers)
    return [(a, min(a + per, count)) for a in range(0, count, per)]


def _encrypt_part(args: tuple) -> list[bytes]:
    part, weight, secret_ctx = args
    return encrypt(part, weight, secret_ctx)


def encrypt(vector: np.ndarray, weight: float, secret_ctx: bytes, *, workers: int = 1) -> list[bytes]:
    """Seeded CKKS ciphertexts (one per 4096 reals, serialized by SEAL) of vector * weight.

    With `workers` > 1 and a vector of at least PARALLEL_MIN_CHUNKS ciphertexts, the chunks are
    encrypted by that many worker processes (kept for later calls); the result is the same list."""
    x = np.asarray(vector)
    if workers > 1 and x.ndim == 1 and n_chunks(x.size) >= PARALLEL_MIN_CHUNKS:
        parts = [(x[a * CHUNK:b * CHUNK], weight, secret_ctx) for a, b in _spans(n_chunks(x.size), workers)]
        return [c for chunks in _pool(workers).map(_encrypt_part, parts) for c in chunks]
    ctx = _secret(secret_ctx)
    x = np.asarray(vector)
    if x.ndim != 1 or x.size == 0:
        raise HEError(f"encrypt takes a non-empty 1-D vector, got shape {x.shape}")
    if not math.isfinite(weight) or weight < 0:
        raise HEError(f"weight must be finite and >= 0, got {weight}")
    x = x.astype(np.float64) * float(weight)
    peak = float(np.max(np.abs(x)))
    if not math.isfinite(peak):
        raise HEError("update holds NaN or Inf")
    if peak > ctx.site_limit:
        raise HEError(f"|update * weight| reaches {peak:.4g}, above the per-site limit "
                      f"{ctx.site_limit:.4g} (sum of up to {ctx.max_sites} sites must stay below "
                      f"{ctx.capacity:.4g}): scale the weight down")
    count = n_chunks(x.size)
    padded = np.zeros(count * CHUNK)
    padded[: x.size] = x
    slots = (padded[0::2] + 1j * padded[1::2]).reshape(count, SLOTS)
    encoder, encryptor = ctx.encoder, ctx.encryptor
    plain = sealapi.Plaintext()
    out = []
    with scratch() as path:
        for row in slots:
            encoder.encode(row.tolist(), ctx.scale, plain)
            out.append(save(encryptor.encrypt_symmetric(plain), path))
    return out


@dataclass(frozen=True)
class Summed:
    """A sum of the sites' seeded ciphertexts as the server holds it: the c0 parts added modulo q
    (uint64, one row of N per chunk; blinded when a mask was added) and each site's seed records
    (`count` of he_serial.SEED_RECORD_BYTES, chunk order), which stand for the c1 parts."""

    c0: np.ndarray
    seeds: list[bytes]


class Sum:
    """Server side: the homomorphic sum of the sites' ciphertexts, one site at a time.

    Only the c0 parts are added (numpy, modulo q); each site's PRNG seeds are kept and forwarded
    to the decrypting site, which expands them into the c1 parts. `add_site` reads and checks
    every chunk of a site before touching the sum, so a malformed upload (other parameters,
    truncated, wrong count) raises HEError and leaves the sum as it was.
    """

    def __init__(self, public_ctx: bytes, count: int) -> None:
        if count < 1:
            raise HEError(f"a sum needs at least one ciphertext per site, expected >= 1, got {count}")
        self._ctx = _load(bytes(public_ctx))
        self.count = count
        self._c0 = np.zeros((count, POLY_MODULUS_DEGREE), dtype=np.uint64)  # reduced modulo q lazily
        self._headroom = 2**64 // self._ctx.modulus - 1  # sites' c0 (each < q) that fit in uint64
        self._unreduced = 0
        self._seeds: list[bytes] = []

    @property
    def sites(self) -> int:
        return len(self._seeds)

    def add_site(self, chunks: list[bytes], where: str = "site") -> None:
        """Add one site's ciphertexts; HEError (naming `where` and the chunk) if any is invalid."""
        ctx = self._ctx
        if self.sites >= ctx.max_sites:
            raise HEError(f"{where}: more than this context's max_sites={ctx.max_sites} sites")
        if not isinstance(chunks, (list, tuple)) or len(chunks) != self.count:
            got = len(chunks) if isinstance(chunks, (list, tuple)) else type(chunks).__name__
            raise HEError(f"{where} sent {got} ciphertexts, expected {self.count}")
        if self._unreduced == self._headroom:
            self._c0 %= np.uint64(ctx.modulus)
            self._unreduced = 1
        added, seeds = [], []
        try:
            for c, data in enumerate(chunks):
                c0, seed = seeded_parts(data, ctx.parms_id, ctx.scale, ctx.modulus, POLY_MODULUS_DEGREE,
                                        f"{where} chunk {c}")
                np.add(self._c0[c], c0, out=self._c0[c])
                added.append(c0)
                seeds.append(seed)
        except HEError:
            for c, c0 in enumerate(added):  # take this site out again: the sum is as it was
                np.subtract(self._c0[c], c0, out=self._c0[c])
            raise
        self._unreduced += 1
        self._seeds.append(b"".join(seeds))

    def total(self) -> Summed:
        """The sum as it is (whoever decrypts it learns the sum)."""
        if not self.sites:
            raise HEError("the sum holds no site yet")
        return Summed(self._c0 % np.uint64(self._ctx.modulus), list(self._seeds))

    def blinded(self) -> tuple[Summed, np.ndarray]:
        """The sum plus a fresh random mask, uniform modulo q on every plaintext coefficient, and
        that mask (uint64, one row per chunk). Whoever decrypts the blinded sum learns nothing
        about the sum; `unblind` removes the mask from the decrypted coefficients."""
        return _blind(self.total(), self._ctx.modulus)


def blind(summed: Summed, ctx_bytes: bytes) -> tuple[Summed, np.ndarray]:
    """`summed` plus a fresh random mask, as `Sum.blinded`, and that mask."""
    return _blind(summed, _load(bytes(ctx_bytes)).modulus)


def _blind(summed: Summed, q: int) -> tuple[Summed, np.ndarray]:
    mask = _uniform_mod(q, summed.c0.shape)
    return Summed((summed.c0 + mask) % np.uint64(q), summed.seeds), mask


def combine(parts: list[Summed], ctx_bytes: bytes) -> Summed:
    """The sum of disjoint sums (c0 parts added modulo q, seed records joined in order)."""
    if not parts or any(p.c0.shape != parts[0].c0.shape for p in parts):
        raise HEError("combine needs at least one sum, all of the same shape")
    q = np.uint64(_load(bytes(ctx_bytes)).modulus)
    c0 = parts[0].c0.copy()
    for part in parts[1:]:
        c0 = (c0 + part.c0) % q  # each is below q < 2^63: no overflow
    return Summed(c0, [seed for part in parts for seed in part.seeds])


def _uniform_mod(q: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform integers in [0, q) from the OS's CSPRNG (rejection sampling: no modulo bias)."""
    size = int(np.prod(shape))
    limit = (2**64 // q) * q
    out = np.empty(0, dtype=np.uint64)
    while out.size < size:
        draw = np.frombuffer(os.urandom(8 * (size - out.size + 64)), dtype=np.uint64)
        out = np.concatenate([out, draw[draw < np.uint64(limit)] % np.uint64(q)])
    return out[:size].reshape(shape)


def add(ciphertexts_per_site: list[list[bytes]], public_ctx: bytes) -> Summed:
    """Server side: the homomorphic sum, chunk by chunk, of every site's ciphertexts."""
    sites = list(ciphertexts_per_site)
    if not sites:
        raise HEError("add needs at least one site")
    total = Sum(public_ctx, len(sites[0]) if isinstance(sites[0], (list, tuple)) else 0)
    for i, site in enumerate(sites):
        total.add_site(site, f"site {i}")
    return total.total()


def _load_ciphertext(ctx: _Ctx, data: bytes, path: str, where: str) -> sealapi.Ciphertext:
    put(data, path)
    ct = sealapi.Ciphertext()
    try:
        ct.load(ctx.seal, path)  # SEAL checks header, size, parms_id, coefficient ranges and seed
    except Exception as exc:
        raise HEError(f"{where}: invalid ciphertext for this HE context ({exc})") from exc
    return ct


def _decrypt_part(args: tuple) -> np.ndarray:
    summed, secret_ctx = args
    return decrypt_raw(summed, secret_ctx)


def decrypt_raw(summed: Summed, secret_ctx: bytes, *, workers: int = 1) -> np.ndarray:
    """Site side: the plaintext coefficients (uint64, one row of N per chunk) of a sum, not
    decoded. For a blinded sum they look uniformly random to the site; the server unblinds them.

    Each chunk's ciphertext is rebuilt from the summed c0 and the c1 parts SEAL expands from
    every site's seed, so the work grows with the number of sites; with `workers` > 1 and at
    least PARALLEL_MIN_CHUNKS ciphertexts to rebuild, worker processes share the chunks."""
    ctx = _secret(secret_ctx)
    c0, seeds = summed.c0, summed.seeds
    if not (isinstance(c0, np.ndarray) and c0.dtype == np.uint64 and c0.ndim == 2
            and c0.shape[0] >= 1 and c0.shape[1] == POLY_MODULUS_DEGREE):
        raise HEError(f"a sum to decrypt holds c0 rows of {POLY_MODULUS_DEGREE} uint64 values, got "
                      f"{getattr(c0, 'shape', None)} ({getattr(c0, 'dtype', type(c0).__name__)})")
    count, record = c0.shape[0], SEED_RECORD_BYTES
    if (not isinstance(seeds, (list, tuple)) or not 1 <= len(seeds) <= ctx.max_sites
            or not all(isinstance(s, bytes) and len(s) == count * record for s in seeds)):
        raise HEError(f"a sum to decrypt holds 1 to {ctx.max_sites} sites' seed records of {count * record} bytes")
    if workers > 1 and count > 1 and count * len(seeds) >= PARALLEL_MIN_CHUNKS:
        parts = [(Summed(c0[a:b], [s[a * record:b * record] for s in seeds]), secret_ctx)
                 for a, b in _spans(count, workers)]
        return np.concatenate(list(_pool(workers).map(_decrypt_part, parts)))
    zeros = np.zeros(POLY_MODULUS_DEGREE, dtype=np.uint64)
    plain = sealapi.Plaintext()
    out = np.empty_like(c0)
    with scratch() as path:
        for c in range(count):
            total = None
            for i, site in enumerate(seeds):
                data = seeded_ciphertext(ctx.parms_id, ctx.scale, c0[c] if i == 0 else zeros,
                                         site[c * record:(c + 1) * record])
                ct = _load_ciphertext(ctx, data, path, f"sum chunk {c} (site {i})")
                if total is None:
                    total = ct
                else:
                    ctx.evaluator.add_inplace(total, ct)
            ctx.decryptor.decrypt(total, plain)
            out[c] = plaintext_coefficients(save(plain, path), POLY_MODULUS_DEGREE, f"decrypted chunk {c}")
    return out


def remove_mask(raw: np.ndarray, mask: np.ndarray, ctx_bytes: bytes) -> np.ndarray:
    """Server side: the sum's plaintext coefficients (uint64) from a site's decryption of the
    blinded sum and its mask. Decryption is exact, so two honest sites' results agree bit for bit."""
    ctx = _load(bytes(ctx_bytes))
    raw = np.asarray(raw)
    if raw.dtype != np.uint64 or raw.shape != mask.shape:
        raise HEError(f"decrypted coefficients of shape {raw.shape} ({raw.dtype}) do not match the "
                      f"blinded sum {mask.shape}")
    q = np.uint64(ctx.modulus)
    if np.any(raw >= q):
        raise HEError("decrypted coefficients out of range (not below the modulus)")
    return np.where(raw >= mask, raw - mask, raw + (q - mask))


def unblind(raw: np.ndarray, mask: np.ndarray, ctx_bytes: bytes, length: int) -> np.ndarray:
    """Server side: the float64 sum (first `length` reals) from the decrypted coefficients of the
    blinded sum and the mask `Sum.blinded` returned."""
    ctx = _load(bytes(ctx_bytes))
    raw = np.asarray(raw)
    if length < 1 or raw.shape[:1] != (n_chunks(length),):
        raise HEError(f"decrypted coefficients of shape {raw.shape} do not match {length} values")
    coeffs = remove_mask(raw, mask, ctx_bytes)
    out = np.empty(raw.shape[0] * CHUNK)
    decoded = sealapi.Plaintext()
    with scratch() as path:
        for c, row in enumerate(coeffs):
            put(plaintext(ctx.parms_id, ctx.scale, row), path)
            try:
                decoded.load(ctx.seal, path)  # SEAL checks every coefficient is below q
            except Exception as exc:
                raise HEError(f"invalid plaintext coefficients for this HE context ({exc})") from exc
            z = np.asarray(ctx.encoder.decode_complex(decoded))
            out[c * CHUNK:(c + 1) * CHUNK:2] = z.real
            out[c * CHUNK + 1:(c + 1) * CHUNK:2] = z.imag
    return out[:length]


def decrypt(summed: Summed, secret_ctx: bytes, length: int) -> np.ndarray:
    """Site side: the float64 vector (first `length` reals) of an unblinded sum."""
    if length < 1 or summed.c0.shape[0] != n_chunks(length):
        raise HEError(f"{summed.c0.shape[0]} ciphertexts cannot hold {length} values (expected {n_chunks(length)})")
    raw = decrypt_raw(summed, secret_ctx)
    return unblind(raw, np.zeros_like(raw), secret_ctx, length)
