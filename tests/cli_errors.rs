//! Bad input from the user gets one line on stderr naming the problem and exit status 2,
//! never a panic. None of these need KVM: they fail before a CPU is created.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// Asserts a one-line error that contains every `needle`, and exit status 2.
fn fails_with(args: &[&str], needles: &[&str]) {
    let r = gantry(args, b"", T);
    assert!(!r.timed_out, "{args:?} hung");
    let lines = r.stderr_lines();
    assert_eq!(r.status, Some(2), "{args:?}: stderr {lines:?}");
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {lines:?}");
    assert!(lines[0].starts_with("gantry: "), "{args:?}: {lines:?}");
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: {:?} lacks {n:?}", lines[0]);
    }
    assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
    assert_eq!(r.stdout, "", "{args:?}");
}

fn bzimage_header(version: u16, xloadflags: u16) -> Vec<u8> {
    let mut k = vec![0u8; 0x1000];
    k[0x1F1] = 1; // setup_sects
    k[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    k[0x211] = 1; // loadflags: LOADED_HIGH
    k[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    k
}

#[test]
fn missing_empty_garbage_and_truncated_kernels() {
    let dir = scratch("kernels");
    fails_with(
        &["run", "--accel", "kvm", "--kernel", "/nonexistent/vmlinuz"],
        &["kernel /nonexistent/vmlinuz", "no such file"],
    );
    let d = dir.to_string_lossy().into_owned();
    fails_with(
        &["run", "--accel", "kvm", "--kernel", &d],
        &["kernel ", "is a directory"],
    );
    let empty = write_file(&dir, "empty", b"");
    fails_with(
        &["run", "--accel", "kvm", "--kernel", &empty],
        &[&format!("kernel {empty}: is empty")],
    );
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let g = write_file(&dir, "garbage", &garbage);
    fails_with(
        &["run", "--accel", "kvm", "--kernel", &g],
        &[&g, "is not a kernel Gantry can boot"],
    );
    // A bzImage header with nothing after the setup sectors.
    let mut cut = bzimage_header(0x020F, 1);
    cut.truncate(0x400);
    let c = write_file(&dir, "cut", &cut);
    fails_with(
        &["run", "--accel", "kvm", "--kernel", &c],
        &[&c, "is truncated"],
    );
    // Header cut inside the setup header itself.
    let short = write_file(&dir, "short", &bzimage_header(0x020F, 1)[..0x210]);
    fails_with(
        &["run", "--accel", "kvm", "--kernel", &short],
        &["is truncated", "setup header"],
    );
    let old = write_file(&dir, "old", &bzimage_header(0x0204, 1));
    fails_with(
        &["run", "--accel", "kvm", "--kernel", &old],
        &["boot protocol 2.04", "2.12"],
    );
    let no64 = write_file(&dir, "no64", &bzimage_header(0x020F, 0));
    fails_with(
        &["run", "--accel", "kvm", "--kernel", &no64],
        &["XLF_KERNEL_64"],
    );
    // ELF that is neither multiboot nor PVH.
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    let e = write_file(&dir, "elf", &elf);
    fails_with(&["run", "--accel", "kvm", "--kernel", &e], &[&e, "ELF"]);
}

#[test]
fn real_kernel_cut_short_and_too_little_memory() {
    let Some(vmlinuz) = debian_kernel() else {
        return;
    };
    let dir = scratch("realcut");
    let cut = write_file(&dir, "vmlinuz-cut", &vmlinuz[..vmlinuz.len() / 2]);
    fails_with(
        &["run", "--accel", "kvm", "--kernel", &cut],
        &[&cut, "is truncated", "syssize"],
    );
    let full = write_file(&dir, "vmlinuz", &vmlinuz);
    fails_with(
        &["run", "--accel", "kvm", "--mem", "8M", "--kernel", &full],
        &["does not fit", "--mem"],
    );
    let huge_initrd = write_file(&dir, "big-initrd", &vec![0u8; 40 << 20]);
    fails_with(
        &[
            "run",
            "--accel",
            "kvm",
            "--mem",
            "96M",
            "--kernel",
            &full,
            "--initrd",
            &huge_initrd,
        ],
        &[&format!("initrd {huge_initrd}"), "does not fit"],
    );
}

/// Debian's kernel, fetched by roms/fetch-debian-guest.sh. Missing: skip, unless running in
/// CI, where the test command fetches it first and its absence is a failure.
pub fn debian_kernel() -> Option<Vec<u8>> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/roms/guests/vmlinuz");
    match std::fs::read(p) {
        Ok(k) => Some(k),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("{p}: {e} (CI runs roms/fetch-debian-guest.sh first)")
        }
        Err(_) => {
            eprintln!("SKIP: {p} not fetched; run roms/fetch-debian-guest.sh");
            None
        }
    }
}

