#!/usr/bin/env bash
# The public API break check: the crate's public surface (default features, as rustdoc sees
# it) must equal the snapshot in tests/public-api.txt. A change to the API is made on
# purpose: rerun with --update, commit the snapshot with the change, and say in
# CHANGELOG.md what changed (a removal or a changed signature is a breaking release).
#   scripts/public-api.sh            check (CI)
#   scripts/public-api.sh --update   rewrite the snapshot
# Needs the nightly toolchain (rustdoc's JSON output) and cargo-public-api, which this
# installs at a pinned version when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.52.0
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "public-api.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo public-api --version 2>/dev/null | grep -q "$version"; then
  cargo install --locked --quiet cargo-public-api --version "$version"
fi
snapshot=tests/public-api.txt
now=$(mktemp)
trap 'rm -f "$now"' EXIT
# Blanket impls omitted (they follow from the rest); auto traits (Send, Sync, Unpin) and
# derived impls stay, since losing one breaks users.
cargo public-api -p libchirp -s >"$now"
if [ "${1:-}" = "--update" ]; then
  cp "$now" "$snapshot"
  echo "public-api.sh: $snapshot updated ($(wc -l <"$snapshot") lines)"
  exit 0
fi
if ! diff -u "$snapshot" "$now"; then
  echo
  echo "public-api.sh: the public API differs from $snapshot (above: - removed, + added)."
  echo "If the change is intended: scripts/public-api.sh --update, commit the snapshot with"
  echo "the change, and record it in CHANGELOG.md (a removal is a breaking release)."
  exit 1
fi
echo "public-api.sh: the public API matches $snapshot ($(wc -l <"$snapshot") lines)"
