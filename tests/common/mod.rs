//! Helpers for whole-program tests: run the `gantry` binary with a deadline, decide whether
//! KVM tests can run here, and build small multiboot test kernels with iced-x86's code
//! assembler.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Run {
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }
}

/// Runs `gantry ARGS` with `stdin` as its input; kills it after `timeout`.
pub fn gantry(args: &[&str], stdin: &[u8], timeout: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gantry");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out_t = read_all(child.stdout.take().expect("stdout"));
    let err_t = read_all(child.stderr.take().expect("stderr"));
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            timed_out = true;
            break child.wait().ok().and_then(|s| s.code());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Run {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        timed_out,
    }
}

/// Reads a child's pipe to its end on a thread (so that neither pipe fills and blocks it).
pub fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// True if KVM tests should run. Skips (with a line saying why) only where the host has
/// no /dev/kvm at all; a /dev/kvm that exists but cannot make a VM is a failure, so that
/// CI never silently skips on a machine that has KVM.
pub fn kvm_available(test: &str) -> bool {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP {test}: this host has no /dev/kvm");
        return false;
    }
    if let Err(why) = gantry_machine::vm::kvm_usable() {
        panic!("{test}: /dev/kvm exists but is not usable: {why}");
    }
    true
}

/// A scratch directory for one test's files, removed with them when the test is done
/// with it (the suite had left a directory in the temporary directory for every test
/// that wrote files, run after run).
pub fn scratch(test: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("gantry-test-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const MB_LOAD: u32 = 0x10_0000;
const MB_HEADER_LEN: u32 = 32;
pub const COM1: u32 = 0x3F8;

/// A multiboot kernel with the address fields (flag 16): a 32-byte header at 1 MiB, code
/// right after it. `body` emits 32-bit code that runs with EAX/EBX as multiboot left them.
pub fn multiboot_kernel(body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    multiboot_kernel_at(MB_LOAD, body)
}

/// [`multiboot_kernel`] linked at `load` instead of 1 MiB.
pub fn multiboot_kernel_at(
    load: u32,
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    let flags: u32 = 1 << 1 | 1 << 16;
    let magic: u32 = 0x1BAD_B002;
    let entry = load + MB_HEADER_LEN;
    let mut img = Vec::new();
    for v in [
        magic,
        flags,
        0u32.wrapping_sub(magic.wrapping_add(flags)),
        load, // header_addr
        load, // load_addr
        0,    // load_end_addr: the whole file
        0,    // bss_end_addr: none
        entry,
    ] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    let mut a = CodeAssembler::new(32).expect("assembler");
    body(&mut a).expect("assemble test kernel");
    img.extend(a.assemble(entry as u64).expect("assemble test kernel"));
    img
}

/// Writes `text` to COM1 byte by byte (Gantry's UART transmits at once).
pub fn print(a: &mut CodeAssembler, text: &str) -> Result<(), IcedError> {
    a.mov(dx, COM1)?;
    for b in text.bytes() {
        a.mov(al, b as u32)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Prints the NUL-terminated string at ESI. Clobbers EAX, EDX, ESI.
pub fn print_esi(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.mov(dx, COM1)?;
    a.set_label(&mut next)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(done)?;
    a.out(dx, al)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    a.nop()
}

/// Ends the run through the isa-debug-exit port: exit status (code << 1) | 1.
pub fn debug_exit(a: &mut CodeAssembler, code: u32) -> Result<(), IcedError> {
    a.mov(dx, 0xF4)?;
    a.mov(eax, code)?;
    a.out(dx, eax)?;
    a.cli()?;
    a.hlt()
}

/// Assembles a 32-bit test kernel's source (GNU as) and links it at 1 MiB with `_start` as
/// its entry; returns the ELF (with symbols), beside the source.
pub fn link_kernel(src: &Path) -> PathBuf {
    let obj = src.with_extension("o");
    let elf = src.with_extension("elf");
    let ok = |c: &mut Command| {
        let out = c
            .output()
            .expect("binutils are installed (tests/run.sh installs them)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("as").arg("--32").arg("-o").arg(&obj).arg(src));
    ok(Command::new("ld")
        .args([
            "-m",
            "elf_i386",
            "-Ttext=0x100000",
            "-e",
            "_start",
            "--build-id=none",
            "-o",
        ])
        .arg(&elf)
        .arg(&obj));
    elf
}

pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write test file");
    p.to_string_lossy().into_owned()
}

/// Debian's SeaBIOS (`bios.bin` or `bios-256k.bin`) and the Debian tools a firmware test
/// names, if installed. Missing: a failure in CI (whose test command installs them
/// first), else a SKIP line.
pub fn seabios(test: &str, image: &str, tools: &[&str]) -> Option<String> {
    let bios = format!("/usr/share/seabios/{image}");
    let missing: Vec<&str> = std::iter::once(bios.as_str())
        .filter(|b| !Path::new(b).exists())
        .chain(tools.iter().copied().filter(|t| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {t} || test -e {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        }))
        .collect();
    if missing.is_empty() {
        return Some(bios);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {missing:?} missing (CI's tests/run.sh installs them)");
    }
    eprintln!("SKIP {test}: {missing:?} missing (tests/run.sh installs them)");
    None
}

/// Debian's kernel and the busybox initramfs (roms/fetch-debian-guest.sh), if fetched.
/// Missing: a failure in CI (whose test command fetches them first), else a SKIP line.
pub fn debian_guest(test: &str) -> Option<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/roms/guests");
    let k = format!("{dir}/vmlinuz");
    let i = format!("{dir}/initramfs.cpio.gz");
    if Path::new(&k).exists() && Path::new(&i).exists() {
        return Some((k, i));
    }
    if std::env::var_os("CI").is_some() {
        panic!("{dir}: Debian guest missing (CI runs roms/fetch-debian-guest.sh first)");
    }
    eprintln!("SKIP {test}: run roms/fetch-debian-guest.sh");
    None
}
