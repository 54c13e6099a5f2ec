"""A site's enrolment proof: once per run, each site proves its id to the server with its seal key,
bound to the Flower node it speaks from and its number of training examples (DESIGN.md §2.5).

The proof is HMAC-SHA256 under a key derived (HKDF) from the site's seal key for the run, over the
site id, the node id, the example count and a fresh server nonce: only the holder of that seal
key can make it, and a copy sent from another node, for another count, or to another run's or
another request's nonce fails.
"""

from __future__ import annotations

import hashlib
import hmac

from common.errors import TamperError
from common.kdf import derive_round_key

PURPOSE = "enrol"
NONCE_LEN = 16
_TAG = b"fedseal/enrol/v1"


class EnrolmentError(TamperError):
    """An enrolment proof does not hold for this site, node, count and nonce."""


def proof(seal_key: bytes, run_name: str, site: str, node_id: int, examples: int, nonce: bytes) -> bytes:
    """The site's proof that it holds `site`'s seal key and speaks from node `node_id`."""
    key = derive_round_key(seal_key, run_name, 0, site, PURPOSE)
    message = b"|".join([_TAG, site.encode(), str(int(node_id)).encode(), str(int(examples)).encode(),
                         bytes(nonce)])
    return hmac.new(key, message, hashlib.sha256).digest()


def check(tag: bytes, seal_key: bytes, run_name: str, site: str, node_id: int, examples: int, nonce: bytes) -> None:
    """Raise EnrolmentError unless `tag` is `proof(...)` of exactly these values."""
    if not isinstance(tag, bytes) or not hmac.compare_digest(tag, proof(seal_key, run_name, site, node_id,
                                                                       examples, nonce)):
        raise EnrolmentError(f"its enrolment proof for site {site!r} does not hold (wrong key, node, count or nonce)")
