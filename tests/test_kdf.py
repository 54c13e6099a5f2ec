"""common/kdf.py: the context encoding and the round keys, pinned by fixed vectors."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from common import kdf

# Fixed vectors: if one of these changes, keys made by an older FedSeal stop matching.
VECTOR_SEAL_KEY = bytes(range(32))
VECTOR_CONTEXT = "6665647365616c2f636f6e746578742f76310000000572756e2d310000000000000003010000000132"
VECTOR_CONTEXT_NO_SITE = "6665647365616c2f636f6e746578742f76310000000572756e2d31000000000000000300"
VECTOR_ROUND_KEY = "d22344e66ced486b235ed05c823734dfeaf560fd09bc8023bd324b2b9c39d7c8"


def _stdlib_hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()  # RFC 5869, salt absent
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


def test_fixed_vectors() -> None:
    assert kdf.context_bytes("run-1", 3, "2").hex() == VECTOR_CONTEXT
    assert kdf.context_bytes("run-1", 3).hex() == VECTOR_CONTEXT_NO_SITE
    assert kdf.derive_round_key(VECTOR_SEAL_KEY, "run-1", 3, "2", "seal").hex() == VECTOR_ROUND_KEY
    info = b"fedseal/round-key/v1" + b"\x00\x00\x00\x04seal" + bytes.fromhex(VECTOR_CONTEXT)
    assert _stdlib_hkdf_sha256(VECTOR_SEAL_KEY, info).hex() == VECTOR_ROUND_KEY


def test_round_keys_differ_per_field_and_are_stable() -> None:
    base = ("run-1", 3, "2", "seal")
    variants = [
        base,
        ("run-2", 3, "2", "seal"),
        ("run-1", 4, "2", "seal"),
        ("run-1", 3, "1", "seal"),
        ("run-1", 3, "2", "mask"),
        ("run-1", 3, "22", "seal"),
        ("run-12", 3, "", "seal"),  # no field can run into the next
        ("", 3, "2", "sealrun-1"),
    ]
    derived = [kdf.derive_round_key(VECTOR_SEAL_KEY, *v) for v in variants]
    assert len(set(derived)) == len(variants)
    assert kdf.derive_round_key(VECTOR_SEAL_KEY, *base) == derived[0]
    assert kdf.derive_round_key(bytes(32), *base) != derived[0]
    assert all(len(k) == 32 for k in derived)


def test_contexts_are_unambiguous() -> None:
    contexts = {
        kdf.context_bytes("a", 1),
        kdf.context_bytes("a", 1, ""),
        kdf.context_bytes("a", 1, "0"),
        kdf.context_bytes("a1", 1),
        kdf.context_bytes("a", 2),
        kdf.context_bytes("", 1, "a"),
    }
    assert len(contexts) == 6


@pytest.mark.parametrize("bad", [-1, 2**64, 1.0, True, "1"])
def test_bad_round_numbers(bad: object) -> None:
    with pytest.raises(ValueError):
        kdf.context_bytes("run", bad)  # type: ignore[arg-type]


def test_round_key_needs_a_32_byte_key() -> None:
    with pytest.raises(ValueError):
        kdf.derive_round_key(b"short", "run", 1, "0", "seal")
