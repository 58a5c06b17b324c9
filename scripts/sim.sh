#!/usr/bin/env bash
# The deterministic simulator (src/proto/sim.rs): nodes of the real protocol core over a
# simulated network and clock, with faults, checking the README's guarantees on every run.
#   scripts/sim.sh                  the fixed regression seeds 1..200 (`cargo test` runs 1..40)
#   scripts/sim.sh --seed S         replay one seed exactly (add --trace to print every event)
#   scripts/sim.sh --seeds N        explore N fresh seeds
#   scripts/sim.sh --seconds N      explore fresh seeds for N seconds (CI: 120)
#   add --survey to go on past failing seeds and list each one's first violation
# A failing seed is printed with the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
filter=sim_regression
export CHIRP_SIM_REGRESSION="${CHIRP_SIM_REGRESSION:-200}"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) export CHIRP_SIM_SEED="$2"; export CHIRP_SIM_VERBOSE=1; shift ;;
    --trace) export CHIRP_SIM_TRACE=1 ;;
    --survey) export CHIRP_SIM_SURVEY=1 ;;
    --seeds) export CHIRP_SIM_SEEDS="$2"; filter=sim_explore; args=(--ignored); shift ;;
    --seconds) export CHIRP_SIM_SECONDS="$2"; filter=sim_explore; args=(--ignored); shift ;;
    *) echo "usage: scripts/sim.sh [--seed S [--trace] | --seeds N | --seconds N] [--survey]" >&2; exit 2 ;;
  esac
  shift
done
cargo test --release -q --lib "proto::sim::tests::$filter" -- "${args[@]}" --nocapture --test-threads=1
