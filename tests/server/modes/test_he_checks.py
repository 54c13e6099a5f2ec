"""he mode's defences against a lying decryptor or a foreign ciphertext (DESIGN.md §2.5): two
sites decrypt the same sum under independent masks and must agree bit for bit (a third settles a
mismatch and the liar is named), and the decrypted sum must reproduce the server's check values."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from common import wire
from common.run import records
from common.run.records import RunRecorder
from common.run.settings import RunSettings
from common.secure import he
from server.modes.he import CHECK_SLOTS, aggregate_problem, check_values, decrypt_checked
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
    out = decrypt_checked(ctx, RoundResult(), summed[0], sorted(NODES.items()), fed[0].he_public_context(), LENGTH)
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
