#!/usr/bin/env bash
# Builds the JavaScript and Python test drivers (js-raw, js-sdk, py-raw) and the webhook
# examples in both languages with the toolchains of
# examples/toolchains.sh: build-lang.sh OUT_DIR. tests/build.rs runs it.
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CJS=${MAILPUSH_JS_PREFIX:-/opt/mailpush-ci/js}/node_modules/@bytecodealliance/componentize-js/src/cli.js
CPY=${MAILPUSH_PY_VENV:-/opt/mailpush-ci/py}/bin/componentize-py
mkdir -p "$out"
(cd "$here/js-raw" && node "$CJS" driver.js --wit "$repo/wit" --world-name push-driver -o "$out/js_raw.wasm")
# Imports the SDK by a path relative to the repository: built from the root.
(cd "$repo" && node "$CJS" tests/guests/js-sdk/driver.js --wit wit --world-name push-driver -o "$out/js_sdk.wasm")
PYTHONDONTWRITEBYTECODE=1 "$CPY" -d "$repo/wit" -w push-driver componentize -p "$here/py-raw" app -o "$out/py_raw.wasm"
"$repo/examples/webhook-js/build.sh" "$out/webhook_js.wasm"
"$repo/examples/webhook-py/build.sh" "$out/webhook_py.wasm"
