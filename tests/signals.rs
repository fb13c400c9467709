//! Termination signals on a terminal: Gantry puts a terminal console in raw mode, so every
//! signal that ends it must restore the terminal and print `--stats`, as SIGTERM does.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A pseudo-terminal pair (master, slave).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors, which are owned from here on.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    // SAFETY: both descriptors were just opened and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn canonical(tty: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: tcgetattr fills the termios it is given; the descriptor is open.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) }, 0);
    t.c_lflag & libc::ICANON != 0
}

#[test]
fn hangup_and_quit_restore_the_terminal_and_print_stats() {
    let dir = scratch("signals");
    let spin = multiboot_kernel(|a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.jmp(l)
    });
    let kernel = write_file(&dir, "spin", &spin);
    for sig in [libc::SIGHUP, libc::SIGQUIT, libc::SIGTERM] {
        let (master, slave) = openpty();
        assert!(canonical(&slave));
        let io = || Stdio::from(slave.try_clone().expect("dup"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["run", "--accel", "interp", "--kernel", &kernel, "--stats"])
            .stdin(io())
            .stdout(io())
            .stderr(io())
            .spawn()
            .expect("spawn gantry");
        let until = Instant::now() + Duration::from_secs(30);
        while canonical(&slave) {
            assert!(Instant::now() < until, "the console never went raw");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling the child we spawned.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("signal {sig}: gantry did not end");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(128 + sig), "signal {sig}: {status:?}");
        assert!(canonical(&slave), "signal {sig}: the terminal was left raw");
        drop(slave);
        let out = read_all(std::fs::File::from(master))
            .join()
            .expect("reader");
        assert!(
            out.contains(&format!("terminating on signal {sig}")) && out.contains("accelerator:"),
            "signal {sig}: no message or --stats in:\n{out}"
        );
    }
}
