"""`masked` mode: SecAgg+ on the Message API with FedSeal's fixes (common/secure/secagg.py computes).

The server sees each site's public keys and number of examples, then only masked uint32 vectors,
and learns only the sum of the survivors' weighted updates. One round:

1. setup      - `query.masked` to every site: public keys + examples, each sealed by its site.
2. share keys - the signed roster to every advertised site; encrypted shares come back.
3. train      - the global model plus each site's forwarded shares; masked vector + chunk seals
                come back. Every chunk seal is checked before anything is summed; a site that
                fails (tampered, replayed, forged, malformed, or a vector that is not masked) is
                audited `update_rejected` and handled as a dropout; a site that refuses the model
                or vanishes is a dropout.
4. unmask     - the survivors reveal seed shares of survivors and key shares of dropouts; the
                masks are removed and new global = base + sum / (survivors' summed weight), float32.

The round goes on while at least max(min-clients, threshold) sites survive; otherwise it is
skipped and the global model stays as it was.
"""

from __future__ import annotations

import math
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from common import wire
from common.errors import FedSealError
from common.integrity.keys import sign_digest
from common.learning.models import add_mean_update, averaged_spec, param_count
from common.secure import masking, secagg
from server.checks import Verdict, payload_bytes
from server.enrolment import attribute, examples_problem
from server.rounds import (
    RoundContext,
    RoundResult,
    enough,
    message,
    note_accepted,
    note_refusal,
    note_rejection,
    send,
    site_metrics,
    skip_round,
)

ALL_PAIRS_UP_TO = 16  # up to this many sites every pair shares a mask; beyond, a SecAgg+ graph


def neighbour_degree(sites: int) -> int | None:
    """None (all pairs) for small federations; otherwise SecAgg+'s O(log n) degree (even)."""
    if sites <= ALL_PAIRS_UP_TO:
        return None
    return min(sites - 1, 2 * math.ceil(2 * math.log2(sites)))


