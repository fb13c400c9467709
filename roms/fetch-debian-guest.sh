#!/usr/bin/env bash
# Fetches Debian's stock x86-64 kernel (the package linux-image-amd64 depends on) and
# busybox-static with `apt-get download`, and builds an initramfs around busybox whose
# /init prints marker lines, runs gantry_cmd from the kernel command line, and powers off;
# and a second one that also carries the disk drivers from the same kernel package (IDE,
# SCSI disk and CD-ROM, virtio-blk, ext4, in an order they load in), which its /init loads first, as
# an installed system's initramfs would, before it mounts a root= disk and switches to it;
# and busybox itself, for the tests' root file systems.
#
# Output (reused when present and of this layout): roms/guests/{vmlinuz,initramfs.cpio.gz,
# initramfs-disk.cpio.gz,busybox,VERSIONS}.
# Usage: roms/fetch-debian-guest.sh [--force]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/guests"
# Bumped whenever what this script builds changes, so that an older build is redone.
layout=3
if [[ "${1:-}" != "--force" && -s "$out/vmlinuz" && -s "$out/initramfs.cpio.gz"
      && -s "$out/initramfs-disk.cpio.gz" && -s "$out/busybox" ]] \
      && grep -qx "layout=$layout" "$out/VERSIONS" 2>/dev/null; then
    echo "debian guest: reusing $out ($(tr '\n' ' ' < "$out/VERSIONS"))"
    exit 0
fi
for tool in apt-get apt-cache dpkg-deb python3; do
    command -v "$tool" >/dev/null || { echo "fetch-debian-guest: needs $tool (a Debian system)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1
}
pkg=$(kernel_pkg)
if [[ -z "$pkg" ]] || ! apt-get download "$pkg" busybox-static >/dev/null 2>&1; then
    echo "debian guest: refreshing package lists (apt-get update)"
    apt-get update -qq >/dev/null
    pkg=$(kernel_pkg)
    [[ -n "$pkg" ]] || { echo "fetch-debian-guest: cannot resolve linux-image-amd64" >&2; exit 1; }
    apt-get download "$pkg" busybox-static >/dev/null
fi

mkdir -p k b
dpkg-deb -x "$pkg"_*.deb k
dpkg-deb -x busybox-static_*.deb b
vmlinuz=$(ls k/boot/vmlinuz-* | head -n 1)
[[ -s b/bin/busybox ]] || { echo "fetch-debian-guest: busybox-static has no /bin/busybox" >&2; exit 1; }

mkdir -p "$out"
base=(dir dev node dev/console 5 1 node dev/null 1 3
    dir bin file bin/busybox b/bin/busybox 755 link bin/sh busybox
    dir proc dir sys dir tmp dir etc dir mnt
    file init "$here/initramfs/init" 755)
python3 "$here/initramfs/mkcpio.py" "$out/initramfs.cpio.gz.tmp" "${base[@]}"
tree=$(ls -d k/lib/modules/*/kernel | head -n 1)
modules=()
: > order
while read -r rel; do
    name=$(basename "$rel")
    modules+=(file "lib/modules/$name" "$tree/$rel" 644)
    echo "$name" >> order
done < <(python3 "$here/initramfs/modules.py" "$tree" \
    ata_piix sd_mod sr_mod virtio_pci virtio_blk crct10dif_generic crc64_rocksoft_generic \
    crc32c_generic ext4)
python3 "$here/initramfs/mkcpio.py" "$out/initramfs-disk.cpio.gz.tmp" "${base[@]}" \
    dir lib dir lib/modules "${modules[@]}" file lib/modules/order order 644
cp b/bin/busybox "$out/busybox.tmp"
mv "$out/busybox.tmp" "$out/busybox"
cp "$vmlinuz" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
mv "$out/initramfs-disk.cpio.gz.tmp" "$out/initramfs-disk.cpio.gz"
{
    echo "kernel=$pkg $(dpkg-deb -f "$pkg"_*.deb Version)"
    echo "busybox=$(dpkg-deb -f busybox-static_*.deb Version)"
    echo "layout=$layout"
} > "$out/VERSIONS"
echo "debian guest: $(tr '\n' ' ' < "$out/VERSIONS")-> $out"
