#!/usr/bin/env bash
# Run FedSeal through `flwr run .` (Flower's local SuperLink + simulation runtime), write the
# run folder under runs/, then stop the flower-superlink that `flwr run` spawned: it is
# detached and would otherwise outlive the run. A SuperLink that was already running on
# 127.0.0.1:39091 before this script is left alone.
# Usage: scripts/flwr-run.sh [SITES] [more `flwr run` options, e.g. --run-config 'num-rounds=3']
source "$(dirname "$0")/_venv.sh"
ensure_venv ""
cd "$ROOT"
export PATH="$VENV/bin:$PATH"
SITES="${1:-5}"
shift $(( $# > 0 ? 1 : 0 ))
OUT="$ROOT/runs/flwr-$(date +%Y%m%d-%H%M%S)"

superlink_pids() { pgrep -f "flower-superlink .*--port 39091" || true; }
before="$(superlink_pids)"
stop_new_superlink() {
    local pid
    for pid in $(superlink_pids); do
        if ! grep -qx "$pid" <<<"$before"; then
            kill "$pid" 2>/dev/null || true
        fi
    done
}
trap stop_new_superlink EXIT

flwr run . --stream \
    --federation-config "num-supernodes=$SITES client-resources-num-cpus=1" \
    --run-config "out-dir=\"$OUT\" min-clients=$SITES" "$@"
for _ in $(seq 60); do  # the run ends when summary.json is written
    [ -f "$OUT/summary.json" ] && break
    sleep 1
done
if [ -f "$OUT/summary.json" ]; then
    "$VENV/bin/python" - "$OUT/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
if s.get("status") == "stopped":
    sys.exit(f"flwr-run.sh: run stopped: {s.get('reason')}")
print(f"final accuracy {s['final_accuracy']:.4f}   centralized {s['centralized_accuracy']:.4f}")
PY
    echo "Run folder: $OUT (report: $OUT/report.html)"
else
    echo "flwr-run.sh: no summary.json in $OUT; see the log above" >&2
    exit 1
fi
