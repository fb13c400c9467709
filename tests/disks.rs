//! Disks: Debian's kernel with its own IDE, virtio-blk and ext4 drivers (loaded from the
//! disk initramfs, roms/fetch-debian-guest.sh) mounting ext4 images built here with
//! Debian's mke2fs, on the JIT, and booting with its root file system on one; and the
//! drive options' errors and locks.

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(10 * 60);

/// Debian's kernel, the disk initramfs beside it, and a scratch directory (None: the
/// guest is not fetched, which `debian_guest` says).
fn disk_guest(test: &str) -> Option<(String, &'static str, Scratch)> {
    let (kernel, _) = debian_guest(test)?;
    let initrd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/roms/guests/initramfs-disk.cpio.gz"
    );
    Some((kernel, initrd, scratch(test)))
}

/// Waits for `dev` (a driver probes its disk after the module loads), then `then`.
fn with_disk(dev: &str, then: &str) -> String {
    format!(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do [ -b {dev} ] && break; \
         sleep 0.2; done; {then}"
    )
}

/// An ext4 image of `size` with a marker file and a 1 MiB blob; returns the blob's md5.
fn make_image(dir: &Path, image: &Path, size: &str) -> String {
    make_image_with(dir, image, size, &[])
}

/// [`make_image`] with more of mke2fs's options.
fn make_image_with(dir: &Path, image: &Path, size: &str, options: &[&str]) -> String {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("image root");
    std::fs::write(root.join("marker"), "gantry disk marker\n").expect("marker");
    let blob: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("blob"), &blob).expect("blob");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .args(options)
        .arg("-d")
        .arg(&root)
        .arg(image)
        .arg(size)
        .output()
        .expect("mke2fs (Debian's e2fsprogs) is installed");
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md5 = Command::new("md5sum")
        .arg(root.join("blob"))
        .output()
        .expect("md5sum");
    String::from_utf8_lossy(&md5.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A file's contents read out of an ext4 image by the host (debugfs, e2fsprogs).
fn debugfs_cat(image: &Path, path: &str) -> String {
    let cat = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&cat.stdout).into_owned()
}

fn boot_with_disk(kernel: &str, initrd: &str, drive: &[&str], command: &str) -> Run {
    boot_with(kernel, initrd, drive, "/dev/sda", "", command)
}

/// Boots with `drive`'s options and `extra` on the kernel command line, runs `command`
/// once `dev` is there, and expects a power-off.
fn boot_with(
    kernel: &str,
    initrd: &str,
    drive: &[&str],
    dev: &str,
    extra: &str,
    command: &str,
) -> Run {
    let append = format!(
        "console=ttyS0 {extra} gantry_cmd=\"{}\"",
        with_disk(dev, command)
    );
    let mut args = vec![
        "run", "--accel", "jit", "--kernel", kernel, "--initrd", initrd, "--append", &append,
        "--stats",
    ];
    args.extend_from_slice(drive);
    let r = gantry(&args, b"", T);
    assert!(!r.timed_out, "no power-off: {}", r.stdout);
    assert_eq!(r.status, Some(0), "stderr: {}", r.stderr);
    r
}

