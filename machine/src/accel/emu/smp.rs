//! Several CPUs on one host thread: the emulated CPU runs one of them at a time and
//! parks the others' states, switching round-robin at the run loop's service points when
//! the running one's quantum is over or it has nothing to run (halted with no interrupt to
//! take, or waiting for a start-up IPI). Memory, the devices and the translated code are
//! shared; each CPU has its own state and local APIC, and its own view of the TLB and the
//! jump cache, which a switch empties (as a CR3 load does) since the two CPUs' page tables
//! may differ. Guest atomics need nothing more: one CPU runs at a time, and a switch
//! happens only between blocks.
//!
//! Application processors start as a PC's firmware leaves them, waiting for a start-up
//! IPI; INIT puts a CPU back in its reset state (an AP to waiting again), and a start-up
//! IPI starts a waiting one in real mode at vector << 12.

use gantry_frontend::state::{self as st, CpuState, IF};
use gantry_translator::Exception;

use super::EmuCpu;
use crate::board::Board;

/// Service rounds (of [`super::SERVICE_INTERVAL`] blocks each, about 15 us on the JIT) a
/// CPU runs before the next runnable one gets its turn: about 1 ms, so that a CPU spinning
/// on a lock another holds gives way soon, while a switch's emptied TLB and jump cache
/// stay rare.
const QUANTUM: u32 = 64;

/// A CPU that is not running.
pub(super) struct Parked {
    state: CpuState,
    task_fault: Option<Exception>,
}

/// One CPU's place in the machine.
#[derive(Default)]
pub(super) struct Slot {
    /// Its state while another CPU runs; `None` for the running one.
    parked: Option<Parked>,
    /// Since power-up or INIT, until a start-up IPI (application processors).
    waiting_for_sipi: bool,
}

/// The running CPU, the others, and how long the running one has left.
#[derive(Default)]
pub(super) struct Cpus {
    pub(super) slots: Vec<Slot>,
    pub(super) current: usize,
    quantum_left: u32,
    pub(super) switches: u64,
}

impl Cpus {
    pub(super) fn count(&self) -> usize {
        self.slots.len().max(1)
    }
}

impl EmuCpu {
    /// Gives the machine `count` CPUs in all: this one (the bootstrap processor, APIC ID
    /// 0) and application processors waiting for a start-up IPI.
    pub fn set_cpu_count(&mut self, count: usize) {
        self.cpus.slots = (0..count)
            .map(|i| Slot {
                parked: (i != 0).then(|| Parked {
                    state: waiting_state(&self.state),
                    task_fault: None,
                }),
                waiting_for_sipi: i != 0,
            })
            .collect();
        self.cpus.current = 0;
        self.cpus.quantum_left = QUANTUM;
    }

    /// The state of CPU `i`, running or parked.
    fn cpu_state(&mut self, i: usize) -> &mut CpuState {
        match &mut self.cpus.slots[i].parked {
            Some(p) => &mut p.state,
            None => &mut self.state,
        }
    }

    /// Whether CPU `i` has something to run now.
    fn can_run(&mut self, i: usize, board: &mut Board) -> bool {
        if self.cpus.slots[i].waiting_for_sipi {
            return false;
        }
        let s = self.cpu_state(i);
        let (halted, if_set, nmi_ok) = (s.halted, s.rflags & IF != 0, !s.nmi_blocked);
        !halted
            || (if_set && board.interrupt_pending_for(i))
            || (nmi_ok && board.nmi_pending_for(i))
    }

    /// Whether no CPU can ever run again on its own: each is waiting for a start-up IPI
    /// or halted with interrupts disabled (an NMI would come from another CPU, which is
    /// stuck too).
    pub(super) fn all_cpus_stuck(&mut self) -> bool {
        (0..self.cpus.count()).all(|i| {
            self.cpus.slots.get(i).is_some_and(|s| s.waiting_for_sipi) || {
                let s = self.cpu_state(i);
                s.halted && s.rflags & IF == 0
            }
        })
    }

    /// At a service point: applies the INIT and start-up IPIs the CPUs received, and
    /// moves to the next runnable CPU when the running one's quantum is over or it has
    /// nothing to run.
    pub(super) fn schedule(&mut self, board: &mut Board) {
        let n = self.cpus.slots.len();
        if n <= 1 {
            return;
        }
        for i in 0..n {
            let signals = board.take_startup(i);
            if signals.init {
                self.init(i);
            }
            if let Some(vector) = signals.sipi {
                self.start_up(i, vector);
            }
        }
        self.cpus.quantum_left = self.cpus.quantum_left.saturating_sub(1);
        let current = self.cpus.current;
        if self.cpus.quantum_left > 0 && self.can_run(current, board) {
            return;
        }
        self.cpus.quantum_left = QUANTUM;
        if let Some(next) = (1..n)
            .map(|k| (current + k) % n)
            .find(|&j| self.can_run(j, board))
        {
            self.switch_to(next, board);
        }
    }

    fn switch_to(&mut self, next: usize, board: &mut Board) {
        let Some(parked) = self.cpus.slots[next].parked.take() else {
            return;
        };
        // The A20 gate is the board's: the incoming state keeps the mask in force.
        let a20 = self.state.a20_mask;
        let state = std::mem::replace(&mut self.state, parked.state);
        let task_fault = std::mem::replace(&mut self.task_fault, parked.task_fault);
        self.state.a20_mask = a20;
        self.cpus.slots[self.cpus.current].parked = Some(Parked { state, task_fault });
        self.cpus.current = next;
        self.cpus.switches += 1;
        board.set_current(next);
        // Another CPU's page tables: its TLB and jump cache start empty (chains made
        // through the old ones are dropped with them), and its debug registers apply.
        self.mmu.flush(false);
        self.traps.regs_changed = true;
    }

    /// INIT: the CPU's reset state; an application processor then waits for a start-up
    /// IPI, the bootstrap processor starts at the reset vector.
    fn init(&mut self, i: usize) {
        let running = i == self.cpus.current;
        let s = self.cpu_state(i);
        *s = if i == 0 {
            CpuState {
                a20_mask: s.a20_mask,
                tsc_offset: s.tsc_offset,
                ..CpuState::reset()
            }
        } else {
            waiting_state(s)
        };
        self.cpus.slots[i].waiting_for_sipi = i != 0;
        if running {
            self.mmu.flush(false);
            self.task_fault = None;
        } else if let Some(p) = &mut self.cpus.slots[i].parked {
            p.task_fault = None;
        }
    }

    /// A start-up IPI: a CPU waiting for one starts in real mode at `vector` << 12.
    fn start_up(&mut self, i: usize, vector: u8) {
        if !self.cpus.slots[i].waiting_for_sipi {
            return;
        }
        self.cpus.slots[i].waiting_for_sipi = false;
        let s = self.cpu_state(i);
        let v = u64::from(vector);
        s.seg[st::CS].selector = (v << 8) as u16;
        s.seg[st::CS].base = v << 12;
        s.rip = 0;
        s.halted = false;
    }
}

/// An application processor's state while it waits for a start-up IPI: reset, halted
/// (the run loop does not run it), with `like`'s A20 mask and TSC.
fn waiting_state(like: &CpuState) -> CpuState {
    CpuState {
        halted: true,
        a20_mask: like.a20_mask,
        tsc_offset: like.tsc_offset,
        ..CpuState::reset()
    }
}
