#!/usr/bin/env bash
# Create .venv on first use, install FedSeal with test extras, run the test suite.
source "$(dirname "$0")/_venv.sh"
ensure_venv "[test]"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
