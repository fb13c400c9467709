//! SYSCALL/SYSRET and SYSENTER/SYSEXIT, as the CPU model's vendor has them.

use super::*;

impl Ctx<'_> {
    /// SYSCALL and SYSRET exist in 64-bit mode, and on AMD in compatibility mode too.
    pub(super) fn syscall_mode_ok(&self, cpu: &CpuState) -> bool {
        cpu.efer & EFER_SCE != 0
            && cpu.long_mode()
            && (cpu.mode64() || self.vendor.fast_calls() == FastCalls::Amd)
    }

    pub(super) fn syscall(&mut self, cpu: &mut CpuState, next: u64) -> Result<(), Exception> {
        if !self.syscall_mode_ok(cpu) {
            // Legacy-mode SYSCALL (AMD only) is not part of this CPU model.
            return Err(UD);
        }
        let star = cpu.msr.star;
        let sel = ((star >> 32) & 0xFFFC) as u16;
        let fl = flags::rflags(cpu);
        cpu.gpr[RCX] = next;
        cpu.gpr[11] = fl & !RF;
        cpu.rip = if cpu.mode64() {
            cpu.msr.lstar
        } else {
            cpu.msr.cstar
        };
        cpu.cpl = 0;
        cpu.seg[CS] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: sel,
            attr: attr::P | attr::S | attr::L | attr::G | 0xB,
        };
        cpu.seg[SS] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: sel + 8,
            attr: attr::P | attr::S | attr::DB | attr::G | 0x3,
        };
        flags::set_rflags(cpu, fl & !cpu.msr.sfmask & !RF);
        Ok(())
    }

    /// SYSENTER: flat ring-0 CS/SS from IA32_SYSENTER_CS, RIP/RSP from the MSRs.
    pub(super) fn sysenter(&mut self, cpu: &mut CpuState) -> Result<(), Exception> {
        self.sysenter_mode_ok(cpu)?;
        let sel = (cpu.msr.sysenter_cs & 0xFFFC) as u16;
        if !cpu.protected() || sel == 0 {
            return Err(gp0());
        }
        let long = cpu.long_mode();
        let fl = flags::rflags(cpu);
        flags::set_rflags(cpu, fl & !(VM | IF | RF));
        cpu.seg[CS] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: sel,
            attr: attr::P | attr::S | attr::G | if long { attr::L } else { attr::DB } | 0xB,
        };
        cpu.seg[SS] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: sel + 8,
            attr: attr::P | attr::S | attr::DB | attr::G | 0x3,
        };
        cpu.cpl = 0;
        let mask = if long { !0 } else { 0xFFFF_FFFF };
        cpu.gpr[RSP] = cpu.msr.sysenter_esp & mask;
        cpu.rip = cpu.msr.sysenter_eip & mask;
        Ok(())
    }

    /// SYSEXIT: back to ring 3 at RDX with RSP = RCX (64-bit with REX.W).
    /// AMD CPUs have no SYSENTER/SYSEXIT in long mode.
    pub(super) fn sysenter_mode_ok(&self, cpu: &CpuState) -> Result<(), Exception> {
        if cpu.long_mode() && self.vendor.fast_calls() == FastCalls::Amd {
            Err(UD)
        } else {
            Ok(())
        }
    }

    pub(super) fn sysexit(&mut self, cpu: &mut CpuState, bytes: u64) -> Result<(), Exception> {
        self.sysenter_mode_ok(cpu)?;
        let base = (cpu.msr.sysenter_cs & 0xFFFC) as u16;
        if !cpu.protected() || cpu.v86() || base == 0 || cpu.cpl() != 0 {
            return Err(gp0());
        }
        let to64 = bytes == 8;
        let (cs_off, ss_off, cs_attr) = if to64 {
            (32, 40, attr::L)
        } else {
            (16, 24, attr::DB)
        };
        cpu.seg[CS] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: (base + cs_off) | 3,
            attr: attr::P | attr::S | attr::G | cs_attr | (3 << attr::DPL_SHIFT) | 0xB,
        };
        cpu.seg[SS] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: (base + ss_off) | 3,
            attr: attr::P | attr::S | attr::DB | attr::G | (3 << attr::DPL_SHIFT) | 0x3,
        };
        cpu.cpl = 3;
        let mask = if to64 { !0 } else { 0xFFFF_FFFF };
        cpu.rip = cpu.gpr[RDX] & mask;
        cpu.gpr[RSP] = cpu.gpr[RCX] & mask;
        Ok(())
    }

    pub(super) fn sysret(&mut self, cpu: &mut CpuState, bytes: u64) -> Result<(), Exception> {
        if !self.syscall_mode_ok(cpu) {
            return Err(UD);
        }
        require_cpl0(cpu)?;
        let base = ((cpu.msr.star >> 48) & 0xFFFF) as u16;
        let to64 = bytes == 8;
        // Otherwise the return completes and the fetch at RCX takes the #GP at CPL 3.
        if to64
            && !paging::canonical(cpu.gpr[RCX])
            && self.vendor.sysret_non_canonical() == SysretNonCanonical::FaultsInRing0
        {
            return Err(gp0());
        }
        let (cs_sel, cs_attr, rip) = if to64 {
            (base + 16, attr::L, cpu.gpr[RCX])
        } else {
            (base, attr::DB, cpu.gpr[RCX] & 0xFFFF_FFFF)
        };
        cpu.seg[CS] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: cs_sel | 3,
            attr: attr::P | attr::S | attr::G | cs_attr | (3 << attr::DPL_SHIFT) | 0xB,
        };
        cpu.seg[SS] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: (base + 8) | 3,
            attr: attr::P | attr::S | attr::DB | attr::G | (3 << attr::DPL_SHIFT) | 0x3,
        };
        cpu.rip = rip;
        cpu.cpl = 3;
        flags::set_rflags(cpu, (cpu.gpr[11] & !(RF | VM)) | 2);
        Ok(())
    }
}
