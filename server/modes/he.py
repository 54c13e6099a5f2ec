"""`he` mode: sites send their update times their example count, CKKS-encrypted under the
federation's key that only sites hold; the server checks every ciphertext's seal, adds the
ciphertexts (their c0 parts; the seeds that stand for c1 are kept), blinds the sum with a random
mask, has two sites decrypt it (rotating per round; they must agree), removes the mask and
divides by the total example count. The server never holds the CKKS secret key: it sees
ciphertexts, and sums of at least min-clients sites.

The sum is kept as disjoint partial sums (groups of at least min-clients sites), so that a sum
that fails its check values is searched by bisection over sub-sums (common/secure/subsums.py):
the failing groups are left out and named, the others make the round's model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from common import wire
from common.errors import InputError, KeyFileError
from common.integrity.seal import CHUNK_TAG_BYTES, SealError, check_chunks
from common.learning.models import add_mean_update, averaged_spec, param_count
from common.secure import he, masking, subsums
from server.checks import Verdict, num_examples_of, payload_bytes, refusal_of
from server.enrolment import Attribution, examples_problem
from server.modes.he_decrypt import Decryptors
from server.roster import site_order
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

PAYLOAD_KIND = "he"  # the kind the sites bind into their chunk seals (client/modes/he.py)
CHECK_SLOTS = 8  # server-chosen values each site encrypts after its update (client/modes/he.py)
CHECK_TOLERANCE = 1e-4  # CKKS error of a 100-site sum is ~1e-7; garbage from another key is ~1e5
MAX_MEAN_UPDATE = masking.DEFAULT_CLIP  # the per-parameter range masked mode clips updates to
MAX_CHUNK_BYTES = 2 * 8 * he.POLY_MODULUS_DEGREE + 4096  # an unseeded ciphertext, with room for headers


@dataclass
class Group:
    """Disjoint part of a round's sum: its sites' summed ciphertexts, who they are, their summed
    example counts and check values."""

    summed: he.Summed
    sites: list[str]
    examples: int
    expected: np.ndarray


class PartialSums:
    """A round's homomorphic sum kept as `leaves` partial sums: each accepted site is added to leaf
    `positions[its node] % leaves` (a fresh random order each round, so a site's partners change
    from round to round; without positions, the next leaf in turn), then dropped (memory does not
    grow with the sites)."""

    def __init__(self, public: bytes, count: int, leaves: int, positions: dict[int, int] | None = None) -> None:
        self.public, self.positions = public, positions or {}
        self.sums = [he.Sum(public, count) for _ in range(leaves)]
        self.sites: list[list[str]] = [[] for _ in range(leaves)]
        self.examples = [0] * leaves
        self.expected = [np.zeros(CHECK_SLOTS) for _ in range(leaves)]
        self.total_sites = 0

    def add(self, site: str, upload: Upload, checks: np.ndarray) -> None:
        """Add a checked upload; HEError (this site only, the sums unchanged) if it is malformed."""
        leaf = self.positions.get(upload.node_id, self.total_sites) % len(self.sums)
        self.sums[leaf].add_site(upload.chunks, f"site {site}")
        self.sites[leaf].append(site)
        self.examples[leaf] += upload.num_examples
        self.expected[leaf] = self.expected[leaf] + checks
        self.total_sites += 1

    def groups(self, min_sites: int) -> list[Group]:
        """The leaves merged into groups of at least `min_sites` sites (subsums.merge_small)."""
        out = []
        for leaves in subsums.merge_small([len(s) for s in self.sites], min_sites):
            out.append(self.join([Group(self.sums[i].total(), self.sites[i], self.examples[i], self.expected[i])
                                  for i in leaves]))
        return out

    def join(self, groups: list[Group]) -> Group:
        """One group of the sites of `groups`, their ciphertexts summed."""
        return Group(he.combine([g.summed for g in groups], self.public), [s for g in groups for s in g.sites],
                     sum(g.examples for g in groups), np.sum([g.expected for g in groups], axis=0))


@dataclass(frozen=True)
class Upload:
    """A site's checked he payload: its ciphertexts and example count, and where it came from."""

    chunks: list[bytes]
    num_examples: int
    node_id: int


