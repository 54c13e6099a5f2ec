"""The federation's roster: which sites exist, which Flower node speaks for each, and each round's cohort.

- Registered sites are the server's seal keys (the key folder of `fedseal keys init`, or the keys a
  simulation makes for all `--clients` sites): a site without keys cannot take part.
- A node is bound to a site only by a successful enrolment (server/enrolment.py): the node proves,
  with that site's seal key, that it is the site and how many examples it holds; the roster keeps
  the binding and that count for the run. A node that names a site with no seal key is audited
  `site_unknown` once and never asked again while it stays connected.
- Each round's cohort is drawn from the registered sites by (run seed, round) alone, so a resumed
  run draws the same cohorts. Only the cohort's bound nodes are sent anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.common.logger import log
from flwr.serverapp import Grid

from common.errors import FedSealError
from common.learning.training import derive_seed
from common.run.records import RunRecorder
from common.run.settings import RunSettings

WAIT_LOG_SECONDS = 10
SETTLE_SECONDS = 3.0  # no `clients` count given: the federation is complete once no node joined for this long


def site_order(site: str) -> tuple[int, str]:
    """Sort key of site ids: numeric ids in numeric order ("2" before "10")."""
    return len(site), site


def draw_cohort(sites: list[str], per_round: int, seed: int, server_round: int) -> list[str]:
    """The sites of `server_round`'s cohort: all when `per_round` is 0 or not smaller than the
    federation, else `per_round` of them drawn without replacement, seeded by (seed, round)."""
    sites = sorted(sites, key=site_order)  # the draw must not depend on the order sites were listed in
    if per_round <= 0 or per_round >= len(sites):
        return sites
    rng = np.random.default_rng(derive_seed(seed, "cohort", server_round))
    picked = rng.choice(len(sites), size=per_round, replace=False)
    return sorted((sites[i] for i in picked), key=site_order)


@dataclass
class Roster:
    """The registered sites and the node enrolled for each (see the module docstring)."""

    sites: list[str]  # registered site ids, in site order
    node_of: dict[str, int] = field(default_factory=dict)  # site -> the node it enrolled from
    examples: dict[str, int] = field(default_factory=dict)  # site -> its example count, fixed at enrolment
    unknown: set[int] = field(default_factory=set)  # nodes audited site_unknown (never asked again)
    banned: dict[str, str] = field(default_factory=dict)  # site -> why it takes no further part in the run
    suspects: set[str] = field(default_factory=set)  # he: the sites in every failing group since the first

    def __post_init__(self) -> None:
        self.sites = sorted(self.sites, key=site_order)
        self._registered = set(self.sites)
        self.site_of: dict[int, str] = {nid: site for site, nid in self.node_of.items()}  # node -> site

    def registered(self, site: str) -> bool:
        """True when `site` has seal keys in this federation."""
        return site in self._registered

    def bind(self, site: str, node_id: int, examples: int, connected: set[int]) -> str | None:
        """Bind `node_id` to `site` with its example count, once the node has proved it is that site
        (server/enrolment.py); None if done, else why it is not bound. A site bound to a node that
        is no longer connected moves to the new node."""
        if not self.registered(site):
            return f"claims site {site!r}, which has no site keys in this federation"
        holder = self.node_of.get(site)
        if holder is not None and holder != node_id and holder in connected:
            return f"claims site {site!r}, which is enrolled from node {holder}"
        self.site_of.pop(self.node_of.get(site, -1), None)
        self.node_of[site] = node_id
        self.site_of[node_id] = site
        self.examples[site] = examples
        return None

    def unbound(self, connected: set[int]) -> list[int]:
        """The connected nodes neither bound to a site nor audited site_unknown, in node order."""
        return sorted(connected - set(self.site_of) - self.unknown)

    def sample_rate(self, settings: RunSettings) -> float:
        """The share of the sites in each round's cohort (K/N; 1.0 when every site takes part)."""
        per_round = settings.clients_per_round
        return 1.0 if not per_round or per_round >= len(self.sites) else per_round / len(self.sites)

    def summary_fields(self, settings: RunSettings) -> dict[str, int]:
        """summary.json's count of sites: registered, sampled into each round, nodes left out."""
        per_round = settings.clients_per_round
        return {"clients_registered": len(self.sites),
                "clients_per_round": per_round if 0 < per_round < len(self.sites) else len(self.sites),
                "nodes_unknown": len(self.unknown)}

    def cohort_nodes(self, cohort: list[str], connected: set[int]) -> tuple[list[int], list[str]]:
        """The nodes of the cohort's connected sites, and the cohort's sites with no connected node."""
        nodes, absent = [], []
        for site in cohort:
            nid = self.node_of.get(site)
            if nid is not None and nid in connected:
                nodes.append(nid)
            else:
                absent.append(site)
        return nodes, absent


def wait_for_nodes(grid: Grid, wanted: int, timeout: float | None) -> set[int]:
    """Block until `wanted` nodes are connected and return them; FedSealError after `timeout`
    seconds (None: wait as long as it takes, as a deployment does for its first sites)."""
    start = time.monotonic()
    next_log = 0.0
    while len(nodes := set(grid.get_node_ids())) < wanted:
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise FedSealError(f"only {len(nodes)} of {wanted} sites connected within {timeout:g} s; "
                               f"start the missing sites or lower the number of sites")
        if waited >= next_log:
            log(INFO, "Waiting for sites: %d connected, %d required", len(nodes), wanted)
            next_log += WAIT_LOG_SECONDS
        time.sleep(0.2)
    return nodes


def settle(grid: Grid, nodes: set[int], timeout: float) -> set[int]:
    """The connected nodes once none joined for SETTLE_SECONDS (at most `timeout` seconds)."""
    start = last_change = time.monotonic()
    while time.monotonic() - last_change < SETTLE_SECONDS and time.monotonic() - start < timeout:
        time.sleep(0.5)
        if (now := set(grid.get_node_ids())) != nodes:
            nodes, last_change = now, time.monotonic()
    return nodes


def first_nodes(grid: Grid, settings: RunSettings) -> set[int]:
    """The nodes connected before round 1. Simulation with `clients` N: all N, waiting at most
    round-timeout seconds. Deployment (keys-dir): at least min-clients, however long that takes
    (more join later). Simulation without N: at least min-clients, then until none joined for
    SETTLE_SECONDS."""
    timeout = float(settings.round_timeout)
    if settings.clients and not settings.keys_dir:
        return wait_for_nodes(grid, settings.clients, timeout)
    nodes = wait_for_nodes(grid, settings.min_clients, None)
    return nodes if settings.keys_dir else settle(grid, nodes, timeout)


def cohort(roster: Roster, settings: RunSettings, recorder: RunRecorder, server_round: int,
           connected: set[int]) -> tuple[list[int], list[str]]:
    """The round's cohort and the bound, connected nodes of its sites. The cohort is drawn from
    the registered sites; its sites with no connected bound node are audited `sites_absent` by
    site id. With sampling the cohort is audited `cohort`."""
    sampled = draw_cohort(roster.sites, settings.clients_per_round, settings.seed, server_round)
    if len(sampled) < len(roster.sites):
        recorder.audit("cohort", round=server_round, sampled=len(sampled), registered=len(roster.sites),
                       clients=sampled)
    nodes, absent = roster.cohort_nodes(sampled, connected)
    if absent:
        recorder.audit("sites_absent", round=server_round, count=len(absent), clients=absent)
        log(WARNING, "Round %d: %d site(s) of the cohort have no connected, enrolled node: %s", server_round, len(absent),
            ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else ""))
    return nodes, sampled
