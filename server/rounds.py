"""What every secure mode's round shares: its inputs, its result, sending, and the audit trail.

server/app.py publishes the global model, then hands the round to the mode's
`run_round(ctx) -> RoundResult` (server/modes/none.py, mode_he.py, mode_masked.py), then
evaluates, records and checkpoints what the mode returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from logging import WARNING
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from common import wire
from common.errors import one_line
from common.integrity.keys import ServerKeys
from common.run.records import RunRecorder
from common.run.settings import RunSettings
from common.run.stages import StageClock
from server.checks import Verdict, refusal_event
from server.dp import reported_epsilon
from server.evaluation import site_evaluation

if TYPE_CHECKING:  # server/roster.py sends through this module
    from server.roster import Roster

Spec = dict[str, tuple[tuple[int, ...], str]]
FAST_POLL, FAST_POLL_SECONDS, SLOW_POLL = 0.01, 5.0, 0.1  # reply polling: seconds between pulls


@dataclass
class RoundContext:
    """One round as the modes see it: who takes part, what was published, where to record."""

    grid: Grid
    node_ids: list[int]
    settings: RunSettings
    keys: ServerKeys
    spec: Spec  # the model's tensors: name -> (shape, dtype)
    run_name: str
    server_round: int
    published: dict[str, np.ndarray]  # the watermarked global model sent this round
    base: dict[str, np.ndarray]  # its values with the watermark bits cleared: what sites train from
    record: ArrayRecord  # `published` as it crosses the wire
    config: dict  # the round's train config
    recorder: RunRecorder
    clock: StageClock
    roster: Roster | None = None  # registered sites and the node each enrolled from (None: replies unattributed)


@dataclass
class RoundResult:
    """What a round produced: the new global model (None: skipped, the model stays) and the tally."""

    arrays: dict[str, np.ndarray] | None = None
    used: list[str] = field(default_factory=list)  # sites whose update is in the aggregate
    rejected: list[str] = field(default_factory=list)
    recovered: list[dict] = field(default_factory=list)
    epsilon: dict[str, float] = field(default_factory=dict)  # --dp sample: site -> epsilon it reports
    evaluations: dict[str, dict] = field(default_factory=dict)  # site -> its federated-evaluation metrics
    bytes_up: int = 0
    bytes_down: int = 0


def message(ctx: RoundContext, node_id: int, message_type: str, content: RecordDict) -> Message:
    """A message of this round to one site."""
    return Message(content=content, dst_node_id=node_id, message_type=message_type, group_id=str(ctx.server_round))


def train_messages(ctx: RoundContext, extra_config: dict | None = None) -> list[Message]:
    """The round's train instruction to every site: the published model and the round's config."""
    config = ConfigRecord({**ctx.config, **(extra_config or {})})
    return [message(ctx, node_id, wire.TRAIN, RecordDict({wire.ARRAYS: ctx.record, wire.CONFIG: config}))
            for node_id in ctx.node_ids]


def send(ctx: RoundContext, messages: list[Message], stage: str,
         on_reply: Callable[[Message], None] | None = None) -> list[Message]:
    """Send and wait for the replies, at most the run's round timeout; sites that do not answer
    in time are audited as `replies_missing` (the round goes on with those that did). An error
    reply that does not come from the site itself (Flower's SuperLink answers for a node it lost)
    counts as no answer, with Flower's reason recorded. With `on_reply`, each site's reply is
    handed to it as it arrives and not kept (the server's memory does not grow with the sites)."""
    if not messages:
        return []
    sites = {m.metadata.dst_node_id for m in messages}
    replies, answered, stand_in_reasons = [], set(), set()
    for batch in pull_replies(ctx.grid, messages, float(ctx.settings.round_timeout)):
        for reply in batch:
            if reply.metadata.src_node_id not in sites:
                if reply.has_error():
                    stand_in_reasons.add(reply.error.reason)
                continue
            answered.add(reply.metadata.src_node_id)
            if on_reply is None:
                replies.append(reply)
            else:
                on_reply(reply)
    silent = sorted(sites - answered)
    if silent:
        reasons = sorted(stand_in_reasons)
        ctx.recorder.audit("replies_missing", round=ctx.server_round, stage=stage, count=len(silent),
                           clients=[site_name(ctx, n) for n in silent], nodes=silent,
                           **({"flower_errors": [one_line(r) for r in reasons]} if reasons else {}))
        log(WARNING, "Round %d (%s): no reply from %d site(s) within %s s", ctx.server_round, stage,
            len(silent), ctx.settings.round_timeout)
    return replies


def site_name(ctx: RoundContext, node_id: int) -> str:
    """How records name a node: the site it enrolled as, else `node-<id>`."""
    site = ctx.roster.site_of.get(node_id) if ctx.roster is not None else None
    return site if site is not None else f"node-{node_id}"


def send_and_receive(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Grid.send_and_receive, polling every 10 ms for the first seconds instead of Flower's fixed
    100 ms: a secure round makes several exchanges, each of which would otherwise wait up to
    100 ms for nothing."""
    return [reply for batch in pull_replies(grid, messages, timeout) for reply in batch]


def pull_replies(grid: Grid, messages: list[Message], timeout: float) -> Iterator[list[Message]]:
    """Push `messages`, then yield each batch of replies as it is pulled, for at most `timeout` s."""
    pending = set(grid.push_messages(messages))
    start = time.monotonic()
    while pending and (elapsed := time.monotonic() - start) < timeout:
        got = list(grid.pull_messages(pending))
        pending -= {m.metadata.reply_to_message_id for m in got}
        if got:
            yield got
        if pending:
            time.sleep(FAST_POLL if elapsed < FAST_POLL_SECONDS else SLOW_POLL)


def note_refusal(ctx: RoundContext, result: RoundResult, verdict: Verdict, reply: Message) -> None:
    """Record a site's refusal of the global model (or of the round: DP budget spent)."""
    if (event := refusal_event(reply)) == "dp_budget_spent" and (eps := reported_epsilon(reply)) is not None:
        result.epsilon[verdict.site] = eps
    ctx.recorder.audit(event, round=ctx.server_round, client=verdict.site, reason=verdict.reason)
    log(WARNING, "Round %d: site %s refused the round (%s): %s", ctx.server_round, verdict.site, event, verdict.reason)


def note_rejection(ctx: RoundContext, result: RoundResult, site: str, reason: str,
                   tampered: dict | None = None) -> None:
    """Record that a site's payload failed its check and is left out of the round."""
    result.rejected.append(site)
    ctx.recorder.audit("update_rejected", round=ctx.server_round, client=site, reason=reason, tampered=tampered)
    log(WARNING, "Round %d: rejected site %s: %s", ctx.server_round, site, reason)


def note_accepted(ctx: RoundContext, result: RoundResult, verdict: Verdict, reply: Message) -> None:
    """Record an accepted site: its federated-evaluation metrics, its reported epsilon, and whether it had to recover the global model."""
    result.used.append(verdict.site)
    if (evaluation := site_evaluation(reply)) is not None:
        result.evaluations[verdict.site] = evaluation
    if (eps := reported_epsilon(reply)) is not None:
        result.epsilon[verdict.site] = eps
    if verdict.global_recovered:
        result.recovered.append({"client": verdict.site, "what": "global-model"})
        ctx.recorder.audit("global_recovered", round=ctx.server_round, client=verdict.site)


def enough(ctx: RoundContext, accepted: int) -> bool:
    """True when `accepted` sites may update the model; otherwise audit and log the skip."""
    if accepted >= ctx.settings.min_clients:
        return True
    ctx.recorder.audit("round_skipped", round=ctx.server_round, accepted=accepted,
                       min_clients=ctx.settings.min_clients)
    log(WARNING, "Round %d skipped: %d accepted replies, %d needed; the global model stays as it was",
        ctx.server_round, accepted, ctx.settings.min_clients)
    return False


def skip_round(ctx: RoundContext, result: RoundResult, reason: str, **fields) -> None:
    """Audit and log a round that cannot update the model (`round_skipped`, with `reason` and any
    `fields`); no site counts as used and the global model stays as it was."""
    ctx.recorder.audit("round_skipped", round=ctx.server_round, reason=reason, **fields)
    log(WARNING, "Round %d skipped: %s; the global model stays as it was", ctx.server_round, reason)
    result.used = []


def site_metrics(replies: list[Message]) -> list:
    """The metrics records of the replies that carry one (for the per-stage seconds)."""
    return [r.content[wire.METRICS] for r in replies if not r.has_error() and wire.METRICS in r.content]
