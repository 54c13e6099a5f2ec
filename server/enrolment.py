"""Which Flower node speaks for which site, for the whole run (DESIGN.md §2.5).

Each node proves once, with its site's seal key, which site it is and how many training examples
it holds (`query.enrol`, common/integrity/enrol.py); that site id is then bound to that node (in
deployment, the SuperNode-authenticated node) and that count is fixed for the run. Nodes not yet
enrolled are asked at the start of every round; a node whose proof fails takes no part in the
round and is audited as `node-<id>`, never as the site it claimed.

Every reply is then attributed to the node that sent it (`attribute`): a reply claiming another
site's id, a second reply of one site in one step, or a reply from a node that never enrolled is
rejected as its sender. No site's FedAvg weight may exceed `max-site-weight` (`overweight`).
"""

from __future__ import annotations

import os
from logging import WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from common import wire
from common.errors import KeyFileError
from common.integrity import enrol
from server.rounds import RoundContext, RoundResult, message, note_rejection, send


class Enrolment:
    """The run's bindings: node id <-> site id, and each site's fixed number of examples."""

    def __init__(self, max_site_weight: float = 1.0):
        self.max_site_weight = max_site_weight
        self._site: dict[int, str] = {}  # node id -> site id
        self._node: dict[str, int] = {}  # site id -> node id
        self.examples: dict[str, int] = {}  # site id -> its count, fixed at enrolment

    def site(self, node_id: int) -> str | None:
        """The site enrolled from `node_id`, or None."""
        return self._site.get(node_id)

    def node(self, site: str) -> int | None:
        """The node `site` enrolled from, or None."""
        return self._node.get(site)

    def bind(self, site: str, node_id: int, examples: int) -> None:
        """Bind `site` to `node_id` with its example count for the rest of the run."""
        self._site[node_id], self._node[site], self.examples[site] = site, node_id, examples

    def admit(self, ctx: RoundContext) -> list[int]:
        """Enrol the round's nodes not yet enrolled; return the enrolled nodes of `ctx.node_ids` whose
        site's weight fits under the cap (the others are audited `site_rejected`)."""
        new = [nid for nid in ctx.node_ids if nid not in self._site]
        if new:
            if ctx.clock is not None:
                ctx.clock.start("enrol")  # round 1: includes the sites' start-up
            nonce = os.urandom(enrol.NONCE_LEN)
            config = {wire.NONCE: nonce, wire.RUN_NAME: ctx.run_name, wire.SERVER_ROUND: ctx.server_round,
                      **{k: v for k, v in ctx.config.items() if k == wire.SIM_KEYS_DIR}}
            messages = [message(ctx, nid, wire.ENROL, RecordDict({wire.CONFIG: ConfigRecord(config)})) for nid in new]
            for reply in send(ctx, messages, "enrol"):
                self._enrol(ctx, reply, nonce)
        enrolled = [nid for nid in ctx.node_ids if nid in self._site]
        counts = {self._site[nid]: self.examples[self._site[nid]] for nid in enrolled}
        heavy = overweight(counts, self.max_site_weight)
        for site in heavy:
            reason = (f"its {counts[site]} examples are {counts[site] / sum(counts.values()):.3f} of the round's "
                      f"total, above max-site-weight {self.max_site_weight}")
            ctx.recorder.audit("site_rejected", round=ctx.server_round, client=site, reason=reason)
            log(WARNING, "Round %d: site %s left out: %s", ctx.server_round, site, reason)
        return [nid for nid in enrolled if self._site[nid] not in heavy]

    def _enrol(self, ctx: RoundContext, reply: Message, nonce: bytes) -> None:
        nid = reply.metadata.src_node_id
        config = None if reply.has_error() else reply.content.get(wire.CONFIG)
        claimed = config.get(wire.CLIENT_ID) if isinstance(config, ConfigRecord) else None
        examples = config.get(wire.NUM_EXAMPLES) if isinstance(config, ConfigRecord) else None
        tag = config.get(wire.ENROL_PROOF) if isinstance(config, ConfigRecord) else None
        if reply.has_error():
            problem = f"error reply: {reply.error.reason}"
        elif not isinstance(claimed, str) or not isinstance(tag, bytes):
            problem = f"no {wire.CLIENT_ID!r} and {wire.ENROL_PROOF!r} in its reply"
        elif isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            problem = f"its number of examples must be an integer >= 1, got {examples!r}"
        elif (bound := self._node.get(claimed)) is not None:
            problem = f"claims site {claimed!r}, which is enrolled from node {bound}"
        else:
            try:
                enrol.check(tag, ctx.keys.seal_key(claimed), ctx.run_name, claimed, nid, examples, nonce)
            except KeyFileError:
                problem = f"claims site {claimed!r}, which has no seal key (unknown site)"
            except enrol.EnrolmentError as exc:
                problem = str(exc)
            else:
                self.bind(claimed, nid, examples)
                ctx.recorder.audit("site_enrolled", round=ctx.server_round, client=claimed, node=nid,
                                   examples=examples)
                return
        ctx.recorder.audit("enrolment_rejected", round=ctx.server_round, client=f"node-{nid}",
                           claimed=claimed if isinstance(claimed, str) else None, reason=problem)
        log(WARNING, "Round %d: node %s not enrolled: %s", ctx.server_round, nid, problem)


def overweight(counts: dict[str, int], cap: float) -> list[str]:
    """Sites whose share n / sum(n) of `counts` exceeds `cap`. The check applies only when more
    than 1/cap sites take part: with fewer, equal shares would already reach the cap."""
    total = sum(counts.values())
    if cap >= 1 or len(counts) * cap <= 1 or total <= 0:
        return []
    return sorted(s for s, n in counts.items() if n > cap * total)


def claimed_site(reply: Message) -> str | None:
    """The site id a reply claims (its CONFIG or masked record `client-id`), or None."""
    if reply.has_error():
        return None
    for key in (wire.CONFIG, wire.MASKED):
        record = reply.content.get(key)
        if isinstance(record, ConfigRecord) and isinstance(record.get(wire.CLIENT_ID), str):
            return record[wire.CLIENT_ID]
    return None


def attribute(ctx: RoundContext, result: RoundResult, replies: list[Message], stage: str) -> list[tuple[str, Message]]:
    """(site, reply) for each reply that comes from an enrolled node and claims that node's own
    site, once per site in this step; every other reply is rejected (`update_rejected`) naming
    its sender. Without an enrolment (`ctx.sites` None) each reply keeps the id it claims."""
    sites: Enrolment | None = ctx.sites
    out, seen = [], set()
    for reply in replies:
        nid, claimed = reply.metadata.src_node_id, claimed_site(reply)
        if sites is None:
            out.append((claimed or f"node-{nid}", reply))
            continue
        site = sites.site(nid)
        if site is None:
            note_rejection(ctx, result, f"node-{nid}", f"{stage}: reply from node {nid}, which never enrolled")
        elif claimed is not None and claimed != site:
            note_rejection(ctx, result, site, f"{stage}: claims site {claimed!r}, but node {nid} enrolled as site {site!r}")
        elif site in seen:
            note_rejection(ctx, result, site, f"{stage}: a second reply of this site in one step")
        else:
            seen.add(site)
            out.append((site, reply))
    return out


def examples_problem(ctx: RoundContext, site: str, examples: int) -> str | None:
    """Why `examples` is not the count `site` enrolled with, or None (no enrolment: None)."""
    sites: Enrolment | None = ctx.sites
    if sites is None or site not in sites.examples or sites.examples[site] == examples:
        return None
    return f"reports {examples} examples, it enrolled with {sites.examples[site]}"
