"""One malicious site among five (DESIGN.md §2.5), driven through Flower's message layer by a
hostile ClientApp (tests/e2e/hostile.py), not by `--inject`: the site holds its own keys and
seals what it alters. Each run must finish, name the hostile site "1" in every round it attacks
(one-line reasons), never name an honest site, and use the honest sites' updates.

Each simulation is breast-cancer, 5 sites, 3 rounds (about 30-90 s on a loaded 2-core machine).
"""

from __future__ import annotations

from pathlib import Path


from common.errors import REASON_LIMIT
from common.run import records
from tests.e2e.hostile import HOSTILE
from tests.simrun import simulate_hostile

SITES, ROUNDS = 5, 3
HONEST = {str(i) for i in range(SITES)} - {str(HOSTILE)}
NAMING = ("update_rejected", "shares_rejected", "site_rejected", "decrypt_failed", "aggregate_check_failed")


def _audit(folder: Path) -> list[dict]:
    return records.read_jsonl(folder / records.AUDIT)


def _rounds(folder: Path) -> list[dict]:
    return records.read_jsonl(folder / records.ROUNDS)


def _run(tmp_path: Path, app: str, mode: str) -> Path:
    out = tmp_path / app
    simulate_hostile(f"tests.e2e.hostile:{app}", SITES, out, dataset="breast-cancer", num_rounds=ROUNDS,
                     seed=0, secure_mode=mode)
    return out


def assert_only_the_hostile_site_is_named(folder: Path) -> None:
    """Every audit record that names a culprit names the hostile site, with a one-line reason."""
    for record in _audit(folder):
        reason = str(record.get("reason", ""))
        assert "\n" not in reason and len(reason) <= REASON_LIMIT, record
        if record["event"] in NAMING:
            assert record.get("client") == str(HOSTILE), record
        assert record.get("client") not in HONEST or record["event"] == "sum_decrypted", record


def test_masked_bad_adverts_leave_out_the_hostile_site_only(tmp_path):
    """0 examples (round 1), two identical public keys (round 2), a 7-byte key (round 3): each
    advert carries a valid seal; the server leaves the site out at setup and sums the other four."""
    out = _run(tmp_path, "bad_adverts", "masked")
    assert_only_the_hostile_site_is_named(out)
    rejected = [(a["round"], a["client"]) for a in _audit(out) if a["event"] == "update_rejected"]
    assert rejected == [(r, str(HOSTILE)) for r in range(1, ROUNDS + 1)]
    reasons = [a["reason"] for a in _audit(out) if a["event"] == "update_rejected"]
    assert "examples" in reasons[0] and "identical" in reasons[1] and "7 bytes" in reasons[2]
    assert not [a for a in _audit(out) if a["event"] == "round_skipped"]
    assert [r["clients_used"] for r in _rounds(out)] == [SITES - 1] * ROUNDS
