"""Keyed block tags: a Wegman-Carter MAC.

tag(block) = (H_a(words) + PRF(tensor, block index, context)) mod 2^32, where H_a is the
vector multiply-shift hash (Dietzfelbinger 1996; Thorup, "High Speed Hashing for Integers
and Strings", 2015): ((a_0 + sum a_i x_i) mod 2^64) >> 32 over 32-bit words x_i with 64-bit
keys a_i, which is strongly universal onto 32 bits. The hash keys and the PRF come from
AES-256-CTR keystreams (pyca/cryptography) under HKDF-SHA256 subkeys of the watermark key.
A forger who changes a block passes its check with probability about 2^-31.
Other small authenticators (manifest, side tensors) are HMAC-SHA256 truncated to 8 bytes.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TAG_BYTES = 4
SIDE_TAG_BYTES = 8
_ZERO_NONCE = bytes(16)


def _encode(*fields: bytes) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def subkey(key: bytes, purpose: str, *fields: bytes) -> bytes:
    """A 32-byte HKDF-SHA256 subkey of `key` bound to a purpose and fields."""
    info = _encode(b"fedseal-watermark-v1", purpose.encode(), *fields)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def keystream(key: bytes, nbytes: int) -> bytes:
    """nbytes of AES-256-CTR keystream under a 32-byte key (a PRF on the counter)."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()
    return encryptor.update(bytes(nbytes)) + encryptor.finalize()


def keyed_permutation(key: bytes, purpose: str, n: int) -> np.ndarray:
    """A permutation of range(n) drawn from the keystream of a subkey."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    draws = np.frombuffer(keystream(subkey(key, purpose), 8 * n), dtype=np.uint64)
    return np.argsort(draws, kind="stable")


class BlockMac:
    """Computes the 32-bit tags of many blocks at once (rows of uint32 words)."""

    def __init__(self, key: bytes, context: bytes, words_per_block: int):
        raw = keystream(subkey(key, "hash", context), 8 * (words_per_block + 1))
        self._a = np.frombuffer(raw, dtype=np.uint64)
        self._key = key
        self._context = context

    def pads(self, tensor_name: str, count: int) -> np.ndarray:
        """PRF outputs for blocks 0..count-1 of one tensor under this context."""
        pad_key = subkey(self._key, "pad", self._context, tensor_name.encode())
        return np.frombuffer(keystream(pad_key, 4 * count), dtype=np.uint32)

    def tags(self, *parts: np.ndarray, pads: np.ndarray) -> np.ndarray:
        """parts: (R, W_i) uint32 arrays, together a block's words; pads: (R,) uint32 -> (R,) tags."""
        acc = np.full(pads.shape[0], self._a[0], dtype=np.uint64)
        start = 1
        for words in parts:
            acc += words.astype(np.uint64) @ self._a[start : start + words.shape[1]]
            start += words.shape[1]
        return (acc >> np.uint64(32)).astype(np.uint32) + pads  # uint32 arithmetic wraps mod 2^32


def side_tag(key: bytes, context: bytes, label: str, payload: bytes) -> bytes:
    """HMAC-SHA256 (truncated) of a payload that has no block tags of its own."""
    mac_key = subkey(key, "side", context)
    return hmac.new(mac_key, _encode(label.encode(), payload), hashlib.sha256).digest()[:SIDE_TAG_BYTES]
