"""Every site counted at scale: 100 sites in `none`, a few dozen in `he` and `masked`, and sampled
cohorts. In every round each site of the cohort is either used or named (by site id) in an audit
event of that round; sites outside the cohort are left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.run import records
from tests.simrun import Runs, simulate


def accounted(folder: Path) -> list[dict]:
    """Check that no site was silently left out; return the rounds."""
    summary = json.loads((folder / records.SUMMARY).read_text())
    sites = {str(i) for i in range(summary["clients_registered"])}
    audit = records.read_jsonl(folder / records.AUDIT)
    for event in audit:
        for name in [event.get("client"), *event.get("clients", [])]:
            assert name is None or name in sites, f"{event['event']} names {name!r}, not a site id"
    for r in summary["rounds"]:
        events = [e for e in audit if e.get("round") == r["round"]]
        cohorts = [e["clients"] for e in events if e["event"] == "cohort"]
        cohort = set(cohorts[0]) if cohorts else sites
        assert len(cohort) == r["sampled"] == summary["clients_per_round"]
        named = {e["client"] for e in events if "client" in e and e["event"] != "cohort"}
        named |= {c for e in events if e["event"] != "cohort" for c in e.get("clients", [])}
        assert set(r["used"]) <= cohort and len(r["used"]) == r["clients_used"]
        silent = cohort - set(r["used"]) - named
        assert not silent, f"round {r['round']}: sites {sorted(silent)} neither used nor named in the audit"
    return summary["rounds"]


def test_a_node_without_site_keys_is_named_once_and_left_out(tmp_path):
    """A federation of 3 sites with a 4th node connected: asked to enrol, the node can only name
    site "3", which has no keys; it is audited site_unknown once (not every round), the 3 sites
    enrol once each, and every round uses them. In this process (run_child), so first in the file:
    before the other runs start in the background (its clean-up reaps this process's children)."""
    import io

    from common.launch.simulate import run_child
    from common.run.settings import RunSettings

    settings = RunSettings(dataset="breast-cancer", num_rounds=2, local_epochs=1, clients=3, out_dir=str(tmp_path))
    assert run_child(settings, 4, tmp_path, verbose=False, out=io.StringIO(), quiet=True) == 0
    audit = records.read_jsonl(tmp_path / records.AUDIT)
    unknown = [e for e in audit if e["event"] == "site_unknown"]
    assert len(unknown) == 1 and "names site '3', which has no site keys" in unknown[0]["reason"]
    assert sorted(e["client"] for e in audit if e["event"] == "site_enrolled") == ["0", "1", "2"]  # once each
    assert [e for e in audit if e["event"] not in ("site_unknown", "site_enrolled")] == []
    summary = json.loads((tmp_path / records.SUMMARY).read_text())
    assert summary["clients_registered"] == 3 and summary["nodes_unknown"] == 1
    assert [r["used"] for r in accounted(tmp_path)] == [["0", "1", "2"], ["0", "1", "2"]]


def _dropper() -> int:
    """The site of round 2's cohort (60 sites, 12 per round, seed 0) that drops out in that round."""
    from server.roster import draw_cohort

    return int(draw_cohort([str(i) for i in range(60)], 12, 0, 2)[0])


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The command-line simulations of this file, started at once (each in its own processes), the
    longest first: (Runs, their folder); each test waits for its own."""
    root = tmp_path_factory.mktemp("scale")
    runs = Runs()
    try:
        runs.start("100-none", simulate, "--dataset", "digits", "--clients", "100", "--rounds", "2", "--local-epochs",
                   "1", "--quiet", "--no-report", out=root / "100-none")
        runs.start("60-sampled", simulate, "--dataset", "digits", "--clients", "60", "--clients-per-round", "12",
                   "--rounds", "2", "--local-epochs", "1", "--secure-mode", "masked", "--min-clients", "6", "--quiet",
                   "--no-report", "--inject", f"drop:{_dropper()}:2", out=root / "60-sampled")
        for mode in ("he", "masked"):
            runs.start(f"40-{mode}", simulate, "--dataset", "digits", "--clients", "40", "--rounds", "2",
                       "--local-epochs", "1", "--secure-mode", mode, "--no-report", out=root / f"40-{mode}")
        yield runs, root
    finally:
        runs.close()


def test_100_sites_none_every_site_in_every_round(started):
    runs, root = started
    runs.get("100-none")  # digits, 100 sites, 2 rounds, 1 local epoch
    rounds = accounted(root / "100-none")
    assert [r["clients_used"] for r in rounds] == [100, 100]
    assert all(r["rejected"] == [] for r in rounds)


@pytest.mark.parametrize("mode", ["he", "masked"])
def test_dozens_of_sites_secure_every_site_in_every_round(started, mode):
    runs, root = started
    proc = runs.get(f"40-{mode}")  # digits, 40 sites, 2 rounds, 1 local epoch
    rounds = accounted(root / f"40-{mode}")
    assert [r["clients_used"] for r in rounds] == [40, 40]
    assert all(r["rejected"] == [] for r in rounds)
    assert "sites: 40 registered, 40 sampled per round, used per round 40" in proc.stdout


def test_sampled_cohorts_with_a_site_dropping_out(started):
    """60 sites, 12 per round, masked: each round's cohort is drawn again, only it takes part, and
    a site of the cohort that vanishes is named; the summary counts registered and sampled sites."""
    from server.roster import draw_cohort

    dropper = _dropper()
    runs, root = started
    runs.get("60-sampled")
    folder = root / "60-sampled"
    rounds = accounted(folder)
    summary = json.loads((folder / records.SUMMARY).read_text())
    assert summary["clients_registered"] == 60 and summary["clients_per_round"] == 12
    cohorts = [e["clients"] for e in records.read_jsonl(folder / records.AUDIT) if e["event"] == "cohort"]
    assert cohorts == [draw_cohort([str(i) for i in range(60)], 12, 0, r) for r in (1, 2)]
    assert rounds[0]["used"] == cohorts[0]
    assert str(dropper) not in rounds[1]["used"] and len(rounds[1]["used"]) == 11
