"""`he` mode: sites send their update times their example count, CKKS-encrypted under the
federation's key that only sites hold; the server checks every ciphertext's seal, adds the
ciphertexts (their c0 parts; the seeds that stand for c1 are kept), blinds the sum with a random
mask, has one site decrypt it (rotating per round; the next one if it does not answer), removes
the mask and divides by the total example count. The server never holds the CKKS secret key: it
sees ciphertexts, and the sum."""

from __future__ import annotations

import os
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from common import wire
from common.errors import KeyFileError
from common.integrity.seal import CHUNK_TAG_BYTES, SealError, check_chunks
from common.learning.models import flatten, param_count, unflatten
from common.secure import he, masking
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
)

PAYLOAD_KIND = "he"  # the kind the sites bind into their chunk seals (client/modes/he.py)
CHECK_SLOTS = 8  # server-chosen values each site encrypts after its update (client/modes/he.py)
CHECK_TOLERANCE = 1e-4  # CKKS error of a 100-site sum is ~1e-7; garbage from another key is ~1e5
MAX_MEAN_UPDATE = masking.DEFAULT_CLIP  # the per-parameter range masked mode clips updates to
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
    count = he.n_chunks(length + CHECK_SLOTS)
    checks = {nid: check_values() for nid in ctx.node_ids}  # each site encrypts its own after its update
    messages = [message(ctx, nid, wire.TRAIN, RecordDict({wire.ARRAYS: ctx.record, wire.CONFIG: ConfigRecord(
        {**ctx.config, wire.CHECK_VALUES: checks[nid].tobytes()})})) for nid in ctx.node_ids]
    ctx.clock.start("train", timed=False)  # the sites verify, train, encrypt and seal
    replies = send(ctx, messages, "train")
    ctx.clock.add_sites(site_metrics(replies))
    ctx.clock.start("check")
    result = RoundResult(bytes_down=payload_bytes(ctx.record) * len(messages))
    total = he.Sum(public, count)
    total_examples, expected = 0, np.zeros(CHECK_SLOTS)
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
        expected += checks.get(upload.node_id, np.zeros(CHECK_SLOTS))
        decryptors.append((verdict.site, upload.node_id))
        note_accepted(ctx, result, verdict, reply)

    if not enough(ctx, total.sites):  # fewer sites than min-clients: the sum is never decrypted
        return result
    ctx.clock.start("decrypt")
    summed = decrypt_checked(ctx, result, total, decryptors, public, length + CHECK_SLOTS)
    if summed is None:
        reason = "no site decrypted the sum, or no two decryptions agreed"
        ctx.recorder.audit("round_skipped", round=ctx.server_round, reason=reason)
        log(WARNING, "Round %d skipped: %s; the global model stays as it was", ctx.server_round, reason)
        return result
    ctx.clock.start("aggregate")
    mean_update = summed[:length] / total_examples
    if (problem := aggregate_problem(summed[length:], expected, mean_update)) is not None:
        ctx.recorder.audit("aggregate_check_failed", round=ctx.server_round, sites=len(result.used), reason=problem)
        log(WARNING, "Round %d: %s; the global model stays as it was", ctx.server_round, problem)
        result.used = []
        return result
    result.arrays = unflatten(flatten(ctx.base, ctx.spec) + mean_update, ctx.spec)
    return result


def check_values() -> np.ndarray:
    """Fresh server-chosen values in [-1, 1) one site encrypts in the slots after its update."""
    return np.random.default_rng(int.from_bytes(os.urandom(16), "big")).uniform(-1, 1, CHECK_SLOTS)


def aggregate_problem(slots: np.ndarray, expected: np.ndarray, mean_update: np.ndarray) -> str | None:
    """Why a decrypted sum must not become the model, or None: its check slots must reproduce the
    summed sites' check values (to CKKS precision), and the mean update must stay finite and
    within MAX_MEAN_UPDATE (a second line of defence)."""
    error = float(np.max(np.abs(slots - expected))) if np.all(np.isfinite(slots)) else float("inf")
    if not error <= CHECK_TOLERANCE:
        return (f"the decrypted sum misses the sites' check values by {error:.3g} (tolerance {CHECK_TOLERANCE}): "
                "a ciphertext under another key, or a wrong decryption")
    peak = float(np.max(np.abs(mean_update))) if np.all(np.isfinite(mean_update)) else float("inf")
    if not peak <= MAX_MEAN_UPDATE:
        return f"the decrypted mean update reaches {peak:.3g}, above the bound {MAX_MEAN_UPDATE}"
    return None


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


