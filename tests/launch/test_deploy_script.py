"""scripts/deploy-local.sh on loopback: real SuperLink, SuperExec and SuperNode processes with TLS,
SuperNode authentication and process isolation (common/launch/deploy_local.py), over every secure
mode with 3 sites and 1 round, end to end, next to `fedseal simulate` of the same settings (run at
the same time), shared by the tests that need it; and Ctrl-C. Every process is stopped by PID in
the fixtures' `finally`, and the tests check that none is left. Select with `-m deploy`, skip with
`-m "not deploy"`. (The in-process Deployment and its faults: tests/launch/test_deploy_local.py;
the two files run on different workers.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from common.processes import start_in_new_session, stop_session
from common.run import records
from common.run.settings import SECURE_MODES
from tests.launch.deployment import (CLIENTS, ROOT, ROUNDS, SEED, SITE_CLASS_ROWS, deployed_accuracy, finish,
                                     flower_env)
from tests.simrun import assert_no_leftovers

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    """Run deploy-local.sh over every secure mode, and `fedseal simulate` of the same settings
    meanwhile; return (script exit status, script output, deployment folder, simulation summary)."""
    tmp = tmp_path_factory.mktemp("deploy-script")
    marker = f"deploy-script-{os.getpid()}-{time.time_ns()}"
    env = flower_env(tmp, marker)
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
        sim_output = finish(sim, 900)
        assert sim.returncode == 0, sim_output
        output = finish(deploy, 1500)
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
    assert deployed_accuracy(run / "model.safetensors") > 0.9 and simulated["final_accuracy"] > 0.9


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
                                env=flower_env(tmp_path, marker))
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "SuperLink on https://127.0.0.1:" in line:
                proc.send_signal(signal.SIGINT)
                break
        output = "".join(lines) + finish(proc, 120)
    finally:
        if proc.poll() is None:
            stop_session(proc)
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert_no_leftovers(marker)
