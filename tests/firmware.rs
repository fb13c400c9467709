//! Firmware: Debian's SeaBIOS (`--bios`) on Gantry's board, as a user runs it: its banner
//! on the debug console, its screen on COM1 (fw_cfg's etc/sercon-port), booting a one-
//! sector MBR, and Debian's kernel from a syslinux disk image made here with Debian's
//! dosfstools, mtools and syslinux, all the way to power-off through the ACPI tables
//! SeaBIOS placed from fw_cfg's table-loader.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(5 * 60);

/// A boot sector that prints a line on COM1 and leaves through the debug-exit port with
/// 0x21 (status 67): cli; xor ax,ax; mov ds,ax; mov si,0x7C1C; mov dx,0x3F8; lodsb;
/// test al,al; jz +3; out dx,al; jmp -8; mov al,0x21; out 0xF4,al; hlt; jmp $.
fn boot_sector() -> Vec<u8> {
    let mut s = vec![
        0xFA, 0x31, 0xC0, 0x8E, 0xD8, 0xBE, 0x1C, 0x7C, 0xBA, 0xF8, 0x03, 0xAC, 0x84, 0xC0, 0x74,
        0x03, 0xEE, 0xEB, 0xF8, 0xB0, 0x21, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD, 0x00, 0x00,
    ];
    assert_eq!(s.len(), 0x1C);
    s.extend_from_slice(b"GANTRY-MBR: hello from the boot sector\r\n\0");
    s.resize(510, 0);
    s.extend_from_slice(&[0x55, 0xAA]);
    s
}

fn mbr_disk(dir: &Path) -> String {
    let mut disk = boot_sector();
    disk.resize(1 << 20, 0);
    write_file(dir, "mbr.img", &disk)
}

/// Both of Debian's SeaBIOS images, on both tiers of the emulated CPU and under KVM (where
/// the IDE driver's REP INSW arrives as one exit of many accesses): the banner and
/// "No Xen hypervisor found" on the debug console (port 0x402), "Booting from Hard
/// Disk..." on COM1, then the boot sector's own line and its exit status.
#[test]
fn seabios_boots_a_boot_sector() {
    let dir = scratch("seabios_boots_a_boot_sector");
    let disk = mbr_disk(&dir);
    for image in ["bios.bin", "bios-256k.bin"] {
        let Some(bios) = seabios("seabios_boots_a_boot_sector", image, &[]) else {
            return;
        };
        let kvm = kvm_available("seabios_boots_a_boot_sector");
        for accel in ["jit", "interp", "kvm"] {
            if accel == "kvm" && !kvm {
                continue;
            }
            let r = gantry(
                &[
                    "run",
                    "--accel",
                    accel,
                    "--bios",
                    &bios,
                    "--debugcon",
                    "0x402",
                    "--hda",
                    &disk,
                ],
                b"",
                T,
            );
            assert!(!r.timed_out, "{image} {accel}: {}", r.stdout);
            assert!(
                r.stderr.contains("SeaBIOS (version"),
                "{image} {accel}: {}",
                r.stderr
            );
            // Only the 256 KiB build has Xen support, and says it found none.
            if image == "bios-256k.bin" {
                assert!(
                    r.stderr.contains("No Xen hypervisor found"),
                    "{image} {accel}: {}",
                    r.stderr
                );
            }
            // (SeaBIOS's serial console writes its last characters lazily: the boot
            // sector takes over before the third dot.)
            for want in [
                "Booting from Hard Disk..",
                "GANTRY-MBR: hello from the boot sector",
            ] {
                assert!(r.stdout.contains(want), "{image} {accel}: {}", r.stdout);
            }
            assert_eq!(
                r.status,
                Some(0x21 << 1 | 1),
                "{image} {accel}: {}",
                r.stderr
            );
        }
    }
}

