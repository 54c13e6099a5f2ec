"""A site's side of `masked` mode: the SecAgg+ stages around local training (common/secure/secagg.py
does the computing; this module carries bytes between Flower records and the site's state).

Stages, one message each (server/modes/masked.py sends them):
1. `query.masked` stage "setup": fresh X25519 key pairs; reply the public keys and the number of
   examples, sealed with the site's round key.
2. `query.masked` stage "share-keys": check the server's signature on the roster, share the
   self-mask seed and the mask key among the neighbours, encrypted for each.
3. `train` (with the forwarded encrypted shares): after verifying and training as in every mode,
   `build_payload` masks `p * (trained - base)` and seals each chunk of the masked vector.
4. `query.masked` stage "unmask": reveal seed shares of survivors and key shares of dropouts.

The site's secrets live in `context.state` between the stages of a round, never in a reply.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from common import wire
from common.errors import InputError
from common.integrity.keys import ClientKeys, verify_digest
from common.learning.models import array_spec, averaged_spec, flatten
from common.run import inject
from common.run.settings import RunSettings
from common.secure import secagg

STATE = "fedseal-masked"  # context.state: this site's MaskedSite of the current round


def _load(context: Context, client_id: str, run_name: str, server_round: int) -> secagg.MaskedSite:
    if STATE not in context.state:
        raise InputError(f"site {client_id}: no masked-mode state for round {server_round} (setup missed)")
    site = secagg.MaskedSite.from_state(bytes(context.state[STATE][wire.MASKED_STATE]))
    if (site.site, site.run_name, site.server_round) != (client_id, run_name, server_round):
        raise InputError(f"site {client_id}: masked-mode state is for another run or round")
    return site


def _save(context: Context, site: secagg.MaskedSite) -> None:
    context.state[STATE] = ConfigRecord({wire.MASKED_STATE: site.to_state()})


def handle_query(msg: Message, context: Context, settings: RunSettings, client_id: str, keys: ClientKeys,
                 fault_id: int | None, num_examples) -> Message:
    """Answer one `query.masked` stage; `num_examples()` gives this site's training examples."""
    config = msg.content[wire.CONFIG]
    stage = str(config[wire.MASKED_STAGE])
    run_name, server_round = str(config[wire.RUN_NAME]), int(config[wire.SERVER_ROUND])
    key = secagg.round_key(keys.seal_key, run_name, server_round, client_id)
    if stage == wire.STAGE_SETUP:
        site = secagg.MaskedSite.start(client_id, run_name, server_round)
        advert = site.advertise(key, int(num_examples()))
        reply = {wire.MASK_KEY: advert.mask_key, wire.ENC_KEY: advert.enc_key,
                 wire.NUM_EXAMPLES: advert.examples, wire.MASKED_TAG: advert.tag}
    elif stage == wire.STAGE_SHARE_KEYS:
        site = _load(context, client_id, run_name, server_round)
        roster = bytes(config[wire.ROSTER])
        verify_digest(keys.server_public_key, secagg.signed_digest(roster), bytes(config[wire.ROSTER_SIGNATURE]))
        out = site.share_keys(roster, key)
        destinations = sorted(out.ciphertexts)
        holders = sorted(out.digests)
        reply = {wire.DESTINATIONS: destinations, wire.CIPHERTEXTS: [out.ciphertexts[d] for d in destinations],
                 wire.COMMITMENT: out.commitment, wire.MASKED_TAG: out.tag, wire.DIGEST_HOLDERS: holders,
                 wire.SHARE_DIGESTS: [out.digests[h] for h in holders]}
    elif stage == wire.STAGE_UNMASK:
        if fault_id is not None and inject.wanted(settings.injections, "drop-late", fault_id, server_round):
            raise inject.Vanished(f"site {client_id} vanishes after sending its masked vector (injected)")
        site = _load(context, client_id, run_name, server_round)
        survivors, dropouts = list(config[wire.SURVIVORS]), list(config[wire.DROPOUTS])
        request = secagg.unmask_request(site.context, survivors, dropouts)
        verify_digest(keys.server_public_key, secagg.signed_digest(request), bytes(config[wire.ROSTER_SIGNATURE]))
        seeds, key_shares, tag = site.reveal(survivors, dropouts, key)
        reply = {wire.SEED_OWNERS: list(seeds), wire.SEED_SHARES: list(seeds.values()),
                 wire.KEY_OWNERS: list(key_shares), wire.KEY_SHARES: list(key_shares.values()), wire.MASKED_TAG: tag}
    else:
        raise InputError(f"unknown masked-mode stage {stage!r}")
    _save(context, site)
    return Message(content=RecordDict({wire.MASKED: ConfigRecord({wire.CLIENT_ID: client_id, **reply})}),
                   reply_to=msg)


def build_payload(context: Context, config: ConfigRecord, trained: dict[str, np.ndarray],
                  base: dict[str, np.ndarray], client_id: str, seal_key: bytes, run_name: str,
                  server_round: int) -> RecordDict:
    """The records a site returns in masked mode: its masked, quantized weighted delta (uint32)
    in one record, and its per-chunk seal with the pairwise partner list in another.

    Decrypts the shares the server forwarded in the train config first (stage 3a)."""
    site = _load(context, client_id, run_name, server_round)
    sources = [str(s) for s in config.get(wire.SOURCES, [])]
    blobs = [bytes(b) for b in config.get(wire.CIPHERTEXTS, [])]
    if len(sources) != len(blobs):
        raise InputError("forwarded shares: sources and ciphertexts differ in length")
    site.receive_shares(dict(zip(sources, blobs)))
    spec = averaged_spec(array_spec(trained))  # integer and bool buffers are not averaged: not sent
    delta = flatten(trained, spec, np.float32) - flatten(base, spec, np.float32)
    checks = np.frombuffer(bytes(config.get(wire.CHECK_VALUES, b"")), np.uint32)
    upload = site.mask(delta, secagg.round_key(seal_key, run_name, server_round, client_id), checks)
    _save(context, site)
    return RecordDict({
        wire.MASKED_VECTOR: ArrayRecord({wire.VECTOR: Array(upload.vector)}),
        wire.MASKED: ConfigRecord({wire.SEAL: upload.seal, wire.PARTNERS: list(upload.partners),
                                   wire.MASKED_TAG: upload.tag}),
    })


def tamper(payload: RecordDict, rng: np.random.Generator, count: int = 8) -> RecordDict:
    """Fault injection: `count` bits flipped in the masked vector after sealing (the seal record
    is left as it was, as a network attacker would)."""
    vector = payload[wire.MASKED_VECTOR][wire.VECTOR].numpy().copy()
    positions = rng.choice(vector.size * 32, size=min(count, vector.size * 32), replace=False)
    for pos in positions:
        vector[int(pos) // 32] ^= np.uint32(1 << (int(pos) % 32))
    return RecordDict({wire.MASKED_VECTOR: ArrayRecord({wire.VECTOR: Array(vector)}),
                       wire.MASKED: payload[wire.MASKED]})
