"""Deployment on loopback: real SuperLink, SuperExec and SuperNode processes with TLS, SuperNode
authentication and process isolation (common/launch/deploy_local.py).

An in-process `Deployment` of 3 sites, shared by the tests that need it, for the faults: an
unregistered SuperNode, a user's task, one run in which site 1's round-1 reply is tampered and
site 2 is killed when round 2 starts, and a site unregistered and refused on restart.
Every process is stopped by PID in the fixtures' `finally`, and the tests check that none is left.
Select with `-m deploy`, skip with `-m "not deploy"`. (scripts/deploy-local.sh end to end:
tests/launch/test_deploy_script.py; the two files run on different workers.)
"""

from __future__ import annotations

import json
import time

import pytest

from common.launch.deploy_local import DeployError, Deployment
from common.processes import session_members, stop_session
from common.run import records
from tests.launch.deployment import CLIENTS, SEED, SITE_CLASS_ROWS, deployed_accuracy

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1800)]

FAULT_ROUND_TIMEOUT = 60  # seconds the server waits for a round's replies in the fault run


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """A running 3-site deployment (in this process) for the fault tests; stopped by PID at the end."""
    tmp = tmp_path_factory.mktemp("deploy-faults")
    dep = Deployment(tmp / "deploy", CLIENTS, seed=SEED, say=lambda text: None)
    started: list[int] = []
    try:
        dep.prepare()
        dep.start()
        started = [proc.popen.pid for proc in dep.procs]
        yield dep
    finally:
        started += [proc.popen.pid for proc in dep.procs]
        dep.stop()
    left = {pid: members for pid in started if (members := session_members(pid))}
    assert not left, f"processes left in the deployment's sessions: {left}"


def wait_for_exit(popen, seconds: float = 120) -> None:
    """Wait until the process has exited, at most `seconds` (callers assert on how it ended)."""
    deadline = time.monotonic() + seconds
    while popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)


def test_unregistered_supernode_is_refused(faults):
    known = faults.nodes()
    assert sorted(known) == sorted(s.node_id for s in faults.sites) and set(known.values()) == {"online"}
    rogue = faults.new_site("rogue", faults.sites[0].keys_dir)  # a fresh key the SuperLink never saw
    faults.start_site(rogue)
    node = rogue.procs[0]
    try:
        node.expected_exit = True
        wait_for_exit(node.popen)
        assert node.popen.returncode not in (None, 0), f"the unregistered SuperNode was not refused:\n{node.tail()}"
        assert "Failed to activate SuperNode" in node.log.read_text()
        assert "SuperNode ID:" not in node.log.read_text()
        assert faults.nodes() == known  # nothing was added
    finally:
        for proc in rogue.procs:
            proc.expected_exit = True
            stop_session(proc.popen)