/// SeaBIOS's own virtio-blk driver finds the disk on PCI (the BAR it placed, the modern
/// interface) and boots from it.
#[test]
fn seabios_boots_from_a_virtio_disk() {
    let Some(bios) = seabios("seabios_boots_from_a_virtio_disk", "bios-256k.bin", &[]) else {
        return;
    };
    let dir = scratch("seabios_boots_from_a_virtio_disk");
    let disk = mbr_disk(&dir);
    let drive = format!("file={disk},if=virtio,format=raw");
    let r = gantry(
        &[
            "run",
            "--accel",
            "jit",
            "--bios",
            &bios,
            "--debugcon",
            "0x402",
            "--drive",
            &drive,
            "--stats",
        ],
        b"",
        T,
    );
    assert!(!r.timed_out, "{}", r.stdout);
    assert!(
        r.stderr.contains("using modern (1.0) virtio mode"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("GANTRY-MBR: hello from the boot sector"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("virtio-blk 0: "), "{}", r.stderr);
    assert_eq!(r.status, Some(0x21 << 1 | 1), "{}", r.stderr);
}

/// A `--boot` order Gantry cannot give the BIOS is refused in one line (what it gives,
/// the CMOS bytes SeaBIOS reads, is checked by the board's unit test).
#[test]
fn a_bad_boot_order_is_refused() {
    let r = gantry(
        &["run", "--bios", "/nonexistent.bin", "--boot", "cx"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(r.status, Some(2), "{}", r.stderr);
    assert_eq!(r.stderr_lines().len(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("'x' is not a boot device"),
        "{}",
        r.stderr
    );
}

fn run_tool(cmd: &mut Command) {
    let out = cmd.output().expect("run a Debian tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A disk as a user makes one for syslinux: syslinux's MBR, one bootable FAT16 partition
/// from 1 MiB holding the kernel, the initramfs and syslinux.cfg, with syslinux installed
/// in it.
fn syslinux_disk(dir: &Path, kernel: &str, initrd: &str, append: &str) -> String {
    const SIZE: u64 = 48 << 20;
    const START: u64 = 2048;
    let image = dir.join("disk.img");
    let mut mbr = vec![0u8; 512];
    // The partition entry: bootable, CHS left to LBA, type 6 (FAT16), LBA start, sectors.
    let sectors = (SIZE / 512 - START) as u32;
    let entry = [
        &[0x80, 0xFE, 0xFF, 0xFF, 0x06, 0xFE, 0xFF, 0xFF][..],
        &(START as u32).to_le_bytes(),
        &sectors.to_le_bytes(),
    ]
    .concat();
    mbr[446..462].copy_from_slice(&entry);
    mbr[510..].copy_from_slice(&[0x55, 0xAA]);
    let syslinux_mbr = std::fs::read("/usr/lib/syslinux/mbr/mbr.bin").expect("syslinux's mbr.bin");
    mbr[..syslinux_mbr.len().min(440)]
        .copy_from_slice(&syslinux_mbr[..syslinux_mbr.len().min(440)]);
    let mut disk = mbr;
    disk.resize(SIZE as usize, 0);
    std::fs::write(&image, &disk).expect("write the disk");
    let img = image.to_str().unwrap_or_default().to_string();
    run_tool(
        Command::new("mkfs.fat")
            .args([
                "--offset",
                &START.to_string(),
                "-h",
                &START.to_string(),
                "-F",
                "16",
            ])
            .arg(&img)
            .arg(((SIZE / 512 - START) / 2).to_string()),
    );
    let cfg = write_file(
        dir,
        "syslinux.cfg",
        format!(
            "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 1\nLABEL linux\n  KERNEL vmlinuz\n  \
             INITRD initrd.gz\n  APPEND {append}\n"
        )
        .as_bytes(),
    );
    let fat = format!("{img}@@1M");
    for (src, dst) in [
        (kernel, "::vmlinuz"),
        (initrd, "::initrd.gz"),
        (&cfg, "::syslinux.cfg"),
    ] {
        run_tool(Command::new("mcopy").args(["-i", &fat, src, dst]));
    }
    run_tool(Command::new("syslinux").args([
        "--offset",
        &(START * 512).to_string(),
        "--install",
        &img,
    ]));
    img
}

/// What the "done when" names: `gantry run --bios bios-256k.bin --drive
/// file=disk.img,format=raw` boots a syslinux disk; Debian's kernel prints the guest's
/// marker line and powers off through ACPI (exit status 0), its tables from fw_cfg.
#[test]
fn seabios_boots_debian_from_a_syslinux_disk() {
    let test = "seabios_boots_debian_from_a_syslinux_disk";
    let tools = [
        "mkfs.fat",
        "mcopy",
        "syslinux",
        "/usr/lib/syslinux/mbr/mbr.bin",
    ];
    let Some(bios) = seabios(test, "bios-256k.bin", &tools) else {
        return;
    };
    let Some((kernel, initrd)) = debian_guest(test) else {
        return;
    };
    let dir = scratch(test);
    let disk = syslinux_disk(
        &dir,
        &kernel,
        &initrd,
        "console=ttyS0 gantry_cmd=\"echo GANTRY-SYSLINUX-MARKER\"",
    );
    let drive = format!("file={disk},format=raw");
    let r = gantry(
        &[
            "run", "--accel", "jit", "--bios", &bios, "--drive", &drive, "--stats",
        ],
        b"",
        T,
    );
    assert!(!r.timed_out, "{}", r.stdout);
    for want in [
        "SYSLINUX 6.04",
        "Loading vmlinuz",
        "ACPI: RSDP",
        "GANTRY-SYSLINUX-MARKER",
        "GANTRY-GUEST: powering off",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?}: {}", r.stdout);
    }
    // (On a busy host the JIT's first try can still read the partition's boot sector
    // wrong, "Missing operating system", when its compiles run in the background; SeaBIOS
    // then boots again a minute later, within this test's time. A known bug, not yet
    // found: the inline-compile case was INS reading its port twice.)
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("boot: firmware"), "{}", r.stderr);
}
