"""The roster: cohorts drawn by (seed, round), nodes bound to registered sites only, a bounded wait."""

from __future__ import annotations

import pytest

from common.errors import FedSealError
from common.run.settings import RunSettings
from server.roster import Roster, draw_cohort, site_order, wait_for_nodes

SITES = [str(i) for i in range(1000)]


def test_cohort_is_k_distinct_registered_sites_in_site_order():
    cohort = draw_cohort(SITES, 100, seed=7, server_round=3)
    assert len(cohort) == len(set(cohort)) == 100
    assert set(cohort) <= set(SITES)
    assert cohort == sorted(cohort, key=site_order)


def test_cohort_depends_on_seed_and_round_only():
    """A resumed run draws the same cohorts: nothing but (seed, round) seeds the draw."""
    assert draw_cohort(SITES, 100, 7, 3) == draw_cohort(list(reversed(SITES)), 100, 7, 3)
    assert draw_cohort(SITES, 100, 7, 3) != draw_cohort(SITES, 100, 7, 4)
    assert draw_cohort(SITES, 100, 7, 3) != draw_cohort(SITES, 100, 8, 3)


def test_cohorts_reach_every_site_over_rounds():
    seen = set()
    for server_round in range(1, 101):
        seen |= set(draw_cohort(SITES, 100, 0, server_round))
    assert seen == set(SITES)  # 100 draws of 10 %: a site is missed with probability 0.9^100 ~ 3e-5


def test_no_sampling_means_every_site():
    assert draw_cohort(SITES[:5], 0, 0, 1) == SITES[:5]
    assert draw_cohort(SITES[:5], 5, 0, 1) == SITES[:5]


def test_roster_orders_sites_numerically():
    assert Roster(["10", "2", "1"]).sites == ["1", "2", "10"]


def test_bind_only_registered_sites_and_one_node_per_site():
    """The roster's side of an enrolment (server/enrolment.py binds a node only after its proof)."""
    roster = Roster(["0", "1"])
    assert roster.bind("0", 101, 50, {101, 102, 103}) is None
    assert roster.site_of == {101: "0"} and roster.examples == {"0": 50}
    assert "no site keys" in roster.bind("7", 102, 50, {101, 102, 103})
    assert "enrolled from node 101" in roster.bind("0", 103, 60, {101, 102, 103})  # 101 is still connected
    assert roster.node_of == {"0": 101} and roster.examples == {"0": 50}
    assert roster.unbound({101, 102, 103}) == [102, 103]
    assert roster.bind("0", 104, 70, {104}) is None  # the site came back on a new node
    assert roster.site_of == {104: "0"} and roster.node_of == {"0": 104} and roster.examples == {"0": 70}


def test_cohort_nodes_names_absent_sites():
    roster = Roster(["0", "1", "2"], node_of={"0": 10, "1": 11})
    assert roster.cohort_nodes(["0", "1", "2"], {10}) == ([10], ["1", "2"])


def test_sample_rate_and_summary_fields():
    roster = Roster(SITES)
    assert roster.sample_rate(RunSettings(clients=1000, clients_per_round=100)) == 0.1
    assert roster.sample_rate(RunSettings(clients=1000)) == 1.0
    assert roster.summary_fields(RunSettings(clients=1000, clients_per_round=100)) == {
        "clients_registered": 1000, "clients_per_round": 100, "nodes_unknown": 0}


class Nodes:
    """The one Grid call wait_for_nodes makes: which nodes are connected."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


def test_wait_for_nodes_is_bounded_and_says_how_many_came():
    with pytest.raises(FedSealError, match="only 2 of 5 sites connected within 0.5 s"):
        wait_for_nodes(Nodes([1, 2]), 5, 0.5)
    assert wait_for_nodes(Nodes([1, 2, 3]), 3, 0.5) == {1, 2, 3}