#[test]
fn bad_initrds_and_firmware() {
    let dir = scratch("initrd");
    let kernel = write_file(&dir, "k", &multiboot_kernel(|a| a.hlt()));
    fails_with(
        &[
            "run",
            "--accel",
            "kvm",
            "--kernel",
            &kernel,
            "--initrd",
            "/nonexistent/initrd",
        ],
        &["initrd /nonexistent/initrd", "no such file"],
    );
    let empty = write_file(&dir, "empty-initrd", b"");
    fails_with(
        &[
            "run", "--accel", "kvm", "--kernel", &kernel, "--initrd", &empty,
        ],
        &[&format!("initrd {empty}: is empty")],
    );
    fails_with(
        &["run", "--accel", "kvm", "--bios", "/nonexistent/bios.bin"],
        &["firmware /nonexistent/bios.bin", "no such file"],
    );
    let rom0 = write_file(&dir, "rom0", b"");
    fails_with(
        &["run", "--accel", "kvm", "--bios", &rom0],
        &[&format!("firmware {rom0}: is empty")],
    );
    let odd = write_file(&dir, "rom-odd", &[0x90; 1000]);
    fails_with(
        &["run", "--accel", "kvm", "--bios", &odd],
        &["size 1000 is not a multiple of 64 KiB"],
    );
    let huge = write_file(&dir, "rom-huge", &vec![0u8; 32 << 20]);
    fails_with(
        &["run", "--accel", "kvm", "--bios", &huge],
        &["larger than 16 MiB"],
    );
}

#[test]
fn bad_flags() {
    fails_with(&["run", "--mem", "abc"], &["--mem", "not a size"]);
    fails_with(&["run", "--mem", "12Q"], &["unknown size suffix"]);
    fails_with(&["run", "--mem", "1M"], &["too small"]);
    fails_with(&["run", "--mem", "4T"], &["more than 1 TiB"]);
    fails_with(&["run", "--mem", "99999999999999999999G"], &["not a size"]);
    fails_with(&["run", "--mem=-5M"], &["not a size"]);
    fails_with(&["run", "--mem", "4194305"], &["multiple of 4 KiB"]);
    fails_with(&["run", "--accel", "tcg"], &["tcg"]);
    fails_with(&["run", "--smp", "0"], &["--smp", "0"]);
    fails_with(&["run", "--smp", "65"], &["--smp", "65"]);
    fails_with(
        &["run", "--accel", "kvm", "--smp", "2"],
        &["--smp 2", "KVM"],
    );
    fails_with(
        &["run", "--accel", "jit", "--smp", "2", "--gdb", "1234"],
        &["--smp 2", "gdbstub"],
    );
    fails_with(
        &["run", "--serial", "pty"],
        &["pty", "stdio, file:PATH or none"],
    );
    fails_with(&["run", "--serial", "file:"], &["stdio, file:PATH or none"]);
    fails_with(&["run", "--debugcon", "0x10000"], &["not an I/O port"]);
    fails_with(&["run", "--frobnicate"], &["--frobnicate"]);
    fails_with(&["run", "--initrd", "x"], &["--kernel"]);
    fails_with(
        &["run", "--kernel", "k", "--bios", "b"],
        &["--bios", "--kernel"],
    );
    fails_with(&["fly"], &["fly"]);
    fails_with(
        &["run", "--serial", "file:/nonexistent/dir/log"],
        &["--serial file:/nonexistent/dir/log"],
    );
}