def run_round(ctx: RoundContext) -> RoundResult:
    """The four stages of a masked round (module docstring); returns the new global model or None."""
    result = RoundResult()
    round_key = {}  # site -> its round key

    def key(site: str) -> bytes:
        if site not in round_key:
            round_key[site] = secagg.round_key(ctx.keys.seal_key(site), ctx.run_name, ctx.server_round, site)
        return round_key[site]

    # 1. setup: public keys and example counts.
    ctx.clock.start("setup")
    replies = send(ctx, [_query(ctx, nid, wire.STAGE_SETUP) for nid in ctx.node_ids], "masked setup")
    adverts, node_of = [], {}
    for site, reply in _usable(ctx, result, replies, "setup"):
        rec = _record(reply)
        try:
            advert = secagg.Advert(site, bytes(rec[wire.MASK_KEY]), bytes(rec[wire.ENC_KEY]),
                                   int(rec[wire.NUM_EXAMPLES]), bytes(rec[wire.MASKED_TAG]))
            secagg.check_advert(advert, key(site), ctx.run_name, ctx.server_round, adverts)
        except (KeyError, TypeError, ValueError, FedSealError) as exc:
            note_rejection(ctx, result, site, f"setup: {exc}")
            continue
        if problem := examples_problem(ctx, site, advert.examples):
            note_rejection(ctx, result, site, f"setup: {problem}")
            continue
        adverts.append(advert)
        node_of[site] = reply.metadata.src_node_id
    if not enough(ctx, len(adverts)) or len(adverts) < 2:
        return result
    roster = secagg.Roster.build(ctx.run_name, ctx.server_round, adverts, degree=neighbour_degree(len(adverts)))
    roster_bytes = roster.to_bytes()
    signature = sign_digest(ctx.keys.signing_key, secagg.signed_digest(roster_bytes))

    # 2. share keys: the signed roster out, encrypted shares and seed commitments back.
    ctx.clock.start("share-keys")
    messages = [_query(ctx, node_of[s], wire.STAGE_SHARE_KEYS,
                       {wire.ROSTER: roster_bytes, wire.ROSTER_SIGNATURE: signature}) for s in roster.sites]
    result.bytes_down += len(roster_bytes) * len(messages)
    shares: dict[str, secagg.SharesOut] = {}
    for site, reply in _usable(ctx, result, send(ctx, messages, "masked share-keys"), "share-keys", node_of):
        rec = _record(reply)
        try:
            destinations = [str(d) for d in rec[wire.DESTINATIONS]]
            blobs = [bytes(b) for b in rec[wire.CIPHERTEXTS]]
            digests = dict(zip([str(h) for h in rec[wire.DIGEST_HOLDERS]], [bytes(d) for d in rec[wire.SHARE_DIGESTS]],
                               strict=True))
            out = secagg.SharesOut(dict(zip(destinations, blobs, strict=True)), bytes(rec[wire.COMMITMENT]),
                                   bytes(rec[wire.MASKED_TAG]), digests)
            masking.check_message(out.tag, key(site), secagg.SHARES, *secagg.shares_fields(roster.context, site, out))
        except (KeyError, TypeError, ValueError, FedSealError) as exc:
            note_rejection(ctx, result, site, f"share-keys: {exc}")
            continue
        shares[site] = out
        result.bytes_up += sum(map(len, blobs))
    if not enough(ctx, len(shares)):
        return result

    # 3. train: the global model and each site's forwarded shares; masked vectors back.
    ctx.clock.start("train", timed=False)  # the sites verify, train and mask; they report their seconds
    messages = []
    checks = {site: secagg.check_values() for site in shares}  # each site adds its own in reserved slots
    for site in shares:
        inbox = {src: out.ciphertexts[site] for src, out in shares.items() if site in out.ciphertexts}
        config = ConfigRecord({**ctx.config, wire.SOURCES: list(inbox), wire.CIPHERTEXTS: list(inbox.values()),
                               wire.CHECK_VALUES: checks[site].tobytes()})
        messages.append(message(ctx, node_of[site], wire.TRAIN, RecordDict({wire.ARRAYS: ctx.record,
                                                                             wire.CONFIG: config})))
        result.bytes_down += payload_bytes(ctx.record) + sum(map(len, inbox.values()))
    replies = send(ctx, messages, "masked train")
    ctx.clock.add_sites(site_metrics(replies))
    ctx.clock.start("check")
    size = param_count(averaged_spec(ctx.spec)) + secagg.CHECK_SLOTS  # integer buffers are not masked: not averaged
    masked: dict[str, np.ndarray] = {}
    partners: dict[str, tuple[str, ...]] = {}
    for site, reply in _usable(ctx, result, replies, "train", node_of):
        config = reply.content.get(wire.CONFIG)
        if isinstance(config, ConfigRecord) and wire.REFUSED in config:
            note_refusal(ctx, result, Verdict(site, reason=str(config[wire.REFUSED]), refused=True), reply)
            continue
        checked = _check_upload(reply, site, size, key(site), roster, result)
        if isinstance(checked, tuple) and isinstance(checked[0], str):
            note_rejection(ctx, result, site, *checked)
            continue
        masked[site], partners[site] = checked
        note_accepted(ctx, result, Verdict(site, global_recovered=_recovered(reply)), reply)
    for a, b in secagg.one_sided_pairs(partners, masked):  # a share lost on the way: b cannot stay
        if b in masked:
            del masked[b]
            note_rejection(ctx, result, b, f"its pairwise mask with site {a} would not cancel (shares lost)")
    result.used = [s for s in result.used if s in masked]
    dropouts = [s for s in shares if s not in masked]
    if not enough(ctx, len(masked)):
        result.used = []
        return result
    if len(masked) < roster.threshold:
        _skip(ctx, result, f"{len(masked)} masked vectors survive, the unmask threshold is {roster.threshold}")
        return result

    # 4. unmask: survivors reveal seed shares of survivors and key shares of dropouts.
    ctx.clock.start("aggregate")
    survivors = sorted(masked, key=masking.order_key)
    request = secagg.unmask_request(roster.context, survivors, dropouts)
    signature = sign_digest(ctx.keys.signing_key, secagg.signed_digest(request))
    messages = [_query(ctx, node_of[s], wire.STAGE_UNMASK, {wire.SURVIVORS: survivors, wire.DROPOUTS: dropouts,
                                                              wire.ROSTER_SIGNATURE: signature}) for s in survivors]
    seed_shares: dict[str, list[bytes]] = {}
    key_shares: dict[str, list[bytes]] = {}
    for site, reply in _usable(ctx, result, send(ctx, messages, "masked unmask"), "unmask", node_of):
        rec = _record(reply)
        try:
            seeds = dict(zip([str(o) for o in rec[wire.SEED_OWNERS]], [bytes(b) for b in rec[wire.SEED_SHARES]],
                             strict=True))
            keys = dict(zip([str(o) for o in rec[wire.KEY_OWNERS]], [bytes(b) for b in rec[wire.KEY_SHARES]],
                            strict=True))
            masking.check_message(bytes(rec[wire.MASKED_TAG]), key(site), secagg.REVEAL,
                                  *secagg.reveal_fields(roster.context, site, seeds, keys))
        except (KeyError, TypeError, ValueError, FedSealError) as exc:
            ctx.recorder.audit("shares_rejected", round=ctx.server_round, client=site, reason=str(exc))
            continue
        seeds, bad_seeds = secagg.check_revealed(roster.context, site, secagg.SEED_SHARE, seeds, shares)
        keys, bad_keys = secagg.check_revealed(roster.context, site, secagg.KEY_SHARE, keys, shares)
        if bad_seeds or bad_keys:  # a lying holder: its bad shares are left out, the others rebuild
            ctx.recorder.audit("shares_rejected", round=ctx.server_round, client=site,
                               reason=f"revealed shares that do not match their dealer's digest: seed shares of "
                                      f"{bad_seeds}, key shares of {bad_keys}")
        for owner, share in seeds.items():
            if owner in masked:
                seed_shares.setdefault(owner, []).append(share)
        for owner, share in keys.items():
            if owner in dropouts:
                key_shares.setdefault(owner, []).append(share)
        result.bytes_up += sum(map(len, seeds.values())) + sum(map(len, keys.values()))
    try:
        unmasked = secagg.unmask(roster, masked, partners, seed_shares, key_shares,
                                 {s: out.commitment for s, out in shares.items()}, dropouts)
    except secagg.ProtocolError as exc:
        _skip(ctx, result, str(exc), exc.culprit)
        return result
    if not secagg.checks_hold(unmasked.total, [checks[s] for s in survivors]):
        reason = ("the unmasked sum does not reproduce the sites' check values: a vector was not masked as "
                  "sealed, or a mask was removed wrongly; the global model stays as it was")
        ctx.recorder.audit("aggregate_check_failed", round=ctx.server_round, sites=survivors, reason=reason)
        log(WARNING, "Round %d: %s", ctx.server_round, reason)
        result.used = []
        return result
    result.arrays = add_mean_update(ctx.base, ctx.spec, unmasked.mean[:size - secagg.CHECK_SLOTS])
    result.used = survivors
    return result


