"""he mode's defences against a lying decryptor or a foreign ciphertext (DESIGN.md §2.5): two
sites decrypt the same sum under independent masks and must agree bit for bit (a third settles a
mismatch and the liar is named), the decrypted sum must reproduce the server's check values, and
a sum that does not is searched by bisection over sub-sums of at least min-clients sites."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from common import wire
from common.run import records
from common.run.records import RunRecorder
from common.run.settings import RunSettings
from common.secure import he, subsums
from server.modes.he import (
    CHECK_SLOTS,
    PartialSums,
    Upload,
    aggregate_problem,
    check_values,
    group_problem,
    name_failing,
    search_groups,
)
from server.modes.he_decrypt import Decryptors
from server.roster import Roster
from server.rounds import RoundContext, RoundResult
from tests.server.fakes import Grid

pytestmark = pytest.mark.usefixtures("flower_task_identity")

NODES = {"0": 100, "1": 101, "2": 102}
LENGTH = 300


def decryptor(fed, liars=()):
    by_node = {nid: site for site, nid in NODES.items()}

    def answer(msg):
        site = by_node[msg.metadata.dst_node_id]
        summed = he.Summed(msg.content[wire.HE_SUM][wire.C0].numpy(), list(msg.content[wire.HE_CIPHERTEXTS][wire.SEEDS]))
        raw = he.decrypt_raw(summed, fed[1][site].he_secret_context())
        if site in liars:
            raw = raw.copy()
            raw[0, :10] = raw[0, 10:20]
        return Message(RecordDict({wire.DECRYPTED: ArrayRecord({wire.COEFFICIENTS: Array(raw)})}), reply_to=msg)
    return answer


def context(fed, tmp_path, answer, server_round=1):
    return RoundContext(grid=Grid(answer), node_ids=sorted(NODES.values()), settings=RunSettings(), keys=fed[0],
                        spec={}, run_name="run-he-checks", server_round=server_round, published={}, base={},
                        record=None, config={}, recorder=RunRecorder(tmp_path), clock=None)


@pytest.fixture(scope="module")
def summed(fed):
    rng = np.random.default_rng(3)
    vectors = [rng.normal(0, 0.01, LENGTH) for _ in NODES]
    total = he.Sum(fed[0].he_public_context(), he.n_chunks(LENGTH))
    for site, vector in zip(NODES, vectors):
        total.add_site(he.encrypt(vector, 10.0, fed[1][site].he_secret_context()))
    return total, sum(v * 10.0 for v in vectors)


def _decrypt(fed, tmp_path, summed, liars=(), server_round=1):
    ctx = context(fed, tmp_path, decryptor(fed, liars), server_round)
    decryptors = Decryptors(ctx, RoundResult(), fed[0].he_public_context(), LENGTH)
    decryptors.sites = sorted(NODES.items())
    out = decryptors.decrypt(summed[0].total())
    return out, records.read_jsonl(tmp_path / records.AUDIT)


def test_two_honest_decryptions_agree_and_give_the_sum(fed, tmp_path, summed):
    out, audit = _decrypt(fed, tmp_path, summed)
    assert np.abs(out - summed[1]).max() < 1e-6
    assert [(a["event"], a["client"]) for a in audit] == [("sum_decrypted", "0"), ("sum_decrypted", "1")]


@pytest.mark.parametrize("server_round", [1, 2])
def test_a_lying_decryptor_is_outvoted_and_named(fed, tmp_path, summed, server_round):
    out, audit = _decrypt(fed, tmp_path, summed, liars=("1",), server_round=server_round)
    assert np.abs(out - summed[1]).max() < 1e-6
    [failed] = [a for a in audit if a["event"] == "decrypt_failed"]
    assert failed["client"] == "1" and "differs from that of sites" in failed["reason"]


def test_check_values_catch_a_wrong_sum_and_the_bound_a_huge_mean():
    checks = [check_values() for _ in range(3)]
    expected = sum(checks)
    assert checks[0].shape == (CHECK_SLOTS,) and np.all(np.abs(checks[0]) <= 1)
    assert aggregate_problem(expected + 1e-7, expected, np.zeros(10)) is None
    assert "misses the sites' check values" in aggregate_problem(expected + 3e4, expected, np.zeros(10))
    assert "misses" in aggregate_problem(np.full(CHECK_SLOTS, np.nan), expected, np.zeros(10))
    assert "above the bound" in aggregate_problem(expected, expected, np.full(10, 1e6))


# Bisection over sub-sums: real ciphertexts, a fake grid whose sites decrypt honestly.

def _uploads(n, culprits, length=LENGTH, seed=5):
    """PartialSums of `n` sites' real he uploads (site i: 10 + i examples), `culprits` encrypting
    under another CKKS key of the same parameters; the honest sites' weighted sum and each
    site's seed record (how the decrypting sites' requests name who is in a sum)."""
    secret, public = he.make_keys()
    foreign, _ = he.make_keys()
    rng = np.random.default_rng(seed)
    count = he.n_chunks(length + CHECK_SLOTS)
    sites, seed_of, honest = [], {}, {}
    for i in range(n):
        site, examples, checks = str(i), 10 + i, check_values()
        update = rng.normal(0, 0.01, length)
        vector = np.concatenate([update, checks / examples])
        chunks = he.encrypt(vector, float(examples), foreign if site in culprits else secret)
        single = he.Sum(public, count)
        single.add_site(chunks)
        seed_of[single.total().seeds[0]] = site
        sites.append((site, Upload(chunks, examples, 1000 + i), checks))
        if site not in culprits:
            honest[site] = (update * examples, examples)
    return secret, public, count, sites, seed_of, honest


def _search(tmp_path, n, culprits, min_clients, decrypting=None):
    """Add `n` sites to partial sums as the round does, fail the whole sum, search it; return what
    search_groups returned, the audit, and the sets of sites each decryption request covered."""
    secret, public, count, sites, seed_of, honest = _uploads(n, culprits)
    parts = PartialSums(public, count, subsums.leaf_count(n, min_clients, count * he.POLY_MODULUS_DEGREE * 8))
    for site, upload, checks in sites:
        parts.add(site, upload, checks)
    requests = []

    def answer(msg):
        seeds = list(msg.content[wire.HE_CIPHERTEXTS][wire.SEEDS])
        requests.append({seed_of[s] for s in seeds})
        raw = he.decrypt_raw(he.Summed(msg.content[wire.HE_SUM][wire.C0].numpy(), seeds), secret)
        return Message(RecordDict({wire.DECRYPTED: ArrayRecord({wire.COEFFICIENTS: Array(raw)})}), reply_to=msg)

    ctx = RoundContext(grid=Grid(answer), node_ids=[u.node_id for _, u, _ in sites],
                       settings=RunSettings(min_clients=min_clients), keys=None, spec={}, run_name="run-bisect",
                       server_round=1, published={}, base={}, record=None, config={},
                       recorder=RunRecorder(tmp_path), clock=None)
    result = RoundResult(used=[s for s, _, _ in sites])
    decryptors = Decryptors(ctx, result, public, LENGTH + CHECK_SLOTS)
    decryptors.sites = [(s, u.node_id) for s, u, _ in sites][:decrypting]
    groups = parts.groups(min_clients)
    whole = parts.join(groups)
    assert group_problem(decryptors.decrypt(whole.summed), whole, LENGTH) is not None  # the sum is spoiled
    found = search_groups(ctx, result, groups, decryptors, parts, LENGTH)
    return found, records.read_jsonl(tmp_path / records.AUDIT), requests, honest


def _assert_private(requests, min_clients):
    """Every decrypted sum, and the difference of any two, covers at least min-clients sites."""
    assert all(len(a) >= min_clients for a in requests)
    assert all(len(a ^ b) >= min_clients or a == b for i, a in enumerate(requests) for b in requests[i + 1:])


def test_bisection_names_the_one_site_under_another_key_and_keeps_the_others(tmp_path):
    """min-clients 1 lets the search go down to single sites: the culprit is named, the seven
    others make the round's sum exactly."""
    found, audit, requests, honest = _search(tmp_path, 8, {"5"}, min_clients=1)
    summed, sites, examples = found
    assert sorted(sites, key=int) == sorted(honest, key=int)
    assert examples == sum(e for _, e in honest.values())
    assert np.abs(summed[:LENGTH] - sum(u for u, _ in honest.values())).max() < 1e-6
    rejected = [a for a in audit if a["event"] == "update_rejected"]
    assert [a["client"] for a in rejected] == ["5"] and "found by bisection" in rejected[0]["reason"]
    assert not [a for a in audit if a["event"] in ("sites_excluded", "round_skipped", "decrypt_failed")]
    _assert_private(requests, 1)