#[test]
fn bad_gdb_flags() {
    fails_with(
        &["run", "--gdb", "localhost:http"],
        &["PORT, :PORT or HOST:PORT"],
    );
    fails_with(&["run", "--gdb", "70000"], &["PORT, :PORT or HOST:PORT"]);
    fails_with(&["run", "--gdb-wait"], &["--gdb"]);
    fails_with(
        &["run", "--gdb", "203.0.113.1:1234"],
        &["--gdb 203.0.113.1:1234"],
    );
    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    fails_with(&["run", "--gdb", &port], &["--gdb 127.0.0.1:", "in use"]);
}

#[test]
fn help_and_version_succeed() {
    let r = gantry(&["--help"], b"", T);
    assert_eq!(r.status, Some(0));
    assert!(r.stdout.contains("run"));
    let r = gantry(&["run", "--help"], b"", T);
    assert_eq!(r.status, Some(0));
    for flag in [
        "--kernel",
        "--initrd",
        "--append",
        "--mem",
        "--bios",
        "--accel",
        "--serial",
        "--debugcon",
        "--no-reboot",
        "--stats",
    ] {
        assert!(r.stdout.contains(flag), "help lacks {flag}");
    }
    let r = gantry(&["--version"], b"", T);
    assert_eq!(r.status, Some(0));
    assert!(r.stdout.starts_with("gantry "));
}

/// Only regular files are read, and none larger than what they are for: a FIFO would block
/// for ever and `/dev/zero` would fill host memory.
#[test]
fn fifos_devices_and_oversized_files_are_refused() {
    let dir = scratch("special-files");
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: mkfifo on a NUL-terminated path of our own scratch directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo = fifo.display().to_string();
    let kernel = write_file(&dir, "kernel", &[0x90; 4096]);
    for special in [fifo.as_str(), "/dev/zero"] {
        fails_with(
            &["run", "--accel", "interp", "--kernel", special],
            &[&format!("kernel {special}: not a regular file")],
        );
        fails_with(
            &[
                "run", "--accel", "interp", "--kernel", &kernel, "--initrd", special,
            ],
            &[&format!("initrd {special}: not a regular file")],
        );
        fails_with(
            &["run", "--accel", "interp", "--bios", special],
            &[&format!("firmware {special}: not a regular file")],
        );
    }
    let big = write_file(&dir, "big", &vec![0u8; 3 << 20]);
    fails_with(
        &["run", "--accel", "interp", "--mem", "2M", "--kernel", &big],
        &[
            "kernel ",
            "3145728 bytes, larger than --mem (2097152 bytes)",
        ],
    );
    fails_with(
        &[
            "run", "--accel", "interp", "--mem", "2M", "--kernel", &kernel, "--initrd", &big,
        ],
        &["initrd ", "larger than --mem"],
    );
    let rom = write_file(&dir, "rom", &vec![0u8; 17 << 20]);
    fails_with(
        &["run", "--accel", "interp", "--bios", &rom],
        &["firmware ", "larger than 16 MiB"],
    );
    fails_with(&["run", "--cpu", "via"], &["--cpu", "via"]);
}

/// A serial sink that cannot be written says so, once, and the guest still runs to its end.
#[test]
fn a_serial_file_that_cannot_be_written_is_reported_once() {
    let r = gantry(
        &["run", "--accel", "interp", "--serial", "file:/dev/full"],
        b"",
        T,
    );
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    let said: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("serial output"))
        .collect();
    assert_eq!(said.len(), 1, "{}", r.stderr);
    assert!(
        said[0].starts_with("gantry: serial output: "),
        "{}",
        said[0]
    );
}

#[test]
fn help_is_a_subcommand_too() {
    let r = gantry(&["help"], b"", T);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("difftest"), "{}", r.stdout);
    let r = gantry(&["help", "run"], b"", T);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("--cpu"), "{}", r.stdout);
}
