"""SEAL's binary serialization, read and written with numpy (Flower-free; common/secure/he.py uses it).

`tenseal.sealapi` saves and loads through file paths only and offers no access to coefficients.
So the server reads the parts of a seeded ciphertext (c0 and the PRNG seed record that stands
for c1) straight from SEAL's bytes and adds c0 parts with numpy. Sites and the server build
plaintexts and seeded ciphertexts in the same format and let SEAL load (and check) them.

Layouts (SEAL 4.x, little-endian; `Ciphertext`, `Plaintext`, `DynArray` and
`UniformRandomGeneratorInfo` `save_members`):

    serialization = header (16 bytes: magic 0xA15E, header size, version major and minor,
                    compression, reserved, total size) + body (zstd-compressed or not)
    ciphertext    = parms_id (4 u64), is_ntt_form (u8), size, N, k (u64), scale (f64),
                    correction factor (u64), then its data
    seeded data   = a DynArray of c0 alone (N*k values) + a seed record (PRNG type u8 + 512-bit seed)
    plaintext     = parms_id (4 u64), coefficient count (u64), scale (f64), a DynArray of the coefficients
    DynArray      = an uncompressed serialization of count (u64) + count u64 values
"""

from __future__ import annotations

import functools
import os
import struct
import tempfile
from contextlib import contextmanager

import numpy as np
import tenseal.sealapi as sealapi
import zstandard

from common.errors import InputError

_MAGIC = 0xA15E
_NONE, _ZSTD = 0, 2  # SEAL's compr_mode_type values
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr_mode, reserved, total size
_CIPHERTEXT = struct.Struct("<4QBQQQdQ")  # parms_id, is_ntt_form, size, N, k, scale, correction factor
_PLAINTEXT = struct.Struct("<4QQd")  # parms_id, coefficient count, scale
_COUNT = struct.Struct("<Q")
_PRNG_TYPES = (1, 2)  # blake2xb, shake256
SEED_RECORD_BYTES = _HEADER.size + 1 + 64


class HEError(InputError):
    """An HE context or ciphertext is malformed, of other parameters, or used the wrong way."""


@contextmanager
def scratch():
    """A private temporary file path on tmpfs when there is one (sealapi reads/writes paths only)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="fedseal-he-", dir=base)
    os.close(fd)
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def save(obj, path: str) -> bytes:
    """The bytes SEAL saves for `obj` (a Ciphertext, Plaintext, key, parameters or Serializable)."""
    obj.save(path)
    with open(path, "rb") as f:
        return f.read()


def put(data: bytes, path: str) -> None:
    with open(path, "wb") as f:
        f.write(data)


@functools.cache
def _version() -> tuple[int, int]:
    """SEAL's serialization version (major, minor), read from an object SEAL saved."""
    with scratch() as path:
        return _HEADER.unpack_from(save(sealapi.Plaintext(), path))[2:4]


def _head(body_size: int) -> bytes:
    """The header of an uncompressed SEAL serialization of `body_size` bytes."""
    return _HEADER.pack(_MAGIC, _HEADER.size, *_version(), _NONE, 0, _HEADER.size + body_size)


def _wrap(body: bytes) -> bytes:
    return _head(len(body)) + body


def _array_head(count: int) -> bytes:
    """What precedes the values of a DynArray of `count` u64 values."""
    return _head(_COUNT.size + 8 * count) + _COUNT.pack(count)


def _dyn_array(values: np.ndarray) -> bytes:
    return _array_head(values.size) + np.ascontiguousarray(values, dtype="<u8").tobytes()


_DECOMPRESSOR = zstandard.ZstdDecompressor()


