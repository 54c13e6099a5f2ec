"""The server's round per secure mode: `run_round(ctx) -> RoundResult` of `none`, `he` and `masked`
(server/rounds.py holds what they share)."""

from server.modes import he, masked, none

ROUNDS = {"none": none.run_round, "he": he.run_round, "masked": masked.run_round}  # secure mode -> its round
