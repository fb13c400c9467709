#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetch Debian's kernel and busybox-static (once;
# reused afterwards), then every test of the workspace in release mode (tests run guests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash roms/fetch-debian-guest.sh
cargo test --release --workspace "$@"
