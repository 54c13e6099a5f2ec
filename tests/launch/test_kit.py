"""The deployment kit (common/launch/kit.py): each machine's folder holds exactly its files, and its
commands.sh, run as written from a copy of the folder, deploys on loopback (marker `deploy`).

Every process the scripts start stays in the session the test gives each script, and is stopped
by PID (`stop_session`) in `finally`, whether the run passed or failed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from common.launch import kit
from common.launch.deploy_local import Deployment, flwr_failure
from common.processes import start_in_new_session, stop_session
from common.run import records
from tests.simrun import assert_no_leftovers

RUN = "none-2x1"


@pytest.fixture()
def kit_dir(tmp_path):
    dep = Deployment(tmp_path / "deploy", 2, say=lambda _: None)
    dep.prepare()
    return dep.write_kit([(RUN, {"secure-mode": "none", "num-rounds": 1, "min-clients": 2, "local-epochs": 1})])


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_each_folder_holds_exactly_its_machines_files(kit_dir):
    assert sorted(p.name for p in kit_dir.iterdir()) == ["coordinator", "site-0", "site-1"]
    keys = {"he-public.ctx", "signing.key", "signing.pub", "watermark.key", "seals/0.key", "seals/1.key"}
    assert _files(kit_dir / "coordinator") == {
        "commands.sh", "flwr-home/config.toml", "superexec.secret", "tls/ca.pem", "tls/server.pem", "tls/server.key",
        "site-keys/0.pub", "site-keys/1.pub", *(f"keys/server/{k}" for k in keys)}  # not the CA's private key
    for site in ("site-0", "site-1"):
        assert _files(kit_dir / site) == {
            "commands.sh", "ca.pem", "auth.key", "auth.pub", "superexec.secret", "site.csv", "keys/watermark.key",
            "keys/server-signing.pub", "keys/seal.key", "keys/he-secret.ctx"}
        assert (kit_dir / site / "keys" / "seal.key").stat().st_mode & 0o077 == 0  # keys stay 0600
    for script in kit_dir.glob("*/commands.sh"):
        text = script.read_text()
        assert str(kit_dir) not in text and "/deploy/" not in text  # nothing of the coordinator's own layout
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    config = (kit_dir / "coordinator" / "flwr-home" / "config.toml").read_text()
    assert f"[superlink.{kit.CONNECTION}]" in config and "tls/ca.pem" in config
    assert 'root-certificates = "$PWD/tls/ca.pem"' in (kit_dir / "coordinator" / kit.COMMANDS).read_text()


def test_flwr_success_false_is_a_failure():
    assert flwr_failure('{\n "success": false,\n "error-message": "\\nSuperLink connection \'x\' not found"\n}') == (
        "SuperLink connection 'x' not found")
    assert flwr_failure('{"success": true, "node-id": 3}') is None and flwr_failure("no json") is None


def test_the_kit_flwr_json_fails_with_flowers_message(kit_dir, tmp_path):
    """The coordinator's `flwr supernode register` without its SuperLink running: JSON success false."""
    script = (kit_dir / "coordinator" / kit.COMMANDS).read_text()
    head = script.split("# 1.")[0]  # the environment and flwr_json, then one registration
    probe = kit_dir / "coordinator" / "probe.sh"
    probe.write_text(head + "flwr_json flwr supernode register site-keys/0.pub nowhere --format json\necho unreachable\n")
    done = subprocess.run(["bash", str(probe)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "unreachable" not in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("flwr: ") and "nowhere" in done.stderr


@pytest.mark.deploy
@pytest.mark.timeout(900)
def test_commands_sh_run_as_written_deploy_on_loopback(kit_dir, tmp_path):
    machines = tmp_path / "machines"  # copied elsewhere, as to other machines
    shutil.copytree(kit_dir, machines, symlinks=False)
    marker = f"kit-{os.getpid()}-{time.time_ns()}"
    env = dict(os.environ, FEDSEAL_TEST_RUN=marker)
    env.pop("FLWR_HOME", None)
    started: list[subprocess.Popen] = []

    def run(folder: str) -> subprocess.Popen:
        proc = start_in_new_session(["bash", "commands.sh"], cwd=machines / folder, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    try:
        coordinator = run("coordinator")
        lines = []
        while not any("site 1 registered" in ln for ln in lines):
            line = coordinator.stdout.readline()
            assert line or coordinator.poll() is None, "".join(lines)
            lines.append(line)
        for site in ("site-0", "site-1"):
            assert run(site).wait(timeout=60) == 0
        out, _ = coordinator.communicate(timeout=800)
        out = "".join(lines) + out
        assert coordinator.returncode == 0, out[-4000:]
        assert f"run {RUN} finished" in out
        summary = json.loads((machines / "coordinator" / "runs" / RUN / records.SUMMARY).read_text())
        assert summary["status"] == "finished" and summary["rounds"][0]["clients_used"] == 2
        assert (machines / "coordinator" / "runs" / RUN / "report.html").exists()
        audit = (machines / "coordinator" / "runs" / RUN / records.AUDIT).read_text()
        assert "site.csv" not in audit and str(machines) not in audit
        for folder in ("coordinator", "site-0", "site-1"):
            assert len((machines / folder / kit.PIDS).read_text().split()) == 2
    finally:
        for proc in started:
            stop_session(proc)
    assert_no_leftovers(marker)
