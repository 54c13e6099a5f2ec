"""Bisection over sub-sums (common/secure/subsums.py) at federation scale, with a stand-in check:
a group's sum fails when it holds a culprit. What a user relies on: the culprits' groups are found,
every other group is kept, and no revealed sum - nor the difference of two - covers fewer than
min-clients sites."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.secure import subsums


def _deal(sites: int, leaves: int) -> list[list[int]]:
    """Sites dealt round-robin into leaves, as the he round deals them as they arrive."""
    return [list(range(leaf, sites, leaves)) for leaf in range(leaves)]


def _search(sites: int, min_sites: int, culprits: set[int]):
    leaves = _deal(sites, subsums.leaf_count(sites, min_sites, sum_bytes=32_768))
    groups = [sorted(s for i in g for s in leaves[i]) for g in subsums.merge_small([len(x) for x in leaves], min_sites)]
    revealed: list[set[int]] = []

    def passes(span: range) -> bool:
        members = {s for g in groups[span.start:span.stop] for s in g}
        revealed.append(members)
        return not members & culprits

    return groups, subsums.bisect(len(groups), passes), revealed


@pytest.mark.parametrize("sites, min_sites, culprits", [(1000, 2, 1), (1000, 5, 3), (300, 1, 2), (7, 3, 1)])
def test_bisection_finds_every_culprits_group_keeps_the_rest_and_reveals_no_small_sum(sites, min_sites, culprits):
    rng = np.random.default_rng(sites + min_sites)
    bad_sites = set(rng.choice(sites, culprits, replace=False).tolist())
    groups, search, revealed = _search(sites, min_sites, bad_sites)
    assert all(len(g) >= min_sites for g in groups)
    assert {i for i, g in enumerate(groups) if set(g) & bad_sites} == set(search.bad)
    kept = {i for span in search.good for i in span}
    assert kept | set(search.bad) == set(range(len(groups))) and not kept & set(search.bad)
    assert all(len(a) >= min_sites for a in revealed)
    assert all(len(a ^ b) >= min_sites for i, a in enumerate(revealed) for b in revealed[i + 1:])
    assert len(revealed) <= 2 * culprits * math.ceil(math.log2(len(groups)))  # O(culprits log groups)


def test_an_undecided_reveal_stops_the_search():
    search = subsums.bisect(8, lambda span: None)
    assert search.undecided and search.bad == [] and search.good == [] and len(search.revealed) == 1


def test_leaf_count_is_one_per_min_clients_sites_within_the_memory_budget():
    assert subsums.leaf_count(100, 2, sum_bytes=32_768) == 50
    assert subsums.leaf_count(100, 2, sum_bytes=8 * 2**20) == 32  # 256 MiB / 8 MiB
    assert subsums.leaf_count(1, 5, sum_bytes=1) == 1


@pytest.mark.parametrize("sizes, min_sites", [([3, 3, 2, 2], 2), ([1, 1, 1, 0], 2), ([2, 1, 1, 1], 2),
                                             ([1] * 7, 3), ([5, 4, 4], 6)])
def test_merge_small_makes_every_group_hold_min_clients_sites(sizes, min_sites):
    """Every non-empty leaf lands in exactly one group, and each group holds at least min-clients
    sites, unless all the sites together are fewer (then there is one group)."""
    out = subsums.merge_small(sizes, min_sites)
    assert sorted(i for g in out for i in g) == [i for i, s in enumerate(sizes) if s]
    assert all(sum(sizes[i] for i in g) >= min_sites for g in out) or len(out) == 1
