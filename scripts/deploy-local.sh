#!/usr/bin/env bash
# A complete secured FedSeal federation on 127.0.0.1 (Flower Deployment Engine): CA and TLS
# certificates, federation keys, SuperNode authentication keys, a SuperLink with TLS,
# --enable-supernode-auth, --isolation process and a SuperExec secret, N SuperNodes with their own
# data CSV and key folder in node config, one `flwr run` per secure mode; every process it started
# is stopped by PID at the end, on failure and on Ctrl-C. The work is done by common/launch/deploy_local.py;
# DIR/commands.txt lists every command it ran, by machine.
# Usage: scripts/deploy-local.sh [--mode none|he|masked|all] [--clients N] [--rounds R] [--help]
source "$(dirname "$0")/_venv.sh"
want="$(cat "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$VENV/.installed[test]" 2>/dev/null)" != "$want" ]; then
    ensure_venv ""  # a venv that test.sh made (with the test extras) serves as well
fi
cd "$ROOT"
exec "$VENV/bin/python" -m common.launch.deploy_local "$@"
