//! Debian's stock x86-64 kernel with the busybox initramfs (roms/fetch-debian-guest.sh) on
//! Gantry's emulated CPU: it must boot to `Run /init as init process`. The run is stopped
//! as soon as that line appears. This takes minutes on the interpreter; the test is skipped
//! (with a line saying so) when the guest is not fetched, except in CI, where the test
//! command fetches it first.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "Run /init as init process";
const LIMIT: Duration = Duration::from_secs(25 * 60);

fn guest() -> Option<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/roms/guests");
    let k = format!("{dir}/vmlinuz");
    let i = format!("{dir}/initramfs.cpio.gz");
    if std::path::Path::new(&k).exists() && std::path::Path::new(&i).exists() {
        return Some((k, i));
    }
    if std::env::var_os("CI").is_some() {
        panic!("{dir}: Debian guest missing (CI runs roms/fetch-debian-guest.sh first)");
    }
    eprintln!(
        "SKIP debian_kernel_boots_to_init_on_the_interpreter: run roms/fetch-debian-guest.sh"
    );
    None
}

#[test]
fn debian_kernel_boots_to_init_on_the_interpreter() {
    let Some((kernel, initrd)) = guest() else {
        return;
    };
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "run",
            "--accel",
            "interp",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 nolapic noapic",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gantry");
    let out = child.stdout.take().expect("stdout");
    // The reader thread reports each line; the main thread enforces the time limit.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log: Vec<String> = Vec::new();
    let mut seen = false;
    while started.elapsed() < LIMIT {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                seen |= line.contains(MARKER);
                log.push(line);
                if seen {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "Debian kernel on the interpreter: {} lines in {:.0} s",
        log.len(),
        started.elapsed().as_secs_f64()
    );
    let tail: Vec<&String> = log.iter().rev().take(15).rev().collect();
    assert!(
        seen,
        "no {MARKER:?} within {LIMIT:?}; last lines:\n{tail:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("Linux version 6.")),
        "kernel banner"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("ACPI: RSDP 0x00000000000E0000")),
        "our ACPI tables"
    );
}
