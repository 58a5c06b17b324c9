#!/usr/bin/env bash
# The randomized fault test (cli/tests/chaos.rs) as a soak: four namespaced hosts sending to
# random peers over TLS while a seeded nemesis cuts links, drops packets one way at random
# rates (nftables), SIGKILLs and restarts and SIGSTOPs nodes; then a checker accounts for
# every message. Needs root, iproute2 and nftables.
#   scripts/chaos.sh [--seconds N] [--mode sync|async|both] [--seed S]
# The seed is printed; pass it back (or set CHIRP_CHAOS_SEED) to replay a schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60; mode=both
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift ;;
    --mode) mode="$2"; shift ;;
    --seed) export CHIRP_CHAOS_SEED="$2"; shift ;;
    *) echo "usage: $0 [--seconds N] [--mode sync|async|both] [--seed S]" >&2; exit 2 ;;
  esac
  shift
done
case "$mode" in
  sync) filter=chaos_synchronous ;;
  async) filter=chaos_asynchronous ;;
  both) filter=chaos_ ;;
  *) echo "--mode is sync, async or both" >&2; exit 2 ;;
esac
CHIRP_CHAOS_SECONDS="$seconds" cargo test -q -p libchirp-cli --test chaos "$filter" -- \
  --include-ignored --nocapture --test-threads=1 2>&1 | grep -E '^chaos|panicked|test result|seed'
