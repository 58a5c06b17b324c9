#!/usr/bin/env bash
# Side-by-side benchmarks: our node, C libchirp 1.2.1 and raw TCP on loopback.
#
#   scripts/bench.sh [--quick] [--runs N] [--windows [--tls] | --star | --oneway] [--baseline BIN]
#
# --windows: instead of the full set, asynchronous round trips at 1, 4, 8, 16, 64 and 256
# messages outstanding, ours beside C libchirp, as a table with a bar chart. With --tls,
# every window is also measured over TLS, ours beside C libchirp over TLS (a second table,
# with our TLS rate against our plaintext rate).
# Every mode also measures ZeroMQ (scripts/zmq_bench.c, libzmq3-dev) where it applies:
# round trips with W outstanding (DEALER/ROUTER; ZeroMQ has no ACK, so against our
# asynchronous mode) and one-way throughput (PUSH/PULL against `chirp bench-sink`); and
# NNG the same way (scripts/nng_bench.c, libnng-dev: PAIR round trips, PUSH/PULL).
# --oneway: one-way throughput only, 16 B and 1 KiB: our plain send(), our streaming path
# (send_batch), ZeroMQ PUSH/PULL with high-water marks off and with its defaults.
# --latency: open-loop latency (`chirp bench-latency`, `c_bench latency`, `zmq_bench
# latency`): offered 1k, 10k, 50k, 100k messages/s, 50 % and 80 % of each one's own
# saturation rate, and 50 % of the best peer's (ZeroMQ's or C's asynchronous, C's
# synchronous; the same rate for all); p50, p90, p99, p99.9 and max from the scheduled send time. Asynchronous
# for all three, synchronous ours against C's synchronous mode.
# --star: star topology: one asynchronous echo node, 16 and then 64 sender processes with 16
# messages outstanding each; total round trips per second, ours beside C libchirp.
# --baseline BIN: with --star, --windows or --oneway, also measure another build of the
# chirp tool (say, the previous commit's) alternately with ours, for before/after
# comparisons; the window sweep then also measures synchronous mode.
#
# Each figure is the median of N runs (default 5, --quick 3), the implementations measured
# alternately within every run so that machine noise hits them alike. Echo and sender run
# as two processes, 16-byte messages, as in the C README's figures. The C pair is
# scripts/c_bench.c linked with the C core that scripts/install-peer.sh built; without that
# peer the C column says "n/a". The raw-TCP column is scripts/raw_pingpong.c, also two
# processes. With GNU time installed, a second table gives CPU time and voluntary context
# switches (thread wake-ups) per round trip of both processes: counts that machine noise
# moves far less than rates. Prints figures only; it never fails because of speed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
quick=0
windows=0
star=0
baseline=""
tls_sweep=0
oneway_only=0
latency_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; runs=3 ;;
    --runs) runs="$2"; shift ;;
    --windows) windows=1 ;;
    --star) star=1 ;;
    --tls) tls_sweep=1 ;;
    --oneway) oneway_only=1 ;;
    --latency) latency_only=1 ;;
    --baseline) baseline="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--runs N] [--windows [--tls] | --star | --oneway | --latency] [--baseline BIN]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then n_sync=2000; n_async=4000; n_win=40000; n_big=300; else n_sync=5000; n_async=10000; n_win=100000; n_big=1000; fi

cargo build --release -q -p libchirp-cli
B=target/release/chirp
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# --- C libchirp baseline -----------------------------------------------------------
C=""
PY="${CHIRP_PEER_PYTHON:-target/chirp-peer/bin/python}"
if [ -x "$PY" ] && "$PY" -c 'import _libchirp_cffi' 2>/dev/null; then
  src=target/libchirp-src
  if [ ! -f "$src/libchirp-1.2.1b3/libchirp.h" ]; then
    mkdir -p "$src"
    "$PY" -m pip download -q --no-deps --no-binary :all: libchirp==1.2.1b3 -d "$src" >/dev/null
    tar xzf "$src"/libchirp-1.2.1b3.tar.gz -C "$src"
  fi
  so=$("$PY" -c 'import _libchirp_cffi; print(_libchirp_cffi.__file__)')
  libdir=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
  pyver=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LDVERSION"))')
  if gcc -O2 -I"$src/libchirp-1.2.1b3" scripts/c_bench.c "$so" -L"$libdir" -lpython"$pyver" \
       -Wl,-rpath,"$(dirname "$so")" -Wl,-rpath,"$libdir" -luv -lssl -lcrypto -lpthread -o target/c_bench 2>"$tmp/cc.log"; then
    C=target/c_bench
  else
    echo "(C baseline not built: $(head -1 "$tmp/cc.log"))"
  fi
fi

# --- raw TCP ping-pong in C, two processes (the issue's ceiling for 1 outstanding) ---
RAWC=""
if gcc -O2 scripts/raw_pingpong.c -o target/raw_pingpong 2>"$tmp/raw.log"; then
  RAWC=target/raw_pingpong
else
  echo "(two-process raw baseline not built: $(head -1 "$tmp/raw.log"); using two threads of one process)"
fi

# --- NNG baseline: scripts/nng_bench.c against the system NNG (libnng-dev) ---------------
NG=""
if gcc -O2 scripts/nng_bench.c -lnng -lpthread -o target/nng_bench 2>"$tmp/nng.log"; then
  NG=target/nng_bench
