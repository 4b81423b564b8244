#!/usr/bin/env bash
# Build the Python `token_mint` plugin into an Outpost auth component.
#
#   usage: build.sh OUTPUT.wasm
#
# Works from any directory. Writes nothing into the source tree: componentize-py
# generates the `wit_world` bindings on the fly and compiles bytecode in a temporary
# copy of the sources, removed on exit.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1
INSTALL="pip install componentize-py==${COMPONENTIZE_PY_VERSION}"

if [[ $# -ne 1 || -z "$1" ]]; then
    echo "usage: $0 OUTPUT.wasm" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wit="$(cd "$here/../../../wit" && pwd)"
out_dir="$(cd "$(dirname "$1")" 2>/dev/null && pwd)" || {
    echo "build.sh: output directory '$(dirname "$1")' does not exist" >&2
    exit 2
}
out="$out_dir/$(basename "$1")"

if ! command -v componentize-py >/dev/null 2>&1; then
    echo "build.sh: componentize-py is not installed; install it with: $INSTALL" >&2
    exit 1
fi
have="$(componentize-py --version | awk '{print $2}')"
if [[ "$have" != "$COMPONENTIZE_PY_VERSION" ]]; then
    echo "build.sh: warning: componentize-py $have found; this plugin is tested with" \
        "$COMPONENTIZE_PY_VERSION ($INSTALL)" >&2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/token_mint_py.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp "$here/app.py" "$work/"

# --stub-wasi: Outpost refuses components that import wasi:filesystem or wasi:sockets,
# which CPython's runtime otherwise pulls in. With it, every WASI import is replaced by
# a trapping stub, so the component imports only `outpost:auth/*`. The plugin needs no
# WASI at run time: it logs through `outpost:auth/log`, and uses neither clocks nor
# randomness (note: the stubs also freeze Python's hash seed and `random` at build time).
cd "$work"
componentize-py --quiet -d "$wit" -w module \
    componentize --stub-wasi -p "$work" app -o "$out"
echo "built $out ($(stat -c %s "$out") bytes)"
