"""The check to run before deploying a model: the server's Ed25519 signature beside the watermark.

A FedSeal run keeps in each published model's safetensors metadata the watermark context
(`fedseal-global:RUN:round-N`) and the server's signature over the digest of exactly the
published tensors (common/run/records.py published_metadata). `check_signature` says who signed
(the public key's fingerprint), for which run and round, and whether these bytes are the signed
ones; when they are not but the watermark restores the signed bytes, it says so.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import TamperError
from common.integrity.keys import verify_digest
from common.integrity.seal import digest_arrays

_GLOBAL_CONTEXT = re.compile(r"^fedseal-global:(?P<run>[^:]+):round-(?P<round>\d+)$")


@dataclass
class SignatureCheck:
    """What the signature check found (`to_json` for `fedseal verify --json`)."""

    valid: bool  # the signature verifies under the given key over these very bytes
    signer: str  # SHA-256 fingerprint of the public key checked against
    run: str | None  # the run and round the model was published for (from its context)
    round: int | None
    bytes_match: bool  # these tensors are exactly the signed ones
    signed_after_recovery: bool  # the restored tensors are the signed ones (recover restores them)
    reason: str

    def to_json(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """`SHA256:` and the hex of the SHA-256 of the raw 32-byte public key (first 16 bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:32]


def run_and_round(context: str) -> tuple[str | None, int | None]:
    """The run name and round of a global model's watermark context, or (None, None)."""
    match = _GLOBAL_CONTEXT.match(context or "")
    return (match["run"], int(match["round"])) if match else (None, None)


def _signed(public_key: Ed25519PublicKey, arrays: dict[str, np.ndarray], signature: bytes) -> bool:
    try:
        verify_digest(public_key, digest_arrays(arrays), signature)
    except TamperError:
        return False
    return True


def check_signature(arrays: dict[str, np.ndarray], signature_hex: str | None, public_key: Ed25519PublicKey,
                    context: str, restored: dict[str, np.ndarray] | None = None) -> SignatureCheck:
    """Check the server's signature on a published model. `restored`: the tensors `recover`
    makes of a tampered file, tried when the file's own bytes do not verify."""
    run, server_round = run_and_round(context)
    signer = fingerprint(public_key)

    def result(valid: bool, match: bool, after_recovery: bool, reason: str) -> SignatureCheck:
        return SignatureCheck(valid, signer, run, server_round, match, after_recovery, reason)

    if not signature_hex:
        return result(False, False, False, "the file carries no server signature (not a model a FedSeal run published)")
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return result(False, False, False, "the signature in the file's metadata is not hex")
    if _signed(public_key, arrays, signature):
        return result(True, True, False, "signed by this server key; the bytes are the signed ones")
    if restored is not None and _signed(public_key, restored, signature):
        return result(False, False, True, "the model was changed after signing; `fedseal recover` restores "
                                          "the signed bytes")
    if restored is None:
        return result(False, False, False, "not signed by this server key (another key signed it, or the "
                                           "signature was replaced)")
    return result(False, False, False, "the model was changed after signing, beyond what recover restores, "
                                       "or another key signed it")
