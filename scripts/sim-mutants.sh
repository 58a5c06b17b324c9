#!/usr/bin/env bash
# Shows that the simulator bites: puts back, one at a time, bugs it must catch (the four
# the protocol core was built to fix, an ACK matched to the wrong message, and a send
# retried after a lost connection, a kick taken for pending though it was answered), each into a fresh export of the committed tree, and
# runs the fixed seeds 1..N (default 200) against it. Prints the first seed that caught
# each; fails if one is not caught, or if a mutation no longer applies to the code.
#   scripts/sim-mutants.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-200}"
root="$PWD/target/mutants"
export CARGO_TARGET_DIR="$root/target"
rm -rf "$root/src"; mkdir -p "$root/src"
git archive HEAD | tar -x -C "$root/src"

mutate() { # name, file, python replacement (old, new)
  python3 - "$root/src/$2" "$3" "$4" <<'PY'
import sys
path, old, new = sys.argv[1], sys.argv[2], sys.argv[3]
s = open(path).read()
if old not in s:
    sys.exit(f"the mutation no longer applies to {path}: {old!r} not found")
open(path, "w").write(s.replace(old, new, 1))
PY
}

run() { # name, description
  local out first
  out=$(cd "$root/src" && CHIRP_SIM_REGRESSION="$seeds" cargo test --release -q --lib \
    proto::sim::tests::sim_regression -- --test-threads=1 2>&1 || true)
  first=$(grep -oE '^seed [0-9]+ \(replay' <<<"$out" | head -1 | grep -oE '[0-9]+' || true)

  if [ -z "$first" ]; then
    echo "NOT CAUGHT in $seeds seeds: $1 ($2)"
    return 1
  fi
  local what
  what=$(grep -A1 -E "^seed $first \(replay" <<<"$out" | tail -1 | sed 's/^ *//' | cut -c1-150)
  printf '%-28s caught by seed %-4s %s\n' "$1" "$first" "$what"
}

restore() { rm -rf "$root/src"; mkdir -p "$root/src"; git archive HEAD | tar -x -C "$root/src"; }

failed=0
restore
mutate parked-dropped src/proto/slots.rs \
  '        self.lock().closing = true;
        self.reader_cv.notify_all();' \
  '        let parked = {
            let mut st = self.lock();
            st.closing = true;
            st.parked_bytes = 0;
            std::mem::take(&mut st.parked)
        };
        self.reader_cv.notify_all();
        drop(parked);'
run parked-dropped "bug 1: a closed connection drops what it parked" || failed=1

restore
mutate gc-fails-work src/proto/remote.rs \
  '            && self.quiet()
            && self.control.is_empty()' \
  ''
mutate gc-fails-work src/proto/remote.rs \
  '                None => conn_idle.map_or(true, |d| d > r),' \
  '                None => true,'
mutate gc-fails-work src/proto/remote.rs \
  '                Some(_) => self.attached && conn_idle.is_some_and(|d| d > r),' \
  '                Some(_) => true,'
run gc-fails-work "bug 2: garbage collection ignores queued work and dials" || failed=1

restore
mutate gc-cuts-progress src/proto/activity.rs \
  'if held || bytes != self.bytes {' \
  'if false && (held || bytes != self.bytes) {'
run gc-cuts-progress "bug 3: a connection moving bytes or held by backpressure counts as idle" || failed=1

restore
mutate no-outcome-bound src/proto/remote.rs \
  'let stalled = now.saturating_duration_since(self.progress) >= bound;' \
  'let stalled = false && now.saturating_duration_since(self.progress) >= bound;'
run no-outcome-bound "bug 4: no stall check, a queue waits on a stalled peer" || failed=1

restore
mutate ack-wrong-message src/proto/remote.rs \
  '        if w.identity != identity {
            return; // ACKs for unknown identities are dropped silently.
        }' \
  ''
run ack-wrong-message "an ACK completes whatever message awaits one" || failed=1

restore
mutate retry-duplicates src/proto/remote.rs \
  '                    reason.clone()
                };
                if let Some(p) = self.wait_ack.take().and_then(|w| w.pending) {
                    out.push(Action::send(p, Err(err)));
                }' \
  '                    reason.clone()
                };
                let _ = err;
                if let Some(p) = self.wait_ack.take().and_then(|w| w.pending) {
                    self.user.push_front(p);
                }'
run retry-duplicates "a message awaiting its ACK is resent after a lost connection" || failed=1

restore
mutate kick-lost src/proto/remote.rs \
  '        // The kick (if any) has been answered: what is queued after this look kicks again.
        self.kicked = None;' \
  ''
run kick-lost "a kick already answered still suppresses the next (messages wait forever)" || failed=1

rm -rf "$root/src"
exit $failed
