//! The KVM oracle: the sandbox guest Gantry's CPU runs ([`Sandbox`]), run by a KVM vCPU
//! instead, so the answer comes from the host's virtualization (the silicon, with
//! hardware-assisted KVM). Unlike the host oracle it sees system-level state: the guest's
//! own page tables, descriptor tables, exception delivery and CR2.
//!
//! On a software-assisted KVM (nested, such as kvm_pvm) the vCPU's ring-0 code, and so
//! the exception delivery into the sandbox's handlers, is carried out by KVM's own
//! emulator: the runner's name says so, and for user-level semantics the host oracle stays
//! the reference.

use super::emu::{run_on, Sandbox};
use super::{Case, Final, RunError, Runner};
use gantry_frontend::state::CpuState;
use gantry_machine::accel::kvm;
use gantry_machine::accel::kvm_vcpu::KvmVcpu;

pub struct KvmOracle {
    // Declared before the sandbox, whose memory the VM maps: the VM is dropped first.
    vcpu: KvmVcpu,
    sandbox: Sandbox,
    name: String,
}

impl KvmOracle {
    pub fn new() -> Result<Self, String> {
        kvm::probe().map_err(|e| e.to_string())?;
        let sandbox = Sandbox::new()?;
        // Each case loads its own state; until then the vCPU sits at reset.
        let vcpu = KvmVcpu::new(&sandbox.mem, &CpuState::reset()).map_err(|e| e.to_string())?;
        let name = match kvm::software_assisted() {
            Some(kind) => format!(
                "KVM (software-assisted, {kind}: ring-0 code and exception delivery are \
                 KVM's emulator, not the silicon)"
            ),
            None => "KVM".into(),
        };
        Ok(Self {
            vcpu,
            sandbox,
            name,
        })
    }
}

impl Runner for KvmOracle {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(&mut self, case: &Case) -> Result<Final, RunError> {
        run_on(&mut self.vcpu, &mut self.sandbox, case).map_err(|e| RunError::Oracle(e.to_string()))
    }
}
