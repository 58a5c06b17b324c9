#!/usr/bin/env bash
# Installs the real libchirp 1.2.1 (C core + Python bindings) into a virtualenv, for the
# conformance suite and the C baseline of the benchmarks. Prints the venv's python path.
#   scripts/install-peer.sh [VENV_DIR]     (default: target/chirp-peer)
set -euo pipefail
venv="${1:-$(cd "$(dirname "$0")/.." && pwd)/target/chirp-peer}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import libchirp.pool, libchirp.queue' 2>/dev/null; then
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
echo "$venv/bin/python"