def test_bisection_at_scale_leaves_out_only_the_culprits_groups_and_reveals_no_small_sum(tmp_path):
    """120 sites, min-clients 3, two under another key: each culprit's group of 3 is left out and
    named as a group (`sites_excluded`, one line), the other 114 sites are summed, every revealed
    sum covers at least 3 sites (and so does the difference of any two), and the search decrypts
    O(log n) sub-sums, not one per group."""
    found, audit, requests, honest = _search(tmp_path, 120, {"17", "88"}, min_clients=3)
    summed, sites, _ = found
    excluded = [a for a in audit if a["event"] == "sites_excluded"]
    assert len(excluded) == 2 and all(len(a["clients"]) == 3 for a in excluded)
    assert sorted(c for a in excluded for c in a["clients"] if c in ("17", "88")) == ["17", "88"]
    assert all("\n" not in a["reason"] and "min-clients 3" in a["reason"] for a in excluded)
    left_out = {c for a in excluded for c in a["clients"]}
    assert set(sites) == {str(i) for i in range(120)} - left_out and len(sites) == 114
    expected = sum(u for s, (u, _) in honest.items() if s not in left_out)
    assert np.abs(summed[:LENGTH] - expected).max() < 1e-6
    assert not [a for a in audit if a["event"] in ("update_rejected", "round_skipped")]
    _assert_private(requests, 3)
    assert len(requests) <= 2 * 2 * 2 * 6 + 2  # two decryptors per sum, two halves per level, two paths, 6 levels


