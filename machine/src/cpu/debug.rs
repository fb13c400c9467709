//! What a debugger asks of the emulated CPU: breakpoints by linear address, single steps of
//! exactly one instruction, data watchpoints, and time slices so the debugger can poll its
//! connection while the guest runs. All of it is off (one branch per block) unless a
//! debugger is attached.

/// A data watchpoint's trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchKind {
    Write,
    Read,
    Access,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watchpoint {
    pub addr: u64,
    pub len: u64,
    pub kind: WatchKind,
}

/// The access that triggered a watchpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchHit {
    pub watch: Watchpoint,
    pub addr: u64,
}

/// The watchpoints, checked on every guest data access (one `is_empty` when none).
#[derive(Default, Debug)]
pub struct Watchpoints {
    pub list: Vec<Watchpoint>,
    /// The first hit since the last instruction began; the run loop reports it after the
    /// instruction completes, as x86 data breakpoints are traps.
    pub hit: Option<WatchHit>,
}

impl Watchpoints {
    #[inline]
    pub fn check(&mut self, linear: u64, bytes: u8, write: bool) {
        if self.list.is_empty() || self.hit.is_some() {
            return;
        }
        let end = linear.wrapping_add(bytes as u64);
        for w in &self.list {
            let wanted = match w.kind {
                WatchKind::Write => write,
                WatchKind::Read => !write,
                WatchKind::Access => true,
            };
            if wanted && linear < w.addr.wrapping_add(w.len) && w.addr < end {
                self.hit = Some(WatchHit {
                    watch: *w,
                    addr: linear.max(w.addr),
                });
                return;
            }
        }
    }
}

/// Why a debug run returned to the debugger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugStop {
    /// CS:RIP reached a breakpoint (before executing it).
    Breakpoint,
    /// One instruction was executed (or an interrupt woke a halted CPU and its handler's
    /// first instruction is next).
    Step,
    Watch(WatchHit),
    /// The time slice ran out; nothing happened the debugger needs to know.
    Slice,
}

/// Blocks run between returns to the debugger, which then polls its connection (for
/// gdb's Ctrl-C). About a millisecond of guest time on the interpreter.
pub const SLICE_BLOCKS: u32 = 2048;

#[derive(Debug, Default)]
pub struct DebugCtl {
    /// Linear addresses, sorted.
    pub breakpoints: Vec<u64>,
    /// Execute exactly one instruction, then stop.
    pub step: bool,
    /// Resuming from a breakpoint at this address: do not stop there before running it.
    pub resume_from: Option<u64>,
    pub slice_left: u32,
}