else
  echo "(NNG baseline not built: $(head -1 "$tmp/nng.log"); install libnng-dev)"
fi

# --- ZeroMQ baseline: scripts/zmq_bench.c against the system libzmq (libzmq3-dev) ------
Z=""
if gcc -O2 scripts/zmq_bench.c -lzmq -o target/zmq_bench 2>"$tmp/zmq.log"; then
  Z=target/zmq_bench
else
  echo "(ZeroMQ baseline not built: $(head -1 "$tmp/zmq.log"); install libzmq3-dev)"
fi

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::", 0)); print(s.getsockname()[1])'; }
rate() { sed -n 's/.*: \([0-9]*\)\/s$/\1/p; s/.*: \([0-9]*\) MiB\/s$/\1/p' | tail -1; }
wait_line() { # file
  for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; return 1
}

# Echo processes run under GNU time too: rusage covers every thread a process ever had
# (connection threads end before the process does). Echo START-UP is included; it is a few
# milliseconds against the hundreds a measurement takes.
TIME=""; [ -x /usr/bin/time ] && TIME=/usr/bin/time
ECHO_PID=""
start_echo() { # OUTFILE command...
  local out=$1; shift
  : > "$out"; rm -f "$tmp/etime.out"
  if [ -n "$TIME" ]; then
    $TIME -f "rusage %U %S %w" -o "$tmp/etime.out" "$@" > "$out" 2>/dev/null &
  else
    "$@" > "$out" 2>/dev/null &
  fi
  ECHO_PID=$!; pids+=("$ECHO_PID")
  wait_line "$out"
}
stop_echo() { # SIGTERM to the echo itself (under time: its child), so time reports
  if [ -n "$TIME" ]; then
    pkill -TERM -P "$ECHO_PID" 2>/dev/null || kill "$ECHO_PID" 2>/dev/null || true
  else
    kill "$ECHO_PID" 2>/dev/null || true
  fi
  wait "$ECHO_PID" 2>/dev/null || true
}
# Runs the sender (the arguments after KEY and COUNT) against the running echo, records its
# rate under KEY, stops the echo, and records CPU time and voluntary context switches
# (thread wake-ups) of both processes per round trip under KEY_cpu and KEY_cs.
measure() { # KEY COUNT sender...
  local key=$1 count=$2; shift 2
  local r
  rm -f "$tmp/time.out"
  if [ -n "$TIME" ]; then
    r=$(timeout 120 $TIME -f "rusage %U %S %w" -o "$tmp/time.out" "$@" 2>/dev/null | rate || true)
  else
    r=$(timeout 120 "$@" 2>/dev/null | rate || true)
  fi
  stop_echo
  add "$key" "${r:-0}"
  if [ -n "$TIME" ] && [ -n "$r" ] && grep -q '^rusage' "$tmp/time.out" 2>/dev/null \
       && grep -q '^rusage' "$tmp/etime.out" 2>/dev/null; then
    local su ss sw eu es ew
    read -r _ su ss sw < <(grep '^rusage' "$tmp/time.out")
    read -r _ eu es ew < <(grep '^rusage' "$tmp/etime.out")
    add "${key}_cpu" "$(awk -v a="$su" -v b="$ss" -v c="$eu" -v d="$es" -v n="$count" 'BEGIN { printf "%.1f", (a + b + c + d) * 1e6 / n }')"
    add "${key}_cs" "$(awk -v a="$sw" -v b="$ew" -v n="$count" 'BEGIN { printf "%.2f", (a + b) / n }')"
  fi
}

ours() { # KEY sync|async window count [BIN]
  local flag=""; [ "$2" = async ] && flag="--async"
  local bin=${5:-$B}
  if start_echo "$tmp/echo.out" "$bin" echo --port 0 --no-encryption $flag; then
    local port; port=$(sed -n 's/listening on //p' "$tmp/echo.out")
    measure "$1" "$4" "$bin" send "127.0.0.1:$port" --no-encryption $flag --echo --window "$3" --count "$4"
  else stop_echo; add "$1" 0; fi
}

c_pair() { # KEY sync|async window count
  [ -n "$C" ] || { add "$1" n/a; return; }
  local s=1; [ "$2" = async ] && s=0
  local ep op; ep=$(free_port); op=$(free_port)
  if start_echo "$tmp/cecho.out" $C echo "$ep" "$s"; then
    measure "$1" "$4" $C send "$ep" "$op" "$s" "$3" 16 "$4"
  else stop_echo; add "$1" 0; fi
}

# TLS on loopback for both implementations (always-encrypt), with one throwaway PKI.
read -r TLS_CHAIN TLS_DH < <($B bench-pki "$tmp/pki")
ours_tls() { # KEY window count [BIN]   (asynchronous)
  local tls=(--cert-chain "$TLS_CHAIN" --dh-params "$TLS_DH" --always-encrypt)
  local bin=${4:-$B}
  if start_echo "$tmp/techo.out" "$bin" echo --port 0 --async "${tls[@]}"; then
    local port; port=$(sed -n 's/listening on //p' "$tmp/techo.out")
    measure "$1" "$3" "$bin" send "127.0.0.1:$port" --async "${tls[@]}" --echo --window "$2" --count "$3"
  else stop_echo; add "$1" 0; fi
}
c_tls() { # KEY window count   (asynchronous)
  CHIRP_CERT_CHAIN="$TLS_CHAIN" CHIRP_DH_PARAMS="$TLS_DH" c_pair "$1" async "$2" "$3"
}

