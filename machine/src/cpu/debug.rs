//! Debugging on the emulated CPU, from outside and from inside.
//!
//! What a debugger asks of the CPU: breakpoints by linear address, single steps of exactly
//! one instruction, data watchpoints, and time slices so the debugger can poll its
//! connection while the guest runs. All of it is off (one branch per block) unless a
//! debugger is attached.
//!
//! What the guest asks of it: its own debug registers (DR0-3 with DR7's enables, lengths
//! and kinds: instruction breakpoints as faults, data breakpoints as traps, DR6 status)
//! and the trap flag (a #DB after each instruction), with RF suppressing an instruction
//! breakpoint once. Both kinds live side by side: gdb never touches the guest's DR0-7.

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

impl Watchpoint {
    fn hit_by(&self, linear: u64, end: u64, write: bool) -> bool {
        let wanted = match self.kind {
            WatchKind::Write => write,
            WatchKind::Read => !write,
            WatchKind::Access => true,
        };
        wanted && linear < self.addr.wrapping_add(self.len) && self.addr < end
    }
}

/// Data breakpoints, the debugger's and the guest's, checked on every guest data access
/// (one test when there are none), and what the current instruction hit.
#[derive(Default, Debug)]
pub struct DebugTraps {
    /// The debugger's watchpoints.
    pub list: Vec<Watchpoint>,
    /// The first hit of a debugger watchpoint since the last instruction began; the run
    /// loop reports it after the instruction completes, as x86 data breakpoints are traps.
    pub hit: Option<WatchHit>,
    /// The guest's data breakpoints, with the debug register (0-3) each comes from.
    pub guest: Vec<(u8, Watchpoint)>,
    /// DR6's B0-B3 bits for the guest breakpoints the current instruction hit.
    pub guest_hits: u8,
    /// An interrupt or exception was delivered (it cancels a pending single-step trap).
    pub delivered: bool,
    /// MOV DR changed the guest's debug registers; the run loop re-reads them.
    pub regs_changed: bool,
    any: bool,
}

impl DebugTraps {
    #[inline]
    pub fn check(&mut self, linear: u64, bytes: u8, write: bool) {
        if self.any {
            self.check_slow(linear, bytes, write);
        }
    }

    // Out of line: every guest data access inlines the test above, and only that.
    #[cold]
    #[inline(never)]
    fn check_slow(&mut self, linear: u64, bytes: u8, write: bool) {
        let end = linear.wrapping_add(bytes as u64);
        if self.hit.is_none() {
            if let Some(w) = self.list.iter().find(|w| w.hit_by(linear, end, write)) {
                self.hit = Some(WatchHit {
                    watch: *w,
                    addr: linear.max(w.addr),
                });
            }
        }
        for (slot, w) in &self.guest {
            if w.hit_by(linear, end, write) {
                self.guest_hits |= 1 << slot;
            }
        }
    }

    pub fn set_watchpoints(&mut self, list: &[Watchpoint]) {
        self.list = list.to_vec();
        self.hit = None;
        self.any = !self.list.is_empty() || !self.guest.is_empty();
    }

    fn set_guest(&mut self, guest: Vec<(u8, Watchpoint)>) {
        self.guest = guest;
        self.guest_hits = 0;
        self.any = !self.list.is_empty() || !self.guest.is_empty();
    }

    /// Any data breakpoint set: blocks must be one instruction long so a trap comes after
    /// the instruction that hit.
    pub fn active(&self) -> bool {
        self.any
    }
}

/// DR6.BS: the #DB is a single-step trap.
pub const DR6_BS: u64 = 1 << 14;

/// The guest's debug registers as the run loop uses them.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct GuestBreakpoints {
    /// Enabled instruction breakpoints: (debug register, linear address), by address.
    pub exec: Vec<(u8, u64)>,
}

impl GuestBreakpoints {
    /// Decodes DR0-3 and DR7; the data breakpoints go into `traps`. I/O breakpoints
    /// (R/W = 10 with CR4.DE) are not supported: no port access raises #DB.
    pub fn load(dr: &[u64; 8], traps: &mut DebugTraps) -> Self {
        let dr7 = dr[7];
        let mut exec = Vec::new();
        let mut data = Vec::new();
        for i in 0..4u8 {
            if dr7 & (3 << (2 * i)) == 0 {
                continue;
            }
            let rw = (dr7 >> (16 + 4 * i)) & 3;
            let len = match (dr7 >> (18 + 4 * i)) & 3 {
                0 => 1,
                1 => 2,
                2 => 8,
                _ => 4,
            };
            match rw {
                0 => exec.push((i, dr[i as usize])),
                1 | 3 => data.push((
                    i,
                    Watchpoint {
                        // The CPU ignores the address bits below the length.
                        addr: dr[i as usize] & !(len - 1),
                        len,
                        kind: if rw == 1 {
                            WatchKind::Write
                        } else {
                            WatchKind::Access
                        },
                    },
                )),
                _ => {}
            }
        }
        exec.sort_by_key(|&(_, a)| a);
        traps.set_guest(data);
        Self { exec }
    }

    /// DR6's B bits for the instruction breakpoints at `linear`.
    pub fn hits_at(&self, linear: u64) -> u8 {
        self.exec
            .iter()
            .filter(|&&(_, a)| a == linear)
            .fold(0, |b, &(i, _)| b | 1 << i)
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
