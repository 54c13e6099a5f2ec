"""How a Flower node comes to speak for a site, and how every reply is pinned on its sender (DESIGN.md §2.5).

Each connected node not yet bound proves once, with its site's seal key, which site it is and how
many training examples it holds (`query.enrol`, common/integrity/enrol.py; the proof covers the
node id the server sees as the reply's sender). Only then does the roster (server/roster.py) bind
that site to that node (in deployment, the SuperNode-authenticated node) and fix that count for
the run. Every connected node is enrolled, not only the round's cohort, so a cohort is drawn from
registered sites and sent only to bound nodes.
- A node that names a site with no seal key is audited `site_unknown` once and never asked again.
- A node whose proof fails, or that claims a site already bound to another connected node, is
  audited `enrolment_rejected` as `node-<id>`, never as the site it claimed, and is not bound (it
  is asked again at the next round).

Every reply is then attributed to the node that sent it (`attribute`): a reply claiming another
site's id, a second reply of one site in one step, or a reply from a node that never enrolled is
rejected as its sender. No site's FedAvg weight in a round's cohort may exceed `max-site-weight`
(`capped`).
"""

from __future__ import annotations

import os
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from common import wire
from common.errors import FedSealError
from common.integrity import enrol
from common.integrity.keys import ServerKeys
from common.run.records import RunRecorder
from common.run.settings import RunSettings
from common.run.stages import StageClock
from server import roster as roster_mod
from server.roster import Roster
from server.rounds import RoundContext, RoundResult, note_rejection, send_and_receive


def round_nodes(grid: Grid, roster: Roster, keys: ServerKeys, settings: RunSettings, recorder: RunRecorder,
                run_name: str, server_round: int, config: dict, clock: StageClock | None = None
                ) -> tuple[list[int], list[str]]:
    """The nodes this round sends to, and the round's cohort: every connected node not yet bound
    is asked to enrol, the cohort is drawn from the registered sites, and its bound nodes whose
    site's weight fits under max-site-weight take part. `config`: what every request carries
    besides the enrolment's own fields (a simulation's key folder); `clock` times stage `enrol`."""
    try:  # the run waited for its first sites before round 1 (roster.first_nodes): a site gone since must not hold it
        connected = roster_mod.wait_for_nodes(grid, settings.min_clients, float(settings.round_timeout))
    except FedSealError as exc:  # the round goes on with fewer sites (and is skipped: too few replies)
        connected = set(grid.get_node_ids())
        log(WARNING, "Round %d: %s", server_round, exc)
    enrol_nodes(grid, roster, keys, recorder, connected, run_name, server_round, float(settings.round_timeout),
                config, clock)
    nodes, sampled = roster_mod.cohort(roster, settings, recorder, server_round, connected)
    nodes = without_banned(roster, nodes, recorder, server_round)
    return capped(roster, nodes, settings.max_site_weight, recorder, server_round), sampled


def without_banned(roster: Roster, nodes: list[int], recorder: RunRecorder, server_round: int) -> list[int]:
    """`nodes` without those of sites the protocol proved to spoil rounds (`Roster.banned`); each is
    audited `site_rejected` in every round it is left out of."""
    for nid in nodes:
        if (site := roster.site_of[nid]) in roster.banned:
            reason = f"left out for the rest of the run: {roster.banned[site]}"
            recorder.audit("site_rejected", round=server_round, client=site, reason=reason)
            log(WARNING, "Round %d: site %s %s", server_round, site, reason)
    return [nid for nid in nodes if roster.site_of[nid] not in roster.banned]


