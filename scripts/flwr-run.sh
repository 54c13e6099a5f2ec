#!/usr/bin/env bash
# Run FedSeal through `flwr run .` (Flower's local SuperLink + simulation runtime), write the run
# folder under runs/, then stop the flower-superlink that `flwr run` spawned (it is detached and
# would otherwise outlive the run), by PID. The work is done by common/launch/flwr_run.py.
# Usage: scripts/flwr-run.sh [SITES] [--out DIR] [more `flwr run` options, e.g. --run-config 'num-rounds=3']
source "$(dirname "$0")/_venv.sh"
ensure_venv ""
cd "$ROOT"
exec "$VENV/bin/python" -m common.launch.flwr_run "$@"