def _skip(ctx: RoundContext, result: RoundResult, reason: str, culprit: str | None = None) -> None:
    """The round cannot be unmasked: audit it (naming the culprit when the protocol proves one, who
    then takes no further part in the run: a dealer of inconsistent shares would spoil every
    round); the global model stays as it was."""
    skip_round(ctx, result, reason, accepted=len(result.used), **({"client": culprit} if culprit else {}))
    if culprit and ctx.roster is not None:
        ctx.roster.banned[culprit] = f"in round {ctx.server_round} {reason}"


def _query(ctx: RoundContext, node_id: int, stage: str, extra: dict | None = None) -> Message:
    config = {wire.MASKED_STAGE: stage, wire.SERVER_ROUND: ctx.server_round, wire.RUN_NAME: ctx.run_name,
              **{k: v for k, v in ctx.config.items() if k == wire.SIM_KEYS_DIR}, **(extra or {})}
    return message(ctx, node_id, wire.MASKED_QUERY, RecordDict({wire.CONFIG: ConfigRecord(config)}))


def _usable(ctx: RoundContext, result: RoundResult, replies: list[Message], stage: str,
            node_of: dict[str, int] | None = None) -> list[tuple[str, Message]]:
    """(site, reply) for the replies attributed to their sending node's enrolled site
    (server/enrolment.py) that are not errors and, after setup, come from the node the site
    advertised from. A site whose reply is an error (it failed or vanished) is audited
    `site_dropped`: from then on it is a dropout."""
    out = []
    for site, reply in attribute(ctx, result, replies, f"masked {stage}"):
        nid = reply.metadata.src_node_id
        if reply.has_error():
            reason = reply.error.reason or "error reply"  # the audit keeps one line of it, the log all of it
            ctx.recorder.audit("site_dropped", round=ctx.server_round, client=site, stage=stage, reason=reason)
            log(WARNING, "Round %d (%s): site %s dropped out: %s", ctx.server_round, stage, site, reason)
            continue
        if node_of is not None and node_of.get(site) != nid:
            ctx.recorder.audit("update_rejected", round=ctx.server_round, client=site, stage=stage,
                               reason=f"reply from node {nid}, not the node site {site} set up from")
            continue
        out.append((site, reply))
    return out


