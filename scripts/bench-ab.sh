#!/usr/bin/env bash
# Hit-path A/B: several builds of the filter side by side in one run, against the wasm floor.
#
#   scripts/bench-ab.sh [--rounds N] [--secs S] NAME=FILTER.wasm [NAME=FILTER.wasm ...]
#
# Starts one `keygate-bench --serve` per filter (each its own keystore and one-worker Envoy,
# all Envoys on CPU 0; idle ones cost nothing), then for each round drives the wasm floor and
# every filter's keygate listener in turn (order reversed every other round) with wrk on CPU 1
# (1 thread, 32 connections, S seconds, the bench key: every request an L1 hit), and reads
# each Envoy's CPU time from /proc before and after. Prints, per contender, the median Envoy
# CPU per request, the floor's median divided by it (the hit-path target reads this ratio,
# >= 0.95) and every sample. Run-to-run noise on a quiet 2-core machine is about +-0.4 us:
# use 5 or more rounds, and compare medians. Needs `make build` and the bench built once
# (`scripts/bench.sh --smoke`).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5 secs=3
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    *=*) break ;;
    *) echo "usage: $0 [--rounds N] [--secs S] NAME=FILTER.wasm ..." >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--rounds N] [--secs S] NAME=FILTER.wasm ..." >&2; exit 2; }
bench=${CARGO_TARGET_DIR:-target}/release/keygate-bench
[ -x "$bench" ] || { echo "$bench missing: run scripts/bench.sh --smoke once" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

names=()
for arg in "$@"; do
  name=${arg%%=*} wasm=${arg#*=}
  [ -f "$wasm" ] || { echo "$wasm: no such filter" >&2; exit 1; }
  KEYGATE_WASM=$wasm "$bench" --serve >"$tmp/$name.serve" 2>&1 &
  pids+=($!)
  names+=("$name")
done
declare -A pid url key
for name in "${names[@]}"; do
  for _ in $(seq 120); do grep -q '^waiting' "$tmp/$name.serve" && break; sleep 1; done
  grep -q '^waiting' "$tmp/$name.serve" || { cat "$tmp/$name.serve" >&2; exit 1; }
  key[$name]=$(awk '/^bench key:/{print $3}' "$tmp/$name.serve")
  pid[$name]=$(sed -n 's/.*(envoy pid \([0-9]*\)).*/\1/p' "$tmp/$name.serve")
  url[$name]=$(awk '$1=="E"{print $NF}' "$tmp/$name.serve")
done
first=${names[0]}
pid[floor]=${pid[$first]} key[floor]=${key[$first]}
url[floor]=$(awk '$1=="D"{print $NF}' "$tmp/$first.serve")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
measure() {  # contender -> "contender us_per_request"
  local c=$1 before after n
  curl -s -o /dev/null -H "x-api-key: ${key[$c]}" "${url[$c]}"
  before=$(cpu_ticks "${pid[$c]}")
  n=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" -H "x-api-key: ${key[$c]}" "${url[$c]}" \
        | awk '/requests in/{print $1}')
  after=$(cpu_ticks "${pid[$c]}")
  awk -v c="$c" -v t=$((after - before)) -v n="$n" -v hz="$hz" \
    'BEGIN { printf "%s %.3f\n", c, t / hz * 1e6 / n }'
}
order=(floor "${names[@]}")
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 0 ]; then
    mapfile -t run < <(printf '%s\n' "${order[@]}" | tac)
  else
    run=("${order[@]}")
  fi
  for c in "${run[@]}"; do measure "$c"; done
  echo "round $r/$rounds done" >&2
done >"$tmp/samples"
python3 - "$tmp/samples" "${order[@]}" <<'PY'
import statistics, sys
samples = {}
for line in open(sys.argv[1]):
    c, us = line.split()
    samples.setdefault(c, []).append(float(us))
floor = statistics.median(samples["floor"])
print(f"{'contender':<12} {'Envoy CPU us/req':>17} {'floor / it':>10}  samples")
for c in sys.argv[2:]:
    m = statistics.median(samples[c])
    print(f"{c:<12} {m:>17.2f} {floor / m:>10.3f}  " + " ".join(f"{x:.2f}" for x in samples[c]))
PY
