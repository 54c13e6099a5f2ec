"""Deployment on loopback: real SuperLink, SuperExec and SuperNode processes with TLS, SuperNode
authentication and process isolation (common/launch/deploy_local.py, scripts/deploy-local.sh).

Two deployments, each shared by the tests that need it, so the module stays within a few minutes:
- `scripts/deploy-local.sh --mode <every mode in SECURE_MODES> --clients 3 --rounds 1`, end to
  end, next to `fedseal simulate` of the same settings (run at the same time);
- an in-process `Deployment` of 3 sites for the faults: an unregistered SuperNode, and one run
  in which site 1's round-1 reply is tampered and site 2 is killed when round 2 starts.
Every process is stopped by PID in the fixtures' `finally`, and the tests check that none is left.
Select with `-m deploy`, skip with `-m "not deploy"`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.launch.deploy_local import DeployError, Deployment
from common.processes import session_members, start_in_new_session, stop_session
from common.run import records
from common.run.settings import SECURE_MODES
from tests.simrun import assert_no_leftovers

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, ROUNDS, SEED = 3, 1, 0  # one round per mode: each message starts a ClientApp process (~15 s)


def _site_class_rows() -> list[int]:
    """Rows of each class in each site's CSV (what its 20 % validation hold-out is cut from)."""
    import numpy as np

    from common.learning.data import load_partition

    return [int(c) for site in range(CLIENTS)
            for c in np.bincount(load_partition("breast-cancer", site, CLIENTS, "iid", SEED)[1])]


SITE_CLASS_ROWS = _site_class_rows()
FAULT_ROUND_TIMEOUT = 60  # seconds the server waits for a round's replies in the fault run


