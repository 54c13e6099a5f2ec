"""`he` mode: sites send their update times their example count, CKKS-encrypted under the
federation's key that only sites hold; the server checks every ciphertext's seal, adds the
ciphertexts (their c0 parts; the seeds that stand for c1 are kept), blinds the sum with a random
mask, has one site decrypt it (rotating per round; the next one if it does not answer), removes
the mask and divides by the total example count. The server never holds the CKKS secret key: it
sees ciphertexts, and the sum."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from common import wire
from common.errors import KeyFileError
from common.integrity.seal import CHUNK_TAG_BYTES, SealError, check_chunks
from common.learning.models import flatten, param_count, unflatten
from common.secure import he
from server.checks import Verdict, num_examples_of, payload_bytes, refusal_of, site_of
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
    train_messages,
)

PAYLOAD_KIND = "he"  # the kind the sites bind into their chunk seals (client/modes/he.py)
MAX_CHUNK_BYTES = 2 * 8 * he.POLY_MODULUS_DEGREE + 4096  # an unseeded ciphertext, with room for headers


@dataclass(frozen=True)
class Upload:
    """A site's checked he payload: its ciphertexts and example count, and where it came from."""

    chunks: list[bytes]
    num_examples: int
    node_id: int


def run_round(ctx: RoundContext) -> RoundResult:
    """Send the global model, check and add every site's ciphertexts, decrypt the blinded sum."""
    public = ctx.keys.he_public_context()  # refuses a context that holds the secret key
    length = param_count(ctx.spec)
    count = he.n_chunks(length)
    messages = train_messages(ctx)
    ctx.clock.start("train", timed=False)  # the sites verify, train, encrypt and seal
    replies = send(ctx, messages, "train")
    ctx.clock.add_sites(site_metrics(replies))
    ctx.clock.start("check")
    result = RoundResult(bytes_down=payload_bytes(ctx.record) * len(messages))
    total = he.Sum(public, count)
    total_examples = 0
    decryptors: list[tuple[str, int]] = []
    for site, reply in attribute(ctx, result, replies, "train"):
        result.bytes_up += upload_bytes(reply)
        verdict, upload = check_he_reply(reply, ctx, count)
        if verdict.refused:
            note_refusal(ctx, result, verdict, reply)
            continue
        if upload is None:
            note_rejection(ctx, result, site, verdict.reason)
            continue
        if problem := examples_problem(ctx, site, upload.num_examples):
            note_rejection(ctx, result, site, problem)
            continue
        try:
            total.add_site(upload.chunks, f"site {verdict.site}")
        except he.HEError as exc:  # other parameters, truncated, garbled: this site only
            note_rejection(ctx, result, verdict.site, f"malformed ciphertext: {exc}")
            continue
        total_examples += upload.num_examples
        decryptors.append((verdict.site, upload.node_id))
        note_accepted(ctx, result, verdict, reply)

    if not enough(ctx, total.sites):  # fewer sites than min-clients: the sum is never decrypted
        return result
    ctx.clock.start("aggregate")
    blinded, mask = total.blinded()
    ctx.clock.start("decrypt")
    summed = decrypt_blinded(ctx, result, blinded, decryptors, lambda raw: he.unblind(raw, mask, public, length))
    if summed is None:
        ctx.recorder.audit("round_skipped", round=ctx.server_round, reason="no site decrypted the sum")
        log(WARNING, "Round %d skipped: no site decrypted the sum; the global model stays as it was",
            ctx.server_round)
        return result
    ctx.clock.start("aggregate")
    mean_update = summed / total_examples
    result.arrays = unflatten(flatten(ctx.base, ctx.spec) + mean_update, ctx.spec)
    return result


