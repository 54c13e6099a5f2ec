"""server.enrolment on hand-built Flower messages: a node proves its site once, then every reply is
attributed to the node that sent it (DESIGN.md §2.5). The audit never names a site the sender
only claimed to be."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from common import wire
from common.integrity import enrol
from common.run import records
from common.run.records import RunRecorder
from common.run.settings import RunSettings
from server.enrolment import Enrolment, attribute, examples_problem, overweight
from server.rounds import RoundContext, RoundResult
from tests.server.fakes import Grid

pytestmark = pytest.mark.usefixtures("flower_task_identity")

RUN = "run-enrol"
NODES = {"0": 100, "1": 101, "2": 102}  # site -> its node


def honest(fed, examples=None):
    """Each node proves the site that lives on it (NODES), with `examples` or 50 examples."""
    by_node = {nid: site for site, nid in NODES.items()}

    def answer(msg):
        site, nid = by_node[msg.metadata.dst_node_id], msg.metadata.dst_node_id
        n = (examples or {}).get(site, 50)
        config = msg.content[wire.CONFIG]
        tag = enrol.proof(fed[1][site].seal_key, RUN, site, nid, n, bytes(config[wire.NONCE]))
        return Message(RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: site, wire.NUM_EXAMPLES: n,
                                                              wire.ENROL_PROOF: tag})}), reply_to=msg)
    return answer


def context(fed, tmp_path, answer, sites):
    return RoundContext(grid=Grid(answer), node_ids=sorted(NODES.values()), settings=RunSettings(), keys=fed[0],
                        spec={}, run_name=RUN, server_round=1, published={}, base={}, record=None, config={},
                        recorder=RunRecorder(tmp_path), clock=None, sites=sites)


def audit(tmp_path):
    return records.read_jsonl(tmp_path / records.AUDIT)


def reply_from(node, claimed, stage_key=wire.CONFIG):
    request = Message(RecordDict({}), dst_node_id=node, message_type=wire.TRAIN)
    return Message(RecordDict({stage_key: ConfigRecord({wire.CLIENT_ID: claimed})}), reply_to=request)


def test_honest_nodes_enrol_once_and_are_bound(fed, tmp_path):
    sites = Enrolment(max_site_weight=0.5)
    ctx = context(fed, tmp_path, honest(fed), sites)
    assert sites.admit(ctx) == [100, 101, 102]
    assert [sites.site(n) for n in (100, 101, 102)] == ["0", "1", "2"] and sites.examples == {s: 50 for s in "012"}
    ctx.grid.answer = None  # already enrolled: never asked again
    assert sites.admit(ctx) == [100, 101, 102]
    assert [a["event"] for a in audit(tmp_path)] == ["site_enrolled"] * 3


def test_a_proof_copied_to_another_node_or_made_without_the_key_fails_naming_the_node(fed, tmp_path):
    good = honest(fed)

    def answer(msg):
        out = good(msg)
        if msg.metadata.dst_node_id == 101:  # node 101 claims site "2" with site 2's proof for node 102
            config = msg.content[wire.CONFIG]
            tag = enrol.proof(fed[1]["2"].seal_key, RUN, "2", 102, 50, bytes(config[wire.NONCE]))
            return Message(RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: "2", wire.NUM_EXAMPLES: 50,
                                                                  wire.ENROL_PROOF: tag})}), reply_to=msg)
        return out

    sites = Enrolment()
    ctx = context(fed, tmp_path, answer, sites)
    assert sites.admit(ctx) == [100, 102]
    [bad] = [a for a in audit(tmp_path) if a["event"] == "enrolment_rejected"]
    assert bad["client"] == "node-101" and bad["claimed"] == "2" and "does not hold" in bad["reason"]
    assert sites.site(102) == "2"


def test_an_inflated_count_is_fixed_at_enrolment_and_capped(fed, tmp_path):
    sites = Enrolment(max_site_weight=0.5)
    ctx = context(fed, tmp_path, honest(fed, {"1": 10**9}), sites)
    assert sites.admit(ctx) == [100, 102]
    [heavy] = [a for a in audit(tmp_path) if a["event"] == "site_rejected"]
    assert heavy["client"] == "1" and "above max-site-weight 0.5" in heavy["reason"]
    assert examples_problem(ctx, "0", 51) == "reports 51 examples, it enrolled with 50"
    assert examples_problem(ctx, "0", 50) is None


def test_overweight_applies_above_one_over_the_cap_sites():
    assert overweight({"0": 228, "1": 227}, 0.5) == []  # two sites: one always holds half
    assert overweight({"0": 10, "1": 10, "2": 21}, 0.5) == ["2"]
    assert overweight({"0": 10, "1": 10, "2": 20}, 0.5) == []
    assert overweight({"0": 1, "1": 1, "2": 10**9}, 1.0) == []


def test_replies_are_attributed_to_the_sending_node(fed, tmp_path):
    sites = Enrolment()
    for site, nid in NODES.items():
        sites.bind(site, nid, 50)
    ctx = context(fed, tmp_path, None, sites)
    result = RoundResult()
    replies = [reply_from(100, "0"), reply_from(101, "2"), reply_from(102, "2", wire.MASKED), reply_from(999, "0")]
    assert [(s, r.metadata.src_node_id) for s, r in attribute(ctx, result, replies, "train")] == [("0", 100), ("2", 102)]
    assert result.rejected == ["1", "node-999"]
    reasons = [a["reason"] for a in audit(tmp_path)]
    assert reasons == ["train: claims site '2', but node 101 enrolled as site '1'",
                       "train: reply from node 999, which never enrolled"]
    assert attribute(ctx, RoundResult(), [reply_from(100, "0"), reply_from(100, "0")], "x")[1:] == []


def test_without_an_enrolment_replies_keep_their_claimed_id(fed, tmp_path):
    ctx = context(fed, tmp_path, None, None)
    assert [s for s, _ in attribute(ctx, RoundResult(), [reply_from(101, "2")], "train")] == ["2"]
