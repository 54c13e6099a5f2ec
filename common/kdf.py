"""Round keys and contexts: the one encoding of (run, round[, site]) and the HKDF-SHA256 derivation
of per-round keys from a site's seal key. The seals (common/integrity) and the masks
(common/secure) both derive their keys here, so neither package needs the other for it."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_LEN = 32  # bytes of every FedSeal secret key
_CONTEXT_TAG = b"fedseal/context/v1"
_ROUND_KEY_TAG = b"fedseal/round-key/v1"


def _field(value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    data = value.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def context_bytes(run_id: str, round: int, client_id: str | None = None) -> bytes:
    """Unambiguous encoding of (run id, round[, site]) used as watermark and seal context.

    tag | len(run_id) run_id | round (8 bytes, big-endian) | 0x00, or 0x01 len(id) id.
    """
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round < 2**64:
        raise ValueError(f"round must be an int in [0, 2**64), got {round!r}")
    site = b"\x00" if client_id is None else b"\x01" + _field(client_id)
    return _CONTEXT_TAG + _field(run_id) + round.to_bytes(8, "big") + site


def derive_round_key(seal_key: bytes, run_id: str, round: int, client_id: str, purpose: str) -> bytes:
    """HKDF-SHA256 a 32-byte key for one (run, round, site, purpose) from a site's seal key."""
    if not isinstance(seal_key, bytes) or len(seal_key) != SECRET_LEN:
        raise ValueError(f"seal key must be {SECRET_LEN} bytes")
    if client_id is None:
        raise ValueError("a round key needs a site id")
    info = _ROUND_KEY_TAG + _field(purpose) + context_bytes(run_id, round, client_id)
    return HKDF(algorithm=hashes.SHA256(), length=SECRET_LEN, salt=None, info=info).derive(seal_key)
