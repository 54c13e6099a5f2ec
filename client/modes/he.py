"""A site's side of `he` mode: encrypt the weighted update, seal the ciphertexts, and decrypt
the blinded sum when the server asks this site to (common/secure/he.py has the CKKS codec)."""

from __future__ import annotations

import os

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from common import wire
from common.integrity.keys import ClientKeys
from common.integrity.seal import seal_chunks
from common.learning.models import array_spec, averaged_spec, flatten
from common.secure import he

PAYLOAD_KIND = "he"  # bound into the chunk seals: an he payload cannot pass as another mode's


def build_payload(trained: dict[str, np.ndarray], base: dict[str, np.ndarray], num_examples: int,
                  keys: ClientKeys, seal_key: bytes, run_name: str, server_round: int,
                  checks: bytes = b"") -> RecordDict:
    """The records a site returns in he mode: its update (trained - base) times its example count,
    followed by the server's check values (float64 `checks`, encrypted as they are), encrypted under
    the federation's CKKS key (on every core for a large model), and one seal tag per ciphertext.
    Integer and bool buffers are not sent: they are not averaged (averaged_spec)."""
    spec = averaged_spec(array_spec(trained))
    values = np.frombuffer(bytes(checks), np.float64)
    delta = np.concatenate([flatten(trained, spec) - flatten(base, spec), values / float(num_examples)])
    chunks = he.encrypt(delta, float(num_examples), keys.he_secret_context(), workers=os.cpu_count() or 1)
    tags = seal_chunks(chunks, seal_key, run_name, server_round, keys.client_id, PAYLOAD_KIND)
    return RecordDict({wire.HE_CIPHERTEXTS: ConfigRecord({wire.CHUNKS: chunks}),
                       wire.SEALS: ConfigRecord({wire.TAGS: tags})})


def tamper(payload: RecordDict, rng: np.random.Generator) -> RecordDict:
    """Fault injection: 8 bits flipped in one ciphertext after sealing (what a network attacker does)."""
    chunks = list(payload[wire.HE_CIPHERTEXTS][wire.CHUNKS])
    index = int(rng.integers(len(chunks)))
    data = bytearray(chunks[index])
    for pos in rng.choice(np.arange(16, len(data)), size=8, replace=False):
        data[pos] ^= 1 << int(rng.integers(8))
    chunks[index] = bytes(data)
    return RecordDict({wire.HE_CIPHERTEXTS: ConfigRecord({wire.CHUNKS: chunks}),
                       wire.SEALS: payload[wire.SEALS]})


def decrypt_blinded(content: RecordDict, keys: ClientKeys, min_sites: int = 1) -> np.ndarray:
    """The plaintext coefficients of the blinded sum in a decrypt request (uniformly random to
    this site: the server's mask hides the sum). HEError unless the sum holds at least `min_sites`
    distinct sites' ciphertexts (one seed record each): this site never decrypts what would show
    the server fewer sites than min-clients."""
    try:
        c0 = content[wire.HE_SUM][wire.C0].numpy()
        seeds = [bytes(s) for s in content[wire.HE_CIPHERTEXTS][wire.SEEDS]]
    except (KeyError, TypeError, ValueError) as exc:
        raise he.HEError(f"malformed decrypt request: {exc}") from exc
    if len(set(seeds)) != len(seeds) or len(seeds) < min_sites:
        raise he.HEError(f"refused to decrypt a sum of {len(set(seeds))} distinct sites in {len(seeds)} seed records: "
                         f"it must hold at least min-clients {min_sites}, each once")
    return he.decrypt_raw(he.Summed(c0, seeds), keys.he_secret_context(), workers=os.cpu_count() or 1)
