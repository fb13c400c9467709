//! Disks: Debian's kernel with its own IDE and ext4 drivers (loaded from the disk
//! initramfs, roms/fetch-debian-guest.sh) mounting an ext4 image built here with
//! Debian's mke2fs, on the JIT; and the drive options' errors and locks.

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(10 * 60);

/// Waits for /dev/sda (libata probes the disk after its module loads), then `then`.
fn with_disk(then: &str) -> String {
    format!(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do [ -b /dev/sda ] && break; \
         sleep 0.2; done; {then}"
    )
}

/// An ext4 image of `size` with a marker file and a 1 MiB blob; returns the blob's md5.
fn make_image(dir: &Path, image: &Path, size: &str) -> String {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("image root");
    std::fs::write(root.join("marker"), "gantry disk marker\n").expect("marker");
    let blob: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("blob"), &blob).expect("blob");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
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

fn boot_with_disk(kernel: &str, initrd: &str, drive: &[&str], command: &str) -> Run {
    let append = format!("console=ttyS0 gantry_cmd=\"{}\"", with_disk(command));
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

/// The root-on-disk round trip on the primary IDE master: the guest mounts the image,
/// checks the blob's md5, writes a file and syncs; the host then finds the file in the
/// image (debugfs), and a second boot reads it back. `--stats` names the drive. A third
/// boot with `--snapshot` writes and leaves the image unchanged.
#[test]
fn debian_mounts_an_ext4_image_on_ide_and_writes_to_it() {
    let test = "debian_mounts_an_ext4_image_on_ide_and_writes_to_it";
    let Some((kernel, _)) = debian_guest(test) else {
        return;
    };
    let initrd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/roms/guests/initramfs-disk.cpio.gz"
    );
    let dir = scratch(test);
    let image = dir.join("disk.img");
    let md5 = make_image(&dir, &image, "16M");
    let image_arg = format!("file={},if=ide,format=raw", image.display());

    let r = boot_with_disk(
        &kernel,
        initrd,
        &["--drive", &image_arg],
        "mount /dev/sda /mnt && md5sum /mnt/blob && cat /mnt/marker && \
         echo written-by-the-guest > /mnt/new && sync && umount /mnt",
    );
    let out = r.stdout.replace("\r\n", "\n");
    for want in [
        "ata1.00: ATA-7: GANTRY HARDDISK",
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

    // The host sees what the guest wrote.
    let cat = Command::new("debugfs")
        .args(["-R", "cat /new"])
        .arg(&image)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "written-by-the-guest\n"
    );

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

/// Bad drives are one-line errors with exit status 2: a missing file, a directory, a file
/// shorter than a sector, a qcow2 image (not read yet), options Gantry does not know.
#[test]
fn bad_drives_are_refused_in_one_line() {
    let dir = scratch("bad_drives");
    let tiny = write_file(&dir, "tiny.img", &[0u8; 100]);
    let mut qcow2 = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    qcow2.resize(4096, 0);
    let qcow2 = write_file(&dir, "q.qcow2", &qcow2);
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
        (vec!["--hda", &qcow2], vec!["qcow2", "qemu-img convert"]),
        (vec!["--drive", "file=x,if=scsi"], vec!["if=scsi"]),
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
