#!/usr/bin/env bash
# Runs the whole test suite N times in each of four settings and reports runs and failures:
#   plain        as CI runs it
#   hog          with a busy loop on every core beside it (timing under load)
#   rust_log=error, rust_log=trace
#                with the caller's RUST_LOG set: no test may depend on it
#
#   scripts/stress-tests.sh N [VARIANT ...] [-- CARGO TEST ARGS]
#
# Default N 10, every variant, and `cargo test -- --include-ignored` when the real libchirp
# is installed and this runs as root (else plain `cargo test`, which reports the tests it
# cannot run as ignored). Logs go to target/stress/VARIANT-I.log; the failing tests of
# each run are listed. Exits non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
[ $# -gt 0 ] && shift
variants=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do variants+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
args=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(plain hog rust_log=error rust_log=trace)
if [ ${#args[@]} -eq 0 ]; then
  if [ "$(id -u)" = 0 ] && [ -x target/chirp-peer/bin/python ]; then
    args=(-- --include-ignored)
  fi
fi
mkdir -p target/stress
cargo test --no-run -q "${args[@]}"
hogs=()
start_hog() { for _ in $(seq "$(nproc)"); do (while :; do :; done) & hogs+=($!); done; }
stop_hog() { for p in "${hogs[@]:-}"; do kill "$p" 2>/dev/null; done; hogs=(); }
trap stop_hog EXIT
total_fail=0
summary=()
for v in "${variants[@]}"; do
  fails=0
  names=""
  for i in $(seq 1 "$n"); do
    log="target/stress/$v-$i.log"
    env_args=(env -u RUST_LOG)
    case $v in
      rust_log=*) env_args=(env "RUST_LOG=${v#rust_log=}") ;;
      hog) start_hog ;;
    esac
    start=$(date +%s)
    "${env_args[@]}" cargo test "${args[@]}" >"$log" 2>&1
    rc=$?
    stop_hog
    if [ $rc -ne 0 ]; then
      fails=$((fails + 1))
      failed=$(grep -E '^test .* FAILED$|^    [a-z_0-9:]+$' "$log" | sed 's/^test //; s/ \.\.\. FAILED//; s/^ *//' | sort -u | tr '\n' ' ')
      names="$names [run $i: ${failed:-see $log}]"
    fi
    echo "$v run $i/$n: $([ $rc -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
  done
  summary+=("$v: $n runs, $fails failed$names")
  total_fail=$((total_fail + fails))
done
echo
printf '%s\n' "${summary[@]}"
[ $total_fail -eq 0 ]
