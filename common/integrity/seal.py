"""Seals on what a site returns, and the signed, watermarked global model.

Safe recipes on top of the watermark and the keys: callers never assemble a tag by hand.
- `seal_update` / `open_update`: a site's trained weights carry its own fragile watermark
  (its seal key, bound to run, round and site); the server checks exactly what it received.
- `seal_chunks` / `check_chunks`: payloads that must not be altered at all (ciphertexts, masked
  vectors) carry one keyed tag per chunk in a separate record, bound to run, round, site, the
  payload kind, the chunk's index and the chunk count; the server checks them before use.
- `publish_global` / `receive_global`: the server watermarks the global model (K_wm, bound to
  run and round) and signs its digest; a site verifies both, recovering the model bit-exactly
  when tampering is under the bound, refusing it otherwise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.errors import InputError, TamperError
from common.integrity import watermark
from common.integrity.keys import derive_round_key, sign_digest, verify_digest


class SealError(TamperError):
    """A payload failed its fragile check; `report` says where (a WatermarkReport or None)."""

    def __init__(self, reason: str, report: watermark.WatermarkReport | None = None):
        super().__init__(reason)
        self.reason = reason
        self.report = report


@dataclass(frozen=True)
class Opened:
    """A payload that passed its check: the arrays, and whether they had to be recovered."""

    arrays: dict[str, np.ndarray]
    recovered: bool
    report: watermark.WatermarkReport | None = None

    def values(self) -> dict[str, np.ndarray]:
        """The arrays with the watermark's bits cleared: what training and aggregation use, so
        a run's results do not depend on its (random) keys."""
        return watermark.strip(self.arrays)


def digest_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """SHA-256 over names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256(b"fedseal-model-digest-v1")
    for name in sorted(arrays):
        arr = np.require(arrays[name], requirements="C")  # keeps a 0-dim shape (ascontiguousarray: [1])
        header = f"{name}\0{arr.dtype.str}\0{list(arr.shape)}\0".encode()
        h.update(len(header).to_bytes(4, "big") + header)
        h.update(arr.tobytes())
    return h.digest()


def _name(value: str, what: str) -> str:
    if not value or ":" in value:
        raise InputError(f"{what} {value!r} must be non-empty and contain no ':'")
    return value


def global_context(run_name: str, server_round: int) -> str:
    """The watermark context of the global model published in a round (what `fedseal verify
    --context` takes to check a checkpoint)."""
    return f"fedseal-global:{_name(run_name, 'run name')}:round-{server_round}"


def seal_context(run_name: str, server_round: int, client_id: str) -> str:
    """The context of a site's seal on its reply of a round."""
    return f"fedseal-seal:{_name(run_name, 'run name')}:round-{server_round}:site-{_name(client_id, 'site id')}"


# --- a site's update ---------------------------------------------------------------------------


def seal_update(arrays: dict[str, np.ndarray], seal_key: bytes, run_id: str, server_round: int,
                client_id: str) -> dict[str, np.ndarray]:
    """The site's weights with its fragile seal embedded (bound to run, round and site)."""
    return watermark.embed(arrays, seal_key, seal_context(run_id, server_round, client_id))


def open_update(arrays: dict[str, np.ndarray], expected: dict[str, tuple], seal_key: bytes, run_id: str,
                server_round: int, client_id: str, *, recover: bool = False) -> Opened:
    """Check a site's sealed weights against the model's tensor list (`expected`: name -> (shape, dtype)).

    Raises SealError when the seal fails, unless `recover` is set and every tampered block can
    be restored bit-exactly, in which case the restored weights come back with recovered=True.
    """
    context = seal_context(run_id, server_round, client_id)
    manifest = watermark.manifest_of_spec(expected)
    report = watermark.verify(arrays, seal_key, context, manifest=manifest)
    if report.intact:
        return Opened(arrays, recovered=False)
    reason = _describe(report)
    if recover and report.recoverable and not report.problems:
        restored, after = watermark.recover(arrays, seal_key, context, manifest=manifest)
        if after.intact:
            return Opened(restored, recovered=True, report=report)
    raise SealError(reason, report)


def _describe(report: watermark.WatermarkReport) -> str:
    if report.tampered_blocks == report.total_blocks:
        return "no block verifies for this site, round and run (wrong key, replayed or forged)"
    parts = [f"{report.tampered_blocks} of {report.total_blocks} blocks fail the check"]
    parts += report.problems
    return "; ".join(parts)


# --- chunked payloads (ciphertexts, masked vectors) ----------------------------------------------

