"""The server's round per secure mode: `run_round(ctx) -> RoundResult` of `none`, `he` and `masked`
(server/rounds.py holds what they share). Every round runs `guarded`: a protocol error that one
site's input still provokes skips that round, with an audit record, and the run goes on."""

from collections.abc import Callable
from logging import WARNING

from flwr.common.logger import log

from common.secure.he import HEError
from common.secure.secagg import ProtocolError
from server.modes import he, masked, none
from server.rounds import RoundContext, RoundResult


def guarded(run_round: Callable[[RoundContext], RoundResult]) -> Callable[[RoundContext], RoundResult]:
    """`run_round`, with any residual ProtocolError or HEError audited `round_skipped`: the global
    model stays as it was and the next round starts."""

    def run(ctx: RoundContext) -> RoundResult:
        try:
            return run_round(ctx)
        except (ProtocolError, HEError) as exc:
            ctx.recorder.audit("round_skipped", round=ctx.server_round, reason=f"protocol error: {exc}")
            log(WARNING, "Round %d skipped: protocol error: %s; the global model stays as it was",
                ctx.server_round, exc)
            return RoundResult()

    return run


ROUNDS = {mode: guarded(module.run_round) for mode, module in
          (("none", none), ("he", he), ("masked", masked))}  # secure mode -> its round
