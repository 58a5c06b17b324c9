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
# - garbage collection racing a send and a batch send from a remembered remote, the
#   node's close racing a send (to an unknown peer, a known one, from the remembered
#   remote), and the per-thread remembered remote across garbage collection
#   (src/node/remotes.rs: Remotes::enqueue, Remotes::enqueue_batch,
#   Remotes::enqueue_remembered, Remotes::take_out_if and the core's collect,
#   Remotes::close).
#   scripts/loom.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}" CARGO_TARGET_DIR=target/loom \
  cargo test --release -q --lib loom_ -- --test-threads=2
