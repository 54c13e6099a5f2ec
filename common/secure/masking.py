"""Masked aggregation arithmetic (Flower-free): quantize, mask, seal, unmask.

What one site does with its update in `--secure-mode masked`, and what the server does with the
masked vectors, following Flower's SecAgg+ (flwr 1.41) with FedSeal's fixes (FIELD-NOTES.md):

- **Quantization** of the weighted delta `p * (trained - base)` (p = the site's FedAvg weight,
  sum of p over the round's sites <= 1) to signed 32-bit integers carried as uint32 mod 2^32:
  `q = rint(clip(p * d / step, +-p * L))`, `step = R / L`, `L = 2^31 - 2^10 - K` for clipping
  range R and at most K sites. No wrap: the K sites' |q| add up to at most
  L * sum(p) + K/2 + float32 rounding (< 2^9) < 2^31, so the uint32 sum read as int32 is the
  exact integer sum. Aggregate error per parameter of the weighted mean (values inside +-R):
  at most K * step / 2 / P_s = K * R / (2 L P_s) from rounding, P_s = sum of p over the sites
  summed, plus float32 rounding of p * d / step (2^-24 relative to p * |d|). R = 16, K = 5:
  1.9e-8; K = 1000: 3.7e-6 (measured: tests/secure/test_masking.py, `fedseal bench secure --modes masked`).
- **Masks** from AES-128-CTR keystreams (`cryptography`) read as uint32 words, keyed by HKDF of
  the full 32-byte secret with a context binding run, round and the pair (pairwise masks) or the
  site (self mask). The 128-bit key matches the security level of the X25519 agreement it comes
  from. Each `SEGMENT` of a mask has its own nonce (the segment index) and a 32-bit block counter
  from 2: GCM's counter mode. The keystream is made by `cryptography`'s AES-GCM encryptor on zeros
  (its tag is never used) because OpenSSL has a VAES/AVX-512 path for GCM only: 0.6-0.7 ns per
  word here against 0.9-1.3 for its plain AES-CTR, for the same keystream. Flower's
  `pseudo_rand_gen` XOR-folds the seed to 32 bits for numpy's MT19937; here every bit of the
  secret keys the stream. Sites add the pairwise mask of (a, b) when a < b and subtract it
  otherwise, so the pairwise masks cancel in the sum.
- **Seals per chunk** of the masked vector (`SEAL_CHUNK` words): GMAC (AES-256-GCM with an empty
  plaintext and the chunk as associated data) under a key derived from the site's round key and
  a fresh 16-byte salt, nonce = (chunk index, vector length). The seal travels in its own record;
  the masked values are never altered. The server checks every chunk before unmasking.
- **Unmasking**: the sum of the survivors' masked vectors, minus their self masks (seeds rebuilt
  from Shamir shares) and minus the pairwise masks they share with dropouts (from the dropouts'
  rebuilt mask keys), is the exact integer sum of the survivors' quantized updates.

Work is done in cache-sized pieces (`WORK_CHUNK` words): one pass over memory per vector. Vectors
of at least 2 segments are cut at segment boundaries into one part per core, each masked by its
own thread (numpy and `cryptography` release the GIL).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import InputError, TamperError
from common.kdf import context_bytes
from common.secure.secret_shares import field

WORK_CHUNK = 1 << 16  # words per pipeline step: 256 KiB buffers stay in L2
SEGMENT = 1 << 18  # words per keystream nonce (a multiple of WORK_CHUNK); the least a thread masks
MASK_KEY_LEN = 16  # AES-128
SEAL_CHUNK = 1 << 16  # words per sealed chunk (256 KiB of masked vector per 16-byte tag)
TAG_LEN = 16
SALT_LEN = 16
DEFAULT_CLIP = 16.0
_F32_INT_MAX = float(2**31 - 128)  # the largest float32 below 2^31: safe to cast to int32
_PAIR_TAG = b"fedseal/masked/pair-mask/v2"  # v2: AES-128 mask keys (v1: AES-256)
_SELF_TAG = b"fedseal/masked/self-mask/v2"
_SEAL_TAG = b"fedseal/masked/chunk-seal/v1"
_MSG_TAG = b"fedseal/masked/message/v1"
_ZEROS = bytes(4 * WORK_CHUNK)
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class MaskSealError(TamperError):
    """A masked vector fails its per-chunk seal; `chunks` lists the failing chunk indices
    (empty when the seal record itself is malformed)."""

    def __init__(self, reason: str, chunks: Sequence[int] = ()):
        super().__init__(reason)
        self.reason = reason
        self.chunks = tuple(chunks)


def round_context(run_name: str, server_round: int) -> bytes:
    """The (run, round) context every mask, share and seal of a masked round is bound to."""
    return context_bytes(run_name, server_round)


# --- quantization ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantizer:
    """Fixed-point code of weighted deltas on uint32 words (see the module docstring for the bound).

    Attributes:
        sites (int): K, the most vectors that will be summed (the round's sites), >= 1.
        clip (float, 16.0): R, each delta value is clipped to [-R, R] before weighting.
    """

    sites: int
    clip: float = DEFAULT_CLIP

    def __post_init__(self) -> None:
        if isinstance(self.sites, bool) or not isinstance(self.sites, int) or not 1 <= self.sites <= 2**20:
            raise InputError(f"masked aggregation needs 1 <= sites <= 2^20, got {self.sites!r}")
        if not (isinstance(self.clip, (int, float)) and np.isfinite(self.clip) and self.clip > 0):
            raise InputError(f"the clipping range must be a number > 0, got {self.clip!r}")

    @property
    def levels(self) -> int:
        """L: the integer a weight-1 value of +R maps to."""
        return 2**31 - 2**10 - self.sites

    @property
    def step(self) -> float:
        """The value of one quantum (R / L)."""
        return float(self.clip) / self.levels

    def error_bound(self, weight_sum: float = 1.0) -> float:
        """Largest rounding error per parameter of the weighted mean of `sites` summed vectors
        whose weights add up to `weight_sum` (values inside the clipping range)."""
        return self.sites * self.step / 2 / weight_sum

    def quantize(self, delta: np.ndarray, weight: float) -> np.ndarray:
        """The weighted delta as uint32 words, unmasked (see `mask_update` for the fused path)."""
        return mask_update(delta, weight, self, ())

    def dequantize(self, total: np.ndarray, weight_sum: float) -> np.ndarray:
        """The weighted mean (float32) from the unmasked uint32 sum of the summed sites, whose
        weights add up to `weight_sum`."""
        if not weight_sum > 0:
            raise InputError(f"the summed weights must be > 0, got {weight_sum!r}")
        total = _words(total, "the unmasked sum")
        out = total.view(np.int32).astype(np.float64)
        out *= self.step / weight_sum
        return out.astype(np.float32)


def _words(vec: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(vec, np.ndarray) or vec.dtype != np.uint32 or vec.ndim != 1:
        raise InputError(f"{what} must be a 1-D uint32 array")
    return np.ascontiguousarray(vec)


# --- mask keys and streams ---------------------------------------------------------------------


def order_key(site: str) -> tuple[int, str]:
    """The order that decides which site of a pair adds the pairwise mask (numeric ids sort as numbers)."""
    return (len(site), site)


def pair_sign(site: str, other: str) -> int:
    """+1 when `site` adds the mask it shares with `other`, -1 when it subtracts it."""
    if site == other:
        raise InputError(f"site {site!r} has no pairwise mask with itself")
    return 1 if order_key(site) < order_key(other) else -1


def pair_mask_key(agreement: bytes, context: bytes, site: str, other: str) -> bytes:
    """The AES-128 key of the pairwise mask of two sites: HKDF-SHA256 of their full 32-byte
    X25519 agreement, bound to the round context and the (ordered) pair."""
    a, b = sorted((site, other), key=order_key)
    return _hkdf(agreement, _PAIR_TAG + field(context) + field(a) + field(b))


def self_mask_key(seed: bytes, context: bytes, site: str) -> bytes:
    """The AES-128 key of a site's self mask: HKDF-SHA256 of its full 32-byte seed, bound to the
    round context and the site."""
    return _hkdf(seed, _SELF_TAG + field(context) + field(site))


def _hkdf(secret: bytes, info: bytes) -> bytes:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != 32:
        raise InputError("a mask secret is 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=MASK_KEY_LEN, salt=None, info=info).derive(bytes(secret))


def _segment_stream(key: bytes, segment: int):
    """The AES-CTR keystream of a mask's segment: nonce = the segment index, 32-bit block counter
    from 2 (GCM's counter mode; made by the GCM encryptor, whose tag is discarded)."""
    return Cipher(algorithms.AES(key), modes.GCM(segment.to_bytes(12, "big"))).encryptor()


def mask_words(key: bytes, size: int) -> np.ndarray:
    """The first `size` uint32 words of a mask."""
    return apply_masks(np.zeros(size, np.uint32), [(key, 1)])


# --- the site's masked vector ------------------------------------------------------------------


def mask_update(delta: np.ndarray, weight: float, quantizer: Quantizer,
                masks: Iterable[tuple[bytes, int]]) -> np.ndarray:
    """Quantize `weight * delta` and add each mask (key, +1 or -1) mod 2^32, in one pass.

    `delta` is the flat float32 update (trained - base), `weight` the site's FedAvg weight in
    (0, 1]. InputError on a NaN/Inf delta or a weight out of range."""
    if not (isinstance(weight, (int, float)) and 0 < weight <= 1):
        raise InputError(f"a site's weight must be in (0, 1], got {weight!r}")
    delta = np.ascontiguousarray(delta, dtype=np.float32).reshape(-1)
    scale = np.float32(weight * quantizer.levels / quantizer.clip)
    limit = np.float32(min(weight * quantizer.levels, _F32_INT_MAX))
    masks = [(key, _signed(sign)) for key, sign in masks]
    out = np.empty(delta.size, np.uint32)

    def part(start: int, stop: int) -> None:
        streams = _Streams(masks, start, stop - start)
        buf = np.empty(min(WORK_CHUNK, stop - start), np.float32)
        for a in range(start, stop, WORK_CHUNK):
            b = min(a + WORK_CHUNK, stop)
            f = buf[:b - a]
            np.multiply(delta[a:b], scale, out=f)
            if not (-limit <= f.min() and f.max() <= limit):  # clipping needed, or NaN/Inf
                if not np.isfinite(f).all():
                    raise InputError("the update holds NaN or Inf values: refusing to quantize it")
                np.clip(f, -limit, limit, out=f)
            np.rint(f, out=f)
            np.copyto(out[a:b].view(np.int32), f, casting="unsafe")
            streams.add_to(out[a:b])

    _in_parts(delta.size, part)
    return out


def apply_masks(vector: np.ndarray, masks: Iterable[tuple[bytes, int]]) -> np.ndarray:
    """Add each mask (key, +1 or -1) to a uint32 vector mod 2^32, in place; returns it.
    Unmasking applies the masks with the opposite signs."""
    vector = _words(vector, "the masked vector")
    masks = [(key, _signed(sign)) for key, sign in masks]

    def part(start: int, stop: int) -> None:
        streams = _Streams(masks, start, stop - start)
        for a in range(start, stop, WORK_CHUNK):
            streams.add_to(vector[a:min(a + WORK_CHUNK, stop)])

    if masks:
        _in_parts(vector.size, part)
    return vector


def _signed(sign: int) -> int:
    if sign not in (1, -1):
        raise InputError(f"a mask's sign is +1 or -1, got {sign!r}")
    return sign


class _Streams:
    """The keystreams of masks (key, +1 or -1) from word `start` on (a segment boundary), added to
    consecutive chunks of at most WORK_CHUNK words through one reused keystream buffer."""

    def __init__(self, masks: Sequence[tuple[bytes, int]], start: int, size: int):
        self.masks = [(key, np.add if sign > 0 else np.subtract) for key, sign in masks]
        self.streams: list = []
        self.position = start
        self.keystream = bytearray(4 * min(WORK_CHUNK, size))
        self.words = np.frombuffer(self.keystream, np.uint32)

    def add_to(self, chunk: np.ndarray) -> None:
        if self.position % SEGMENT == 0:  # chunks never straddle segments: WORK_CHUNK divides SEGMENT
            self.streams = [(_segment_stream(key, self.position // SEGMENT), op) for key, op in self.masks]
        zeros, words = memoryview(_ZEROS)[:4 * chunk.size], self.words[:chunk.size]
        for encryptor, op in self.streams:
            encryptor.update_into(zeros, self.keystream)
            op(chunk, words, out=chunk)
        self.position += chunk.size


def _in_parts(size: int, work: Callable[[int, int], None]) -> None:
    """Run work(start, stop) over [0, size): one part per core (at most one per segment), cut at
    segment boundaries, the first in this thread; re-raises a part's error."""
    segments = -(-size // SEGMENT)
    parts = max(1, min(_CORES, size // SEGMENT))
    if parts == 1:
        work(0, size)
        return
    bounds = [min(segments * i // parts * SEGMENT, size) for i in range(parts)] + [size]
    with ThreadPoolExecutor(parts - 1) as pool:
        rest = [pool.submit(work, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
        work(bounds[0], bounds[1])
        for future in rest:
            future.result()


def sum_vectors(vectors: Iterable[np.ndarray], size: int) -> np.ndarray:
    """The sum mod 2^32 of uint32 vectors of `size` words."""
    total = np.zeros(size, np.uint32)
    for vec in vectors:
        vec = _words(vec, "a masked vector")
        if vec.size != size:
            raise InputError(f"a masked vector has {vec.size} words, expected {size}")
        np.add(total, vec, out=total)
    return total


NEAR_ZERO = 2**28  # |word as int32| below this: 1/8 of the words a uniform (masked) vector holds
FALSE_ALARM_BITS = 40  # an honestly masked vector is called unmasked with probability below 2^-40


def unmasked_problem(vector: np.ndarray) -> str | None:
    """Why `vector` cannot be a masked vector, or None. Masked words are uniform over 2^32 values,
    so each lies within NEAR_ZERO of 0 (as int32) with probability 1/8; a plain quantized update,
    or a zero vector, has nearly all its words there. By Hoeffding's bound, more than
    L/8 + sqrt(FALSE_ALARM_BITS/2 * ln 2 * L) such words out of L happen to a masked vector with
    probability below 2^-FALSE_ALARM_BITS (short vectors are never called unmasked)."""
    words = _words(vector, "a masked vector").view(np.int32).astype(np.int64)
    near = int(np.count_nonzero(np.abs(words) < NEAR_ZERO))
    limit = words.size / 8 + math.sqrt(FALSE_ALARM_BITS / 2 * math.log(2) * words.size)
    if near <= limit:
        return None
    return (f"its vector is not masked: {near} of {words.size} words lie near 0, a masked vector has about "
            f"{words.size // 8} (at most {limit:.0f})")


# --- per-chunk seals ---------------------------------------------------------------------------


def chunk_count(size: int) -> int:
    """How many sealed chunks a vector of `size` words has (at least one)."""
    return max(1, -(-size // SEAL_CHUNK))


def seal_length(size: int) -> int:
    """Bytes of the seal record of a vector of `size` words."""
    return SALT_LEN + TAG_LEN * chunk_count(size)


def _gmac(round_key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_SEAL_TAG).derive(round_key))


def _chunk_tags(vector: np.ndarray, round_key: bytes, salt: bytes) -> list[bytes]:
    gmac = _gmac(round_key, salt)
    tags = []
    for index in range(chunk_count(vector.size)):
        piece = vector[index * SEAL_CHUNK:(index + 1) * SEAL_CHUNK]
        nonce = index.to_bytes(4, "big") + vector.size.to_bytes(8, "big")
        tags.append(gmac.encrypt(nonce, b"", memoryview(piece).cast("B")))
    return tags


def seal_chunks(vector: np.ndarray, round_key: bytes) -> bytes:
    """The seal record of a masked vector: salt (16 bytes) then one 16-byte tag per chunk.

    `round_key` is the site's `derive_round_key(seal_key, run, round, site, "masked-vector")`."""
    vector = _words(vector, "the masked vector")
    salt = os.urandom(SALT_LEN)
    return salt + b"".join(_chunk_tags(vector, round_key, salt))


def check_chunks(vector: np.ndarray, seal: bytes, round_key: bytes) -> None:
    """Check a masked vector against its seal record, exactly as received; raises MaskSealError
    naming the failing chunks (or a malformed seal). Never changes the vector."""
    vector = _words(vector, "the masked vector")
    seal = bytes(seal)
    if len(seal) != seal_length(vector.size):
        raise MaskSealError(f"seal record is {len(seal)} bytes, {seal_length(vector.size)} expected "
                            f"for {vector.size} words")
    expected = _chunk_tags(vector, round_key, seal[:SALT_LEN])
    got = [seal[SALT_LEN + i * TAG_LEN:SALT_LEN + (i + 1) * TAG_LEN] for i in range(len(expected))]
    bad = [i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if not hmac.compare_digest(a, b)]
    if bad:
        reason = f"{len(bad)} of {len(expected)} chunks of the masked vector fail their seal (chunks {bad[:10]})"
        if len(bad) == len(expected) > 1:
            reason += ": wrong key, replayed or forged"
        raise MaskSealError(reason, bad)


# --- small sealed messages ---------------------------------------------------------------------


def tag_message(round_key: bytes, purpose: str, *fields: str | bytes | int) -> bytes:
    """HMAC-SHA256 over a purpose and fields (length-prefixed; ints as 8-byte big-endian)."""
    h = hmac.new(round_key, _MSG_TAG + field(purpose), hashlib.sha256)
    for value in fields:
        h.update(field(value.to_bytes(8, "big", signed=True) if isinstance(value, int) else value))
    return h.digest()


def check_message(tag: bytes, round_key: bytes, purpose: str, *fields: str | bytes | int) -> None:
    """Raise MaskSealError unless `tag` is `tag_message(round_key, purpose, *fields)`."""
    if not isinstance(tag, (bytes, bytearray)) or not hmac.compare_digest(bytes(tag), tag_message(round_key, purpose, *fields)):
        raise MaskSealError(f"the {purpose} message fails its seal (tampered, replayed or forged)")