zmq_pair() { # KEY window count   (DEALER keeping WINDOW outstanding, ROUTER echo)
  [ -n "$Z" ] || { add "$1" n/a; return; }
  local port; port=$(free_port)
  if start_echo "$tmp/zecho.out" $Z echo "$port"; then
    measure "$1" "$3" $Z send "$port" "$2" 16 "$3"
  else stop_echo; add "$1" 0; fi
}

nng_pair() { # KEY window count   (PAIR keeping WINDOW outstanding, PAIR echo)
  [ -n "$NG" ] || { add "$1" n/a; return; }
  local port; port=$(free_port)
  # A quarter of the round trips: NNG is slow (a message per wake-up).
  local n=$(($3 / 4))
  if start_echo "$tmp/necho.out" $NG echo "$port"; then
    measure "$1" "$n" $NG send "$port" "$2" 16 "$n"
  else stop_echo; add "$1" 0; fi
}

# One-way throughput: a sink that only counts (its rate, first to last message) and a
# sender of COUNT messages of SIZE bytes. KIND: `ours` keeps up to 1,000 plain sends
# outstanding (under the default max_queued of 1,024); `batch` is the streaming path
# (`chirp send --batch 256`: Peer::send_batch, three batches of 256 in flight); `zmq` is
# ZeroMQ's PUSH/PULL with the high-water marks off, `zmqd` with its defaults (1,000), as
# its users run it; `nng` is NNG's PUSH/PULL (queues of 1,024 messages). CPU time (user +
# system) of both processes per message is recorded under KEY_cpu (in ns).
oneway() { # KEY ours|batch|zmq|zmqd|nng SIZE COUNT [BIN: another build of the chirp tool]
  local key=$1 kind=$2 size=$3 count=$4 bin=${5:-$B} r status=0
  # NNG moves a message per wake-up (under 100k/s here): a tenth of the messages.
  [ "$kind" = nng ] && count=$((count / 10))
  : > "$tmp/sink.out"; rm -f "$tmp/sink.time" "$tmp/send.time"
  local T=(); [ -n "$TIME" ] && T=($TIME -f "rusage %U %S %w" -o "$tmp/sink.time")
  local TS=(); [ -n "$TIME" ] && TS=($TIME -f "rusage %U %S %w" -o "$tmp/send.time")
  local hwm=""; [ "$kind" = zmqd ] && hwm=1
  case $kind in
    ours|batch) "${T[@]}" "$bin" bench-sink --count "$count" --no-encryption --port 0 > "$tmp/sink.out" 2>/dev/null & ;;
    nng)
      [ -n "$NG" ] || { add "$key" n/a; return; }
      local port; port=$(free_port)
      "${T[@]}" $NG sink "$port" "$count" > "$tmp/sink.out" 2>/dev/null & ;;
    *)
      [ -n "$Z" ] || { add "$key" n/a; return; }
      local port; port=$(free_port)
      ZMQ_BENCH_DEFAULT_HWM=$hwm "${T[@]}" $Z sink "$port" "$count" > "$tmp/sink.out" 2>/dev/null & ;;
  esac
  local spid=$!; pids+=("$spid")
  wait_line "$tmp/sink.out" || { kill "$spid" 2>/dev/null; add "$key" 0; return; }
  local port; port=$(sed -n 's/listening on //p' "$tmp/sink.out")
  # The sender's exit status and stderr are kept: a sender that failed (and said why) is
  # not taken for a sink that lost messages.
  case $kind in
    ours) timeout 120 "${TS[@]}" "$bin" send "127.0.0.1:$port" --no-encryption --async --count "$count" --size "$size" --window 1000 >/dev/null 2>"$tmp/send.err" || status=$? ;;
    batch) timeout 120 "${TS[@]}" "$bin" send "127.0.0.1:$port" --no-encryption --async --count "$count" --size "$size" --window 1000 --batch 256 >/dev/null 2>"$tmp/send.err" || status=$? ;;
    nng) timeout 120 "${TS[@]}" $NG push "$port" "$size" "$count" >/dev/null 2>"$tmp/send.err" || status=$? ;;
    *) ZMQ_BENCH_DEFAULT_HWM=$hwm timeout 120 "${TS[@]}" $Z push "$port" "$size" "$count" >/dev/null 2>"$tmp/send.err" || status=$? ;;
  esac
  if [ "$status" != 0 ]; then
    echo "(one way $kind $size B: the sender exited with status $status: $(head -c 600 "$tmp/send.err" | tr '\n' ' '))" >&2
  fi
  # Bounded: a sink still waiting a minute after its sender ended lost messages.
  timeout 60 tail --pid="$spid" -f /dev/null 2>/dev/null || { kill "$spid" 2>/dev/null; echo "(one way $kind $size B: the sink did not get every message; sender status $status)" >&2; }
  wait "$spid" 2>/dev/null || true
  r=$(rate < "$tmp/sink.out" || true)
  add "$key" "${r:-0}"
  if [ -n "$TIME" ] && [ -n "$r" ] && grep -q '^rusage' "$tmp/sink.time" 2>/dev/null \
       && grep -q '^rusage' "$tmp/send.time" 2>/dev/null; then
    local su ss eu es
    read -r _ su ss _ < <(grep '^rusage' "$tmp/send.time")
    read -r _ eu es _ < <(grep '^rusage' "$tmp/sink.time")
    add "${key}_cpu" "$(awk -v a="$su" -v b="$ss" -v c="$eu" -v d="$es" -v n="$count" 'BEGIN { printf "%.0f", (a + b + c + d) * 1e9 / n }')"
  fi
}

