#!/usr/bin/env bash
# Create .venv on first use, install FedSeal with test extras, run the test suite on every core
# (pytest-xdist, one test file per worker at a time: a file's shared runs are made once).
# Extra arguments go to pytest; `-n 0` runs in one process.
source "$(dirname "$0")/_venv.sh"
ensure_venv "[test]"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -n auto --dist loadfile "$@"