CHUNK_NONCE_BYTES = 12
CHUNK_TAG_BYTES = CHUNK_NONCE_BYTES + 16  # a random nonce, then the GMAC tag


def _chunk_gmac(seal_key: bytes, run_id: str, server_round: int, client_id: str, kind: str) -> AESGCM:
    return AESGCM(derive_round_key(seal_key, _name(run_id, "run name"), server_round, _name(client_id, "site id"),
                                   f"chunk-seal:{kind}"))


def _bound(index: int, count: int, chunk: bytes) -> bytes:
    return index.to_bytes(8, "big") + count.to_bytes(8, "big") + bytes(chunk)


def seal_chunks(chunks: Sequence[bytes], seal_key: bytes, run_id: str, server_round: int, client_id: str,
                kind: str) -> list[bytes]:
    """One tag per chunk: a fresh random 96-bit nonce and the GMAC (AES-256-GCM authenticating the
    chunk, encrypting nothing) under a key derived from the site's seal key for this run, round,
    site and payload `kind`; the chunk's index and the chunk count are bound in. GMAC runs at
    several GB/s where HMAC-SHA256 manages one; random nonces stay safe if a site seals twice."""
    gmac = _chunk_gmac(seal_key, run_id, server_round, client_id, kind)
    tags = []
    for index, chunk in enumerate(chunks):
        nonce = os.urandom(CHUNK_NONCE_BYTES)
        tags.append(nonce + gmac.encrypt(nonce, b"", _bound(index, len(chunks), chunk)))
    return tags


def check_chunks(chunks: Sequence[bytes], tags: Sequence[bytes], seal_key: bytes, run_id: str, server_round: int,
                 client_id: str, kind: str) -> None:
    """Raise SealError naming the failing chunks unless every chunk carries its valid tag."""
    if len(tags) != len(chunks):
        raise SealError(f"{len(tags)} seal tags for {len(chunks)} chunks")
    gmac = _chunk_gmac(seal_key, run_id, server_round, client_id, kind)
    bad = [i for i, (chunk, tag) in enumerate(zip(chunks, tags))
           if not _tag_holds(gmac, bytes(tag), _bound(i, len(chunks), chunk))]
    if len(bad) == len(chunks):
        raise SealError(f"every chunk fails its seal ({len(chunks)} of {len(chunks)}): tampered, or not sealed "
                        f"by this site for this run and round (wrong key, replayed or forged)")
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise SealError(f"{len(bad)} of {len(chunks)} chunks fail the seal (chunk {shown})")


def _tag_holds(gmac: AESGCM, tag: bytes, data: bytes) -> bool:
    if len(tag) != CHUNK_TAG_BYTES:
        return False
    try:
        gmac.decrypt(tag[:CHUNK_NONCE_BYTES], tag[CHUNK_NONCE_BYTES:], data)  # checks in constant time
    except InvalidTag:
        return False
    return True


# --- the global model --------------------------------------------------------------------------


def publish_global(arrays: dict[str, np.ndarray], wm_key: bytes, signing_key: Ed25519PrivateKey, run_id: str,
                   server_round: int) -> tuple[dict[str, np.ndarray], bytes]:
    """The watermarked global model of a round and the signature over its digest."""
    marked = watermark.embed(arrays, wm_key, global_context(run_id, server_round))
    return marked, sign_digest(signing_key, digest_arrays(marked))


def receive_global(arrays: dict[str, np.ndarray], signature: bytes, wm_key: bytes, server_key: Ed25519PublicKey,
                   run_id: str, server_round: int, expected: dict[str, tuple] | None = None) -> Opened:
    """Check (and if need be recover) the global model a site received.

    Returns the model exactly as the server published it; raises SealError when it cannot be
    restored or its signature does not verify.
    """
    context = global_context(run_id, server_round)
    manifest = watermark.manifest_of_spec(expected) if expected is not None else None
    report = watermark.verify(arrays, wm_key, context, manifest=manifest)
    recovered = False
    if not report.intact:
        if not report.recoverable:
            raise SealError(f"global model tampered beyond recovery: {_describe(report)}", report)
        arrays, after = watermark.recover(arrays, wm_key, context, manifest=manifest)
        if not after.intact:
            raise SealError(f"global model could not be restored: {_describe(after)}", after)
        recovered = True
    try:
        verify_digest(server_key, digest_arrays(arrays), signature)
    except TamperError as exc:
        raise SealError(f"global model signature: {exc}", report) from None
    return Opened(arrays, recovered=recovered, report=report if recovered else None)