# Open-loop latency (--latency): one point = an echo and a client offering RATE messages/s
# (0: as fast as it goes, at most 1,000 outstanding: the saturation rate), COUNT messages
# of 16 bytes, each latency from its scheduled send time. IMPL: ours|c|zmq; MODE:
# async|sync (ZeroMQ has no synchronous mode). Records p50 p90 p99 p999 max (µs) and the
# achieved rate under KEY_*.
latency_point() { # KEY IMPL MODE RATE COUNT
  local key=$1 impl=$2 mode=$3 rate=$4 count=$5 line="" port
  case $impl in
    ours)
      local flag=""; [ "$mode" = async ] && flag=--async
      if start_echo "$tmp/lecho.out" $B echo --port 0 --no-encryption $flag; then
        port=$(sed -n 's/listening on //p' "$tmp/lecho.out")
        line=$(timeout 120 $B bench-latency "127.0.0.1:$port" --no-encryption $flag --rate "$rate" --count "$count" 2>/dev/null || true)
      fi ;;
    c)
      [ -n "$C" ] || { add "${key}_p50" n/a; return; }
      local s=1; [ "$mode" = async ] && s=0
      port=$(free_port); local own; own=$(free_port)
      if start_echo "$tmp/lecho.out" $C echo "$port" "$s"; then
        local secs; secs=$(timeout 120 $C latency "$port" "$own" "$s" "$rate" "$count" 16 "$tmp/lat.txt" 2>/dev/null | sed -n 's/^secs //p' || true)
        [ -n "$secs" ] && line=$($B bench-histogram "$tmp/lat.txt" "$rate" "$secs" 2>/dev/null || true)
      fi ;;
    zmq)
      [ -n "$Z" ] || { add "${key}_p50" n/a; return; }
      port=$(free_port)
      if start_echo "$tmp/lecho.out" $Z echo "$port"; then
        local secs; secs=$(timeout 120 $Z latency "$port" "$rate" "$count" 16 "$tmp/lat.txt" 2>/dev/null | sed -n 's/^secs //p' || true)
        [ -n "$secs" ] && line=$($B bench-histogram "$tmp/lat.txt" "$rate" "$secs" 2>/dev/null || true)
      fi ;;
  esac
  stop_echo
  local f
  for f in p50 p90 p99 p999 max achieved; do
    add "${key}_$f" "$(echo "$line" | sed -n "s/.* $f=\([0-9.]*\).*/\1/p")"
  done
}

