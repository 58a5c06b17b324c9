#!/usr/bin/env bash
# Capacity and flood figures (prints figures; fails only if the node does not survive):
# an echo node with 10,000 idle handshaken peers (held by helper processes), then a flood of
# 18,000 connections that never handshake, with a good peer's round trips measured
# throughout, and threads and descriptors checked back at their baseline afterwards.
#
#   scripts/capacity.sh [PEERS] [FLOOD]      (defaults 10000 18000)
#
# Needs an open-files limit of about PEERS + 1,000 for the node's process (the tool raises
# its soft limit to the hard one); the limits the node derives its caps from are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
peers="${1:-10000}"
flood="${2:-18000}"
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((peers + 1000)) ]; then
  echo "(open-files hard limit $hard: measuring $((hard - 1000)) peers instead of $peers)"
  peers=$((hard - 1000))
fi
cargo build --release -q -p libchirp-cli
echo "open files: soft $(ulimit -Sn), hard $(ulimit -Hn); threads-max $(cat /proc/sys/kernel/threads-max); vm.max_map_count $(cat /proc/sys/vm/max_map_count)"
timeout 600 target/release/chirp bench-idle --peers "$peers" --flood "$flood" 2> >(grep -v 'WARN' >&2)
