#!/usr/bin/env bash
# Runs the core's unit tests natively and as wasm (wasm-bindgen-test under Node.js) and checks
# that the wasm run executed every test the native run did: `#[wasm_bindgen_test]` compiles to
# nothing natively, and a runner that finds no tests reports success, so the count is the check.
set -euo pipefail
cd "$(dirname "$0")/.."

count() { sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' | tail -n 1; }

native_log=$(mktemp); wasm_log=$(mktemp)
trap 'rm -f "$native_log" "$wasm_log"' EXIT
cargo test -p keygate --lib 2>&1 | tee "$native_log" | tail -n 2
cargo test -p keygate --lib --target wasm32-unknown-unknown 2>&1 | tee "$wasm_log" | tail -n 4
native=$(count < "$native_log"); wasm=$(count < "$wasm_log")
if [ -z "$wasm" ] || [ "$wasm" -eq 0 ]; then
  echo "wasm tests: the wasm run executed no test" >&2; exit 1
fi
if [ "$wasm" -ne "$native" ]; then
  echo "wasm tests: $wasm ran as wasm but $native natively" >&2; exit 1
fi
echo "wasm tests: $wasm passed as wasm32-unknown-unknown (same as native)"