def check_he_context(public: bytes, cohort: int) -> None:
    """InputError unless the federation's HE context can hold the sum of a whole cohort."""
    if cohort > (limit := he.max_sites(public)):
        raise InputError(f"secure-mode he: the federation's HE context sums at most {limit} sites, a round's cohort "
                         f"holds {cohort}; set clients-per-round to at most {limit}")


def run_round(ctx: RoundContext) -> RoundResult:
    """Send the global model, check and add every site's ciphertexts, decrypt the blinded sum (and,
    if it fails its check, sub-sums to find the groups that spoil it)."""
    public = ctx.keys.he_public_context()  # refuses a context that holds the secret key
    length = param_count(averaged_spec(ctx.spec))  # integer buffers are not encrypted: not averaged
    count = he.n_chunks(length + CHECK_SLOTS)
    checks = {nid: check_values() for nid in ctx.node_ids}  # each site encrypts its own after its update
    messages = [message(ctx, nid, wire.TRAIN, RecordDict({wire.ARRAYS: ctx.record, wire.CONFIG: ConfigRecord(
        {**ctx.config, wire.CHECK_VALUES: checks[nid].tobytes()})})) for nid in ctx.node_ids]
    result = RoundResult(bytes_down=payload_bytes(ctx.record) * len(messages))
    sum_bytes = count * he.POLY_MODULUS_DEGREE * 8
    shuffled = np.random.default_rng(int.from_bytes(os.urandom(16), "big")).permutation(sorted(ctx.node_ids))
    parts = PartialSums(public, count, subsums.leaf_count(len(ctx.node_ids), ctx.settings.min_clients, sum_bytes),
                        {int(nid): i for i, nid in enumerate(shuffled)})
    decryptors = Decryptors(ctx, result, public, length + CHECK_SLOTS)
    metrics: list = []
    senders = Attribution(ctx, result, "train")

    def add(reply: Message) -> None:  # each reply is attributed, checked and summed as it arrives, then dropped
        metrics.extend(site_metrics([reply]))
        result.bytes_up += upload_bytes(reply)
        if (site := senders.site(reply)) is None:
            return
        verdict, upload = check_he_reply(reply, ctx, count, site)
        if verdict.refused:
            note_refusal(ctx, result, verdict, reply)
            return
        if upload is None:
            note_rejection(ctx, result, site, verdict.reason)
            return
        if problem := examples_problem(ctx, site, upload.num_examples):
            note_rejection(ctx, result, site, problem)
            return
        try:
            parts.add(site, upload, checks.get(upload.node_id, np.zeros(CHECK_SLOTS)))
        except he.HEError as exc:  # other parameters, truncated, garbled: this site only
            note_rejection(ctx, result, site, f"malformed ciphertext: {exc}")
            return
        decryptors.sites.append((site, upload.node_id))
        note_accepted(ctx, result, verdict, reply)

    def timed_add(reply: Message) -> None:
        with ctx.clock.adding("check"):
            add(reply)

    ctx.clock.start("train", timed=False)  # the sites verify, train, encrypt and seal
    send(ctx, messages, "train", on_reply=timed_add)
    ctx.clock.add_sites(metrics)

    if not enough(ctx, parts.total_sites):  # fewer sites than min-clients: the sum is never decrypted
        return result
    ctx.clock.start("decrypt")
    groups = parts.groups(ctx.settings.min_clients)
    whole = parts.join(groups)
    summed = decryptors.decrypt(whole.summed)
    if summed is None:
        skip_round(ctx, result, "no site decrypted the sum, or no two decryptions agreed")
        return result
    sites, examples = whole.sites, whole.examples
    if (problem := group_problem(summed, whole, length)) is not None:
        ctx.recorder.audit("aggregate_check_failed", round=ctx.server_round, sites=len(whole.sites), reason=problem)
        log(WARNING, "Round %d: %s; searching sub-sums for the culprit", ctx.server_round, problem)
        found = search_groups(ctx, result, groups, decryptors, parts, length)
        if found is None:  # the round was skipped
            return result
        summed, sites, examples = found
    ctx.clock.start("aggregate")
    kept = set(sites)
    result.used = [s for s in result.used if s in kept]
    result.arrays = add_mean_update(ctx.base, ctx.spec, summed[:length] / examples)
    return result


