"""Host Flower's simulation runtime for `fedseal simulate`: the in-process SuperLink that runs
FedSeal's ServerApp and starts the ClientApps, both named by their component strings
(`server.app:app`, `client.app:app`, as pyproject.toml names them), so the server never imports
site code.

`run_engine()` runs in a child process started by `fedseal simulate` (see
common/launch/simulate.py), which owns the terminal, prints progress and cleans up every
process the engine leaves behind. It drives Flower the way `flwr run .` does (the
`flwr-simulation` process): the apps read `context.run_config` built from a
[tool.flwr.app.config] table, so both ways of running use the same keys.

Usage (internal): python -m server.engine --num-supernodes N --run-config JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

SERVER_APP = "server.app:app"
CLIENT_APP = "client.app:app"


def app_config_toml(run_config: dict[str, Any], client_app: str = CLIENT_APP) -> str:
    """A minimal pyproject.toml whose [tool.flwr.app.config] is `run_config`."""
    lines = ["[project]", 'name = "fedseal"', 'version = "0.1.0"', 'dependencies = ["flwr"]', "",
             "[tool.flwr.app]", 'publisher = "fedseal"', "", "[tool.flwr.app.components]",
             f'serverapp = "{SERVER_APP}"', f'clientapp = "{client_app}"', "", "[tool.flwr.app.config]"]
    for key, value in run_config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))  # a JSON string is a valid TOML basic string here
        lines.append(f'"{key}" = {text}')
    return "\n".join(lines) + "\n"


def backend_config(cpus_per_client: float = 1.0) -> dict[str, Any]:
    """Ray backend settings: all local cores, `cpus_per_client` per ClientApp, no GPU."""
    return {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
    }


def run_engine(run_config: dict[str, Any], num_supernodes: int, client_app: str = CLIENT_APP) -> None:
    """Run one federation in this process with Flower's simulation engine (blocking). `client_app`:
    the sites' ClientApp component (tests run a hostile one in place of FedSeal's).

    Uses flwr's `_run_simulation` (what `flwr-simulation` calls in flwr 1.41) because the
    public `run_simulation` passes an empty run config to the apps.
    """
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType


    with tempfile.TemporaryDirectory(prefix="fedseal-app-") as app_dir:
        Path(app_dir, "pyproject.toml").write_text(app_config_toml(run_config, client_app))
        fused = get_fused_config_from_dir(Path(app_dir), {})
        run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
        run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
        run.federation_id = NOOP_FEDERATION_ID
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
        context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=fused)
        _run_simulation(
            num_supernodes=num_supernodes,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            server_app_attr=SERVER_APP,
            client_app_attr=client_app,
            backend_config=backend_config(),
            server_app_context=context,
            app_dir=app_dir,
            run=run,
            is_app=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.engine", description=__doc__)
    parser.add_argument("--num-supernodes", type=int, required=True)
    parser.add_argument("--run-config", required=True, help="run config as a JSON object")
    parser.add_argument("--client-app", default=CLIENT_APP, help="the sites' ClientApp component (module:attribute)")
    args = parser.parse_args(argv)
    run_engine(json.loads(args.run_config), args.num_supernodes, args.client_app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
