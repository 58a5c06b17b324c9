#!/usr/bin/env bash
# Side-by-side benchmarks: our node, C libchirp 1.2.1 and raw TCP on loopback.
#
#   scripts/bench.sh [--quick] [--runs N]
#
# Each figure is the median of N runs (default 5, --quick 3), the implementations measured
# alternately within every run so that machine noise hits them alike. Echo and sender run
# as two processes, 16-byte messages, as in the C README's figures. The C pair is
# scripts/c_bench.c linked with the C core that scripts/install-peer.sh built; without that
# peer the C column says "n/a". Prints figures only; it never fails because of speed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; runs=3 ;;
    --runs) runs="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--runs N]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then n_sync=2000; n_async=4000; n_win=40000; n_big=300; else n_sync=5000; n_async=10000; n_win=100000; n_big=1000; fi

cargo build --release --features cli -q
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
       -Wl,-rpath,"$(dirname "$so")" -Wl,-rpath,"$libdir" -luv -lssl -lcrypto -o target/c_bench 2>"$tmp/cc.log"; then
    C=target/c_bench
  else
    echo "(C baseline not built: $(head -1 "$tmp/cc.log"))"
  fi
fi

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::", 0)); print(s.getsockname()[1])'; }
rate() { sed -n 's/.*: \([0-9]*\)\/s$/\1/p; s/.*: \([0-9]*\) MiB\/s$/\1/p' | tail -1; }
wait_line() { # file
  for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; return 1
}

ours() { # sync|async window count
  local flag=""; [ "$1" = async ] && flag="--async"
  : > "$tmp/echo.out"
  $B echo --port 0 --no-encryption $flag > "$tmp/echo.out" 2>/dev/null & local e=$!; pids+=("$e")
  wait_line "$tmp/echo.out" || { echo 0; return; }
  local port; port=$(sed -n 's/listening on //p' "$tmp/echo.out")
  $B send "127.0.0.1:$port" --no-encryption $flag --echo --window "$2" --count "$3" 2>/dev/null | rate || echo 0
  kill "$e" 2>/dev/null; wait "$e" 2>/dev/null || true
}

c_pair() { # sync|async window count
  [ -n "$C" ] || { echo n/a; return; }
  local s=1; [ "$1" = async ] && s=0
  local ep op; ep=$(free_port); op=$(free_port)
  : > "$tmp/cecho.out"
  $C echo "$ep" "$s" > "$tmp/cecho.out" 2>/dev/null & local e=$!; pids+=("$e")
  wait_line "$tmp/cecho.out" || { echo 0; return; }
  timeout 120 $C send "$ep" "$op" "$s" "$2" 16 "$3" 2>/dev/null | rate || echo 0
  kill "$e" 2>/dev/null; wait "$e" 2>/dev/null || true
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b+0 > 0 && a+0 > 0) printf "%.2f", a/b; else print "n/a" }'; }

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
for i in $(seq 1 "$runs"); do
  add sync_ours "$(ours sync 1 $n_sync)";   add sync_c "$(c_pair sync 1 $n_sync)"
  add async_ours "$(ours async 1 $n_async)"; add async_c "$(c_pair async 1 $n_async)"
  add win_ours "$(ours async 16 $n_win)";    add win_c "$(c_pair async 16 $n_win)"
  add raw "$($B bench-raw --count $n_async | rate)"
  add big_ours "$($B bench --stream --size 1048576 --count $n_big | rate)"
  add big_raw "$($B bench-raw --stream --size 1048576 --count $n_big | rate)"
  add tls_sync "$($B bench --tls --count $n_sync | rate)"
  add plain_sync "$($B bench --count $n_sync | rate)"
  add tls_async "$($B bench --tls --async --count $n_async | rate)"
  add plain_async "$($B bench --async --count $n_async | rate)"
  add tls_win "$($B bench --tls --async --window 16 --count $n_win | rate)"
  add plain_win "$($B bench --async --window 16 --count $n_win | rate)"
done
med() { echo "${R[$1]:-}" | median; }

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
$B bench-idle --connections 1000