def _record(reply: Message) -> ConfigRecord:
    """The reply's masked record (empty if it has none: its fields are then missing)."""
    rec = reply.content.get(wire.MASKED)
    return rec if isinstance(rec, ConfigRecord) else ConfigRecord({})


def _recovered(reply: Message) -> bool:
    """Whether the site reports it had to recover the global model before training."""
    metrics = reply.content.get(wire.METRICS)
    return isinstance(metrics, MetricRecord) and metrics.get(wire.GLOBAL_RECOVERED) == 1


def _check_upload(reply: Message, site: str, size: int, key: bytes, roster: secagg.Roster, result: RoundResult
                  ) -> tuple[np.ndarray, tuple[str, ...]] | tuple[str, dict | None]:
    """The site's masked vector and partner list after every check, or why it is rejected (and
    which chunks failed their seal)."""
    vec_rec, rec = reply.content.get(wire.MASKED_VECTOR), reply.content.get(wire.MASKED)
    if not isinstance(vec_rec, ArrayRecord) or wire.VECTOR not in vec_rec or not isinstance(rec, ConfigRecord):
        return f"no masked vector ({wire.MASKED_VECTOR!r}) or seal record ({wire.MASKED!r})", None
    array = vec_rec[wire.VECTOR]
    result.bytes_up += payload_bytes(vec_rec)
    if array.dtype != "uint32" or tuple(array.shape) != (size,):
        return f"masked vector must be uint32 of shape ({size},), got {array.dtype} {tuple(array.shape)}", None
    vector = array.numpy()
    try:
        seal, tag = bytes(rec[wire.SEAL]), bytes(rec[wire.MASKED_TAG])
        partners = tuple(str(p) for p in rec[wire.PARTNERS])
        result.bytes_up += len(seal)
        masking.check_chunks(vector, seal, key)
        masking.check_message(tag, key, secagg.MASKED, *secagg.upload_fields(roster.context, site, size, partners))
    except masking.MaskSealError as exc:
        return exc.reason, {wire.MASKED_VECTOR: list(exc.chunks)} if exc.chunks else None
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed seal record: {exc}", None
    if not set(partners) <= set(roster.neighbours.get(site, ())):
        return f"pairwise partners {list(partners)} are not all its neighbours", None
    if problem := masking.unmasked_problem(vector):  # its masks left out: the sum would not cancel
        return problem, None
    return vector, partners
