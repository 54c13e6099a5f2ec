"""Bit packing between float32 words and byte strings.

A block is 64 float32 parameters viewed as uint32 words. The watermark owns the k low
bits of each word (its *capacity*, 8k bytes per block); the other 32 - k bits are the
*data* the erasure code protects (8(32 - k) bytes per block). k is a multiple of 4, so a
pair of words always packs into whole bytes.
"""

from __future__ import annotations

import numpy as np

BLOCK = 64
ALLOWED_K = (4, 8, 12, 16)


def low_mask(k: int) -> np.uint32:
    return np.uint32((1 << k) - 1)


def data_bytes(k: int) -> int:
    """Bytes of protected (high) bits in one block."""
    return BLOCK * (32 - k) // 8


def capacity_bytes(k: int) -> int:
    """Bytes of watermark capacity (low bits) in one block."""
    return BLOCK * k // 8


def _pack_pairs(values: np.ndarray, bits: int) -> np.ndarray:
    """(R, 64) uint64 values of `bits` bits each -> (R, 64*bits/8) bytes."""
    rows = values.shape[0]
    pair = values[:, 0::2] | (values[:, 1::2] << np.uint64(bits))
    nbytes = 2 * bits // 8
    return np.ascontiguousarray(pair.view(np.uint8).reshape(rows, BLOCK // 2, 8)[:, :, :nbytes]).reshape(rows, -1)


def _unpack_pairs(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of _pack_pairs: (R, 64*bits/8) bytes -> (R, 64) uint64."""
    rows = packed.shape[0]
    nbytes = 2 * bits // 8
    wide = np.zeros((rows, BLOCK // 2, 8), dtype=np.uint8)
    wide[:, :, :nbytes] = packed.reshape(rows, BLOCK // 2, nbytes)
    pair = wide.view(np.uint64).reshape(rows, BLOCK // 2)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((rows, BLOCK), dtype=np.uint64)
    out[:, 0::2] = pair & mask
    out[:, 1::2] = pair >> np.uint64(bits)
    return out


def pack_high(words: np.ndarray, k: int) -> np.ndarray:
    """(R, 64) uint32 words -> (R, data_bytes(k)) bytes of their high 32 - k bits."""
    rows = words.shape[0]
    if k == 8:  # four 24-bit values a, b, c, d -> three uint32 words, by shifts (no strided copy)
        q = (words >> np.uint32(8)).reshape(rows, 16, 4)
        a, b, c, d = q[:, :, 0], q[:, :, 1], q[:, :, 2], q[:, :, 3]
        out = np.empty((rows, 16, 3), dtype=np.uint32)
        o0, o1, o2 = out[:, :, 0], out[:, :, 1], out[:, :, 2]
        np.left_shift(b, 24, out=o0)  # in place: no temporaries of the model's size
        o0 |= a
        np.left_shift(c, 16, out=o1)
        o1 |= b >> np.uint32(8)
        np.left_shift(d, 8, out=o2)
        o2 |= c >> np.uint32(16)
        return out.view(np.uint8).reshape(rows, -1)
    if k == 16:
        return (words >> np.uint32(16)).astype(np.uint16).view(np.uint8).reshape(rows, -1)
    return _pack_pairs((words >> np.uint32(k)).astype(np.uint64), 32 - k)


def unpack_high(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack_high: the words with their low k bits zero."""
    rows = packed.shape[0]
    if k == 8:
        w = np.ascontiguousarray(packed).view(np.uint32).reshape(rows, 16, 3)
        x, y, z = w[:, :, 0], w[:, :, 1], w[:, :, 2]
        m = np.uint32(0xFFFFFF)
        out = np.empty((rows, 16, 4), dtype=np.uint32)
        out[:, :, 0] = x & m
        out[:, :, 1] = (x >> np.uint32(24)) | ((y << np.uint32(8)) & m)
        out[:, :, 2] = (y >> np.uint32(16)) | ((z << np.uint32(16)) & m)
        out[:, :, 3] = z >> np.uint32(8)
        return (out << np.uint32(8)).reshape(rows, BLOCK)
    if k == 16:
        return np.ascontiguousarray(packed).view(np.uint16).astype(np.uint32).reshape(rows, BLOCK) << np.uint32(16)
    return (_unpack_pairs(packed, 32 - k) << np.uint64(k)).astype(np.uint32)


def pack_low(capacity: np.ndarray, k: int) -> np.ndarray:
    """(R, capacity_bytes(k)) bytes -> (R, 64) uint32 words holding them in their low k bits."""
    rows = capacity.shape[0]
    if k in (8, 16):
        out = np.zeros((rows, BLOCK, 4), dtype=np.uint8)
        out[:, :, : k // 8] = capacity.reshape(rows, BLOCK, k // 8)
        return out.view(np.uint32).reshape(rows, BLOCK)
    return _unpack_pairs(capacity, k).astype(np.uint32)


def unpack_low(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack_low: the capacity bytes carried by the words' low k bits."""
    if k in (8, 16):
        return np.ascontiguousarray(words.view(np.uint8).reshape(-1, BLOCK, 4)[:, :, : k // 8]).reshape(
            words.shape[0], -1
        )
    return _pack_pairs((words & low_mask(k)).astype(np.uint64), k)
