#!/usr/bin/env bash
# Installs the real libchirp 1.2.1 (C core + Python bindings) into a virtualenv, for the
# conformance suite and the C baseline of the benchmarks. Prints the venv's python path.
# The source package's example programs (gossip.py, pool_echo.py, ...) are unpacked,
# unchanged, into VENV_DIR/libchirp-examples for the tests that run them.
#   scripts/install-peer.sh [VENV_DIR]     (default: target/chirp-peer)
set -euo pipefail
venv="${1:-$(cd "$(dirname "$0")/.." && pwd)/target/chirp-peer}"
examples() {
  [ -f "$venv/libchirp-examples/gossip.py" ] && return 0
  local tmp; tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --no-binary :all: --no-deps libchirp==1.2.1b3 -d "$tmp" >&2
  tar -xzf "$tmp"/libchirp-1.2.1b3.tar.gz -C "$tmp"
  rm -rf "$venv/libchirp-examples"
  cp -r "$tmp/libchirp-1.2.1b3/examples" "$venv/libchirp-examples"
  rm -rf "$tmp"
}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import libchirp.pool, libchirp.queue' 2>/dev/null; then
  examples
  echo "$venv/bin/python"; exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in libuv1-dev libffi-dev libssl-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    (apt-get update -qq && apt-get install -y -qq $missing) >&2
  fi
fi
python3 -m venv "$venv" >&2
"$venv/bin/pip" install -q cffi >&2
# OpenSSL 3 removed FIPS_mode_set, which libchirp 1.2.1 calls once at cleanup.
CFLAGS='-DFIPS_mode_set(x)=0' "$venv/bin/pip" install -q --no-binary libchirp libchirp==1.2.1b3 >&2
"$venv/bin/python" -c 'import libchirp.pool, libchirp.queue' >&2
examples
echo "$venv/bin/python"