def test_a_search_that_cannot_be_cross_checked_names_nobody_and_skips_the_round(tmp_path):
    """With a single decrypting site no sub-sum can be cross-checked: nobody is named, the round
    is skipped and the model stays (an unattributable attack never corrupts the model)."""
    found, audit, _, _ = _search(tmp_path, 6, {"2"}, min_clients=1, decrypting=1)
    assert found is None
    assert [a["event"] for a in audit if a["event"] != "sum_decrypted"] == ["round_skipped"]
    assert "culprit is unknown" in audit[-1]["reason"]


def test_the_failing_groups_of_successive_rounds_are_intersected_until_one_site_is_left(tmp_path):
    """Groups are drawn afresh each round: the hostile site "7" is in the failing group every time,
    its partners change, so after two rounds only it is left: it is named and left out of the run;
    no honest site is ever named alone. Two failing groups in one round (two culprits) start over."""
    roster = Roster(sites=[str(i) for i in range(12)])
    recorder = RunRecorder(tmp_path)

    def round_of(server_round, failing):
        ctx = RoundContext(grid=None, node_ids=[], settings=RunSettings(min_clients=3), keys=None, spec={},
                           run_name="run-suspects", server_round=server_round, published={}, base={}, record=None,
                           config={}, recorder=recorder, clock=None, roster=roster)
        name_failing(ctx, RoundResult(), [(sites, "misses the check values") for sites in failing])

    round_of(1, [["2", "7", "9"]])
    assert roster.suspects == {"2", "7", "9"} and not roster.banned
    round_of(2, [["1", "2", "7"], ["4", "5", "6"]])  # two failing groups: nothing can be intersected
    assert roster.suspects == set()
    round_of(3, [["3", "7", "9"]])
    round_of(4, [["7", "8", "11"]])
    assert roster.suspects == set() and list(roster.banned) == ["7"] and "round 4" in roster.banned["7"]
    audit = records.read_jsonl(tmp_path / records.AUDIT)
    assert [a["client"] for a in audit if a["event"] == "update_rejected"] == ["7"]
    assert [a["round"] for a in audit if a["event"] == "sites_excluded"] == [1, 2, 2, 3, 4]
