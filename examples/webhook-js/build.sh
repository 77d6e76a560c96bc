#!/usr/bin/env bash
# Builds webhook.wasm (or the path given as the first argument) (the JS webhook driver) with componentize-js from examples/toolchains.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CJS=${MAILPUSH_JS_PREFIX:-/opt/mailpush-ci/js}/node_modules/@bytecodealliance/componentize-js/src/cli.js
[ -f "$CJS" ] || { echo "componentize-js not found: run examples/toolchains.sh" >&2; exit 1; }
# componentize-js maps the current directory as the module root: build from the repository
# root so that the import of ../../drivers/sdk-js resolves.
cd "$repo"
out=${1:-$here/webhook.wasm}
node "$CJS" examples/webhook-js/webhook.js --wit wit --world-name push-driver-fixed-begin -o "$out"
echo "built $out ($(stat -c %s "$out") bytes)"
