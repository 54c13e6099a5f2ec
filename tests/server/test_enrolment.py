"""server.enrolment on hand-built Flower messages: a node proves its site once, the roster binds it
only then, and every reply is attributed to the node that sent it (DESIGN.md §2.5). The audit never
names a site the sender only claimed to be."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from common import wire
from common.integrity import enrol
from common.run import records
from common.run.records import RunRecorder
from common.run.settings import RunSettings
from server.enrolment import attribute, capped, enrol_nodes, examples_problem, overweight, round_nodes
from server.roster import Roster
from server.rounds import RoundContext, RoundResult
from tests.server.fakes import Grid

pytestmark = pytest.mark.usefixtures("flower_task_identity")

RUN = "run-enrol"
NODES = {"0": 100, "1": 101, "2": 102}  # site -> its node
CONNECTED = set(NODES.values())


def proved(fed, msg, site, node, examples=50):
    """The enrolment reply of a holder of `site`'s seal key, proving it for `node`."""
    tag = enrol.proof(fed[1][site].seal_key, RUN, site, node, examples, bytes(msg.content[wire.CONFIG][wire.NONCE]))
    return Message(RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: site, wire.NUM_EXAMPLES: examples,
                                                          wire.ENROL_PROOF: tag})}), reply_to=msg)


def honest(fed, examples=None):
    """Each node proves the site that lives on it (NODES), with `examples` or 50 examples."""
    by_node = {nid: site for site, nid in NODES.items()}

    def answer(msg):
        site = by_node[msg.metadata.dst_node_id]
        return proved(fed, msg, site, msg.metadata.dst_node_id, (examples or {}).get(site, 50))
    return answer


def enrol_all(fed, tmp_path, answer, roster, connected=CONNECTED, server_round=1):
    """One round's enrolment of the `connected` nodes not yet bound; the nodes asked."""
    grid = Grid(answer)
    asked = []
    push = grid.push_messages
    grid.push_messages = lambda messages: (asked.extend(m.metadata.dst_node_id for m in messages), push(messages))[1]
    enrol_nodes(grid, roster, fed[0], RunRecorder(tmp_path, resume=True), set(connected), RUN, server_round, 5.0, {})
    return asked


def context(fed, tmp_path, roster):
    return RoundContext(grid=None, node_ids=sorted(NODES.values()), settings=RunSettings(), keys=fed[0],
                        spec={}, run_name=RUN, server_round=1, published={}, base={}, record=None, config={},
                        recorder=RunRecorder(tmp_path, resume=True), clock=None, roster=roster)


def audit(tmp_path):
    return records.read_jsonl(tmp_path / records.AUDIT)


def reply_from(node, claimed, stage_key=wire.CONFIG):
    request = Message(RecordDict({}), dst_node_id=node, message_type=wire.TRAIN)
    return Message(RecordDict({stage_key: ConfigRecord({wire.CLIENT_ID: claimed})}), reply_to=request)


def test_honest_nodes_enrol_once_and_are_bound(fed, tmp_path):
    roster = Roster(list(NODES))
    assert enrol_all(fed, tmp_path, honest(fed), roster) == [100, 101, 102]
    assert roster.site_of == {100: "0", 101: "1", 102: "2"} and roster.examples == {s: 50 for s in "012"}
    assert enrol_all(fed, tmp_path, None, roster) == []  # already bound: never asked again
    assert [(a["event"], a["client"], a["node"]) for a in audit(tmp_path)] == [
        ("site_enrolled", "0", 100), ("site_enrolled", "1", 101), ("site_enrolled", "2", 102)]


def test_every_connected_node_enrols_not_only_a_cohort(fed, tmp_path):
    """Nodes that join later are asked at the next round; the bound ones are not asked again."""
    roster = Roster(list(NODES))
    assert enrol_all(fed, tmp_path, honest(fed), roster, connected={100}) == [100]
    assert enrol_all(fed, tmp_path, honest(fed), roster, server_round=2) == [101, 102]
    assert roster.site_of == {100: "0", 101: "1", 102: "2"}


