"""Hostile ClientApps: FedSeal's own ClientApp, with one site (partition HOSTILE) altering what it
sends through Flower's message layer. The site holds its own keys and re-seals what it alters, so
every seal check passes: only the server's protocol checks stand between it and the round.

Each attribute below is a ClientApp component (`tests.e2e.hostile:NAME`) for
`server.engine --client-app`; tests/simrun.py `simulate_hostile` runs one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

import client.app as fedseal
from common import wire
from common.integrity import enrol as enrol_proof
from common.integrity import watermark
from common.integrity.keys import ClientKeys, client_dir
from common.integrity.seal import seal_update
from common.secure import masking, secagg

HOSTILE = 1  # the partition id of the hostile site (its site id is "1")
VICTIM = "2"  # the honest site it tries to pass for

Alter = Callable[[Message, Message, Context], Message]  # (request, honest reply, context) -> reply sent


def _is_hostile(context: Context) -> bool:
    return int(context.node_config.get(wire.PARTITION_ID, -1)) == HOSTILE


def hostile_app(*, masked: Alter | None = None, train: Alter | None = None, enrol: Alter | None = None,
                decrypt: Alter | None = None) -> ClientApp:
    """FedSeal's ClientApp where the hostile site passes each reply through `masked` / `train` /
    `enrol` / `decrypt`."""
    app = ClientApp()

    @app.query("enrol")
    def _enrol(msg: Message, context: Context) -> Message:
        reply = fedseal.enrol_site(msg, context)
        return enrol(msg, reply, context) if enrol and _is_hostile(context) else reply

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        reply = fedseal.train(msg, context)
        return train(msg, reply, context) if train and _is_hostile(context) else reply

    @app.query("masked")
    def _masked(msg: Message, context: Context) -> Message:
        reply = fedseal.masked_stage(msg, context)
        return masked(msg, reply, context) if masked and _is_hostile(context) else reply

    @app.query("decrypt")
    def _decrypt(msg: Message, context: Context) -> Message:
        reply = fedseal.decrypt(msg, context)
        return decrypt(msg, reply, context) if decrypt and _is_hostile(context) else reply

    return app


def _round_key(msg: Message, context: Context, site: str | None = None) -> tuple[bytes, str, int]:
    config = msg.content[wire.CONFIG]
    client_id, keys = fedseal.load_site_keys(context.node_config, config)
    seal_key = _victim_keys(msg).seal_key if site == VICTIM else keys.seal_key
    run_name, server_round = str(config[wire.RUN_NAME]), int(config[wire.SERVER_ROUND])
    return secagg.round_key(seal_key, run_name, server_round, site or client_id), run_name, server_round


def _resealed_advert(msg: Message, reply: Message, context: Context,
                     change: Callable[[secagg.Advert, int], secagg.Advert], as_site: str | None = None) -> Message:
    """The site's setup `reply` with its advert changed by `change(advert, round)`, sealed again
    with the site's own round key, or `as_site`'s (a valid seal on a bad advert)."""
    key, run_name, server_round = _round_key(msg, context, as_site)
    rec = reply.content[wire.MASKED]
    advert = secagg.Advert(str(rec[wire.CLIENT_ID]), bytes(rec[wire.MASK_KEY]), bytes(rec[wire.ENC_KEY]),
                           int(rec[wire.NUM_EXAMPLES]), b"")
    advert = change(advert, server_round)
    tag = masking.tag_message(key, secagg.ADVERT, *advert.fields(masking.round_context(run_name, server_round)))
    out = {wire.CLIENT_ID: advert.site, wire.MASK_KEY: advert.mask_key, wire.ENC_KEY: advert.enc_key,
           wire.NUM_EXAMPLES: advert.examples, wire.MASKED_TAG: tag}
    return Message(content=RecordDict({wire.MASKED: ConfigRecord(out)}), reply_to=msg)


def _bad_advert(advert: secagg.Advert, server_round: int) -> secagg.Advert:
    """Round 1: 0 examples; round 2: both public keys identical; round 3: a 7-byte mask key;
    round 4: 10**9 examples."""
    if server_round == 1:
        return secagg.Advert(advert.site, advert.mask_key, advert.enc_key, 0, b"")
    if server_round == 2:
        return secagg.Advert(advert.site, advert.mask_key, advert.mask_key, advert.examples, b"")
    if server_round == 3:
        return secagg.Advert(advert.site, advert.mask_key[:7], advert.enc_key, advert.examples, b"")
    return secagg.Advert(advert.site, advert.mask_key, advert.enc_key, 10**9, b"")


def _masked_bad_adverts(msg: Message, reply: Message, context: Context) -> Message:
    if str(msg.content[wire.CONFIG][wire.MASKED_STAGE]) != wire.STAGE_SETUP:
        return reply
    if int(msg.content[wire.CONFIG][wire.SERVER_ROUND]) == 5:  # another site's advert, with that site's seal
        return _resealed_advert(msg, reply, context, lambda a, r: secagg.Advert(VICTIM, a.mask_key, a.enc_key,
                                                                                a.examples, b""), VICTIM)
    return _resealed_advert(msg, reply, context, _bad_advert)


def _victim_keys(msg: Message) -> ClientKeys:
    """The victim's keys, read from the simulation's key folder (an insider who stole them)."""
    return ClientKeys.load(client_dir(str(msg.content[wire.CONFIG][wire.SIM_KEYS_DIR]), VICTIM), client_id=VICTIM)


def _impersonate(msg: Message, reply: Message, context: Context) -> Message:
    """Round 1: its payload (none: the trained weights; he: the ciphertexts) sealed with the
    victim's stolen key, claiming the victim's id; round 2: its own sealed payload claiming 10**9
    examples; round 3: claiming the victim's id on its own sealed payload."""
    from common.integrity.seal import seal_chunks

    config = msg.content[wire.CONFIG]
    server_round, run_name = int(config[wire.SERVER_ROUND]), str(config[wire.RUN_NAME])
    content = RecordDict(dict(reply.content.items()))
    if server_round == 2:
        content[wire.METRICS][wire.NUM_EXAMPLES] = 10**9
        return Message(content=content, reply_to=msg)
    if server_round == 1 and wire.HE_CIPHERTEXTS in reply.content:
        chunks = [bytes(c) for c in reply.content[wire.HE_CIPHERTEXTS][wire.CHUNKS]]
        tags = seal_chunks(chunks, _victim_keys(msg).seal_key, run_name, server_round, VICTIM, "he")
        content[wire.SEALS] = ConfigRecord({wire.TAGS: tags})
    elif server_round == 1:
        arrays = {name: arr.numpy() for name, arr in reply.content[wire.ARRAYS].items()}
        opened = seal_update(watermark.strip(arrays), _victim_keys(msg).seal_key, run_name, server_round, VICTIM)
        content[wire.ARRAYS] = fedseal.to_record(opened)
    content[wire.CONFIG] = ConfigRecord({wire.CLIENT_ID: VICTIM})
    return Message(content=content, reply_to=msg)


