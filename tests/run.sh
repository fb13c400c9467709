#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetch Debian's kernel and busybox-static (once;
# reused afterwards), then every test of the workspace in release code (tests run guests),
# built in the `ci` profile: the release profile without LTO (Cargo.toml).
# Ends with one line totalling cargo's per-binary results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash roms/fetch-debian-guest.sh
# The gdbstub tests drive stock gdb against kernels linked with binutils; the disk tests
# make ext4 images with e2fsprogs and qcow2 images with qemu-utils; the firmware tests
# boot Debian's SeaBIOS from a disk made with dosfstools, mtools and syslinux.
missing=()
command -v gdb >/dev/null || missing+=(gdb)
command -v as >/dev/null && command -v ld >/dev/null || missing+=(binutils)
command -v mke2fs >/dev/null && command -v debugfs >/dev/null || missing+=(e2fsprogs)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
[ -s /usr/share/seabios/bios-256k.bin ] || missing+=(seabios)
command -v mkfs.fat >/dev/null || missing+=(dosfstools)
command -v mcopy >/dev/null || missing+=(mtools)
command -v syslinux >/dev/null || missing+=(syslinux)
[ -s /usr/lib/syslinux/mbr/mbr.bin ] || missing+=(syslinux-common)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} for the gdb, disk and firmware tests"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}" \
        || { "${sudo_cmd[@]}" apt-get update -qq \
             && "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --profile ci --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
