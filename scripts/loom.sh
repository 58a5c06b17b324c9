#!/usr/bin/env bash
# Model-checks the hand-rolled synchronisation with loom: the one-shot completion and its
# callback (src/completion.rs), a batch's shared outcome (src/frame.rs), a connection's
# receive slots and park (src/proto/slots.rs), a connection's write side as production
# runs it (src/connection/loom_models.rs: Conn::kick, direct writes, the writer thread
# started on demand and ending when idle, shutdown; over an in-memory socket), and the pending
# requests' table against answers, timeouts and close (src/node/requests.rs), built with
# loom's Mutex,
# Condvar, Arc and atomics in place of std's (src/sync.rs), every interleaving explored up
# to LOOM_MAX_PREEMPTIONS (default 3).
#   scripts/loom.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}" CARGO_TARGET_DIR=target/loom \
  cargo test --release -q --lib loom_ -- --test-threads=2
