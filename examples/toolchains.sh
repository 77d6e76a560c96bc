#!/usr/bin/env bash
# Installs the pinned toolchains that build the JavaScript and Python example drivers
# (examples/webhook-js, examples/webhook-py). Idempotent: each step is skipped when the
# pinned version is already installed. CI calls it; so can you.
#
#   JS:     $JS_PREFIX/node_modules/@bytecodealliance/componentize-js (needs node >= 20 + npm)
#   Python: $PY_VENV (a venv with componentize-py)
set -euo pipefail

COMPONENTIZE_JS_VERSION=0.23.0
COMPONENTIZE_PY_VERSION=0.25.1
JS_PREFIX=${MAILPUSH_JS_PREFIX:-/opt/mailpush-ci/js}
PY_VENV=${MAILPUSH_PY_VENV:-/opt/mailpush-ci/py}
PYTHON=${PYTHON:-python3}

log() { echo "toolchains: $*" >&2; }

# ---- JavaScript: componentize-js (StarlingMonkey) ----
js_installed() {
    node -p "require('$JS_PREFIX/node_modules/@bytecodealliance/componentize-js/package.json').version" 2>/dev/null || true
}
if [ "$(js_installed)" = "$COMPONENTIZE_JS_VERSION" ]; then
    log "componentize-js $COMPONENTIZE_JS_VERSION already in $JS_PREFIX"
else
    command -v node >/dev/null || { log "node (>= 20) is needed"; exit 1; }
    mkdir -p "$JS_PREFIX"
    [ -f "$JS_PREFIX/package.json" ] || echo '{"name":"mailpush-ci-js","private":true}' >"$JS_PREFIX/package.json"
    log "installing @bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION into $JS_PREFIX"
    npm install --prefix "$JS_PREFIX" --no-audit --no-fund --save-exact \
        "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION"
    [ "$(js_installed)" = "$COMPONENTIZE_JS_VERSION" ] || { log "componentize-js install failed"; exit 1; }
fi

# ---- Python: componentize-py ----
py_installed() {
    "$PY_VENV/bin/python" -c "import importlib.metadata as m; print(m.version('componentize-py'))" 2>/dev/null || true
}
if [ "$(py_installed)" = "$COMPONENTIZE_PY_VERSION" ]; then
    log "componentize-py $COMPONENTIZE_PY_VERSION already in $PY_VENV"
else
    [ -x "$PY_VENV/bin/python" ] || { log "creating venv $PY_VENV"; "$PYTHON" -m venv "$PY_VENV"; }
    log "installing componentize-py==$COMPONENTIZE_PY_VERSION into $PY_VENV"
    "$PY_VENV/bin/python" -m pip install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
    [ "$(py_installed)" = "$COMPONENTIZE_PY_VERSION" ] || { log "componentize-py install failed"; exit 1; }
fi
log "ok: componentize-js $(js_installed), componentize-py $(py_installed)"
