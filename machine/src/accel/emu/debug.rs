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
        self.update_any();
    }

    fn set_guest(&mut self, guest: Vec<(u8, Watchpoint)>) {
        self.guest = guest;
        self.guest_hits = 0;
        self.update_any();
    }

    /// `any` caches "either list is non-empty" for the per-access test.
    fn update_any(&mut self) {
        self.any = !self.list.is_empty() || !self.guest.is_empty();
    }

    /// The linear ranges `[start, end)` any data breakpoint covers.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let all = self.list.iter().chain(self.guest.iter().map(|(_, w)| w));
        all.map(|w| (w.addr, w.addr.wrapping_add(w.len))).collect()
    }

    /// Any data breakpoint set: blocks must be one instruction long so a trap comes after
    /// the instruction that hit.
    pub fn active(&self) -> bool {
        self.any
    }
}

/// DR6.BS: the #DB is a single-step trap.
pub const DR6_BS: u64 = 1 << 14;
/// DR6.BT: a task switch to a TSS with its T bit set.
pub const DR6_BT: u64 = 1 << 15;

/// What one of DR0-3 watches, as DR7's R/Wn field says (I/O, R/W = 10, is left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrKind {
    Exec,
    Data(WatchKind),
}

/// DR7's fields for debug register `n` (Intel SDM vol. 3, 17.2.4): the guest's DR7 is
/// decoded with these and gdb's (under KVM) encoded with them.
pub mod dr7 {
    use super::{DrKind, WatchKind};

    fn len_code(bytes: u64) -> u64 {
        match bytes {
            1 => 0b00,
            2 => 0b01,
            8 => 0b10,
            _ => 0b11,
        }
    }

    /// The slot's kind and length in bytes, if it is enabled (Ln or Gn) and not an I/O
    /// breakpoint.
    pub fn slot(dr7: u64, n: usize) -> Option<(DrKind, u64)> {
        if dr7 & (3 << (2 * n)) == 0 {
            return None;
        }
        let len = match (dr7 >> (18 + 4 * n)) & 3 {
            0b00 => 1,
            0b01 => 2,
            0b10 => 8,
            _ => 4,
        };
        let kind = match (dr7 >> (16 + 4 * n)) & 3 {
            0b00 => DrKind::Exec,
            0b01 => DrKind::Data(WatchKind::Write),
            0b11 => DrKind::Data(WatchKind::Access),
            _ => return None,
        };
        Some((kind, if kind == DrKind::Exec { 1 } else { len }))
    }

    /// DR7 bits enabling slot `n` globally (Gn, as QEMU sets them) for `kind` and `len`
    /// bytes. x86 has no read-only data breakpoint: a Read kind encodes as Access.
    pub fn enable(n: usize, kind: DrKind, len: u64) -> u64 {
        let (rw, len) = match kind {
            DrKind::Exec => (0b00, 1),
            DrKind::Data(WatchKind::Write) => (0b01, len),
            DrKind::Data(_) => (0b11, len),
        };
        (2 << (2 * n)) | (rw << (16 + 4 * n)) | (len_code(len) << (18 + 4 * n))
    }
}

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
        let mut exec = Vec::new();
        let mut data = Vec::new();
        for n in 0..4 {
            match dr7::slot(dr[7], n) {
                Some((DrKind::Exec, _)) => exec.push((n as u8, dr[n])),
                Some((DrKind::Data(kind), len)) => data.push((
                    n as u8,
                    Watchpoint {
                        // The CPU ignores the address bits below the length.
                        addr: dr[n] & !(len - 1),
                        len,
                        kind,
                    },
                )),
                None => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_fields_round_trip() {
        let cases = [
            (0, DrKind::Exec, 1),
            (1, DrKind::Data(WatchKind::Write), 4),
            (2, DrKind::Data(WatchKind::Access), 8),
            (3, DrKind::Data(WatchKind::Write), 2),
        ];
        let bits = cases
            .iter()
            .fold(0, |v, &(n, kind, len)| v | dr7::enable(n, kind, len));
        for (n, kind, len) in cases {
            assert_eq!(dr7::slot(bits, n), Some((kind, len)), "slot {n}");
        }
        // Disabled slots and I/O breakpoints (R/W = 10) are not breakpoints here.
        assert_eq!(dr7::slot(0, 0), None);
        assert_eq!(dr7::slot(0b01 | 0b10 << 16, 0), None);
    }
}