def enrol_nodes(grid: Grid, roster: Roster, keys: ServerKeys, recorder: RunRecorder, connected: set[int],
                run_name: str, server_round: int, timeout: float, config: dict,
                clock: StageClock | None = None) -> None:
    """Ask every connected node not yet bound (nor audited site_unknown) to prove its site, and bind
    each that does. A node that does not answer in time is asked again at the next round."""
    new = roster.unbound(connected)
    if not new:
        return
    if clock is not None:
        clock.start("enrol")  # round 1: includes the sites' start-up
    nonce = os.urandom(enrol.NONCE_LEN)  # fresh per request: a proof of an earlier request fails
    request = ConfigRecord({**config, wire.NONCE: nonce, wire.RUN_NAME: run_name, wire.SERVER_ROUND: server_round})
    messages = [Message(content=RecordDict({wire.CONFIG: request}), dst_node_id=nid, message_type=wire.ENROL,
                        group_id=f"enrol-{server_round}") for nid in new]
    answered = set()
    for reply in send_and_receive(grid, messages, timeout):
        nid = reply.metadata.src_node_id
        if nid in new and nid not in answered:
            answered.add(nid)
            _enrol(roster, keys, recorder, reply, connected, run_name, server_round, nonce)
    if silent := [nid for nid in new if nid not in answered]:
        log(WARNING, "%d node(s) did not enrol within %g s; asking again next round", len(silent), timeout)
    log(INFO, "Roster: %d of %d registered sites enrolled from a node", len(roster.node_of), len(roster.sites))


def _enrol(roster: Roster, keys: ServerKeys, recorder: RunRecorder, reply: Message, connected: set[int],
           run_name: str, server_round: int, nonce: bytes) -> None:
    """Check one node's enrolment reply; bind it, or audit why not."""
    nid = reply.metadata.src_node_id
    config = None if reply.has_error() else reply.content.get(wire.CONFIG)
    claimed = config.get(wire.CLIENT_ID) if isinstance(config, ConfigRecord) else None
    examples = config.get(wire.NUM_EXAMPLES) if isinstance(config, ConfigRecord) else None
    tag = config.get(wire.ENROL_PROOF) if isinstance(config, ConfigRecord) else None
    if reply.has_error():
        problem = f"error reply: {reply.error.reason}"
    elif not isinstance(claimed, str):
        problem = f"no {wire.CLIENT_ID!r} in its reply"
    elif not roster.registered(claimed):
        reason = f"names site {claimed!r}, which has no site keys in this federation"
        roster.unknown.add(nid)
        recorder.audit("site_unknown", round=server_round, node=nid, reason=reason)
        log(WARNING, "Node %d left out of the federation: %s", nid, reason)
        return
    elif not isinstance(tag, bytes):
        problem = f"claims site {claimed!r} with no {wire.ENROL_PROOF!r} in its reply"
    elif examples == 0 and int(config.get(wire.SITE_FAILED, 0) or 0) == 1:  # the site cannot use its own data
        try:
            enrol.check(tag, keys.seal_key(claimed), run_name, claimed, nid, 0, nonce)
        except enrol.EnrolmentError as exc:
            problem = str(exc)
        else:  # proven: named by its site id, not bound, asked again next round
            recorder.audit("site_failed", round=server_round, client=claimed, reason=str(config.get(wire.REFUSED, "")))
            log(WARNING, "Round %d: site %s cannot take part: %s", server_round, claimed, config.get(wire.REFUSED))
            return
    elif isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        problem = f"its number of examples must be an integer >= 1, got {examples!r}"
    else:
        try:
            enrol.check(tag, keys.seal_key(claimed), run_name, claimed, nid, examples, nonce)
        except enrol.EnrolmentError as exc:
            problem = str(exc)
        else:
            problem = roster.bind(claimed, nid, examples, connected)
            if problem is None:
                recorder.audit("site_enrolled", round=server_round, client=claimed, node=nid, examples=examples)
                return
    recorder.audit("enrolment_rejected", round=server_round, client=f"node-{nid}",
                   claimed=claimed if isinstance(claimed, str) else None, reason=problem)
    log(WARNING, "Round %d: node %s not enrolled: %s", server_round, nid, problem)


