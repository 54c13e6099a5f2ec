"""Shared test setup: Flower never installs dependencies and keeps its state in a temp dir."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_flower_home(tmp_path_factory, monkeypatch):
    """FLWR_HOME in a per-session temp dir; no runtime dependency installation; no telemetry."""
    home = tmp_path_factory.getbasetemp() / "flwr-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture()
def flower_task_identity():
    """Let tests build flwr Message objects outside a running app."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """A 3-site federation's keys: (ServerKeys, {site id: ClientKeys}) for sites "0", "1", "2"."""
    from common.integrity.keys import (
        ClientKeys,
        ServerKeys,
        client_dir,
        init_federation,
    )

    root = tmp_path_factory.mktemp("fed") / "keys"
    init_federation(root, 3)
    return ServerKeys.load(root / "server"), {c: ClientKeys.load(client_dir(root, c), client_id=c) for c in "012"}


# --- scheduling: the slowest files first -----------------------------------------------------------
# `./scripts/test.sh` runs `pytest -n auto --dist loadfile`: each file goes whole to one worker, in
# queue order. pytest-xdist orders that queue by tests per file, which puts the files of a few whole
# federations (the slowest) last, where one of them can keep a worker busy long after the other has
# finished. Longest first instead (seconds per file measured on the 2-core machine, ./scripts/test.sh
# --durations; a file not listed counts as quick). The order changes nothing a test asserts.
SLOW_FILES = {
    "tests/e2e/test_hostile.py": 700,
    "tests/launch/test_deploy_script.py": 280,
    "tests/launch/test_deploy_local.py": 270,
    "tests/e2e/test_integrity.py": 370,
    "tests/e2e/test_scale.py": 345,
    "tests/e2e/test_any_model.py": 180,
    "tests/e2e/test_masked.py": 180,
    "tests/server/modes/test_he.py": 180,
    "tests/e2e/test_simulation.py": 170,
    "tests/examples/test_png_cnn.py": 165,
    "tests/learning/test_dp.py": 110,
    "tests/launch/test_kit.py": 85,
    "tests/e2e/test_tasks.py": 65,
    "tests/launch/test_flwr_run.py": 70,
    "tests/run/test_report.py": 60,
    "tests/e2e/test_stopped.py": 45,
}


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order made below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    """Files in order of measured seconds, longest first; tests keep their order within a file."""
    def cost(item) -> int:
        return -SLOW_FILES.get(item.nodeid.split("::", 1)[0], 0)

    items.sort(key=cost)