def _inflated_enrolment(msg: Message, reply: Message, context: Context) -> Message:
    """A valid enrolment proof (its own key and node) for 10**9 examples."""
    config = msg.content[wire.CONFIG]
    client_id, keys = fedseal.load_site_keys(context.node_config, config)
    n = 10**9
    tag = enrol_proof.proof(keys.seal_key, str(config[wire.RUN_NAME]), client_id, context.node_id, n,
                            bytes(config[wire.NONCE]))
    return Message(content=RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: client_id, wire.NUM_EXAMPLES: n,
                                                                  wire.ENROL_PROOF: tag})}), reply_to=msg)


def _lying_reveal(msg: Message, reply: Message, context: Context) -> Message:
    """At unmask, every seed share it reveals corrupted (index kept), sealed again with its own key."""
    if str(msg.content[wire.CONFIG][wire.MASKED_STAGE]) != wire.STAGE_UNMASK or reply.has_error():
        return reply
    key, run_name, server_round = _round_key(msg, context)
    rec = reply.content[wire.MASKED]
    owners = [str(o) for o in rec[wire.SEED_OWNERS]]
    seeds = {o: bytes(s[:2]) + bytes(b ^ 0x5A for b in bytes(s)[2:]) for o, s in zip(owners, rec[wire.SEED_SHARES])}
    keys = dict(zip([str(o) for o in rec[wire.KEY_OWNERS]], [bytes(k) for k in rec[wire.KEY_SHARES]]))
    context_bytes = masking.round_context(run_name, server_round)
    tag = masking.tag_message(key, secagg.REVEAL, *secagg.reveal_fields(context_bytes, str(rec[wire.CLIENT_ID]),
                                                                      seeds, keys))
    out = {**dict(rec.items()), wire.SEED_SHARES: [seeds[o] for o in owners], wire.MASKED_TAG: tag}
    return Message(content=RecordDict({wire.MASKED: ConfigRecord(out)}), reply_to=msg)