def test_a_proof_copied_to_another_node_or_made_without_the_key_fails_naming_the_node(fed, tmp_path):
    good = honest(fed)

    def answer(msg):
        if msg.metadata.dst_node_id == 101:  # node 101 claims site "2" with site 2's proof for node 102
            return proved(fed, msg, "2", 102)
        if msg.metadata.dst_node_id == 100:  # node 100 claims site "1" with a proof under site 0's key
            tag = enrol.proof(fed[1]["0"].seal_key, RUN, "1", 100, 50, bytes(msg.content[wire.CONFIG][wire.NONCE]))
            return Message(RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: "1", wire.NUM_EXAMPLES: 50,
                                                                  wire.ENROL_PROOF: tag})}), reply_to=msg)
        return good(msg)

    roster = Roster(list(NODES))
    enrol_all(fed, tmp_path, answer, roster)
    assert roster.site_of == {102: "2"}
    bad = [a for a in audit(tmp_path) if a["event"] == "enrolment_rejected"]
    assert [(a["client"], a["claimed"]) for a in bad] == [("node-100", "1"), ("node-101", "2")]
    assert all("does not hold" in a["reason"] for a in bad)
    assert enrol_all(fed, tmp_path, good, roster, server_round=2) == [100, 101]  # asked again, and bound now
    assert roster.site_of == {100: "0", 101: "1", 102: "2"}


def test_a_proof_for_another_request_fails(fed, tmp_path):
    """A proof is bound to the server's nonce: one recorded from an earlier request does not hold."""
    roster = Roster(list(NODES))
    old = {}

    def record(msg):
        old[msg.metadata.dst_node_id] = proved(fed, msg, "0", 100)
        return Message(RecordDict({}), reply_to=msg)

    enrol_all(fed, tmp_path, record, roster, connected={100})
    replay = old[100].content[wire.CONFIG]
    enrol_all(fed, tmp_path, lambda msg: Message(RecordDict({wire.CONFIG: replay}), reply_to=msg), roster,
              connected={100}, server_round=2)
    assert roster.site_of == {}
    assert "does not hold" in [a for a in audit(tmp_path) if a["event"] == "enrolment_rejected"][-1]["reason"]


def test_a_site_bound_to_a_connected_node_cannot_be_taken_over(fed, tmp_path):
    """Even with a valid proof (a stolen seal key), a second node cannot take a site whose node is
    still connected; it is named as itself. Once that node is gone, the site may enrol anew."""
    roster = Roster(list(NODES))
    enrol_all(fed, tmp_path, honest(fed), roster)
    enrol_all(fed, tmp_path, lambda msg: proved(fed, msg, "2", 103), roster, connected=CONNECTED | {103})
    [taken] = [a for a in audit(tmp_path) if a["event"] == "enrolment_rejected"]
    assert taken["client"] == "node-103" and taken["claimed"] == "2" and "enrolled from node 102" in taken["reason"]
    assert roster.site_of[102] == "2" and 103 not in roster.site_of
    enrol_all(fed, tmp_path, lambda msg: proved(fed, msg, "2", 103, 60), roster, connected={100, 101, 103})
    assert roster.node_of["2"] == 103 and roster.examples["2"] == 60 and 102 not in roster.site_of


def test_a_node_naming_a_site_without_keys_is_site_unknown_once(fed, tmp_path):
    """A node with no site keys can prove nothing: it names its site; one without seal keys in the
    federation is audited site_unknown once and never asked again."""
    roster = Roster(list(NODES))

    def answer(msg):
        if msg.metadata.dst_node_id == 103:
            return Message(RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: "3"})}), reply_to=msg)
        return honest(fed)(msg)

    enrol_all(fed, tmp_path, answer, roster, connected=CONNECTED | {103})
    assert enrol_all(fed, tmp_path, None, roster, connected=CONNECTED | {103}, server_round=2) == []
    [unknown] = [a for a in audit(tmp_path) if a["event"] == "site_unknown"]
    assert unknown["node"] == 103 and "names site '3', which has no site keys" in unknown["reason"]
    assert roster.unknown == {103} and 103 not in roster.site_of