# Saturation first (rate 0), then 1k, 10k, 50k, 100k/s and 50 % and 80 % of each
# implementation's own saturation rate, every implementation alternately within each run.
latency_sweep() {
  local impls="ours:async c:async zmq:async ours:sync c:sync"
  local r i m impl mode n sat
  for i in $(seq 1 "$runs"); do
    for m in $impls; do
      impl=${m%%:*}; mode=${m#*:}
      n=100000; [ "$mode" = sync ] && n=20000; [ "$quick" = 1 ] && n=$((n / 2))
      latency_point "L_${impl}_${mode}_sat" "$impl" "$mode" 0 "$n"
    done
  done
  # 50 % of the best peer's saturation, the same rate for every implementation of a mode:
  # ZeroMQ's or C's asynchronous, C's synchronous.
  local peer_async peer_sync
  peer_async=$(awk -v a="$(med L_c_async_sat_achieved)" -v b="$(med L_zmq_async_sat_achieved)" \
    'BEGIN { m = (a+0 > b+0) ? a : b; printf "%d", m / 2 }')
  peer_sync=$(awk -v a="$(med L_c_sync_sat_achieved)" 'BEGIN { printf "%d", a / 2 }')
  for i in $(seq 1 "$runs"); do
    for r in 1000 10000 50000 100000 50 80 peer; do
      for m in $impls; do
        impl=${m%%:*}; mode=${m#*:}
        sat=$(med "L_${impl}_${mode}_sat_achieved" | cut -d. -f1)
        [ "$sat" = n/a ] && sat=0
        local rate=$r
        if [ "$r" = peer ]; then
          rate=$peer_sync; [ "$mode" = async ] && rate=$peer_async
          [ "$rate" -gt 0 ] || continue
        elif [ "$r" -le 100 ]; then rate=$((sat * r / 100)); [ "$rate" -gt 0 ] || continue; fi
        # About a second at the offered rate, or at saturation when offered more.
        n=$rate; [ -n "$sat" ] && [ "$sat" -gt 0 ] && [ "$n" -gt "$sat" ] && n=$sat
        [ "$quick" = 1 ] && n=$((n / 2))
        [ "$n" -lt 1000 ] && n=1000
        latency_point "L_${impl}_${mode}_$r" "$impl" "$mode" "$rate" "$n"
      done
    done
  done
  echo
  echo "Open-loop latency, 16-byte messages, two processes; medians of $runs alternating runs on $(nproc) cores."
  echo "Latency from each message's scheduled send time to its echo's arrival, µs (HDR histogram)."
  echo
  printf '| %-16s | %-22s | %10s | %8s | %8s | %8s | %8s | %8s |\n' offered implementation achieved p50 p90 p99 p99.9 max
  printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "------------------" "------------------------" "------------" "----------" "----------" "----------" "----------" "----------"
  local label
  for m in $impls; do
    impl=${m%%:*}; mode=${m#*:}
    printf '| %-16s | %-22s | %10s | %8s | %8s | %8s | %8s | %8s |\n' "saturation" "$impl $mode" "$(med "L_${impl}_${mode}_sat_achieved")" "" "" "" "" ""
  done
  for r in 1000 10000 50000 100000 50 80 peer; do
    for m in $impls; do
      impl=${m%%:*}; mode=${m#*:}
      local k="L_${impl}_${mode}_$r"
      if [ "$r" = peer ]; then label="50 % peer's sat."
      elif [ "$r" -le 100 ]; then label="$r % of own sat."; else label="$r/s"; fi
      printf '| %-16s | %-22s | %10s | %8s | %8s | %8s | %8s | %8s |\n' "$label" "$impl $mode" \
        "$(med "${k}_achieved")" "$(med "${k}_p50")" "$(med "${k}_p90")" "$(med "${k}_p99")" "$(med "${k}_p999")" "$(med "${k}_max")"
    done
  done
}

# One-way sweep (--oneway): every kind alternately within each run, 16 B and 1 KiB.
oneway_table() {
  echo
  echo "One way, medians of $runs alternating runs on $(nproc) cores; messages/s at the sink, CPU ns per message (both processes, user + system)."
  echo
  printf '| %-30s | %10s | %7s | %10s | %7s |\n' "sender" "16 B /s" "ns/msg" "1 KiB /s" "ns/msg"
  printf '|%s|%s|%s|%s|%s|\n' "--------------------------------" "------------" "---------" "------------" "---------"
  local kinds=(ours:"ours, send() x 1,000 in flight" batch:"ours, send_batch(256)")
  [ -n "$baseline" ] && kinds+=(base:"baseline, send() x 1,000" basebatch:"baseline, send_batch(256)")
  kinds+=(zmq:"ZeroMQ PUSH/PULL, HWM off" zmqd:"ZeroMQ PUSH/PULL, default HWM" nng:"NNG PUSH/PULL")
  for k in "${kinds[@]}"; do
    local key=${k%%:*} label=${k#*:}
    printf '| %-30s | %10s | %7s | %10s | %7s |\n' "$label" "$(med "o16_$key")" "$(med "o16_${key}_cpu")" "$(med "o1k_$key")" "$(med "o1k_${key}_cpu")"
  done
  echo
  best16=$(awk -v a="$(med o16_zmq)" -v b="$(med o16_zmqd)" 'BEGIN { print (a+0 > b+0) ? a : b }')
  best1k=$(awk -v a="$(med o1k_zmq)" -v b="$(med o1k_zmqd)" 'BEGIN { print (a+0 > b+0) ? a : b }')
  echo "against the faster ZeroMQ mode: send_batch 16 B $(ratio "$(med o16_batch)" "$best16")x, send() 16 B $(ratio "$(med o16_ours)" "$best16")x, send_batch 1 KiB $(ratio "$(med o1k_batch)" "$best1k")x, send() 1 KiB $(ratio "$(med o1k_ours)" "$best1k")x"
  echo "against NNG: send_batch 16 B $(ratio "$(med o16_batch)" "$(med o16_nng)")x, send() 16 B $(ratio "$(med o16_ours)" "$(med o16_nng)")x, send_batch 1 KiB $(ratio "$(med o1k_batch)" "$(med o1k_nng)")x, send() 1 KiB $(ratio "$(med o1k_ours)" "$(med o1k_nng)")x"
  if [ -n "$baseline" ]; then
    echo "against the baseline ($baseline): send() 16 B $(ratio "$(med o16_ours)" "$(med o16_base)")x, send_batch 16 B $(ratio "$(med o16_batch)" "$(med o16_basebatch)")x, send() 1 KiB $(ratio "$(med o1k_ours)" "$(med o1k_base)")x, send_batch 1 KiB $(ratio "$(med o1k_batch)" "$(med o1k_basebatch)")x"
  fi
}

raw_pair() { # KEY count
  [ -n "$RAWC" ] || { add "$1" "$($B bench-raw --count "$2" | rate)"; return; }
  if start_echo "$tmp/raw.out" $RAWC echo; then
    local port; port=$(sed -n 's/listening on //p' "$tmp/raw.out")
    measure "$1" "$2" $RAWC send "$port" 16 "$2"
  else stop_echo; add "$1" 0; fi
}

# (No figures is "n/a", not a failure: grep finding no line must not end the run under
# `set -e -o pipefail`, as it did when one saturation point of --latency got no result.)
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b+0 > 0 && a+0 > 0) printf "%.2f", a/b; else print "n/a" }'; }

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
med() { echo "${R[$1]:-}" | median; }


# Star topology: one echo, N sender processes at once, each WINDOW outstanding and COUNT
# round trips; the rate is all round trips over the wall time from the first start to the
# last end (process start-up included: a few milliseconds against seconds).
star_run() { # KEY N COUNT ours:BIN|c
  local key=$1 n=$2 count=$3; shift 3
  local kind=$1; shift   # ours:BIN or c
  local port t0 t1 ok=1 spids=()
  case "$kind" in
    ours:*)
      local bin=${kind#ours:}
      start_echo "$tmp/secho.out" "$bin" echo --port 0 --no-encryption --async || { stop_echo; add "$key" 0; return; }
      port=$(sed -n 's/listening on //p' "$tmp/secho.out")
      t0=$(date +%s.%N)
      for _ in $(seq 1 "$n"); do
        timeout 300 "$bin" send "127.0.0.1:$port" --no-encryption --async --echo --window 16 --count "$count" >/dev/null 2>&1 & spids+=($!)
      done ;;
    c)
      [ -n "$C" ] || { add "$key" n/a; return; }
      port=$(free_port)
      start_echo "$tmp/secho.out" $C echo "$port" 0 || { stop_echo; add "$key" 0; return; }
      local ports=(); for _ in $(seq 1 "$n"); do ports+=("$(free_port)"); done
      t0=$(date +%s.%N)
      for p in "${ports[@]}"; do
        timeout 300 $C send "$port" "$p" 0 16 16 "$count" >/dev/null 2>&1 & spids+=($!)
      done ;;
  esac
  for p in "${spids[@]}"; do wait "$p" || ok=0; done
  t1=$(date +%s.%N)
  stop_echo
  if [ "$ok" = 1 ]; then
    add "$key" "$(awk -v a="$t0" -v b="$t1" -v n="$n" -v c="$count" 'BEGIN { printf "%.0f", n * c / (b - a) }')"
  else
    add "$key" 0
  fi
}

if [ "$latency_only" = 1 ]; then
  latency_sweep
  exit 0
fi
if [ "$oneway_only" = 1 ]; then
  n=$((n_win * 20))
  for i in $(seq 1 "$runs"); do
    for k in ours batch zmq zmqd nng; do oneway "o16_$k" $k 16 "$n"; done
    if [ -n "$baseline" ]; then
      oneway o16_base ours 16 "$n" "$baseline"; oneway o16_basebatch batch 16 "$n" "$baseline"
    fi
    for k in ours batch zmq zmqd nng; do oneway "o1k_$k" $k 1024 $((n / 5)); done
    if [ -n "$baseline" ]; then
      oneway o1k_base ours 1024 $((n / 5)) "$baseline"; oneway o1k_basebatch batch 1024 $((n / 5)) "$baseline"
    fi
  done
  oneway_table
  exit 0
fi
if [ "$star" = 1 ]; then
  for i in $(seq 1 "$runs"); do
    for n in 16 64; do
      per=$(( (quick ? 40000 : 160000) / n ))
      star_run "s${n}_ours" "$n" "$per" "ours:$B"
      [ -n "$baseline" ] && star_run "s${n}_base" "$n" "$per" "ours:$baseline"
      star_run "s${n}_c" "$n" "$per" c
    done
  done
  echo
  echo "Star topology: one asynchronous echo node, N sender processes with 16 outstanding each;"
  echo "total round trips per second (16-byte messages), medians of $runs runs on $(nproc) cores."
  echo
  if [ -n "$baseline" ]; then
    printf '| %7s | %9s | %9s | %9s | %7s | %7s |\n' senders ours baseline "C" "ours/C" "ours/base"
    printf '|%s|%s|%s|%s|%s|%s|\n' "---------" "-----------" "-----------" "-----------" "---------" "-----------"
    for n in 16 64; do
      printf '| %7s | %9s | %9s | %9s | %7s | %9s |\n' "$n" "$(med "s${n}_ours")" "$(med "s${n}_base")" "$(med "s${n}_c")" \
        "$(ratio "$(med "s${n}_ours")" "$(med "s${n}_c")")" "$(ratio "$(med "s${n}_ours")" "$(med "s${n}_base")")"
    done
  else
    printf '| %7s | %9s | %9s | %7s |\n' senders ours "C" "ours/C"
    printf '|%s|%s|%s|%s|\n' "---------" "-----------" "-----------" "---------"
    for n in 16 64; do
      printf '| %7s | %9s | %9s | %7s |\n' "$n" "$(med "s${n}_ours")" "$(med "s${n}_c")" "$(ratio "$(med "s${n}_ours")" "$(med "s${n}_c")")"
    done
  fi
  exit 0
fi

if [ "$windows" = 1 ]; then
  ws="1 4 8 16 64 256"
  for i in $(seq 1 "$runs"); do
    for w in $ws; do
      n=$((w < 16 ? 10000 * w : 40000 + 1000 * w))
      ours "w${w}_ours" async "$w" "$n"; c_pair "w${w}_c" async "$w" "$n"; zmq_pair "w${w}_z" "$w" "$n"
      nng_pair "w${w}_n" "$w" "$n"
      [ -n "$baseline" ] && ours "w${w}_base" async "$w" "$n" "$baseline"
      if [ "$tls_sweep" = 1 ]; then
        nt=$((w < 16 ? 8000 * w : 20000 + 500 * w))
        ours_tls "t${w}_ours" "$w" "$nt"; c_tls "t${w}_c" "$w" "$nt"
        [ -n "$baseline" ] && ours_tls "t${w}_base" "$w" "$nt" "$baseline"
      fi
    done
    if [ -n "$baseline" ]; then
      ours sync_ours sync 1 $n_sync; ours sync_base sync 1 $n_sync "$baseline"
    fi
  done
  if [ -n "$baseline" ]; then
    echo
    echo "Before/after: ours against $baseline, medians of $runs runs (round trips per second;"
    echo "CPU: user + system microseconds per round trip, both processes, where GNU time is installed)."
    echo
    printf '| %-24s | %9s | %9s | %9s | %8s | %8s |\n' mode ours baseline ours/base "ours CPU" "base CPU"
    printf '|%s|%s|%s|%s|%s|%s|\n' "--------------------------" "-----------" "-----------" "-----------" "----------" "----------"
    base_row() { # LABEL KEY_OURS KEY_BASE
      printf '| %-24s | %9s | %9s | %9s | %8s | %8s |\n' "$1" "$(med "$2")" "$(med "$3")" "$(ratio "$(med "$2")" "$(med "$3")")" \
        "$(med "${2}_cpu")" "$(med "${3}_cpu")"
    }
    base_row "synchronous, 1" sync_ours sync_base
    for w in $ws; do base_row "asynchronous, $w" "w${w}_ours" "w${w}_base"; done
    if [ "$tls_sweep" = 1 ]; then
      for w in $ws; do base_row "TLS, asynchronous, $w" "t${w}_ours" "t${w}_base"; done
    fi
  fi
  echo
  echo "Asynchronous round trips per second by messages outstanding; medians of $runs runs on $(nproc) cores."
  echo
  printf '| %11s | %9s | %9s | %9s | %9s | %6s | %8s | %8s |\n' outstanding ours "C" "ZeroMQ" "NNG" "ours/C" "ours/ZMQ" "ours/NNG"
  printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "-------------" "-----------" "-----------" "-----------" "-----------" "--------" "----------" "----------"
  top=1
  for w in $ws; do
    for k in ours c z n; do v=$(med "w${w}_$k"); [ "$v" != n/a ] && [ "${v%.*}" -gt "$top" ] && top=${v%.*}; done
  done
  for w in $ws; do
    printf '| %11s | %9s | %9s | %9s | %9s | %6s | %8s | %8s |\n' "$w" "$(med "w${w}_ours")" "$(med "w${w}_c")" "$(med "w${w}_z")" "$(med "w${w}_n")" \
      "$(ratio "$(med "w${w}_ours")" "$(med "w${w}_c")")" "$(ratio "$(med "w${w}_ours")" "$(med "w${w}_z")")" "$(ratio "$(med "w${w}_ours")" "$(med "w${w}_n")")"
  done
  if [ "$tls_sweep" = 1 ]; then
    echo
    echo "TLS (always-encrypt, the same throwaway PKI for both), asynchronous round trips per second;"
    echo "TLS/plain: our TLS rate against our plaintext rate above."
    echo
    printf '| %11s | %9s | %9s | %6s | %9s |\n' outstanding "ours TLS" "C TLS" "ours/C" "TLS/plain"
    printf '|%s|%s|%s|%s|%s|\n' "-------------" "-----------" "-----------" "--------" "-----------"
    for w in $ws; do
      printf '| %11s | %9s | %9s | %6s | %9s |\n' "$w" "$(med "t${w}_ours")" "$(med "t${w}_c")" \
        "$(ratio "$(med "t${w}_ours")" "$(med "t${w}_c")")" "$(ratio "$(med "t${w}_ours")" "$(med "w${w}_ours")")"
    done
  fi
  echo
  bar() { awk -v v="$1" -v t="$top" 'BEGIN { n = (v + 0) * 50 / t; s = ""; for (i = 0; i < n; i++) s = s "#"; print s }'; }
  for w in $ws; do
    printf '%4s ours %-50s %s\n' "$w" "$(bar "$(med "w${w}_ours")")" "$(med "w${w}_ours")"
    printf '%4s C    %-50s %s\n' "" "$(bar "$(med "w${w}_c")")" "$(med "w${w}_c")"
    printf '%4s ZMQ  %-50s %s\n' "" "$(bar "$(med "w${w}_z")")" "$(med "w${w}_z")"
    printf '%4s NNG  %-50s %s\n' "" "$(bar "$(med "w${w}_n")")" "$(med "w${w}_n")"
  done
  exit 0
fi
for i in $(seq 1 "$runs"); do
  ours sync_ours sync 1 $n_sync;   c_pair sync_c sync 1 $n_sync
  ours async_ours async 1 $n_async; c_pair async_c async 1 $n_async
  ours win_ours async 16 $n_win;    c_pair win_c async 16 $n_win
  raw_pair raw $n_async
  zmq_pair async_z 1 $n_async; zmq_pair win_z 16 $n_win
  ours_tls tls1_ours 1 $n_async; c_tls tls1_c 1 $n_async
  ours_tls tls16_ours 16 $n_win; c_tls tls16_c 16 $n_win
  for k in ours batch zmq zmqd; do oneway "o16_$k" $k 16 $((n_win * 20)); done
  for k in ours batch zmq zmqd; do oneway "o1k_$k" $k 1024 $((n_win * 4)); done
  add raw_threads "$($B bench-raw --count $n_async | rate)"
  add big_ours "$($B bench --stream --size 1048576 --count $n_big 2>/dev/null | rate)"
  add big_raw "$($B bench-raw --stream --size 1048576 --count $n_big | rate)"
  add tls_sync "$($B bench --tls --count $n_sync 2>/dev/null | rate)"
  add plain_sync "$($B bench --count $n_sync 2>/dev/null | rate)"
  add tls_async "$($B bench --tls --async --count $n_async 2>/dev/null | rate)"
  add plain_async "$($B bench --async --count $n_async 2>/dev/null | rate)"
  add tls_win "$($B bench --tls --async --window 16 --count $n_win 2>/dev/null | rate)"
  add plain_win "$($B bench --async --window 16 --count $n_win 2>/dev/null | rate)"
done

echo
echo "Medians of $runs runs on $(nproc) cores ($(uname -r)); round trips per second unless noted."
echo
printf '| %-38s | %10s | %10s | %10s | %8s | %8s |\n' "mode (16-byte messages, two processes)" "ours" "C libchirp" "raw TCP" "ours/C" "ours/raw"
printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "------------" "------------" "------------" "----------" "----------"
raw=$(med raw)
row() { printf '| %-38s | %10s | %10s | %10s | %8s | %8s |\n' "$1" "$2" "$3" "$4" "$(ratio "$2" "$3")" "$(ratio "$2" "$4")"; }
row "synchronous, 1 outstanding" "$(med sync_ours)" "$(med sync_c)" "$raw"
row "asynchronous, 1 outstanding" "$(med async_ours)" "$(med async_c)" "$raw"
row "asynchronous, 16 outstanding" "$(med win_ours)" "$(med win_c)" "-"
echo
if [ -n "$TIME" ]; then
  printf '| %-38s | %9s | %9s | %9s | %9s | %9s | %9s |\n' "per round trip, both processes" "ours CPU" "C CPU" "raw CPU" "ours wk" "C wk" "raw wk"
  printf '|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "-----------" "-----------" "-----------" "-----------" "-----------" "-----------"
  erow() { printf '| %-38s | %9s | %9s | %9s | %9s | %9s | %9s |\n' "$1" "$(med "$2_ours_cpu")" "$(med "$2_c_cpu")" "$3" "$(med "$2_ours_cs")" "$(med "$2_c_cs")" "$4"; }
  erow "synchronous, 1 outstanding" sync "$(med raw_cpu)" "$(med raw_cs)"
  erow "asynchronous, 1 outstanding" async "$(med raw_cpu)" "$(med raw_cs)"
  erow "asynchronous, 16 outstanding" win - -
  echo "(CPU: user + system µs of sender and echo together; wk: voluntary context switches,"
  echo " i.e. thread wake-ups, of both processes; medians like the rates)"
  echo
fi
if [ -n "$RAWC" ]; then
  echo "raw TCP: C ping-pong between two processes, as the other columns; between two threads of one process (Rust): $(med raw_threads)/s"
else
  echo "raw TCP: between two threads of one process (Rust); gcc was not available for the two-process C ping-pong"
fi
echo
printf '| %-38s | %10s | %10s | %8s |\n' "TLS, two processes (asynchronous)" "ours" "C libchirp" "ours/C"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "------------" "------------" "----------"
for m in tls1:"1 outstanding" tls16:"16 outstanding"; do
  k=${m%%:*}; label=${m#*:}
  printf '| %-38s | %10s | %10s | %8s |\n' "$label" "$(med ${k}_ours)" "$(med ${k}_c)" "$(ratio "$(med ${k}_ours)" "$(med ${k}_c)")"
done
echo
printf '| %-38s | %10s | %10s | %8s |\n' "against ZeroMQ (asynchronous)" "ours" "ZeroMQ" "ours/ZMQ"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "------------" "------------" "----------"
zrow() { printf '| %-38s | %10s | %10s | %8s |\n' "$1" "$(med "$2_ours")" "$(med "$2_z")" "$(ratio "$(med "$2_ours")" "$(med "$2_z")")"; }
R[async_ours]=${R[async_ours]:-}; R[win_ours]=${R[win_ours]:-}
zrow "round trips, 1 outstanding" async
zrow "round trips, 16 outstanding" win
echo
oneway_table
echo
printf '| %-38s | %10s | %10s | %8s |\n' "bandwidth, 1 MiB async messages" "ours MiB/s" "raw MiB/s" "ours/raw"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "------------" "------------" "----------"
printf '| %-38s | %10s | %10s | %8s |\n' "one way, one process" "$(med big_ours)" "$(med big_raw)" "$(ratio "$(med big_ours)" "$(med big_raw)")"
echo
printf '| %-38s | %10s | %10s | %8s |\n' "TLS vs plaintext (ours, one process)" "TLS" "plaintext" "TLS/plain"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "------------" "------------" "----------"
for m in sync:"synchronous, 1 outstanding" async:"asynchronous, 1 outstanding" win:"asynchronous, 16 outstanding"; do
  k=${m%%:*}; label=${m#*:}
  printf '| %-38s | %10s | %10s | %8s |\n' "$label" "$(med tls_$k)" "$(med plain_$k)" "$(ratio "$(med tls_$k)" "$(med plain_$k)")"
done
echo
$B bench-idle --peers 1000