def _zero_vector(msg: Message, reply: Message, context: Context) -> Message:
    """Its masked vector replaced by zeros (no masks), with a valid chunk seal of its own."""
    if wire.MASKED_VECTOR not in reply.content:
        return reply
    key, _, _ = _round_key(msg, context)
    vector = np.zeros_like(reply.content[wire.MASKED_VECTOR][wire.VECTOR].numpy())
    rec = reply.content[wire.MASKED]
    content = RecordDict(dict(reply.content.items()))
    content[wire.MASKED_VECTOR] = ArrayRecord({wire.VECTOR: Array(vector)})
    content[wire.MASKED] = ConfigRecord({**dict(rec.items()), wire.SEAL: masking.seal_chunks(vector, key)})
    return Message(content=content, reply_to=msg)


def _bad_dealer(msg: Message, reply: Message, context: Context) -> Message:
    """At share-keys (round 1 only), a commitment to another self-mask seed than the one it shared,
    sealed again with its own key: its honestly dealt shares rebuild a seed that fails it."""
    config = msg.content[wire.CONFIG]
    if str(config[wire.MASKED_STAGE]) != wire.STAGE_SHARE_KEYS or int(config[wire.SERVER_ROUND]) != 1:
        return reply
    key, run_name, server_round = _round_key(msg, context)
    rec = reply.content[wire.MASKED]
    site = str(rec[wire.CLIENT_ID])
    context_bytes = masking.round_context(run_name, server_round)
    shares = dict(zip([str(d) for d in rec[wire.DESTINATIONS]], [bytes(c) for c in rec[wire.CIPHERTEXTS]]))
    digests = dict(zip([str(h) for h in rec[wire.DIGEST_HOLDERS]], [bytes(d) for d in rec[wire.SHARE_DIGESTS]]))
    out = secagg.SharesOut(shares, secagg.commitment(context_bytes, site, bytes(32)), b"", digests)
    tag = masking.tag_message(key, secagg.SHARES, *secagg.shares_fields(context_bytes, site, out))
    changed = {**dict(rec.items()), wire.COMMITMENT: out.commitment, wire.MASKED_TAG: tag}
    return Message(content=RecordDict({wire.MASKED: ConfigRecord(changed)}), reply_to=msg)


def _lying_decryption(msg: Message, reply: Message, context: Context) -> Message:
    """Its decryption of the blinded sum with ten coefficients replaced (all below the modulus)."""
    raw = reply.content[wire.DECRYPTED][wire.COEFFICIENTS].numpy().copy()
    raw[0, :10] = raw[0, 10:20]
    return Message(content=RecordDict({wire.DECRYPTED: ArrayRecord({wire.COEFFICIENTS: Array(raw)})}), reply_to=msg)


_FOREIGN: list[bytes] = []  # a CKKS key of the same parameters that is not the federation's


def _foreign_key(msg: Message, reply: Message, context: Context) -> Message:
    """Its update encrypted under another CKKS key with the same parameters, sealed with its own key."""
    from common.integrity.seal import seal_chunks
    from common.secure import he

    if not _FOREIGN:
        _FOREIGN.append(he.make_keys()[0])
    config = msg.content[wire.CONFIG]
    client_id, keys = fedseal.load_site_keys(context.node_config, config)
    chunks = [bytes(c) for c in reply.content[wire.HE_CIPHERTEXTS][wire.CHUNKS]]
    vector = np.random.default_rng(0).normal(0, 0.01, len(chunks) * he.CHUNK)
    foreign = he.encrypt(vector, float(reply.content[wire.METRICS][wire.NUM_EXAMPLES]), _FOREIGN[0])
    tags = seal_chunks(foreign, keys.seal_key, str(config[wire.RUN_NAME]), int(config[wire.SERVER_ROUND]), client_id,
                       "he")
    content = RecordDict(dict(reply.content.items()))
    content[wire.HE_CIPHERTEXTS] = ConfigRecord({wire.CHUNKS: foreign})
    content[wire.SEALS] = ConfigRecord({wire.TAGS: tags})
    return Message(content=content, reply_to=msg)


bad_adverts = hostile_app(masked=_masked_bad_adverts)
lying_decryptor = hostile_app(decrypt=_lying_decryption)
foreign_key = hostile_app(train=_foreign_key)
zero_vector = hostile_app(train=_zero_vector)
lying_reveal = hostile_app(masked=_lying_reveal)
bad_dealer = hostile_app(masked=_bad_dealer)
impersonate = hostile_app(train=_impersonate)
inflated_enrolment = hostile_app(enrol=_inflated_enrolment)
