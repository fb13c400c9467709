#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetch Debian's kernel and busybox-static (once;
# reused afterwards), then every test of the workspace in release mode (tests run guests).
# Ends with one line totalling cargo's per-binary results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash roms/fetch-debian-guest.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
