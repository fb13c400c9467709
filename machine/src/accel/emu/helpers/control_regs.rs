//! MOV to CR0-CR4: the checks (#GP for reserved bits and illegal combinations) and what
//! a change flushes.

use super::*;

impl Ctx<'_> {
    pub fn write_cr0(&mut self, cpu: &mut CpuState, v: u64) -> Result<(), Exception> {
        let v = v | CR0_ET;
        if v >> 32 != 0
            || (v & CR0_PG != 0 && v & CR0_PE == 0)
            || (v & CR0_NW != 0 && v & CR0_CD == 0)
        {
            return Err(gp0());
        }
        let changed = v ^ cpu.cr0;
        if changed & CR0_PG != 0 {
            if v & CR0_PG != 0 && cpu.efer & EFER_LME != 0 {
                if cpu.cr4 & CR4_PAE == 0 {
                    return Err(gp0());
                }
                cpu.efer |= EFER_LMA;
            } else if v & CR0_PG == 0 && cpu.long_mode() {
                if cpu.mode64() {
                    return Err(gp0());
                }
                cpu.efer &= !EFER_LMA;
            }
        }
        cpu.cr0 = v;
        if changed & (CR0_PG | CR0_WP | CR0_PE) != 0 {
            self.mmu.flush(false);
        }
        Ok(())
    }

    pub(super) fn write_cr(&mut self, cpu: &mut CpuState, n: u8, v: u64) -> Result<(), Exception> {
        match n {
            0 => self.write_cr0(cpu, v),
            2 => {
                cpu.cr2 = v;
                Ok(())
            }
            3 => {
                cpu.cr3 = if cpu.long_mode() { v } else { v & 0xFFFF_FFFF };
                self.mmu.flush(true);
                Ok(())
            }
            4 => {
                // VME and PVI are left out: the CPU model has no virtual interrupt flag
                // (CPUID.1:EDX.VME is clear), and setting them is #GP as on such a CPU.
                let known = CR4_TSD
                    | CR4_DE
                    | CR4_PSE
                    | CR4_PAE
                    | CR4_MCE
                    | CR4_PGE
                    | CR4_PCE
                    | CR4_OSFXSR
                    | CR4_OSXMMEXCPT
                    | CR4_UMIP
                    | CR4_FSGSBASE;
                if v & !known != 0 || (cpu.long_mode() && v & CR4_PAE == 0) {
                    return Err(gp0());
                }
                let changed = v ^ cpu.cr4;
                cpu.cr4 = v;
                if changed & (CR4_PAE | CR4_PGE | CR4_PSE) != 0 {
                    self.mmu.flush(false);
                }
                Ok(())
            }
            8 => {
                cpu.cr8 = v & 0xF;
                self.board.with_lapic(|l| l.set_cr8(v));
                Ok(())
            }
            _ => Err(UD),
        }
    }
}
