"""Key agreement, Shamir shares and share encryption for masked aggregation (Flower-free).

The pieces of Flower's SecAgg+ (flwr 1.41, `flwr.common.secure_aggregation.crypto`) that a
site needs to hand its secrets to its neighbours through the server, with FedSeal's choices:
- X25519 key pairs (`cryptography`) instead of flwr's ECDH on SECP384R1 + Fernet;
- Shamir sharing of a 32-byte secret with pycryptodome's `Crypto.Protocol.SecretSharing.Shamir`
  (GF(2^128), the code path flwr uses), one split per 16-byte half, no padding: a share is
  index (2 bytes, big-endian) | share of half 1 (16) | share of half 2 (16) = 34 bytes;
- shares travel encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from the pair's
  X25519 agreement and the (run, round) context; the associated data binds sender and receiver,
  so the server that relays them can neither read nor redirect them.
"""

from __future__ import annotations

import os

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import InputError, TamperError

SECRET_LEN = 32
PUBLIC_LEN = 32
SHARE_LEN = 2 + 16 + 16
MAX_SHARES = 0xFFFF
NONCE_LEN = 12
_SHARE_KEY_TAG = b"fedseal/masked/share-key/v1"
_SHARE_AAD_TAG = b"fedseal/masked/share/v1"
_RAW = serialization.Encoding.Raw


class ShareError(TamperError):
    """A share or an encrypted share is malformed, inconsistent or fails its authentication."""


def field(value: str | bytes) -> bytes:
    """Length-prefixed encoding (4-byte big-endian length) of a str (UTF-8) or bytes."""
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return len(data).to_bytes(4, "big") + data


# --- X25519 ------------------------------------------------------------------------------------


def new_key_pair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes: (private 32 bytes, public 32 bytes)."""
    private = X25519PrivateKey.generate()
    return (private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
            private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw))


def public_of(private: bytes) -> bytes:
    """The raw public key of a raw X25519 private key (checks a reconstructed secret key)."""
    return _private(private).public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def _private(private: bytes) -> X25519PrivateKey:
    if not isinstance(private, (bytes, bytearray)) or len(private) != SECRET_LEN:
        raise InputError(f"an X25519 private key is {SECRET_LEN} bytes")
    return X25519PrivateKey.from_private_bytes(bytes(private))


def agree(private: bytes, public: bytes) -> bytes:
    """The raw 32-byte X25519 shared secret of (our private key, their public key).

    Raises ShareError for a malformed or low-order public key (all-zero agreement)."""
    if not isinstance(public, (bytes, bytearray)) or len(public) != PUBLIC_LEN:
        raise ShareError(f"an X25519 public key is {PUBLIC_LEN} bytes, got {len(public) if public else 0}")
    try:
        return _private(private).exchange(X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError as exc:  # low-order point: cryptography refuses the all-zero secret
        raise ShareError(f"unusable X25519 public key: {exc}") from None


# --- Shamir ------------------------------------------------------------------------------------


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """`count` Shamir shares of a 32-byte secret; any `threshold` of them rebuild it.

    Share i (1-based index) is returned at position i-1."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_LEN:
        raise InputError(f"the secret to share must be {SECRET_LEN} bytes")
    if not (isinstance(threshold, int) and isinstance(count, int) and 1 <= threshold <= count <= MAX_SHARES):
        raise InputError(f"need 1 <= threshold <= count <= {MAX_SHARES}, got threshold {threshold}, count {count}")
    if threshold == 1:  # pycryptodome needs k >= 2: a degree-0 polynomial is the secret itself
        return [i.to_bytes(2, "big") + bytes(secret) for i in range(1, count + 1)]
    low = Shamir.split(threshold, count, bytes(secret[:16]), ssss=False)
    high = Shamir.split(threshold, count, bytes(secret[16:]), ssss=False)
    shares = []
    for (i, a), (j, b) in zip(low, high, strict=True):
        assert i == j  # pycryptodome numbers shares 1..count in order
        shares.append(i.to_bytes(2, "big") + a + b)
    return shares


def share_index(share: bytes) -> int:
    """The 1-based index a share was made for; ShareError when malformed."""
    if not isinstance(share, (bytes, bytearray)) or len(share) != SHARE_LEN:
        raise ShareError(f"a share is {SHARE_LEN} bytes, got {len(share) if share is not None else 0}")
    index = int.from_bytes(share[:2], "big")
    if index == 0:
        raise ShareError("share index 0 is not a valid share")
    return index


def combine_shares(shares: list[bytes], threshold: int) -> bytes:
    """Rebuild a 32-byte secret from at least `threshold` shares (the first `threshold` distinct
    indices are used). ShareError with too few, duplicate or malformed shares. A wrong share
    gives a wrong secret, not an error: check the result (`public_of`, a commitment)."""
    by_index: dict[int, bytes] = {}
    for share in shares:
        by_index.setdefault(share_index(share), bytes(share))
    if len(by_index) < threshold:
        raise ShareError(f"{len(by_index)} distinct shares, {threshold} needed to rebuild the secret")
    chosen = sorted(by_index.items())[:threshold]
    if threshold == 1:
        return chosen[0][1][2:]
    low = Shamir.combine([(i, s[2:18]) for i, s in chosen], ssss=False)
    high = Shamir.combine([(i, s[18:]) for i, s in chosen], ssss=False)
    return low + high


# --- share encryption --------------------------------------------------------------------------


def _share_key(shared_secret: bytes, context: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=_SHARE_KEY_TAG + field(context)).derive(shared_secret)
    return AESGCM(key)


def _aad(context: bytes, sender: str, receiver: str) -> bytes:
    return _SHARE_AAD_TAG + field(context) + field(sender) + field(receiver)


def encrypt_for(shared_secret: bytes, context: bytes, sender: str, receiver: str, plaintext: bytes) -> bytes:
    """AES-256-GCM encryption of `plaintext` from `sender` to `receiver` (nonce | ciphertext+tag).

    `shared_secret` is the pair's X25519 agreement, `context` binds run and round."""
    nonce = os.urandom(NONCE_LEN)
    return nonce + _share_key(shared_secret, context).encrypt(nonce, plaintext, _aad(context, sender, receiver))


def decrypt_from(shared_secret: bytes, context: bytes, sender: str, receiver: str, blob: bytes) -> bytes:
    """Open what `encrypt_for` made; ShareError when it was altered, redirected (other sender,
    receiver, run or round) or made under another key."""
    blob = bytes(blob)
    if len(blob) < NONCE_LEN + 16:
        raise ShareError(f"encrypted share from {sender!r} is too short ({len(blob)} bytes)")
    try:
        return _share_key(shared_secret, context).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:],
                                                          _aad(context, sender, receiver))
    except InvalidTag:
        raise ShareError(f"encrypted share from {sender!r} to {receiver!r} fails authentication") from None