def group_problem(summed: np.ndarray, group: Group, length: int) -> str | None:
    """Why the decrypted sum of `group` must not become (part of) the model, or None."""
    return aggregate_problem(summed[length:], group.expected, summed[:length] / group.examples)


def search_groups(ctx: RoundContext, result: RoundResult, groups: list[Group], decryptors: Decryptors,
                  parts: PartialSums, length: int) -> tuple[np.ndarray, list[str], int] | None:
    """Bisection over the groups' sub-sums (each cross-checked by two decrypting sites): the clean
    groups' decrypted sum, their sites and summed example count, with each failing group left out
    and named (a one-site group as `update_rejected`, a larger one as `sites_excluded`); None, with
    the round skipped, when a sub-sum could not be decrypted and agreed or fewer than min-clients
    sites remain."""
    decrypted: dict[range, np.ndarray] = {}
    problems: dict[range, str] = {}

    def passes(span: range) -> bool | None:
        group = parts.join(groups[span.start:span.stop])
        summed = decryptors.decrypt(group.summed, agreed_only=True)
        if summed is None:
            return None
        if (problem := group_problem(summed, group, length)) is not None:
            problems[span] = problem
            return False
        decrypted[span] = summed
        return True

    search = subsums.bisect(len(groups), passes)
    if search.undecided:
        skip_round(ctx, result, "a sub-sum of the failing sum could not be decrypted by two agreeing sites: "
                                "the culprit is unknown")
        return None
    name_failing(ctx, result, [(groups[i].sites, problems.get(range(i, i + 1), "its sum fails its check"))
                               for i in search.bad])
    clean = [g for span in search.good for g in groups[span.start:span.stop]]
    sites = [s for g in clean for s in g.sites]
    if not enough(ctx, len(sites)):
        result.used = []
        return None
    return np.sum([decrypted[span] for span in search.good], axis=0), sites, sum(g.examples for g in clean)


def name_failing(ctx: RoundContext, result: RoundResult, failing: list[tuple[list[str], str]]) -> None:
    """Name the failing groups (sites, why) a search found. A one-site group names its site
    (`update_rejected`); a larger one is named as a group (`sites_excluded`). Groups are drawn
    afresh each round, so the sites of the one failing group of successive attacked rounds are
    intersected (`Roster.suspects`): once a single site is left, it is named too. A named site
    takes no further part in the run (`Roster.banned`)."""
    roster = ctx.roster
    culprits = [sites[0] for sites, _ in failing if len(sites) == 1]
    groups = [(sites, why) for sites, why in failing if len(sites) > 1]
    if roster is not None:
        if len(groups) == 1 and not culprits:
            roster.suspects = (roster.suspects & set(groups[0][0])) or set(groups[0][0])
        else:
            roster.suspects = set()
    for sites, why in groups:
        reason = (f"one or more of these {len(sites)} sites' ciphertexts spoil the sum: {why}; min-clients "
                  f"{ctx.settings.min_clients} keeps the search from naming fewer")
        ctx.recorder.audit("sites_excluded", round=ctx.server_round, clients=sorted(sites, key=site_order),
                           reason=reason)
        log(WARNING, "Round %d: sites %s left out: %s", ctx.server_round, sites, reason)
    why = {site: w for sites, w in failing for site in sites}
    for site in culprits:
        note_rejection(ctx, result, site, f"its ciphertexts spoil the sum (found by bisection): {why[site]}")
    if roster is not None and len(roster.suspects) == 1:
        [site] = roster.suspects
        note_rejection(ctx, result, site, "its ciphertexts spoil the sum: it is the one site in the failing group "
                                          "of every attacked round since it was first suspected (found by bisection)")
        culprits.append(site)
        roster.suspects = set()
    if roster is not None:
        roster.banned.update({site: f"in round {ctx.server_round} its ciphertexts spoiled the sum (found by bisection)"
                              for site in culprits})


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


def check_he_reply(reply: Message, ctx: RoundContext, count: int, site: str) -> tuple[Verdict, Upload | None]:
    """The site's refusal, a rejection with its reason, or its checked upload: `count` ciphertexts
    of sane size, each carrying `site`'s valid seal (the site the reply is attributed to) for this
    run and round."""
    if (refusal := refusal_of(reply)) is not None:
        return refusal, None

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