/// The root-on-disk round trip on the primary IDE master (by bus-master DMA): the guest
/// mounts the image, checks the blob's md5, writes a file and syncs; the host then finds
/// the file in the image (debugfs), and a second boot reads it back. `--stats` names the
/// drive. A third boot with `--snapshot` writes and leaves the image unchanged. The empty
/// CD-ROM drive is found on the secondary master and has no medium.
#[test]
fn debian_mounts_an_ext4_image_on_ide_and_writes_to_it() {
    let Some((kernel, initrd, dir)) =
        disk_guest("debian_mounts_an_ext4_image_on_ide_and_writes_to_it")
    else {
        return;
    };
    let image = dir.join("disk.img");
    let md5 = make_image(&dir, &image, "16M");
    let image_arg = format!("file={},if=ide,format=raw", image.display());

    let r = boot_with_disk(
        &kernel,
        initrd,
        &["--drive", &image_arg],
        "dd if=/dev/sr0 of=/dev/null bs=2048 count=1; \
         mount /dev/sda /mnt && md5sum /mnt/blob && cat /mnt/marker && \
         echo written-by-the-guest > /mnt/new && sync && umount /mnt",
    );
    let out = r.stdout.replace("\r\n", "\n");
    for want in [
        // The empty CD-ROM drive on the secondary master, as on QEMU's PC.
        "ata2.00: ATAPI: GANTRY DVD-ROM",
        "CD-ROM            GANTRY   DVD-ROM",
        "can't open '/dev/sr0': No medium found",
        "ata1: PATA max MWDMA2 cmd 0x1f0 ctl 0x3f6 bmdma",
        "ata1.00: ATA-7: GANTRY HARDDISK",
        "max MWDMA2",
        "[sda] 32768 512-byte logical blocks",
        &format!("{md5}  /mnt/blob"),
        "gantry disk marker",
        "GANTRY-GUEST: command exit status 0",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    let line = format!(
        "drive {}: raw IDE position 0, 16777216 bytes",
        image.display()
    );
    assert!(r.stderr.contains(&line), "{}", r.stderr);
    // ata_piix moved the data by bus-master DMA.
    let ide = r
        .stderr
        .lines()
        .find(|l| l.starts_with("IDE primary:"))
        .unwrap_or_default();
    let transfers: u64 = ide
        .split(", ")
        .find_map(|f| f.strip_suffix(" bus-master transfers (0 failed)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(transfers > 10, "{ide}");

    // The host sees what the guest wrote.
    assert_eq!(debugfs_cat(&image, "/new"), "written-by-the-guest\n");

    // And a second boot, through --hda.
    let r = boot_with_disk(
        &kernel,
        initrd,
        &["--hda", image.to_str().unwrap_or_default()],
        "mount /dev/sda /mnt && cat /mnt/new",
    );
    assert!(r.stdout.contains("written-by-the-guest"), "{}", r.stdout);

    // With --snapshot the guest's writes are its own: it reads them back, the image is
    // left as it was.
    let before = std::fs::read(&image).expect("read the image");
    let r = boot_with_disk(
        &kernel,
        initrd,
        &["--hda", image.to_str().unwrap_or_default(), "--snapshot"],
        "mount /dev/sda /mnt && echo in-the-overlay > /mnt/snap && sync && \
         cat /mnt/snap && umount /mnt",
    );
    assert!(r.stdout.contains("in-the-overlay"), "{}", r.stdout);
    assert!(
        r.stderr.contains("--snapshot: writes dropped"),
        "{}",
        r.stderr
    );
    assert!(
        std::fs::read(&image).expect("read the image") == before,
        "--snapshot changed the image"
    );
}

/// A qcow2 version 3 header (64 KiB clusters, 16 MiB, one L1 entry at `l1`, the refcount
/// table at 0x10000) with an optional backing file name, in a file of 0x40000 bytes.
fn qcow2_header(l1: u64, backing: Option<&str>) -> Vec<u8> {
    let mut h = vec![0u8; 0x40000];
    h[0..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    if let Some(b) = backing {
        h[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
        h[0x200..0x200 + b.len()].copy_from_slice(b.as_bytes());
    }
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&(16u64 << 20).to_be_bytes());
    h[36..40].copy_from_slice(&1u32.to_be_bytes());
    h[40..48].copy_from_slice(&l1.to_be_bytes());
    h[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount order: 16-bit
    h[100..104].copy_from_slice(&104u32.to_be_bytes()); // header length
    h
}

/// Bad drives are one-line errors with exit status 2: a missing file, a directory, a file
/// shorter than a sector, a qcow2 image whose L1 table lies past its end, one whose backing
/// file is missing, a raw file called qcow2, options Gantry does not know.
#[test]
fn bad_drives_are_refused_in_one_line() {
    let dir = scratch("bad_drives");
    let tiny = write_file(&dir, "tiny.img", &[0u8; 100]);
    let qcow2 = write_file(&dir, "q.qcow2", &qcow2_header(0x7FFF_0000, None));
    let backed = write_file(
        &dir,
        "backed.qcow2",
        &qcow2_header(0x30000, Some("/nonexistent/base.img")),
    );
    let tiny_raw = write_file(&dir, "raw.img", &[0u8; 4096]);
    let dirpath = dir.to_str().unwrap_or_default().to_string();
    for (args, needles) in [
        (
            vec!["--hda", "/nonexistent/disk.img"],
            vec!["/nonexistent/disk.img", "No such file"],
        ),
        (vec!["--hda", &dirpath], vec!["Is a directory"]),
        (
            vec!["--hda", &tiny],
            vec!["smaller than one 512-byte sector"],
        ),
        (
            vec!["--hda", &qcow2],
            vec!["qcow2", "L1 table", "past the end"],
        ),
        (
            vec!["--hda", &backed],
            vec!["qcow2", "/nonexistent/base.img"],
        ),
        (
            vec!["--drive", &format!("file={tiny_raw},format=qcow2")],
            vec!["not a qcow2 image"],
        ),
        (vec!["--drive", "file=x,if=scsi"], vec!["if=scsi"]),
        (
            vec!["--drive", "file=x,if=virtio,index=8"],
            vec!["index=8", "if=virtio"],
        ),
        (vec!["--drive", "if=ide"], vec!["file=PATH"]),
    ] {
        let mut full = vec!["run", "--accel", "interp"];
        full.extend_from_slice(&args);
        let r = gantry(&full, b"", Duration::from_secs(30));
        let lines = r.stderr_lines();
        assert_eq!(r.status, Some(2), "{args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        for n in needles {
            assert!(lines[0].contains(n), "{args:?}: {lines:?} lacks {n:?}");
        }
    }
}

/// An image one run writes cannot be opened by another (as QEMU locks it): the second
/// run stops with a one-line error while the first still runs.
#[test]
fn an_image_in_use_is_locked() {
    let dir = scratch("locked");
    let image = write_file(&dir, "disk.img", &vec![0u8; 1 << 20]);
    // A kernel that spins, holding the image.
    let spin = write_file(
        &dir,
        "spin.bin",
        &multiboot_kernel(|a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.jmp(l)
        }),
    );
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "run", "--accel", "interp", "--serial", "none", "--kernel", &spin, "--hda", &image,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start gantry");
    // Until the first holds the lock (the test asks for it as a third party would).
    let probe = std::fs::File::open(&image).expect("open the image");
    let mut held = false;
    for _ in 0..200 {
        // SAFETY: flock on a descriptor this test owns; a lock it gets is dropped at once.
        let r = unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if r != 0 {
            held = true;
            break;
        }
        // SAFETY: as above.
        unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_UN) };
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = gantry(
        &[
            "run", "--accel", "interp", "--kernel", &spin, "--hda", &image,
        ],
        b"",
        Duration::from_secs(30),
    );
    let _ = first.kill();
    let _ = first.wait();
    assert!(held, "the first run never locked the image");
    assert_eq!(r.status, Some(2), "{}", r.stderr);
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("in use by another process"), "{lines:?}");
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (Debian's qemu-utils) is installed")
}

/// qcow2 through imago: an image converted with qemu-img is read and written by the guest
/// and passes `qemu-img check` after it; one converted with compression is read; an
/// overlay made by `qemu-img create -b` reads its base's data and writes only into itself;
/// a truncated image is refused at start.
#[test]
fn debian_uses_qcow2_images_and_their_backing_files() {
    let Some((kernel, initrd, dir)) =
        disk_guest("debian_uses_qcow2_images_and_their_backing_files")
    else {
        return;
    };
    let raw = dir.join("base.img");
    let md5 = make_image(&dir, &raw, "16M");
    let (raw_s, qcow2) = (
        raw.to_str().unwrap_or_default(),
        dir.join("disk.qcow2")
            .to_str()
            .unwrap_or_default()
            .to_string(),
    );
    let out = qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw_s, &qcow2]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let r = boot_with_disk(
        &kernel,
        initrd,
        &["--drive", &format!("file={qcow2},if=ide")],
        "mount /dev/sda /mnt && md5sum /mnt/blob && \
         dd if=/dev/zero of=/mnt/grown bs=1k count=2048 2>/dev/null && \
         echo written-to-qcow2 > /mnt/new && sync && umount /mnt",
    );
    assert!(
        r.stdout.contains(&format!("{md5}  /mnt/blob")),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("qcow2 IDE position 0"), "{}", r.stderr);
    let check = qemu_img(&["check", &qcow2]);
    assert!(
        check.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let back = dir.join("back.img");
    let back_s = back.to_str().unwrap_or_default();
    let out = qemu_img(&["convert", "-O", "raw", &qcow2, back_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(debugfs_cat(Path::new(back_s), "/new"), "written-to-qcow2\n");

    // Compressed clusters (qemu-img convert -c) are read.
    let compressed = dir.join("compressed.qcow2");
    let compressed_s = compressed.to_str().unwrap_or_default();
    let out = qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw_s,
        compressed_s,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = qemu_img(&["check", compressed_s]);
    let report = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        report.contains("compressed clusters") && !report.contains(" 0.00% compressed"),
        "no compressed cluster to read: {report}"
    );
    let r = boot_with(
        &kernel,
        initrd,
        &[
            "--drive",
            &format!("file={compressed_s},if=virtio,readonly=on"),
        ],
        "/dev/vda",
        "",
        "mount -o ro /dev/vda /mnt && md5sum /mnt/blob && umount /mnt",
    );
    assert!(
        r.stdout.contains(&format!("{md5}  /mnt/blob")),
        "{}",
        r.stdout
    );

    // An overlay on the raw base: the base is only read.
    let overlay = dir.join("overlay.qcow2");
    let overlay_s = overlay.to_str().unwrap_or_default();
    let out = qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", raw_s, "-F", "raw", overlay_s,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base_before = std::fs::read(&raw).expect("read the base");
    let r = boot_with_disk(
        &kernel,
        initrd,
        &["--hda", overlay_s],
        "mount /dev/sda /mnt && md5sum /mnt/blob && echo in-the-overlay > /mnt/ov && \
         sync && umount /mnt",
    );
    assert!(
        r.stdout.contains(&format!("{md5}  /mnt/blob")),
        "{}",
        r.stdout
    );
    assert!(
        std::fs::read(&raw).expect("read the base") == base_before,
        "the overlay's writes reached the base"
    );
    let check = qemu_img(&["check", overlay_s]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // The converted image cut short: refused in one line.
    let bytes = std::fs::read(&qcow2).expect("read the image");
    let cut = write_file(&dir, "cut.qcow2", &bytes[..bytes.len() / 2]);
    let r = gantry(
        &["run", "--accel", "interp", "--hda", &cut],
        b"",
        Duration::from_secs(30),
    );
    let lines = r.stderr_lines();
    assert_eq!(r.status, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("truncated"), "{lines:?}");
}

/// The space a file takes on the host's disk.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat the image").blocks() * 512
}

/// virtio-blk over PCI, as Linux's virtio_pci and virtio_blk drive it: a raw image is
/// mounted, read (the blob's md5) and written, through MSI-X; 4 MiB written, deleted and
/// trimmed (`fstrim`) come back to the host as a hole (discard); a second, read-only disk
/// is read-only to the guest; a second boot with `pci=nomsi` takes the interrupts through
/// INTx and the I/O APIC and reads the write back; `--snapshot` leaves the image alone.
#[test]
fn debian_uses_virtio_blk_disks() {
    let Some((kernel, initrd, dir)) = disk_guest("debian_uses_virtio_blk_disks") else {
        return;
    };
    let image = dir.join("disk.img");
    // No journal: its first writes would take host space of their own while the test
    // measures what the trim gave back.
    let md5 = make_image_with(&dir, &image, "32M", &["-O", "^has_journal"]);
    let second = dir.join("second.img");
    make_image(&dir, &second, "8M");
    let drive = format!("file={},if=virtio,format=raw", image.display());
    let ro = format!("file={},if=virtio,readonly=on", second.display());
    let before = allocated(&image);

    let r = boot_with(
        &kernel,
        initrd,
        &["--drive", &drive, "--drive", &ro],
        "/dev/vdb",
        "",
        "grep virtio /proc/interrupts; echo ro=$(cat /sys/block/vda/ro)$(cat /sys/block/vdb/ro); \
         mount /dev/vda /mnt && md5sum /mnt/blob && cat /mnt/marker && \
         dd if=/dev/urandom of=/mnt/big bs=1M count=4 2>/dev/null && sync && rm /mnt/big && \
         fstrim -v /mnt && echo written-over-virtio > /mnt/new && sync && umount /mnt",
    );
    let out = r.stdout.replace("\r\n", "\n");
    for want in [
        "virtio_blk virtio0: [vda] 65536 512-byte logical blocks",
        "virtio_blk virtio1: [vdb] 16384 512-byte logical blocks",
        "PCI-MSI",
        "virtio0-req.0",
        "ro=01",
        &format!("{md5}  /mnt/blob"),
        "gantry disk marker",
        "bytes trimmed",
        "GANTRY-GUEST: command exit status 0",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    let line = format!(
        "drive {}: raw virtio position 0, 33554432 bytes",
        image.display()
    );
    assert!(r.stderr.contains(&line), "{}", r.stderr);
    assert!(r.stderr.contains("virtio-blk 0:"), "{}", r.stderr);
    let after = allocated(&image);
    assert!(
        after < before + (1 << 20),
        "the trimmed 4 MiB still take space: {before} bytes before, {after} after"
    );
    assert_eq!(debugfs_cat(&image, "/new"), "written-over-virtio\n");

    // INTx: the PIIX3 routes the slot's INTA# to IRQ 10 or 11, which the I/O APIC takes
    // level-triggered as the DSDT's _PRT says.
    let r = boot_with(
        &kernel,
        initrd,
        &["--drive", &drive],
        "/dev/vda",
        "pci=nomsi",
        "grep virtio /proc/interrupts; mount /dev/vda /mnt && cat /mnt/new && umount /mnt",
    );
    assert!(r.stdout.contains("written-over-virtio"), "{}", r.stdout);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains("IO-APIC") && l.contains("fasteoi") && l.contains("virtio0")),
        "{}",
        r.stdout
    );

    let before = std::fs::read(&image).expect("read the image");
    let r = boot_with(
        &kernel,
        initrd,
        &["--drive", &drive, "--snapshot"],
        "/dev/vda",
        "",
        "mount /dev/vda /mnt && echo in-the-overlay > /mnt/snap && sync && \
         cat /mnt/snap && umount /mnt",
    );
    assert!(r.stdout.contains("in-the-overlay"), "{}", r.stdout);
    assert!(
        std::fs::read(&image).expect("read the image") == before,
        "--snapshot changed the image"
    );
}

/// What the "done when" names: Debian's kernel under `--accel jit` with
/// `root=/dev/vda` on a qcow2 image. The disk initramfs loads the drivers, mounts the
/// disk and switches to it, as an installed system's does; the disk's own /sbin/init (a
/// script around Debian's busybox) writes a file and powers off. `qemu-img check` passes
/// after, and the host reads the file back.
#[test]
fn debian_boots_with_its_root_on_a_qcow2_virtio_disk() {
    let Some((kernel, initrd, dir)) =
        disk_guest("debian_boots_with_its_root_on_a_qcow2_virtio_disk")
    else {
        return;
    };
    let busybox = concat!(env!("CARGO_MANIFEST_DIR"), "/roms/guests/busybox");
    let root = dir.join("rootfs");
    for d in ["bin", "sbin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("root dirs");
    }
    std::fs::copy(busybox, root.join("bin/busybox")).expect("busybox from the fetched guest");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("sh link");
    let init = root.join("sbin/init");
    std::fs::write(
        &init,
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox --install -s /bin\n\
         echo \"ROOTFS: / is $(awk '$2==\"/\"{print $1}' /proc/mounts | tail -n 1)\"\n\
         echo root-was-written > /from-init\nsync\npoweroff -f\n",
    )
    .expect("init");
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod init");
    let raw = dir.join("root.raw");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&raw)
        .arg("32M")
        .output()
        .expect("mke2fs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let qcow2 = dir.join("root.qcow2");
    let (raw_s, qcow2_s) = (
        raw.to_str().unwrap_or_default(),
        qcow2.to_str().unwrap_or_default(),
    );
    let out = qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw_s, qcow2_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let drive = format!("file={qcow2_s},if=virtio");
    let r = gantry(
        &[
            "run",
            "--accel",
            "jit",
            "--kernel",
            &kernel,
            "--initrd",
            initrd,
            "--append",
            "console=ttyS0 root=/dev/vda rw",
            "--drive",
            &drive,
        ],
        b"",
        T,
    );
    assert!(!r.timed_out, "no power-off: {}", r.stdout);
    assert_eq!(r.status, Some(0), "stderr: {}", r.stderr);
    for want in [
        "GANTRY-GUEST: root /dev/vda mounted, switching to it",
        "ROOTFS: / is /dev/vda",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?} in {}", r.stdout);
    }
    let check = qemu_img(&["check", qcow2_s]);
    assert!(
        check.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let back = dir.join("back.raw");
    let back_s = back.to_str().unwrap_or_default();
    let out = qemu_img(&["convert", "-O", "raw", qcow2_s, back_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        debugfs_cat(Path::new(back_s), "/from-init"),
        "root-was-written\n"
    );
}

/// However a run ends while the guest writes, a qcow2 image Gantry wrote stays
/// consistent: after SIGTERM, SIGINT and `Ctrl-A x` Gantry flushes and closes it, and
/// `qemu-img check` finds nothing at all; after SIGKILL (no flush) it may find leaked
/// clusters, never corruption. The guest writes and fsyncs files in a loop on a virtio
/// disk until the run is ended.
#[test]
fn qcow2_images_stay_consistent_however_the_run_ends() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let Some((kernel, initrd, dir)) =
        disk_guest("qcow2_images_stay_consistent_however_the_run_ends")
    else {
        return;
    };
    let raw = dir.join("base.img");
    make_image(&dir, &raw, "64M");
    let command = with_disk(
        "/dev/vda",
        "mount /dev/vda /mnt && echo GANTRY-WRITING && i=0; \
         while true; do dd if=/dev/urandom of=/mnt/f$((i % 8)) bs=64k count=32 conv=fsync \
         2>/dev/null; i=$((i+1)); done",
    );
    let append = format!("console=ttyS0 gantry_cmd=\"{command}\"");
    for (ending, signal) in [
        ("SIGTERM", Some(libc::SIGTERM)),
        ("SIGINT", Some(libc::SIGINT)),
        ("Ctrl-A x", None),
        ("SIGKILL", Some(libc::SIGKILL)),
    ] {
        let qcow2 = dir.join(format!("disk-{}.qcow2", ending.replace(' ', "")));
        let qcow2_s = qcow2.to_str().unwrap_or_default();
        let out = qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap_or_default(),
            qcow2_s,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let drive = format!("file={qcow2_s},if=virtio");
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args([
                "run", "--accel", "jit", "--kernel", &kernel, "--initrd", initrd, "--append",
                &append, "--drive", &drive,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gantry");
        // Read the console until the guest writes, then a while longer.
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut seen = String::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if seen.contains("GANTRY-WRITING") {
                    let _ = tx.send(seen.clone());
                    seen.clear();
                }
            }
        });
        let writing = rx.recv_timeout(T);
        assert!(writing.is_ok(), "{ending}: the guest never started writing");
        std::thread::sleep(Duration::from_secs(3));
        match signal {
            // SAFETY: kill on the child this test spawned and has not waited for.
            Some(sig) => assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0),
            None => {
                let stdin = child.stdin.as_mut().expect("stdin");
                stdin.write_all(b"\x01x").expect("Ctrl-A x");
                stdin.flush().expect("flush stdin");
            }
        }
        let status = child.wait().expect("wait for gantry");
        let _ = reader.join();
        use std::os::unix::process::ExitStatusExt;
        match signal {
            Some(libc::SIGKILL) => assert_eq!(status.signal(), Some(libc::SIGKILL)),
            Some(sig) => assert_eq!(status.code(), Some(128 + sig), "{ending}"),
            None => assert_eq!(status.code(), Some(0), "{ending}"),
        }
        let check = qemu_img(&["check", qcow2_s]);
        let report = String::from_utf8_lossy(&check.stdout).to_string();
        // qemu-img check: 0 clean, 2 corruption, 3 leaked clusters only.
        if signal == Some(libc::SIGKILL) {
            assert!(
                matches!(check.status.code(), Some(0 | 3)),
                "{ending}: {report}"
            );
        } else {
            assert_eq!(check.status.code(), Some(0), "{ending}: {report}");
        }
        assert!(!report.contains("ERROR"), "{ending}: {report}");
    }
}
