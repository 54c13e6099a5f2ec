"""Which sites spoil a sum: bisection over sub-sums that never reveal fewer than min-clients sites.

A round's sites are dealt, as they arrive, into `leaves` disjoint groups whose partial sums the
server keeps. When the decrypted sum fails its check, `bisect` halves the range of groups again
and again, revealing each half's sum, until the failing groups are found. The halves form a tree,
so any two revealed sums are nested or disjoint: each revealed sum, and the difference of any two,
covers at least one whole group, and `merge_small` makes every group hold at least min-clients
sites. A failing group of one site names that site; a larger one is left out as a group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

LEAF_BUDGET_BYTES = 256 * 2**20  # the most memory the kept partial sums may take


def leaf_count(expected_sites: int, min_sites: int, sum_bytes: int, budget: int = LEAF_BUDGET_BYTES) -> int:
    """How many partial sums to keep: one per `min_sites` expected sites (the finest a search may
    go), at most what fits in `budget` bytes of `sum_bytes` each, at least 1."""
    finest = max(1, expected_sites // max(1, min_sites))
    return max(1, min(finest, budget // max(1, sum_bytes)))


def merge_small(sizes: list[int], min_sites: int) -> list[list[int]]:
    """Groups of leaf indices such that each group's sites add up to at least `min_sites` (the
    smallest group is merged into the next smallest until none is short); one group when all of
    them together are short. Leaves of no site are dropped."""
    groups = [[i] for i, size in enumerate(sizes) if size > 0]

    def total(group: list[int]) -> int:
        return sum(sizes[i] for i in group)

    while len(groups) > 1:
        groups.sort(key=lambda g: (total(g), g))
        if total(groups[0]) >= min_sites:
            break
        groups[1] = sorted(groups[0] + groups[1])
        del groups[0]
    return sorted(groups)


@dataclass
class Search:
    """What a bisection found: the ranges of groups whose revealed sum passed (their union is
    clean), the groups whose sum failed, and every range whose sum was revealed. `undecided`: a
    sub-sum could not be revealed, so nothing is known."""

    good: list[range] = field(default_factory=list)
    bad: list[int] = field(default_factory=list)
    revealed: list[range] = field(default_factory=list)
    undecided: bool = False


def bisect(groups: int, passes: Callable[[range], bool | None]) -> Search:
    """Search `groups` groups whose whole sum failed. `passes(r)` reveals the sum of the groups in
    range r and returns whether it passes its check, or None when it cannot be revealed."""
    search = Search()
    failing = [range(groups)]
    while failing:
        node = failing.pop()
        if len(node) == 1:
            search.bad.append(node.start)
            continue
        middle = (node.start + node.stop) // 2
        for half in (range(node.start, middle), range(middle, node.stop)):
            verdict = passes(half)
            search.revealed.append(half)
            if verdict is None:
                search.undecided = True
                return search
            (search.good if verdict else failing).append(half)
    search.bad.sort()
    return search

