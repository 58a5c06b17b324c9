#!/usr/bin/env bash
# The Python package (python/): builds the wheel with maturin, installs it into a fresh
# virtual environment (the whole set-up a user needs), and runs its pytest suite there.
#
#   scripts/python-tests.sh [PYTEST ARGS...]
#
# The suite pairs the package with python-chirp 1.2.1 (scripts/install-peer.sh), the chirp
# tool (target/debug/chirp: cargo build) and libchirp's example programs; tests whose peer
# or privileges (root, for network namespaces) are missing are reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=${PYTHON:-python3}

build_env=target/py-build
test_env=target/py-test
rm -rf "$build_env" "$test_env" target/wheels
"$py" -m venv "$build_env"
"$build_env/bin/pip" install -q --disable-pip-version-check "maturin>=1.5,<2"
"$build_env/bin/maturin" build --release -m python/Cargo.toml --out target/wheels
wheel=$(ls target/wheels/libchirp-*.whl)

# A user's set-up: a fresh venv and `pip install` of the wheel (pytest only for the tests).
"$py" -m venv "$test_env"
"$test_env/bin/pip" install -q --disable-pip-version-check "$wheel" pytest

[ -x target/debug/chirp ] || cargo build -q -p libchirp-cli
export CHIRP_BIN="${CHIRP_BIN:-$root/target/debug/chirp}"
# Run from outside python/ so `import libchirp` is the installed wheel, not the sources.
cd /
exec "$root/$test_env/bin/pytest" -ra -p no:cacheprovider "$root/python/tests" "$@"
