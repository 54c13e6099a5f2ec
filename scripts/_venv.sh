# Sourced by run.sh and test.sh: create .venv on first use and install FedSeal into it.
# Usage: ensure_venv EXTRAS   (EXTRAS is "" or "[test]")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME="${FLWR_HOME:-$ROOT/.flwr-home}"

ensure_venv() {
    local extras="$1"
    local stamp="$VENV/.installed$extras"
    local want
    want="$(cat "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "Creating $VENV ..." >&2
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "Installing FedSeal$extras into $VENV (first run takes a few minutes) ..." >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2
        # torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
        "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" torch >&2
        "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT$extras" >&2
        echo "$want" > "$stamp"
    fi
    mkdir -p "$FLWR_HOME"
}
