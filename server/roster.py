"""The federation's roster: which sites exist, which Flower node speaks for each, and each round's cohort.

- Registered sites are the server's seal keys (the key folder of `fedseal keys init`, or the keys a
  simulation makes for all `--clients` sites): a site without keys cannot take part.
- A node is bound to a site once, by a `query.hello` that asks it which site it is (its client id).
  A node that names no registered site, fails to answer, or names a site another connected node
  already speaks for is audited `site_unknown` once and left out of every round; it is never asked
  again while it stays connected.
- Each round's cohort is drawn from the registered sites by (run seed, round) alone, so a resumed
  run draws the same cohorts. Only the cohort's nodes are sent anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from common import wire
from common.errors import FedSealError
from common.learning.training import derive_seed
from common.run.records import RunRecorder
from common.run.settings import RunSettings
from server.rounds import send_and_receive

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
    """The registered sites and the node bound to each (see the module docstring)."""

    sites: list[str]  # registered site ids, in site order
    node_of: dict[str, int] = field(default_factory=dict)  # site -> the node that speaks for it
    unknown: set[int] = field(default_factory=set)  # nodes audited site_unknown (never asked again)

    def __post_init__(self) -> None:
        self.sites = sorted(self.sites, key=site_order)
        self._registered = set(self.sites)
        self.site_of: dict[int, str] = {nid: site for site, nid in self.node_of.items()}  # node -> site

    def bind(self, site: str, node_id: int, connected: set[int]) -> str | None:
        """Bind `node_id` to `site`; None if done, else why the node is left out."""
        if site not in self._registered:
            return f"names site {site!r}, which has no site keys in this federation"
        holder = self.node_of.get(site)
        if holder is not None and holder != node_id and holder in connected:
            return f"names site {site!r}, for which node {holder} already speaks"
        self.site_of.pop(self.node_of.get(site, -1), None)
        self.node_of[site] = node_id
        self.site_of[node_id] = site
        return None

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


def hello_message(node_id: int) -> Message:
    """The question a new node answers with its site id (client/app.py `hello`)."""
    return Message(content=RecordDict({wire.CONFIG: ConfigRecord({})}), dst_node_id=node_id,
                   message_type=wire.HELLO, group_id="hello")


def discover(grid: Grid, roster: Roster, recorder: RunRecorder, connected: set[int], timeout: float,
             server_round: int) -> None:
    """Ask every connected node not yet bound (nor left out) which site it is, and bind it.
    A node that does not answer in time is asked again at the next round."""
    bound = set(roster.node_of.values())
    new = sorted(connected - bound - roster.unknown)
    if not new:
        return
    replies = send_and_receive(grid, [hello_message(nid) for nid in new], timeout)
    for reply in replies:
        nid = reply.metadata.src_node_id
        if nid not in new:
            continue
        config = None if reply.has_error() else reply.content.get(wire.CONFIG)
        site = config.get(wire.CLIENT_ID) if isinstance(config, ConfigRecord) else None
        if reply.has_error():
            reason = f"did not say which site it is: {reply.error.reason}"
        elif not isinstance(site, str):
            reason = f"hello reply holds no {wire.CLIENT_ID!r}"
        else:
            reason = roster.bind(site, nid, connected)
        if reason is not None:
            roster.unknown.add(nid)
            recorder.audit("site_unknown", round=server_round, node=nid, reason=reason)
            log(WARNING, "Node %d left out of the federation: %s", nid, reason)
    answered = {r.metadata.src_node_id for r in replies}
    if silent := [nid for nid in new if nid not in answered]:
        log(WARNING, "%d node(s) did not answer which site they are within %g s; asking again next round",
            len(silent), timeout)
    log(INFO, "Roster: %d of %d registered sites bound to a node", len(roster.node_of), len(roster.sites))



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


def round_nodes(grid: Grid, roster: Roster, settings: RunSettings, recorder: RunRecorder,
                server_round: int) -> tuple[list[int], list[str]]:
    """The nodes this round sends to, and the round's cohort: new nodes are asked who they are,
    the cohort is drawn, and sites of the cohort with no connected node are audited
    `sites_absent` by site id. With sampling the cohort is audited `cohort`."""
    connected = wait_for_nodes(grid, settings.min_clients, None)
    discover(grid, roster, recorder, connected, float(settings.round_timeout), server_round)
    cohort = draw_cohort(roster.sites, settings.clients_per_round, settings.seed, server_round)
    if len(cohort) < len(roster.sites):
        recorder.audit("cohort", round=server_round, sampled=len(cohort), registered=len(roster.sites),
                       clients=cohort)
    nodes, absent = roster.cohort_nodes(cohort, connected)
    if absent:
        recorder.audit("sites_absent", round=server_round, count=len(absent), clients=absent)
        log(WARNING, "Round %d: %d site(s) of the cohort have no connected node: %s", server_round, len(absent),
            ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else ""))
    return nodes, cohort
