//! The CPU a gdb session drives: the emulated CPU or a KVM vCPU, behind one interface.
//! Both show the debugger a [`CpuState`] and report the same [`DebugStop`]s; how they
//! stop differs (the emulated CPU checks breakpoints at block starts; KVM uses INT3s the
//! stub plants, DR0-3 and the trap flag through KVM_SET_GUEST_DEBUG).

use gantry_frontend::state::CpuState;

use gantry_machine::accel::CpuStop;
use gantry_machine::board::Board;
use gantry_machine::cpu::debug::{DebugStop, Watchpoint};
use gantry_machine::cpu::EmuCpu;
use gantry_machine::memory::GuestMemory;
use gantry_machine::vm::MachineError;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use super::kvm_target::KvmTarget;

/// What the debugger wants of the CPU until the next stop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DebugRequest {
    pub sw_breaks: Vec<u64>,
    pub hw_breaks: Vec<u64>,
    pub watches: Vec<Watchpoint>,
    pub step: bool,
    /// The CPU is where gdb stopped it: a breakpoint at this very instruction is executed,
    /// not reported again. False for a fresh start (a reset), where it must stop.
    pub resuming: bool,
}

/// How a slice of execution ended for good.
pub enum Ended {
    Stop(CpuStop),
    /// The backend failed (KVM refused something); the session ends with this error.
    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "x86_64")),
        allow(dead_code)
    )]
    Failed(MachineError),
}

pub enum Backend {
    Emu(Box<EmuCpu>),
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    Kvm(Box<KvmTarget>),
}

impl Backend {
    pub fn state(&self) -> &CpuState {
        match self {
            Backend::Emu(c) => &c.state,
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Backend::Kvm(k) => k.state(),
        }
    }

    /// Changes registers as `f` says (it may refuse); KVM gets the result at once.
    pub fn write_state<E>(
        &mut self,
        f: impl FnOnce(&mut CpuState) -> Result<(), E>,
    ) -> Result<Result<(), E>, MachineError> {
        match self {
            Backend::Emu(c) => Ok(f(&mut c.state)),
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Backend::Kvm(k) => k.write_state(f),
        }
    }

    /// Sets breakpoints, watchpoints and stepping for the next [`Self::execute`]; an
    /// `Err` names what this backend cannot do (too many hardware slots, an address it
    /// cannot plant a breakpoint at).
    // Off x86-64 Linux only the emulated CPU exists, which plants nothing in memory.
    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "x86_64")),
        allow(unused_variables)
    )]
    pub fn set_debug(&mut self, mem: &mut GuestMemory, req: &DebugRequest) -> Result<(), String> {
        match self {
            Backend::Emu(c) => {
                let bps: Vec<u64> = req
                    .sw_breaks
                    .iter()
                    .chain(&req.hw_breaks)
                    .copied()
                    .collect();
                c.set_debug(&bps, &req.watches, req.step, req.resuming);
                Ok(())
            }
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Backend::Kvm(k) => k.set_debug(mem, req),
        }
    }

    pub fn execute(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
    ) -> Result<DebugStop, Ended> {
        match self {
            Backend::Emu(c) => c.execute(mem, board).map_err(Ended::Stop),
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Backend::Kvm(k) => k.execute(mem, board),
        }
    }

    /// Guest memory at `phys` was written by the debugger.
    pub fn code_written(&mut self, mem: &GuestMemory, phys: u64) {
        match self {
            Backend::Emu(c) => c.code_written(mem, phys),
            // KVM executes guest memory as it is: nothing cached.
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Backend::Kvm(_) => {}
        }
    }

    /// The original bytes under planted INT3s, for memory reads in `[start, start+len)`.
    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "x86_64")),
        allow(unused_variables)
    )]
    pub fn hide_planted(&self, start: u64, data: &mut [u8]) {
        match self {
            Backend::Emu(_) => {}
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Backend::Kvm(k) => k.hide_planted(start, data),
        }
    }

    /// Lines for `--stats` and `monitor stats`.
    pub fn report(&self, out: &mut String, seconds: f64) {
        match self {
            Backend::Emu(c) => c.report(out, seconds),
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Backend::Kvm(k) => k.report(out),
        }
    }
}
