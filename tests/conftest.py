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
