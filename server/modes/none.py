"""`none` mode: sites return their sealed trained weights; the server checks each seal and
aggregates the accepted weights (FedAvg or a robust rule), or adds client-level DP noise."""

from __future__ import annotations

from dataclasses import replace

from flwr.app import ArrayRecord

from common import wire
from common.learning.models import averaged_spec, with_kept
from server.aggregation import Update, aggregate
from server.checks import check_sealed_reply, payload_bytes
from server.dp import client_dp_aggregate
from server.enrolment import attribute, examples_problem
from server.rounds import (
    RoundContext,
    RoundResult,
    enough,
    note_accepted,
    note_refusal,
    note_rejection,
    send,
    site_metrics,
    train_messages,
)


def run_round(ctx: RoundContext) -> RoundResult:
    """Send the global model, check every sealed reply, aggregate the accepted weights."""
    settings = ctx.settings
    messages = train_messages(ctx)
    ctx.clock.start("train", timed=False)  # the sites verify, train and seal; they report their seconds
    replies = send(ctx, messages, "train")
    ctx.clock.add_sites(site_metrics(replies))
    ctx.clock.start("check")
    result = RoundResult(bytes_down=payload_bytes(ctx.record) * len(messages))
    result.bytes_up = sum(payload_bytes(r.content[wire.ARRAYS]) for r in replies
                          if not r.has_error() and isinstance(r.content.get(wire.ARRAYS), ArrayRecord))

    accepted: list[Update] = []
    for site, reply in attribute(ctx, result, replies, "train"):
        verdict = check_sealed_reply(reply, ctx.spec, ctx.keys, ctx.run_name, ctx.server_round,
                                     recover=settings.on_tamper == "recover")
        if verdict.refused:
            note_refusal(ctx, result, verdict, reply)
        elif not verdict.accepted:
            note_rejection(ctx, result, site, verdict.reason, verdict.tampered)
        elif problem := examples_problem(ctx, site, verdict.update.num_examples):
            note_rejection(ctx, result, site, problem)
        else:
            accepted.append(verdict.update)
            note_accepted(ctx, result, verdict, reply)
            if verdict.update_recovered:
                result.recovered.append({"client": verdict.site, "what": "update"})
                ctx.recorder.audit("update_recovered", round=ctx.server_round, client=verdict.site,
                                   tampered=verdict.tampered)

    ctx.clock.start("aggregate")
    if enough(ctx, len(accepted)):
        dp_spec = settings.dp_spec
        averaged = averaged_spec(ctx.spec)  # integer and bool buffers are not averaged: kept from the base
        updates = [replace(u, arrays={name: u.arrays[name] for name in averaged}) for u in accepted]
        new = (client_dp_aggregate(dp_spec, ctx.published, updates, settings.seed, ctx.server_round)
               if dp_spec is not None and dp_spec.kind == "client" else aggregate(settings.aggregator, updates))
        result.arrays = with_kept(new, ctx.base, ctx.spec)
    return result
