//! The host side of COM1: stdin read on a thread (the terminal in raw mode when it is one),
//! with QEMU's escape keys: `Ctrl-A x` quits, `Ctrl-A h` lists the keys, `Ctrl-A Ctrl-A`
//! sends a literal Ctrl-A, `Ctrl-A b` sends a break.

use std::io::Read;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Called by the console thread after it queues input, so a CPU that is running guest
/// code (KVM_RUN) comes out to take it.
pub type Waker = Box<dyn Fn() + Send>;

const CTRL_A: u8 = 0x01;

/// The last termination signal received (0: none); the board turns it into a stop request.
static SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, std::sync::atomic::Ordering::Relaxed);
}

/// Makes SIGINT, SIGTERM, SIGHUP (the terminal went away) and SIGQUIT end the run cleanly
/// (statistics printed, terminal restored) instead of killing the process. In raw mode
/// Ctrl-C and Ctrl-\\ reach the guest as bytes, as in QEMU; the signals still arrive from
/// `kill`.
pub fn catch_termination_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The termination signal received, if any.
pub fn termination_signal() -> Option<i32> {
    match SIGNAL.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleInput {
    Byte(u8),
    Break,
    Quit,
}

pub enum Wait {
    Input(ConsoleInput),
    Timeout,
    /// Input is closed for good (stdin at end, or no console).
    Closed,
}

pub struct HostConsole {
    rx: Option<Receiver<ConsoleInput>>,
    waker: Arc<Mutex<Option<Waker>>>,
    _raw: Option<RawTerminal>,
}

pub const HELP: &str = "\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a b    send break\r\nC-a C-a  send C-a\r\n";

/// Interprets the escape keys in a byte stream.
#[derive(Default)]
pub struct EscapeParser {
    after_ctrl_a: bool,
}

impl EscapeParser {
    /// Returns what the byte means, if anything reaches the guest or the emulator; `help`
    /// is called for `Ctrl-A h`.
    pub fn feed(&mut self, b: u8, help: &mut dyn FnMut()) -> Option<ConsoleInput> {
        if self.after_ctrl_a {
            self.after_ctrl_a = false;
            return match b {
                b'x' | b'X' => Some(ConsoleInput::Quit),
                b'h' | b'H' | b'?' => {
                    help();
                    None
                }
                b'b' | b'B' => Some(ConsoleInput::Break),
                CTRL_A => Some(ConsoleInput::Byte(CTRL_A)),
                _ => None,
            };
        }
        if b == CTRL_A {
            self.after_ctrl_a = true;
            return None;
        }
        Some(ConsoleInput::Byte(b))
    }
}

impl HostConsole {
    /// A console reading the process's stdin.
    pub fn stdio() -> Self {
        let raw = RawTerminal::enter();
        let (tx, rx) = mpsc::channel();
        let waker: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
        let thread_waker = waker.clone();
        let spawned = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut parser = EscapeParser::default();
                let mut buf = [0u8; 64];
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for &b in &buf[..n] {
                        let mut help = || eprint!("{HELP}");
                        if let Some(input) = parser.feed(b, &mut help) {
                            if tx.send(input).is_err() {
                                return;
                            }
                        }
                    }
                    if let Ok(w) = thread_waker.lock() {
                        if let Some(wake) = w.as_ref() {
                            wake();
                        }
                    }
                }
            });
        // Without a reader thread the guest simply gets no input.
        Self {
            rx: spawned.ok().map(|_| rx),
            waker,
            _raw: raw,
        }
    }

    /// A console with no input (serial to a file, or none).
    pub fn none() -> Self {
        Self {
            rx: None,
            waker: Arc::new(Mutex::new(None)),
            _raw: None,
        }
    }

    /// Sets (or with None, clears) what the console thread calls after queueing input.
    pub fn set_waker(&self, waker: Option<Waker>) {
        if let Ok(mut w) = self.waker.lock() {
            *w = waker;
        }
    }

    pub fn try_input(&mut self) -> Option<ConsoleInput> {
        match self.rx.as_ref()?.try_recv() {
            Ok(i) => Some(i),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.rx = None;
                None
            }
        }
    }

    /// Blocks until input arrives or `timeout` passes (None: no limit).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Wait {
        let Some(rx) = self.rx.as_ref() else {
            return Wait::Closed;
        };
        let r = match timeout {
            Some(t) => rx.recv_timeout(t),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match r {
            Ok(i) => Wait::Input(i),
            Err(RecvTimeoutError::Timeout) => Wait::Timeout,
            Err(RecvTimeoutError::Disconnected) => {
                self.rx = None;
                Wait::Closed
            }
        }
    }
}

/// Puts a terminal stdin into raw mode and restores it when dropped.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> Option<Self> {
        // SAFETY: isatty, tcgetattr and tcsetattr only read or write the termios struct we
        // pass, which lives on our stack for the duration of each call.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            // Keep output post-processing so the host's newlines still work for our own
            // messages; the guest sends CR LF itself.
            raw.c_oflag = saved.c_oflag;
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(Self { saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved in `enter` on the same descriptor.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keys() {
        let mut p = EscapeParser::default();
        let helped = std::cell::Cell::new(0);
        let feed = |p: &mut EscapeParser, b| p.feed(b, &mut || helped.set(helped.get() + 1));
        assert_eq!(feed(&mut p, b'a'), Some(ConsoleInput::Byte(b'a')));
        assert_eq!(feed(&mut p, CTRL_A), None);
        assert_eq!(feed(&mut p, CTRL_A), Some(ConsoleInput::Byte(CTRL_A)));
        assert_eq!(feed(&mut p, CTRL_A), None);
        assert_eq!(feed(&mut p, b'h'), None);
        assert_eq!(feed(&mut p, CTRL_A), None);
        assert_eq!(feed(&mut p, b'x'), Some(ConsoleInput::Quit));
        assert_eq!(feed(&mut p, b'x'), Some(ConsoleInput::Byte(b'x')));
        assert_eq!(helped.get(), 1);
    }
}
