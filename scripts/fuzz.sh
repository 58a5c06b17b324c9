#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer, nightly toolchain) of every target in
# fuzz/: `wire` (handshake and preamble decoders), `config` (validation), `reader` (a live
# node's frame state machine fed arbitrary byte streams cut at arbitrary points).
#   scripts/fuzz.sh [SECONDS]     each target for SECONDS (default 60), from the committed
#                                 seed corpus in fuzz/corpus/TARGET (new finds are kept in
#                                 target/fuzz-corpus, not committed)
# A crash stops the run with the failing input in fuzz/artifacts/TARGET/; turn it into a
# regression test in tests/ before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked -q
fi
for t in wire config reader; do
  work="target/fuzz-corpus/$t"
  mkdir -p "$work"
  echo "--- fuzz target $t: ${secs} s"
  # The reader target runs a node whose connection threads end after the input that made
  # them: libFuzzer's per-input leak check would count their thread-exit bookkeeping
  # (glibc's __cxa_thread_atexit) as leaks, so it is off there; the other targets keep it.
  leaks=1; [ "$t" = reader ] && leaks=0
  log="target/fuzz-$t.log"
  if ! (cd fuzz && cargo +nightly fuzz run "$t" "../$work" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=4096 -detect_leaks=$leaks -print_final_stats=1) >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz.sh: target $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^(Done |stat::number_of_executed_units|stat::peak_rss_mb)|cov: ' "$log" | tail -n 4
done