def _unwrap(data: object, body_size: int, where: str) -> bytes:
    """The body of one SEAL serialization, which must be exactly `body_size` bytes once
    decompressed (anything else is another kind of object or of other parameters)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < _HEADER.size:
        raise HEError(f"{where}: not a SEAL object (too short)")
    magic, head, major, minor, compression, _, total = _HEADER.unpack_from(data)
    if magic != _MAGIC or head != _HEADER.size or (major, minor) != _version() or total != len(data):
        raise HEError(f"{where}: not a SEAL {_version()[0]}.{_version()[1]} object (bad header or size)")
    payload = memoryview(data)[_HEADER.size:]
    if compression == _NONE:
        body = bytes(payload)
    elif compression == _ZSTD:
        try:  # the declared size is checked first: it bounds what decompression may allocate
            if zstandard.frame_content_size(payload) != body_size:
                raise HEError(f"{where}: of other parameters (wrong size once decompressed)")
            stream = _DECOMPRESSOR.decompressobj()
            body = stream.decompress(payload)
        except zstandard.ZstdError as exc:
            raise HEError(f"{where}: corrupt compressed data ({exc})") from exc
        if not stream.eof or stream.unused_data:
            raise HEError(f"{where}: truncated or trailing compressed data")
    else:
        raise HEError(f"{where}: unknown compression {compression}")
    if len(body) != body_size:
        raise HEError(f"{where}: of other parameters or not seeded ({len(body)} bytes, expected {body_size})")
    return body


def _seeded_body_size(degree: int) -> int:
    return _CIPHERTEXT.size + len(_array_head(degree)) + 8 * degree + SEED_RECORD_BYTES


def seeded_parts(data: object, parms_id: tuple, scale: float, modulus: int, degree: int,
                 where: str) -> tuple[np.ndarray, bytes]:
    """(c0 as uint64, the seed record) of a seeded CKKS ciphertext of these parameters (one prime,
    NTT form, two polynomials); HEError naming `where` for anything else."""
    body = _unwrap(data, _seeded_body_size(degree), where)
    *ids, ntt, size, n, k, ct_scale, correction = _CIPHERTEXT.unpack_from(body)
    if tuple(ids) != tuple(parms_id) or (ntt, size, n, k, correction) != (1, 2, degree, 1, 1):
        raise HEError(f"{where}: ciphertext of other parameters (parms_id/size/form mismatch)")
    if ct_scale != scale:
        raise HEError(f"{where}: ciphertext scale {ct_scale} differs from the context's {scale}")
    at = _CIPHERTEXT.size
    array_head = _array_head(degree)
    if body[at:at + len(array_head)] != array_head:
        raise HEError(f"{where}: malformed c0 array")
    c0 = np.frombuffer(body, dtype="<u8", count=degree, offset=at + len(array_head))
    if int(c0.max()) >= modulus:
        raise HEError(f"{where}: c0 coefficient not below the modulus")
    seed = body[-SEED_RECORD_BYTES:]
    if seed[:_HEADER.size] != _head(SEED_RECORD_BYTES - _HEADER.size) or seed[_HEADER.size] not in _PRNG_TYPES:
        raise HEError(f"{where}: malformed PRNG seed record")
    return c0, seed


def seeded_ciphertext(parms_id: tuple, scale: float, c0: np.ndarray, seed: bytes) -> bytes:
    """The uncompressed serialization of a seeded ciphertext: c0 given, c1 to be expanded by
    SEAL from `seed` (a record `seeded_parts` returned) when it loads the bytes."""
    head = _CIPHERTEXT.pack(*parms_id, 1, 2, c0.size, 1, scale, 1)
    return _wrap(head + _dyn_array(c0) + seed)


def plaintext(parms_id: tuple, scale: float, coeffs: np.ndarray) -> bytes:
    """The uncompressed serialization of a plaintext holding `coeffs` (uint64)."""
    return _wrap(_PLAINTEXT.pack(*parms_id, coeffs.size, scale) + _dyn_array(coeffs))


def plaintext_coefficients(data: bytes, degree: int, where: str) -> np.ndarray:
    """The `degree` uint64 coefficients of a plaintext SEAL saved (one prime)."""
    body = _unwrap(data, _PLAINTEXT.size + len(_array_head(degree)) + 8 * degree, where)
    return np.frombuffer(body, dtype="<u8", count=degree, offset=_PLAINTEXT.size + len(_array_head(degree)))