def _env(tmp: Path, marker: str) -> dict[str, str]:
    home = tmp / "flwr-home"
    home.mkdir(exist_ok=True)
    return dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                FLWR_TELEMETRY_ENABLED="0", FEDSEAL_TEST_RUN=marker)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for `proc` (output to a pipe); on timeout stop its session by PID and fail."""
    try:
        out, _ = proc.communicate(timeout=timeout)
        return out
    except subprocess.TimeoutExpired:
        stop_session(proc)
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args} did not finish in {timeout:.0f} s:\n{out[-3000:]}")


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    """Run deploy-local.sh over every secure mode, and `fedseal simulate` of the same settings
    meanwhile; return (script exit status, script output, deployment folder, simulation summary)."""
    tmp = tmp_path_factory.mktemp("deploy-script")
    marker = f"deploy-script-{os.getpid()}-{time.time_ns()}"
    env = _env(tmp, marker)
    sim_out = tmp / "simulation"
    sim = start_in_new_session(
        [sys.executable, "-m", "common.cli", "simulate", "--clients", str(CLIENTS), "--rounds", str(ROUNDS),
         "--seed", str(SEED), "--quiet", "--no-report", "--out", str(sim_out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    deploy = None
    try:
        deploy = start_in_new_session(
            ["bash", str(ROOT / "scripts" / "deploy-local.sh"), "--mode", ",".join(SECURE_MODES),
             "--clients", str(CLIENTS), "--rounds", str(ROUNDS), "--seed", str(SEED), "--dir", str(tmp / "deploy")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
        sim_output = _finish(sim, 900)
        assert sim.returncode == 0, sim_output
        output = _finish(deploy, 1500)
    finally:
        for proc in (sim, deploy):
            if proc is not None and proc.poll() is None:
                stop_session(proc)
    assert_no_leftovers(marker)  # the script stopped everything it started
    return deploy.returncode, output, tmp / "deploy", json.loads((sim_out / records.SUMMARY).read_text())


def test_script_runs_every_mode_with_tls_auth_and_isolation(script):
    status, output, folder, _ = script
    assert status == 0, output
    for mode in SECURE_MODES:
        assert f"{mode:7s} final federated accuracy" in output, output
    commands = "\n".join(p.read_text() for p in sorted((folder / "kit").glob("*/commands.sh")))
    superlink = next(line for line in commands.splitlines() if line.startswith("flower-superlink"))
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                 "--isolation process", "--superexec-auth-secret-file"):
        assert flag in superlink
    assert "--insecure" not in superlink
    supernodes = [line for line in commands.splitlines() if line.startswith("flower-supernode")]
    assert len(supernodes) == CLIENTS
    for line in supernodes:
        for flag in ("--root-certificates", "--auth-supernode-private-key", "--node-config", "data-path=",
                     "keys-dir=", "client-id=", "--isolation process", "--superexec-auth-secret-file"):
            assert flag in line
    assert commands.count("flwr_json flwr supernode register") == CLIENTS
    for mode in SECURE_MODES:
        assert (folder / "runs" / f"{mode}-{CLIENTS}x{ROUNDS}" / "report.html").exists()  # deployed runs too


@pytest.mark.parametrize("mode", SECURE_MODES)
def test_deployed_run_matches_the_simulation(script, mode):
    status, output, folder, simulated = script
    run = folder / "runs" / f"{mode}-{CLIENTS}x{ROUNDS}"
    assert (run / records.SUMMARY).exists(), f"no summary for secure-mode {mode}:\n{output[-4000:]}"
    summary = json.loads((run / records.SUMMARY).read_text())
    rounds = records.read_jsonl(run / records.ROUNDS)
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r["clients_used"] == CLIENTS and not r["rejected"] for r in rounds), rounds
    assert (run / "model.safetensors").exists()
    # the coordinator holds no data in a deployment: the sites score the model (federated evaluation)
    # on the 20 % of their CSV they hold out; the simulation's coordinator scores its test split
    assert summary["final_accuracy"] is None and summary["centralized_accuracy"] is None
    assert summary["server_evaluation"].startswith("deployment")
    fed = summary["final_federated_eval"]  # round 1's: the sites scored the initial model they received
    assert fed["examples"] == sum(round(0.2 * n) for n in SITE_CLASS_ROWS), fed
    assert _test_accuracy(run / "model.safetensors") > 0.9 and simulated["final_accuracy"] > 0.9


def _test_accuracy(model_file: Path) -> float:
    """The deployed federation's final model, scored here on the breast-cancer test split (the
    coordinator itself holds no data)."""
    from common.integrity import watermark
    from common.learning.tasks import builtin
    from common.run.modelio import load_state
    from server.evaluation import score

    task = builtin("breast-cancer")
    arrays, _ = load_state(model_file)
    return score(task, watermark.strip(arrays), task.server_test_data())["accuracy"]


def test_site_data_are_the_simulation_partitions_and_stay_with_the_sites(script):
    """Each site's CSV holds exactly its simulation partition; no coordinator file names a site's
    data (node config stays on the SuperNode)."""
    import numpy as np

    from common.learning.data import dataset_info, load_csv, load_partition, standardize

    _, _, folder, _ = script
    for site in range(CLIENTS):
        x_site, y_site = load_csv(folder / "sites" / str(site) / "site.csv", "label", dataset_info("breast-cancer"))
        x_sim, y_sim = load_partition("breast-cancer", site, CLIENTS, "iid", SEED)
        np.testing.assert_array_equal(y_site, y_sim)
        # same rows in the same order: standardizing the simulation's rows by the site's own
        # statistics gives what the site trains on
        np.testing.assert_allclose(x_site, standardize(x_sim.astype(np.float64))[0], atol=1e-4)
    coordinator_files = list((folder / "coordinator").glob("*.log"))  # SuperLink, SuperExec, ServerApp (flwr run)
    coordinator_files += [p for p in (folder / "runs").rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")]
    assert coordinator_files
    for path in coordinator_files:
        text = path.read_text(errors="replace")
        assert "site.csv" not in text and "data-path" not in text, path


def test_script_ctrl_c_stops_everything(tmp_path):
    """Ctrl-C once the SuperLink is up: exit 130, and no process the script started is left."""
    import signal

    marker = f"deploy-ctrl-c-{os.getpid()}-{time.time_ns()}"
    proc = start_in_new_session(["bash", str(ROOT / "scripts" / "deploy-local.sh"), "--clients", "2",
                                 "--dir", str(tmp_path / "deploy")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                env=_env(tmp_path, marker))
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "SuperLink on https://127.0.0.1:" in line:
                proc.send_signal(signal.SIGINT)
                break
        output = "".join(lines) + _finish(proc, 120)
    finally:
        if proc.poll() is None:
            stop_session(proc)
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert_no_leftovers(marker)


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
    assert summary["final_accuracy"] is None and _test_accuracy(fault_run / "model.safetensors") > 0.9


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
