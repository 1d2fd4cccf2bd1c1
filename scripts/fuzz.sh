#!/usr/bin/env bash
# Fuzzes every parser that sees outside input, and the shared-data record codecs, with cargo-fuzz
# (libFuzzer): each target of fuzz/ runs SECONDS (default 30) from its committed seed corpus.
#
#   scripts/fuzz.sh [SECONDS]        `make test` runs it with 20, `make fuzz` with more
#
# New inputs go to a scratch corpus under fuzz/target/ (kept between runs, never committed);
# fuzz/corpus/ is only read. Every file in fuzz/regressions/<target>/ is replayed first. Exits
# non-zero if any target crashes (a panic, a failed property, a timeout or an OOM); the input
# is left in fuzz/artifacts/<target>/. See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-30}
if ! [[ $SECONDS_PER_TARGET =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS]  (a positive number of seconds per target)" >&2
  exit 2
fi
CARGO_FUZZ_VERSION=0.13.2  # builds with --locked on stable rustc 1.95
SANITIZER=${FUZZ_SANITIZER:-none}  # the core is safe Rust: panics are what we look for
REPLAY_RUNS=10  # regressions run several times: the workers iterate HashMaps in random order

say() { printf '[fuzz] %s\n' "$*" >&2; }

# 1. Tools: cargo-fuzz at a pinned version, a C++ compiler (libfuzzer-sys builds libFuzzer).
have=$(cargo fuzz --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$CARGO_FUZZ_VERSION" ]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION (have: ${have:-none}); about a minute once"
  # --locked first; if the registry no longer serves a locked dependency, resolve afresh.
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked \
    || cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
if ! command -v c++ >/dev/null; then
  say "installing g++ (libfuzzer-sys compiles libFuzzer)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq g++
fi

# 2. Build every target once: release, debug assertions and overflow checks on, coverage
#    instrumentation. cargo-fuzz needs -Z flags: RUSTC_BOOTSTRAP lets the stable compiler take them.
export RUSTC_BOOTSTRAP=1
target_dir="$PWD/fuzz/target"
say "building the fuzz targets (sanitizer: $SANITIZER)"
cargo fuzz build --release --debug-assertions --sanitizer "$SANITIZER" --target-dir "$target_dir"
host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$host/release"
mapfile -t targets < <(cargo fuzz list)
if [ ${#targets[@]} -eq 0 ]; then say "no fuzz targets found"; exit 1; fi

logs="$target_dir/fuzz-logs"
mkdir -p "$logs"
failed=()

show_crash() {  # log file: the panic and where the input was saved
  grep -A12 -m1 -E "panicked at|ERROR: libFuzzer|==ERROR" "$1" | grep -vE '^\s+[0-9]+: |^\s+at ' | head -14 >&2 || true
  grep -E "^(artifact_prefix|Test unit written to)" "$1" | tail -1 >&2 || true
}

# 3. Replay the regressions: inputs that once crashed must not crash again.
for t in "${targets[@]}"; do
  dir="fuzz/regressions/$t"
  [ -d "$dir" ] || continue
  mapfile -t files < <(find "$dir" -maxdepth 1 -type f ! -name '.*' ! -name '*.md' | sort)
  [ ${#files[@]} -gt 0 ] || continue
  log="$logs/$t.regressions.log"
  if "$bin_dir/$t" -runs="$REPLAY_RUNS" "${files[@]}" >"$log" 2>&1; then
    say "$t: ${#files[@]} regression input(s) pass"
  else
    say "$t: a regression input crashes (log: $log)"
    show_crash "$log"
    failed+=("$t (regression)")
  fi
done

# 4. Fuzz each target from its committed corpus; new inputs go to the scratch corpus.
for t in "${targets[@]}"; do
  scratch="$target_dir/fuzz-corpus/$t"
  artifacts="fuzz/artifacts/$t"
  mkdir -p "$scratch" "$artifacts" "fuzz/corpus/$t"
  args=(-max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$artifacts/")
  if [ -f "fuzz/dicts/$t.dict" ]; then args+=(-dict="fuzz/dicts/$t.dict"); fi
  log="$logs/$t.log"
  say "$t: fuzzing for ${SECONDS_PER_TARGET}s"
  if "$bin_dir/$t" "${args[@]}" "$scratch" "fuzz/corpus/$t" >"$log" 2>&1; then
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
    cov=$(grep -oE 'DONE +cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1 | sed 's/DONE *//')
    say "$t: ok, ${runs:-?} runs, ${cov:-no stats}"
  else
    say "$t: CRASH (log: $log)"
    show_crash "$log"
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  say "reproduce: $bin_dir/TARGET fuzz/artifacts/TARGET/crash-...; keep a minimal input in fuzz/regressions/TARGET/"
  exit 1
fi
say "all ${#targets[@]} targets ran ${SECONDS_PER_TARGET}s each without a crash"
