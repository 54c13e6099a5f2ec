"""What the loopback deployment tests share (tests/launch/test_deploy_script.py: scripts/deploy-local.sh;
tests/launch/test_deploy_local.py: an in-process Deployment and its faults): the federation's
settings, the processes' environment, and scoring a deployed federation's model."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from common.processes import stop_session

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, ROUNDS, SEED = 3, 1, 0  # one round per mode: each message starts a ClientApp process (~15 s)


def site_class_rows() -> list[int]:
    """Rows of each class in each site's CSV (what its 20 % validation hold-out is cut from)."""
    import numpy as np

    from common.learning.data import load_partition

    return [int(c) for site in range(CLIENTS)
            for c in np.bincount(load_partition("breast-cancer", site, CLIENTS, "iid", SEED)[1])]


SITE_CLASS_ROWS = site_class_rows()


def flower_env(tmp: Path, marker: str) -> dict[str, str]:
    home = tmp / "flwr-home"
    home.mkdir(exist_ok=True)
    return dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                FLWR_TELEMETRY_ENABLED="0", FEDSEAL_TEST_RUN=marker)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for `proc` (output to a pipe); on timeout stop its session by PID and fail."""
    try:
        out, _ = proc.communicate(timeout=timeout)
        return out
    except subprocess.TimeoutExpired:
        stop_session(proc)
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args} did not finish in {timeout:.0f} s:\n{out[-3000:]}")


def deployed_accuracy(model_file: Path) -> float:
    """The deployed federation's final model, scored here on the breast-cancer test split (the
    coordinator itself holds no data)."""
    from common.integrity import watermark
    from common.learning.tasks import builtin
    from common.run.modelio import load_state
    from server.evaluation import score

    task = builtin("breast-cancer")
    arrays, _ = load_state(model_file)
    return score(task, watermark.strip(arrays), task.server_test_data())["accuracy"]
