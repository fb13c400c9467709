//! One interface for a virtual CPU, which the emulated CPU ([`super::emu::EmuCpu`]) and
//! a KVM vCPU (`kvm_vcpu::KvmVcpu`) both implement, so that the run loop, the gdbstub and
//! difftest never ask which backend they hold (cloud-hypervisor's `Vcpu` is the anchor).
//! Both show their registers as one [`CpuState`], converted at KVM's edge, and report the
//! same stops. External interrupts are not pushed through it: each backend takes them from
//! the board at its own instruction boundaries.

use gantry_frontend::state::CpuState;

use super::CpuStop;
use crate::accel::emu::debug::{DebugStop, Watchpoint};
use crate::board::Board;
use crate::memory::GuestMemory;

/// What a debugger wants of the CPU until its next stop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DebugRequest {
    pub sw_breaks: Vec<u64>,
    pub hw_breaks: Vec<u64>,
    pub watches: Vec<Watchpoint>,
    pub step: bool,
    /// The CPU is where the debugger stopped it: a breakpoint at this very instruction is
    /// executed, not reported again. False for a fresh start (a reset), where it must stop.
    pub resuming: bool,
}

/// A backend that failed (KVM refused an ioctl): the run cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VcpuError(pub String);

/// How a run ended for good.
#[derive(Debug)]
pub enum Ended {
    Stop(CpuStop),
    Failed(VcpuError),
}

pub trait Vcpu {
    /// Runs the guest until it stops for good (`Err`) or, once [`Self::set_debug`] was
    /// called, until something the debugger asked for happens or a time slice passes
    /// (`Ok`), so the debugger can poll its connection.
    fn run(&mut self, mem: &mut GuestMemory, board: &mut Board) -> Result<DebugStop, Ended>;

    /// The architectural state as of the last stop.
    fn state(&self) -> &CpuState;

    /// Replaces the whole state (a debugger's edit, a difftest case).
    fn set_state(&mut self, state: CpuState) -> Result<(), VcpuError>;

    /// Sets breakpoints, watchpoints and stepping for the next [`Self::run`]; an `Err`
    /// names what this backend cannot do (too many hardware slots, an address it cannot
    /// plant a breakpoint at), the rest being in effect.
    fn set_debug(&mut self, mem: &mut GuestMemory, req: &DebugRequest) -> Result<(), String>;

    /// Guest memory at `phys` was changed behind the CPU's back (a debugger or a test
    /// harness wrote it): anything translated from it is dropped.
    fn code_written(&mut self, mem: &GuestMemory, phys: u64);

    /// Replaces, in `data` read from linear `start`, any bytes the backend itself put into
    /// guest memory (KVM's planted INT3s) with the guest's own.
    fn hide_planted(&self, _start: u64, _data: &mut [u8]) {}

    /// Lines for `--stats` and `monitor stats`, over a run of `seconds`.
    fn report(&self, out: &mut String, seconds: f64);

    /// Runs until the guest stops for good.
    fn run_to_end(&mut self, mem: &mut GuestMemory, board: &mut Board) -> Ended {
        loop {
            if let Err(end) = self.run(mem, board) {
                return end;
            }
        }
    }
}
