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