def capped(roster: Roster, nodes: list[int], cap: float, recorder: RunRecorder, server_round: int) -> list[int]:
    """`nodes` (bound) without those whose site's enrolled count is above `cap` of the cohort's
    total; those sites are audited `site_rejected`."""
    counts = {roster.site_of[nid]: roster.examples[roster.site_of[nid]] for nid in nodes}
    heavy = overweight(counts, cap)
    for site in heavy:
        reason = (f"its {counts[site]} examples are {counts[site] / sum(counts.values()):.3f} of the round's "
                  f"total, above max-site-weight {cap}")
        recorder.audit("site_rejected", round=server_round, client=site, reason=reason)
        log(WARNING, "Round %d: site %s left out: %s", server_round, site, reason)
    return [nid for nid in nodes if roster.site_of[nid] not in heavy]


def overweight(counts: dict[str, int], cap: float) -> list[str]:
    """Sites whose share n / sum(n) of `counts` exceeds `cap`. The check applies only when more
    than 1/cap sites take part: with fewer, equal shares would already reach the cap."""
    total = sum(counts.values())
    if cap >= 1 or len(counts) * cap <= 1 or total <= 0:
        return []
    return sorted(s for s, n in counts.items() if n > cap * total)


def claimed_sites(reply: Message) -> list[str]:
    """The site ids a reply claims (its CONFIG and masked records' `client-id`)."""
    if reply.has_error():
        return []
    records = (reply.content.get(key) for key in (wire.CONFIG, wire.MASKED))
    return [r[wire.CLIENT_ID] for r in records if isinstance(r, ConfigRecord) and isinstance(r.get(wire.CLIENT_ID), str)]


class Attribution:
    """One step's attribution of replies to the sites their senders enrolled as: call `site(reply)`
    on each reply as it arrives (a round that sums replies as they come keeps none of them)."""

    def __init__(self, ctx: RoundContext, result: RoundResult, stage: str):
        self.ctx, self.result, self.stage, self.seen = ctx, result, stage, set()

    def site(self, reply: Message) -> str | None:
        """The site `reply` counts for: that of the enrolled node that sent it, when none of its
        records claims another site and it is that site's first reply in this step. Otherwise None, and the reply is
        rejected (`update_rejected`) naming its sender. Without a roster (`ctx.roster` None) a
        reply keeps the id it claims."""
        ctx, stage = self.ctx, self.stage
        nid, claims = reply.metadata.src_node_id, claimed_sites(reply)
        if ctx.roster is None:
            return claims[0] if claims else f"node-{nid}"
        site = ctx.roster.site_of.get(nid)
        if site is None:
            note_rejection(ctx, self.result, f"node-{nid}", f"{stage}: reply from node {nid}, which never enrolled")
        elif (claimed := next((c for c in claims if c != site), None)) is not None:
            note_rejection(ctx, self.result, site,
                           f"{stage}: claims site {claimed!r}, but node {nid} enrolled as site {site!r}")
        elif site in self.seen:
            note_rejection(ctx, self.result, site, f"{stage}: a second reply of this site in one step")
        else:
            self.seen.add(site)
            return site
        return None


def attribute(ctx: RoundContext, result: RoundResult, replies: list[Message], stage: str) -> list[tuple[str, Message]]:
    """(site, reply) for each of `replies` that `Attribution.site` keeps, in order."""
    who = Attribution(ctx, result, stage)
    return [(site, reply) for reply in replies if (site := who.site(reply)) is not None]


def examples_problem(ctx: RoundContext, site: str, examples: int) -> str | None:
    """Why `examples` is not the count `site` enrolled with, or None (no roster: None)."""
    enrolled = ctx.roster.examples.get(site) if ctx.roster is not None else None
    if enrolled is None or enrolled == examples:
        return None
    return f"reports {examples} examples, it enrolled with {enrolled}"
