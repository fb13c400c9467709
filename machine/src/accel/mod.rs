//! Accelerators: what executes guest instructions, behind one [`vcpu::Vcpu`] interface:
//! KVM (`kvm`, with its debugger support in `kvm_vcpu`), and the emulated CPU
//! (`crate::accel::emu`: the interpreter and the Cranelift JIT). Both drive the same
//! [`crate::board::Board`].

pub mod emu;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod kvm;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod kvm_state;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod kvm_vcpu;
pub mod vcpu;

use std::fmt;

/// The kind of software-assisted KVM the host has (nested, such as kvm_pvm: its ring-0
/// behaviour is its instruction emulator's), by module name; `None` for a hardware KVM,
/// and where there is no KVM at all.
pub fn kvm_software_assisted() -> Option<&'static str> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        kvm::software_assisted()
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        None
    }
}

/// Why a run of the CPU stopped for good (resets are handled by the machine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuStop {
    /// A board event (power-off, debug exit, reset request, quit).
    Board(crate::board::BoardEvent),
    /// The CPU shut down (triple fault).
    TripleFault { rip: u64 },
    /// HLT with interrupts disabled and nothing that could wake it.
    HaltedForever { rip: u64 },
}

/// Counters every accelerator keeps for `--stats`.
#[derive(Default, Debug, Clone)]
pub struct ExitStats {
    pub io: u64,
    pub mmio: u64,
    /// The local APIC's MSRs, handed over by KVM.
    pub msr: u64,
    pub hlt: u64,
    pub irq_window: u64,
    pub interrupted: u64,
    pub injected: u64,
    pub other: u64,
}

impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "exits: io {} mmio {} apic-msr {} hlt {} irq-window {} kicked (timer or console) {} other {}",
            self.io,
            self.mmio,
            self.msr,
            self.hlt,
            self.irq_window,
            self.interrupted,
            self.other
        )?;
        write!(f, "interrupts injected: {}", self.injected)
    }
}
