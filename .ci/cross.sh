#!/usr/bin/env bash
# Any host, checked: Gantry built for aarch64 (lints included), the demo guest booted on
# both CPU tiers, and the CPU crates' tests, all under user-mode QEMU. The toolchain is
# Debian's: a trixie chroot (made once with mmdebstrap, kept outside the clone so later
# runs on this machine reuse it) with trixie-backports' rustc and arm64 std and a cross gcc.
# Crates come from the host's cargo registry, which the native build has just filled.
#
# Usage: bash .ci/cross.sh [aarch64|riscv64]   (CI runs aarch64)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-aarch64}
case "$arch" in
    aarch64) deb=arm64; gcc=gcc-aarch64-linux-gnu; sysroot=/usr/aarch64-linux-gnu ;;
    riscv64) deb=riscv64; gcc=gcc-riscv64-linux-gnu; sysroot=/usr/riscv64-linux-gnu ;;
    *) echo "cross.sh: unknown architecture '$arch' (aarch64 or riscv64)" >&2; exit 2 ;;
esac
target="$arch-unknown-linux-gnu"
[ "$arch" = riscv64 ] && target=riscv64gc-unknown-linux-gnu
root=${GANTRY_CROSS_ROOT:-/srv/gantry-trixie}
out=${GANTRY_CROSS_TARGET_DIR:-/srv/gantry-cross-target}

if [ ! -e "$root/.gantry-$deb" ]; then
    echo "cross.sh: making the Debian trixie chroot $root for $arch"
    command -v mmdebstrap >/dev/null || apt-get install -y --no-install-recommends mmdebstrap
    [ -d "$root/usr" ] || mmdebstrap --variant=apt --architectures="amd64,$deb" \
        --include=ca-certificates,qemu-user \
        --customize-hook='echo "deb http://deb.debian.org/debian trixie-backports main" > "$1/etc/apt/sources.list.d/backports.list"' \
        trixie "$root" http://deb.debian.org/debian
    chroot "$root" sh -c "dpkg --add-architecture $deb && apt-get update -qq"
    # The target's std must be the very version of the compiler: trixie-backports has
    # lagged for some architectures (riscv64: std 1.96.1 beside rustc 1.97.1).
    newest() { chroot "$root" apt-cache madison "$1" | awk '/backports/ && v == "" { v = $3 } END { print v }'; }
    rustc_v=$(newest rustc)
    std_v=$(newest "libstd-rust-dev:$deb")
    if [ "$rustc_v" != "$std_v" ]; then
        echo "cross.sh: trixie-backports has rustc $rustc_v but $deb's std $std_v; $arch cannot be checked with Debian's packages until they match" >&2
        exit 2
    fi
    chroot "$root" apt-get install -y -qq --no-install-recommends -t trixie-backports \
        rustc cargo rust-clippy "libstd-rust-dev:$deb" $gcc "libc6-dev-$deb-cross"
    touch "$root/.gantry-$deb"
fi

# Every platform's crates of the lock (the native build fetched only the host's).
cargo fetch --locked
mkdir -p "$out" "$root/src" "$root/out" "$root/registry"
mounts=()
bind() {
    mountpoint -q "$2" || { mount --bind "$1" "$2"; mounts+=("$2"); }
}
cleanup() {
    for m in "${mounts[@]}"; do umount "$m" || true; done
}
trap cleanup EXIT
mkdir -p "$root/proc"
mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc"; mounts+=("$root/proc"); }
bind "$PWD" "$root/src"
bind "$out" "$root/out"
bind "${CARGO_HOME:-$HOME/.cargo}/registry" "$root/registry"

upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
in_chroot() {
    chroot "$root" env CARGO_HOME=/cargo-home CARGO_TARGET_DIR=/out \
        "CARGO_TARGET_${upper}_LINKER=$arch-linux-gnu-gcc" \
        "CARGO_TARGET_${upper}_RUNNER=qemu-$arch -L $sysroot" \
        sh -c "mkdir -p /cargo-home && ln -sfn /registry /cargo-home/registry && cd /src && $*"
}
echo "cross.sh: clippy and build for $target"
in_chroot cargo clippy --offline --release --target "$target" --workspace --all-targets -- -D warnings
in_chroot cargo build --offline --profile ci --target "$target" -p gantry
for accel in interp jit; do
    echo "cross.sh: the demo guest on $arch, --accel $accel"
    log=$(in_chroot "qemu-$arch -L $sysroot /out/$target/ci/gantry run --accel $accel" \
        </dev/null)
    echo "$log" | tail -1
    echo "$log" | grep -q "demo: all checks done, powering off"
done
echo "cross.sh: the CPU tests on $arch (frontend, translator, machine) under qemu-$arch"
in_chroot cargo test --offline --profile ci --target "$target" \
    -p gantry-frontend -p gantry-translator -p gantry-machine
