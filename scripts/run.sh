#!/usr/bin/env bash
# Create .venv on first use, install FedSeal, run the default federation (5 sites, CKKS-encrypted
# updates: secure-mode he).
# Extra arguments go to `fedseal simulate` (see `.venv/bin/fedseal simulate --help`).
source "$(dirname "$0")/_venv.sh"
ensure_venv ""
cd "$ROOT"
exec "$VENV/bin/fedseal" simulate --dataset breast-cancer --clients 5 --rounds 5 --secure-mode he "$@"
