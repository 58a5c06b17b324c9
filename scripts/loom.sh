#!/usr/bin/env bash
# Model-checks the hand-rolled synchronisation with loom, every interleaving explored up
# to LOOM_MAX_PREEMPTIONS (default 3), built with loom's Mutex, Condvar, Arc and atomics
# in place of std's (src/sync.rs):
# - the one-shot completion and its callback (src/completion.rs);
# - a batch's shared outcome (src/frame.rs);
# - a connection's receive slots and park (src/proto/slots.rs);
# - a connection's write side as production runs it (src/connection/loom_models.rs:
#   Conn::kick, direct writes, the writer thread started on demand and ending when idle,
#   shutdown; over an in-memory socket);
# - the pending requests' table against answers, timeouts and close
#   (src/node/requests.rs);
# - garbage collection racing a send and a batch send from a remembered remote
#   (src/node/remotes.rs: Remotes::enqueue, Remotes::enqueue_batch, Remotes::take_out_if
#   and the core's collect).
#   scripts/loom.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}" CARGO_TARGET_DIR=target/loom \
  cargo test --release -q --lib loom_ -- --test-threads=2