def decrypt_checked(ctx: RoundContext, result: RoundResult, total: he.Sum, decryptors: list[tuple[str, int]],
                    public: bytes, length: int) -> np.ndarray | None:
    """The decrypted sum (first `length` reals), checked by two sites: the round's turn in the
    rotation and the next each decrypt the sum under their own independent random mask; their
    results (exact plaintext coefficients) must agree bit for bit. On a mismatch, or when one fails
    or does not answer, the next site is asked, until two agree; every site whose result differs
    from the agreed one is named (`decrypt_failed`). With a single decryptor its result stands
    (the check values still guard it). None if none answered or no two agree."""
    order = sorted(decryptors, key=lambda d: (len(d[0]), d[0]))  # by site id, not by arrival
    start = (ctx.server_round - 1) % len(order) if order else 0
    pending = order[start:] + order[:start]
    answers: list[tuple[str, np.ndarray]] = []
    while pending:
        batch, pending = pending[:2 - min(len(answers), 1)], pending[2 - min(len(answers), 1):]
        answers += _ask_decrypt(ctx, result, total, batch, public)
        agreed = next((a for i, (_, a) in enumerate(answers) for _, b in answers[i + 1:] if np.array_equal(a, b)), None)
        if agreed is not None:
            witnesses = [s for s, a in answers if np.array_equal(a, agreed)]
            for site, coeffs in answers:
                if not np.array_equal(coeffs, agreed):
                    ctx.recorder.audit("decrypt_failed", round=ctx.server_round, client=site,
                                       reason=f"its decryption of the sum differs from that of sites {witnesses}")
                    log(WARNING, "Round %d: site %s decrypted the sum wrongly", ctx.server_round, site)
            return he.unblind(agreed, np.zeros_like(agreed), public, length)
    if len(answers) == 1:  # every other decryptor failed or was silent: availability first
        return he.unblind(answers[0][1], np.zeros_like(answers[0][1]), public, length)
    return None


def _ask_decrypt(ctx: RoundContext, result: RoundResult, total: he.Sum, batch: list[tuple[str, int]],
                 public: bytes) -> list[tuple[str, np.ndarray]]:
    """Ask each site of `batch` (at once) to decrypt the sum under a fresh mask of its own; return
    (site, the sum's plaintext coefficients) of each that answered well; audit the others."""
    masks, messages = {}, []
    for site, node_id in batch:
        blinded, masks[node_id] = total.blinded()
        messages.append(message(ctx, node_id, wire.DECRYPT, RecordDict({
            wire.HE_SUM: ArrayRecord({wire.C0: Array(blinded.c0)}),
            wire.HE_CIPHERTEXTS: ConfigRecord({wire.SEEDS: blinded.seeds}), wire.CONFIG: ConfigRecord(ctx.config)})))
        result.bytes_down += blinded.c0.nbytes + sum(map(len, blinded.seeds))
    replies = {r.metadata.src_node_id: r for r in send(ctx, messages, "decrypt")}
    out = []
    for site, node_id in batch:
        reply, reason = replies.get(node_id), "no reply in time"
        if reply is not None and reply.has_error():
            reason = f"error: {reply.error.reason}"
        elif reply is not None:
            record = reply.content.get(wire.DECRYPTED)
            array = record.get(wire.COEFFICIENTS) if isinstance(record, ArrayRecord) else None
            reason = "reply holds no coefficients of the expected shape"
            if isinstance(array, Array) and array.dtype == "uint64" and tuple(array.shape) == masks[node_id].shape:
                result.bytes_up += len(array.data)
                try:
                    out.append((site, he.remove_mask(array.numpy(), masks[node_id], public)))
                    ctx.recorder.audit("sum_decrypted", round=ctx.server_round, client=site, sites=len(result.used))
                    log(INFO, "Round %d: site %s decrypted the blinded sum", ctx.server_round, site)
                    continue
                except (he.HEError, ValueError) as exc:
                    reason = f"bad coefficients: {exc}"
        ctx.recorder.audit("decrypt_failed", round=ctx.server_round, client=site, reason=reason)
        log(WARNING, "Round %d: site %s did not decrypt the sum (%s)", ctx.server_round, site, reason)
    return out