def test_a_user_task_is_deployed_and_the_coordinator_loads_no_data(faults):
    """tests/fixtures/site_task.py, shipped in the app folder, in masked mode: the coordinator imports
    it to build the model and never loads data; the sites score the model (federated evaluation)."""
    handle = faults.start_run("user-task", {"secure-mode": "masked", "num-rounds": 1, "min-clients": CLIENTS,
                                            "task": "tests.fixtures.site_task:SiteCsvTask", "seed": SEED})
    try:
        summary = faults.wait_run(handle, timeout=900)
    except DeployError as exc:
        pytest.fail(str(exc))
    assert summary["dataset"] == "site-csv" and summary["final_accuracy"] is None
    assert summary["centralized_accuracy"] is None and summary["server_evaluation"].startswith("deployment")
    rounds = records.read_jsonl(handle.folder / records.ROUNDS)
    assert rounds[0]["clients_used"] == CLIENTS and rounds[0]["accuracy"] is None
    val = sum(n // 5 for n in (sum(SITE_CLASS_ROWS[2 * s:2 * s + 2]) for s in range(CLIENTS)))
    assert summary["final_federated_eval"]["examples"] == val and set(rounds[0]["site_eval"]) == {"0", "1", "2"}
    for path in handle.folder.rglob("*.json*"):
        assert "site.csv" not in path.read_text(errors="replace"), path


@pytest.fixture(scope="module")
def fault_run(faults):
    """One none-mode run: site 1 tampers with its round-1 reply; site 2 is killed (SIGKILL, no
    goodbye) as soon as round 1 is recorded, i.e. as round 2 starts. Returns the run folder."""
    handle = faults.start_run("faults", {"secure-mode": "none", "num-rounds": 2, "min-clients": 2,
                                         "round-timeout": FAULT_ROUND_TIMEOUT, "inject": "tamper-update:1:1",
                                         "seed": SEED})
    deadline = time.monotonic() + 600
    while len(records.read_jsonl(handle.folder / records.ROUNDS)) < 1:
        faults.check_alive()
        if handle.proc.popen.poll() is not None and not (handle.folder / records.ROUNDS).exists():
            pytest.fail(f"the run ended before round 1:\n{handle.proc.tail(40)}")
        assert time.monotonic() < deadline, "round 1 never finished"
        time.sleep(0.2)
    faults.kill_site(faults.sites[2])
    try:
        faults.wait_run(handle, timeout=900)
    except DeployError as exc:
        pytest.fail(str(exc))
    return handle.folder


def test_tampered_supernode_is_rejected_and_named_in_the_audit(fault_run):
    rounds = records.read_jsonl(fault_run / records.ROUNDS)
    audit = records.read_jsonl(fault_run / records.AUDIT)
    assert rounds[0]["rejected"] == ["1"] and rounds[0]["clients_used"] == 2, rounds[0]
    events = [a for a in audit if a["event"] == "update_rejected" and a["round"] == 1]
    assert [a["client"] for a in events] == ["1"], audit
    assert events[0]["tampered"], events[0]  # names where the seal failed


def test_run_finishes_when_a_supernode_is_killed_mid_run(faults, fault_run):
    """Site 2 dies as round 2 starts: round 2 goes on with sites 0 and 1, the loss is audited.

    Flower may answer for a SuperNode whose heartbeat stopped with an error reply from the SuperLink
    itself; the server counts that as no answer from the node: `replies_missing` names it."""
    summary = json.loads((fault_run / records.SUMMARY).read_text())
    rounds = records.read_jsonl(fault_run / records.ROUNDS)
    audit = [a for a in records.read_jsonl(fault_run / records.AUDIT) if a.get("round") == 2]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[1]["clients_used"] == 2, rounds[1]
    assert not {"0", "1"} & set(rounds[1]["rejected"]), rounds[1]  # the live sites were used
    dead = faults.sites[2].node_id
    assert any(a["event"] == "replies_missing" and a.get("nodes") == [dead] for a in audit), audit
    assert not any(a.get("client") == "node-1" for a in audit), audit  # not blamed on the SuperLink
    assert summary["final_accuracy"] is None and deployed_accuracy(fault_run / "model.safetensors") > 0.9


def test_unregistered_site_is_cut_off_and_refused_on_restart(faults, fault_run):
    """Removing a site (README): `flwr supernode unregister` stops its running SuperNode, and the
    SuperLink refuses the same key when the site starts again. Runs after the fault run."""
    site = faults.sites[0]
    faults.unregister(site)
    node = site.procs[0]
    node.expected_exit = True
    wait_for_exit(node.popen)
    assert node.popen.poll() is not None, f"the unregistered SuperNode kept running:\n{node.tail()}"
    assert faults.nodes()[site.node_id] == "unregistered"
    for proc in site.procs:
        proc.expected_exit = True
        stop_session(proc.popen)
    (site.folder / "supernode.log").rename(site.folder / "supernode-before.log")
    faults.start_site(site)
    node = site.procs[0]
    node.expected_exit = True
    wait_for_exit(node.popen)
    assert node.popen.returncode not in (None, 0) and "Failed to activate SuperNode" in node.log.read_text()
