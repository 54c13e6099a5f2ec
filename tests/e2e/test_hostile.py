"""One malicious site among five (DESIGN.md §2.5), driven through Flower's message layer by a
hostile ClientApp (tests/e2e/hostile.py), not by `--inject`: the site holds its own keys and
seals what it alters. Each run must finish, name the hostile site "1" in every round it attacks
(one-line reasons), never name an honest site, and use the honest sites' updates.

Each simulation is breast-cancer, 5 sites, 3 rounds (about 30-90 s on a loaded 2-core machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import REASON_LIMIT
from common.run import records
from tests.e2e.hostile import HOSTILE
from tests.simrun import simulate_hostile

SITES, ROUNDS = 5, 3
HONEST = {str(i) for i in range(SITES)} - {str(HOSTILE)}
NAMING = ("update_rejected", "shares_rejected", "site_rejected", "decrypt_failed", "enrolment_rejected")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """clean(mode, without_hostile=False): the folder of a run of five honest sites with the same
    seed, made once per case; `without_hostile`: the site that is hostile elsewhere drops out of
    every round (the honest sites' run an attack whose culprit is left out must match)."""
    runs: dict[tuple[str, bool], Path] = {}

    def run(mode: str, without_hostile: bool = False) -> Path:
        if (mode, without_hostile) not in runs:
            folder = tmp_path_factory.mktemp(f"clean-{mode}")
            drops = [f"drop:{HOSTILE}:{r}" for r in range(1, ROUNDS + 1)] if without_hostile else []
            simulate_hostile("client.app:app", SITES, folder, dataset="breast-cancer", num_rounds=ROUNDS,
                             seed=0, secure_mode=mode, inject=",".join(drops))
            runs[mode, without_hostile] = folder
        return runs[mode, without_hostile]
    return run


def assert_within_one_example(folder: Path, clean_folder: Path) -> None:
    """The final accuracy is within one test example of the clean run's."""
    one_example = 1 / json.loads((clean_folder / records.SUMMARY).read_text())["test_examples"]
    assert abs(_rounds(folder)[-1]["accuracy"] - _rounds(clean_folder)[-1]["accuracy"]) <= one_example + 1e-9


def _audit(folder: Path) -> list[dict]:
    return records.read_jsonl(folder / records.AUDIT)


def _rounds(folder: Path) -> list[dict]:
    return records.read_jsonl(folder / records.ROUNDS)


def _run(tmp_path: Path, app: str, mode: str, rounds: int = ROUNDS) -> Path:
    out = tmp_path / app
    simulate_hostile(f"tests.e2e.hostile:{app}", SITES, out, dataset="breast-cancer", num_rounds=rounds,
                     seed=0, secure_mode=mode)
    return out


def _named(folder: Path, event: str) -> list[tuple[int, str, str]]:
    return [(a["round"], a["client"], a["reason"]) for a in _audit(folder) if a["event"] == event]


def assert_only_the_hostile_site_is_named(folder: Path) -> None:
    """Every audit record that names a culprit names the hostile site, with a one-line reason;
    every honest site enrolled once, and no round was skipped."""
    for record in _audit(folder):
        reason = str(record.get("reason", ""))
        assert "\n" not in reason and len(reason) <= REASON_LIMIT, record
        if record["event"] in NAMING:
            assert record.get("client") == str(HOSTILE), record
    enrolled = sorted(a["client"] for a in _audit(folder) if a["event"] == "site_enrolled")
    assert HONEST <= set(enrolled) and len(enrolled) == len(set(enrolled))
    assert not [a for a in _audit(folder) if a["event"] in ("round_skipped", "aggregate_check_failed")]


def test_masked_bad_adverts_leave_out_the_hostile_site_only(tmp_path):
    """Each advert carries a valid seal: 0 examples (round 1), two identical public keys (2), a
    7-byte key (3), 10**9 examples (4), the victim's id sealed with the victim's stolen key (5).
    The server leaves the hostile site out at setup, names it, and sums the other four."""
    out = _run(tmp_path, "bad_adverts", "masked", rounds=5)
    assert_only_the_hostile_site_is_named(out)
    rejected = _named(out, "update_rejected")
    assert [(r, c) for r, c, _ in rejected] == [(r, str(HOSTILE)) for r in range(1, 6)]
    reasons = [why for _, _, why in rejected]
    assert "examples must be an integer >= 1" in reasons[0] and "identical" in reasons[1]
    assert "7 bytes" in reasons[2] and "reports 1000000000 examples, it enrolled with" in reasons[3]
    assert "claims site '2', but node" in reasons[4]
    assert [r["clients_used"] for r in _rounds(out)] == [SITES - 1] * 5


@pytest.mark.parametrize("mode", ["none", "he"])
def test_impersonation_and_an_inflated_count_are_pinned_on_the_sender(tmp_path, mode):
    """Round 1: its payload (weights, or he ciphertexts) sealed with the victim's stolen key under
    the victim's id; round 2: its own payload claiming 10**9 examples; round 3: the victim's id on
    its own payload. Each time the audit names the sending node's site "1", never the victim "2",
    and the other four are aggregated."""
    out = _run(tmp_path, "impersonate", mode)
    assert_only_the_hostile_site_is_named(out)
    rejected = _named(out, "update_rejected")
    assert [(r, c) for r, c, _ in rejected] == [(1, "1"), (2, "1"), (3, "1")]
    assert "claims site '2'" in rejected[0][2] and "claims site '2'" in rejected[2][2]
    assert "reports 1000000000 examples" in rejected[1][2]
    assert [r["clients_used"] for r in _rounds(out)] == [SITES - 1] * ROUNDS
    assert [r["rejected"] for r in _rounds(out)] == [["1"]] * ROUNDS


def test_he_an_inflated_enrolment_is_capped_every_round(tmp_path):
    """A valid enrolment proof for 10**9 examples: its weight would be ~1.0, above max-site-weight
    0.5, so the site is left out of every round (audited `site_rejected`) and the others summed."""
    out = _run(tmp_path, "inflated_enrolment", "he")
    assert_only_the_hostile_site_is_named(out)
    heavy = _named(out, "site_rejected")
    assert [(r, c) for r, c, _ in heavy] == [(r, "1") for r in range(1, ROUNDS + 1)]
    assert "above max-site-weight 0.5" in heavy[0][2]
    assert [r["clients_used"] for r in _rounds(out)] == [SITES - 1] * ROUNDS


def test_masked_a_holder_revealing_bad_seed_shares_is_named_and_the_round_completes(tmp_path):
    """Every seed share the hostile site reveals is corrupted (and validly sealed): each fails its
    dealer's digest, the site is named `shares_rejected` in every round, the seeds are rebuilt
    from the other holders' shares, and all five updates (its own is honest) are summed."""
    out = _run(tmp_path, "lying_reveal", "masked")
    assert_only_the_hostile_site_is_named(out)
    named = _named(out, "shares_rejected")
    assert [(r, c) for r, c, _ in named] == [(r, "1") for r in range(1, ROUNDS + 1)]
    assert "do not match their dealer's digest" in named[0][2]
    assert [r["clients_used"] for r in _rounds(out)] == [SITES] * ROUNDS


def test_masked_a_dealer_of_inconsistent_shares_is_named_and_left_out_of_the_run(tmp_path):
    """In round 1 the hostile site commits to another seed than the one it shares: its verified
    shares rebuild a seed that fails its commitment, which proves the dealer lied. That round is
    skipped naming it (its vector's masks cannot be removed), and from round 2 on it takes no part
    (`site_rejected`) while the four honest sites are summed: the run finishes, nobody else is named."""
    out = _run(tmp_path, "bad_dealer", "masked")
    skipped = [a for a in _audit(out) if a["event"] == "round_skipped"]
    assert [(a["round"], a.get("client")) for a in skipped] == [(1, str(HOSTILE))]
    assert "does not match its commitment" in skipped[0]["reason"]
    left_out = _named(out, "site_rejected")
    assert [(r, c) for r, c, _ in left_out] == [(r, "1") for r in range(2, ROUNDS + 1)]
    assert "left out for the rest of the run: in round 1" in left_out[0][2]
    assert not [a for a in _audit(out) if a.get("client") in HONEST and a["event"] in NAMING]
    assert [r["clients_used"] for r in _rounds(out)] == [0] + [SITES - 1] * (ROUNDS - 1)


def test_masked_an_unmasked_zero_vector_is_named_and_the_others_summed(tmp_path, clean):
    """A validly sealed all-zero vector (its masks left out): a masked vector is uniform, this one
    is not, so the site is named `update_rejected` in every round before anything is summed, its
    pairwise masks are removed as a dropout's, and the four honest updates make the model."""
    out = _run(tmp_path, "zero_vector", "masked")
    assert_only_the_hostile_site_is_named(out)
    rejected = _named(out, "update_rejected")
    assert [(r, c) for r, c, _ in rejected] == [(r, "1") for r in range(1, ROUNDS + 1)]
    assert all("its vector is not masked" in why for _, _, why in rejected)
    assert [r["clients_used"] for r in _rounds(out)] == [SITES - 1] * ROUNDS
    assert_within_one_example(out, clean("masked", without_hostile=True))


def test_he_a_lying_decryptor_is_named_and_the_honest_sum_used(tmp_path, clean):
    """The hostile site alters its decryption whenever it is asked (rounds 1 and 2 of the rotation):
    its result differs from the other decryptor's, a third site settles it, the liar is named
    `decrypt_failed`, and every round uses all five sites' updates."""
    out = _run(tmp_path, "lying_decryptor", "he")
    assert_only_the_hostile_site_is_named(out)
    failed = _named(out, "decrypt_failed")
    assert [(r, c) for r, c, _ in failed] == [(1, "1"), (2, "1")]
    assert [r["clients_used"] for r in _rounds(out)] == [SITES] * ROUNDS
    assert_within_one_example(out, clean("he"))


def test_he_a_ciphertext_under_another_key_is_found_by_bisection_and_named(tmp_path, clean):
    """The hostile site encrypts under a CKKS key of the same parameters: the sum misses the check
    values (`aggregate_check_failed`), and with min-clients 1 the bisection over sub-sums goes down
    to single sites and names the hostile one; it takes no further part in the run
    (`site_rejected`), and every round sums the four others."""
    out = tmp_path / "foreign_key"
    simulate_hostile("tests.e2e.hostile:foreign_key", SITES, out, dataset="breast-cancer", num_rounds=ROUNDS,
                     seed=0, secure_mode="he", min_clients=1)
    failed = [a for a in _audit(out) if a["event"] == "aggregate_check_failed"]
    assert [a["round"] for a in failed] == [1] and "check values" in failed[0]["reason"]
    rejected = _named(out, "update_rejected")
    assert [(r, c) for r, c, _ in rejected] == [(1, "1")] and "found by bisection" in rejected[0][2]
    left_out = _named(out, "site_rejected")
    assert [(r, c) for r, c, _ in left_out] == [(r, "1") for r in range(2, ROUNDS + 1)]
    assert not [a for a in _audit(out) if a.get("client") in HONEST and a["event"] in NAMING]
    assert [r["clients_used"] for r in _rounds(out)] == [SITES - 1] * ROUNDS
    assert_within_one_example(out, clean("he", without_hostile=True))


def test_he_with_min_clients_2_the_culprits_group_is_left_out_until_it_is_isolated(tmp_path):
    """With min-clients 2 no sum of fewer than 2 sites may be revealed, so the search stops at a
    group of 2 or 3 sites holding the hostile one: that group is left out and named as a group
    (`sites_excluded`) and the other group's sum moves the model. Groups are drawn afresh each
    round, so once the hostile site is the only one in every failing group it is named alone and
    left out of the run. No honest site is ever named alone."""
    rounds = 4
    out = tmp_path / "foreign_key_groups"
    simulate_hostile("tests.e2e.hostile:foreign_key", SITES, out, dataset="breast-cancer", num_rounds=rounds,
                     seed=0, secure_mode="he")
    audit = _audit(out)
    excluded = [a for a in audit if a["event"] == "sites_excluded"]
    assert excluded and all(str(HOSTILE) in a["clients"] and 2 <= len(a["clients"]) <= 3 for a in excluded)
    assert [a["round"] for a in excluded] == list(range(1, len(excluded) + 1))  # every round until isolated
    named = [(a["round"], a["client"]) for a in audit if a["event"] in NAMING]
    assert all(client == str(HOSTILE) for _, client in named)
    isolated = [r for r, _ in named if r <= len(excluded)]
    assert isolated in ([], [len(excluded)])  # named alone in the last round its group was left out
    later = list(range(len(excluded) + 1, rounds + 1)) if isolated else []
    assert [r for r, _ in named if r > len(excluded)] == later  # then site_rejected in every later round
    used = [r["clients_used"] for r in _rounds(out)]
    assert used[:len(excluded)] == [SITES - len(a["clients"]) for a in excluded]
    assert used[len(excluded):] == [SITES - 1] * (rounds - len(excluded))
    assert not [a for a in audit if a["event"] == "round_skipped"]
