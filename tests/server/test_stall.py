"""A run that cannot make progress: the count of skipped rounds in a row, and the one-line reason."""

from __future__ import annotations

from server.stall import SkipCounter, stall_reason


def test_skip_counter_needs_the_rounds_in_a_row():
    skips = SkipCounter(2)
    for server_round, skipped in ((1, True), (2, False), (3, True)):
        skips.round_done(server_round, skipped)
        assert not skips.stalled
    skips.round_done(4, True)
    assert skips.stalled and skips.rounds == [3, 4]


def test_reason_names_failing_and_silent_sites_by_site_id_with_why():
    audit = [
        {"event": "update_rejected", "round": 1, "client": "0", "reason": "seal check failed: 3 of 18 blocks"},
        {"event": "site_failed", "round": 2, "client": "2", "reason": "site data: data-path: line 2 has 20 values"},
        {"event": "replies_missing", "round": 2, "stage": "train", "count": 2, "nodes": [11, 12],
         "clients": ["1", "node-12"]},
        {"event": "update_rejected", "round": 5, "client": "9", "reason": "a round not in the stall"},
        {"event": "round_skipped", "round": 2, "accepted": 0, "min_clients": 3},
    ]
    reason = stall_reason([1, 2], audit, min_clients=3)
    assert "\n" not in reason and reason.startswith("2 rounds in a row skipped (rounds 1-2): fewer than min-clients=3")
    assert "site 0 (update_rejected: seal check failed: 3 of 18 blocks)" in reason
    assert "site 2 (site_failed: site data: data-path: line 2 has 20 values)" in reason
    assert "no reply from: node 12, site 1 (node 11)" in reason and "site 9" not in reason
