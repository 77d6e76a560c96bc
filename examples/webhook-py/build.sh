#!/usr/bin/env bash
# Builds webhook.wasm (or the path given as the first argument) (the Python webhook driver) with componentize-py from examples/toolchains.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CPY=${MAILPUSH_PY_VENV:-/opt/mailpush-ci/py}/bin/componentize-py
[ -x "$CPY" ] || { echo "componentize-py not found: run examples/toolchains.sh" >&2; exit 1; }
out=${1:-$here/webhook.wasm}
# No __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
"$CPY" -d "$repo/wit" -w push-driver-fixed-begin componentize -p "$here" -p "$repo/drivers/sdk-python" app -o "$out"
echo "built $out ($(stat -c %s "$out") bytes)"