def check_he_reply(reply: Message, ctx: RoundContext, count: int) -> tuple[Verdict, Upload | None]:
    """The site's refusal, a rejection with its reason, or its checked upload: `count` ciphertexts
    of sane size, each carrying the site's valid seal for this run and round."""
    if (refusal := refusal_of(reply)) is not None:
        return refusal, None
    site = site_of(reply)

    def reject(reason: str) -> tuple[Verdict, None]:
        return Verdict(site, reason=reason), None

    if reply.has_error():
        return reject(f"site reported an error: {reply.error.reason}")
    chunks = _byte_list(reply.content.get(wire.HE_CIPHERTEXTS), wire.CHUNKS)
    tags = _byte_list(reply.content.get(wire.SEALS), wire.TAGS)
    if chunks is None:
        return reject(f"no list of ciphertexts under {wire.HE_CIPHERTEXTS!r}")
    if tags is None:
        return reject(f"no list of seal tags under {wire.SEALS!r}")
    if len(chunks) != count:
        return reject(f"{len(chunks)} ciphertexts, expected {count} for this model")
    if any(len(c) > MAX_CHUNK_BYTES for c in chunks) or any(len(t) != CHUNK_TAG_BYTES for t in tags):
        return reject("a ciphertext or seal tag has an impossible size")
    n = num_examples_of(reply)
    if isinstance(n, str):
        return reject(n)
    try:
        seal_key = ctx.keys.seal_key(site)
    except KeyFileError:
        return reject("no seal key for this site id (unknown site)")
    try:
        check_chunks(chunks, tags, seal_key, ctx.run_name, ctx.server_round, site, PAYLOAD_KIND)
    except SealError as exc:
        return reject(f"seal check failed: {exc.reason}")
    metrics = reply.content[wire.METRICS]
    verdict = Verdict(site, global_recovered=bool(metrics.get(wire.GLOBAL_RECOVERED, 0)))
    return verdict, Upload(chunks, n, reply.metadata.src_node_id)


def _byte_list(record: object, key: str) -> list[bytes] | None:
    if not isinstance(record, ConfigRecord):
        return None
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        return None
    return value


def upload_bytes(reply: Message) -> int:
    """Bytes of the ciphertexts and seals in a reply (what `bytes_up` counts)."""
    if reply.has_error():
        return 0
    return sum(len(v) for key, record_key in ((wire.HE_CIPHERTEXTS, wire.CHUNKS), (wire.SEALS, wire.TAGS))
               for v in (_byte_list(reply.content.get(key), record_key) or []))


def decrypt_blinded(ctx: RoundContext, result: RoundResult, blinded: he.Summed, decryptors: list[tuple[str, int]],
                    unblind: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | None:
    """Ask one site to decrypt the blinded sum and return `unblind(its coefficients)`: the round's
    turn in the rotation first, then the next accepted site whenever one fails or does not answer
    in time. None if none did."""
    if not decryptors:
        return None
    decryptors = sorted(decryptors, key=lambda d: (len(d[0]), d[0]))  # by site id, not by arrival
    start = (ctx.server_round - 1) % len(decryptors)
    content = RecordDict({wire.HE_SUM: ArrayRecord({wire.C0: Array(blinded.c0)}),
                          wire.HE_CIPHERTEXTS: ConfigRecord({wire.SEEDS: blinded.seeds}),
                          wire.CONFIG: ConfigRecord(ctx.config)})
    expected = blinded.c0.shape
    for site, node_id in decryptors[start:] + decryptors[:start]:
        result.bytes_down += blinded.c0.nbytes + sum(map(len, blinded.seeds))
        replies = send(ctx, [message(ctx, node_id, wire.DECRYPT, content)], "decrypt")
        reason = "no reply in time"
        for reply in replies:
            record = None if reply.has_error() else reply.content.get(wire.DECRYPTED)
            array = record.get(wire.COEFFICIENTS) if isinstance(record, ArrayRecord) else None
            if isinstance(array, Array) and array.dtype == "uint64" and tuple(array.shape) == expected:
                result.bytes_up += len(array.data)
                try:
                    summed = unblind(array.numpy())
                except (he.HEError, ValueError) as exc:
                    reason = f"bad coefficients: {exc}"
                    continue
                ctx.recorder.audit("sum_decrypted", round=ctx.server_round, client=site, sites=len(result.used))
                log(INFO, "Round %d: site %s decrypted the blinded sum", ctx.server_round, site)
                return summed
            reason = (f"error: {reply.error.reason}" if reply.has_error() else
                      "reply holds no coefficients of the expected shape")
        ctx.recorder.audit("decrypt_failed", round=ctx.server_round, client=site, reason=reason)
        log(WARNING, "Round %d: site %s did not decrypt the sum (%s); asking another", ctx.server_round, site, reason)
    return None
