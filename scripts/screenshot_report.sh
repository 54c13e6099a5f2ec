#!/usr/bin/env bash
# Render a run's report.html in headless Chromium to a PNG screenshot (a visual check of the page).
# Usage: scripts/screenshot_report.sh RUN_DIR_OR_REPORT_HTML [OUT.png]
# Without Chromium (/usr/bin/chromium or $CHROMIUM) it prints a note and exits 0: FedSeal does not need it.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 RUN_DIR_OR_REPORT_HTML [OUT.png]" >&2
    exit 2
fi
page=$1
[[ -d $page ]] && page=$page/report.html
if [[ ! -f $page ]]; then
    echo "$0: $page: no such report (write it with: fedseal report RUN_DIR)" >&2
    exit 2
fi
page=$(cd "$(dirname "$page")" && pwd)/$(basename "$page")
out=${2:-${page%.html}.png}
chromium=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $chromium ]]; then
    echo "note: $chromium not found; no screenshot taken (install it, e.g. apt-get install -y chromium)"
    exit 0
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --screenshot="$out" --window-size=1280,2400 "file://$page" >/dev/null 2>&1
[[ -s $out ]] || { echo "$0: chromium wrote no screenshot" >&2; exit 1; }
echo "Screenshot: $out"
