#!/usr/bin/env bash
# The keystore at fleet scale: `make bench-store` (see bench/README.md, "The store bench").
#
#   scripts/bench-store.sh           full run (several minutes): SQLite and PostgreSQL with
#                                    10^4, 10^5 and 10^6 keys; writes bench/STORE.md and
#                                    bench/store-lookups.svg
#   scripts/bench-store.sh --smoke   10^4 keys, a second per run; the report goes to a
#                                    temporary directory (bench/STORE.md is left alone)
#
# PostgreSQL: a throwaway cluster from scripts/postgres.sh on KEYGATE_PG_PORT (default 25442,
# not the tests' 25432), stopped and removed afterwards whatever happens. BENCH_POSTGRES=0
# runs SQLite only. Other arguments go to keygate-store-bench (--help).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[bench-store.sh] %s\n' "$*" >&2; }
started=$(date +%s)

if ! command -v wrk >/dev/null; then
  say "wrk missing: running scripts/setup.sh"
  scripts/setup.sh
fi
command -v taskset >/dev/null || { say "taskset (util-linux) is required"; exit 1; }

target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p keystore
cargo build --release --manifest-path bench/Cargo.toml -p keygate-bench --target-dir "$target"

args=()
if [ "${BENCH_POSTGRES:-1}" != 0 ]; then
  export KEYGATE_PG_PORT="${KEYGATE_PG_PORT:-25442}"
  url=$(scripts/postgres.sh start)
  trap 'scripts/postgres.sh stop' EXIT
  args+=(--database-url "$url")
fi

smoke=0
for a in "$@"; do
  if [ "$a" = "--smoke" ]; then smoke=1; fi
done
if [ "$smoke" -eq 1 ]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/keygate-store-smoke.XXXXXX")
  args+=(--out "$out")
fi

# As in scripts/bench.sh: the bench and what it starts run at a raised priority.
nice -n "${BENCH_NICE:--10}" "$target/release/keygate-store-bench" "${args[@]}" "$@"
if [ "$smoke" -eq 1 ]; then
  rm -rf "$out"
  say "smoke: ok in $(( $(date +%s) - started )) s"
else
  say "done in $(( $(date +%s) - started )) s: bench/STORE.md, bench/store-lookups.svg"
fi