@pytest.mark.parametrize("config, reason", [
    ({wire.CLIENT_ID: "1"}, "claims site '1' with no 'enrol-proof'"),  # a registered site, no proof
    ({wire.CLIENT_ID: "1", wire.NUM_EXAMPLES: 0, wire.ENROL_PROOF: b"x" * 32}, "examples must be an integer >= 1"),
    ({wire.NUM_EXAMPLES: 5}, "no 'client-id'"),
])
def test_an_unproved_claim_of_a_registered_site_is_rejected_naming_the_node(fed, tmp_path, config, reason):
    roster = Roster(list(NODES))
    enrol_all(fed, tmp_path, lambda msg: Message(RecordDict({wire.CONFIG: ConfigRecord(config)}), reply_to=msg),
              roster, connected={101})
    [bad] = audit(tmp_path)
    assert bad["event"] == "enrolment_rejected" and bad["client"] == "node-101" and reason in bad["reason"]
    assert roster.site_of == {} and roster.unknown == set() and roster.unbound({101}) == [101]


def test_an_inflated_count_is_fixed_at_enrolment_and_capped(fed, tmp_path):
    roster = Roster(list(NODES))
    enrol_all(fed, tmp_path, honest(fed, {"1": 10**9}), roster)
    ctx = context(fed, tmp_path, roster)
    assert capped(roster, [100, 101, 102], 0.5, ctx.recorder, 1) == [100, 102]
    [heavy] = [a for a in audit(tmp_path) if a["event"] == "site_rejected"]
    assert heavy["client"] == "1" and "above max-site-weight 0.5" in heavy["reason"]
    assert capped(roster, [100, 101], 0.5, ctx.recorder, 2) == [100, 101]  # two sites: the cap does not apply
    assert examples_problem(ctx, "0", 51) == "reports 51 examples, it enrolled with 50"
    assert examples_problem(ctx, "0", 50) is None


def test_overweight_applies_above_one_over_the_cap_sites():
    assert overweight({"0": 228, "1": 227}, 0.5) == []  # two sites: one always holds half
    assert overweight({"0": 10, "1": 10, "2": 21}, 0.5) == ["2"]
    assert overweight({"0": 10, "1": 10, "2": 20}, 0.5) == []
    assert overweight({"0": 1, "1": 1, "2": 10**9}, 1.0) == []


def test_replies_are_attributed_to_the_sending_node(fed, tmp_path):
    roster = Roster(list(NODES), node_of=dict(NODES))
    ctx = context(fed, tmp_path, roster)
    result = RoundResult()
    two_claims = reply_from(100, "0")
    two_claims.content[wire.MASKED] = ConfigRecord({wire.CLIENT_ID: "2"})  # its own id in CONFIG, the victim's in MASKED
    replies = [reply_from(100, "0"), reply_from(101, "2"), reply_from(102, "2", wire.MASKED), reply_from(999, "0"),
               two_claims]
    assert [(s, r.metadata.src_node_id) for s, r in attribute(ctx, result, replies, "train")] == [("0", 100), ("2", 102)]
    assert result.rejected == ["1", "node-999", "0"]
    reasons = [a["reason"] for a in audit(tmp_path)]
    assert reasons == ["train: claims site '2', but node 101 enrolled as site '1'",
                       "train: reply from node 999, which never enrolled",
                       "train: claims site '2', but node 100 enrolled as site '0'"]
    assert attribute(ctx, RoundResult(), [reply_from(100, "0"), reply_from(100, "0")], "x")[1:] == []


def test_without_a_roster_replies_keep_their_claimed_id(fed, tmp_path):
    ctx = context(fed, tmp_path, None)
    assert [s for s, _ in attribute(ctx, RoundResult(), [reply_from(101, "2")], "train")] == ["2"]


def test_a_round_does_not_wait_forever_for_sites_that_are_gone(fed, tmp_path):
    """Two of three enrolled sites' nodes are gone (killed, disconnected): the next round waits at
    most round-timeout for min-clients nodes, then goes on with the one left (it is then skipped
    for too few replies, and max-skipped-rounds stops the run) and names the absent sites."""
    roster = Roster(list(NODES))
    for site, nid in NODES.items():
        roster.bind(site, nid, 50, CONNECTED)
    grid = Grid(honest(fed))
    grid.get_node_ids = lambda: [NODES["0"]]
    settings = RunSettings(min_clients=2, round_timeout=1)
    nodes, _ = round_nodes(grid, roster, fed[0], settings, RunRecorder(tmp_path, resume=True), RUN, 2, {})
    assert nodes == [NODES["0"]]
    [absent] = [a for a in audit(tmp_path) if a["event"] == "sites_absent"]
    assert absent["clients"] == ["1", "2"] and absent["round"] == 2
