//! RDMSR and WRMSR: the model-specific registers the CPU model has.

use super::*;
use gantry_devices::lapic::{X2APIC_MSR_FIRST, X2APIC_MSR_LAST};
use gantry_frontend::vendor::Vendor;

const MSR_TSC: u32 = 0x10;
const MSR_PLATFORM_ID: u32 = 0x17;
const MSR_APIC_BASE: u32 = 0x1B;
const MSR_BIOS_SIGN_ID: u32 = 0x8B;
const MSR_ARCH_CAPABILITIES: u32 = 0x10A;
const MSR_SYSENTER_CS: u32 = 0x174;
const MSR_SYSENTER_ESP: u32 = 0x175;
const MSR_SYSENTER_EIP: u32 = 0x176;
const MSR_MISC_ENABLE: u32 = 0x1A0;
const MSR_PAT: u32 = 0x277;
const MSR_TSC_DEADLINE: u32 = 0x6E0;
const MSR_EFER: u32 = 0xC000_0080;
const MSR_STAR: u32 = 0xC000_0081;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_CSTAR: u32 = 0xC000_0083;
const MSR_SFMASK: u32 = 0xC000_0084;
const MSR_FS_BASE: u32 = 0xC000_0100;
const MSR_GS_BASE: u32 = 0xC000_0101;
const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
const MSR_TSC_AUX: u32 = 0xC000_0103;
const MSR_AMD_HWCR: u32 = 0xC001_0015;
const MSR_AMD_NB_CFG: u32 = 0xC001_001F;
/// HWCR.TscFreqSel: the TSC counts at the P0 frequency (read-only on Zen; Linux warns of
/// a firmware bug without it).
const HWCR_TSC_FREQ_SEL: u64 = 1 << 24;

/// IA32_ARCH_CAPABILITIES (read-only): the emulated CPU executes nothing speculatively and
/// has no fill, store or load-port buffers to sample, so it is not vulnerable to the
/// attacks these bits rule out: RDCL_NO (Meltdown), SSB_NO, MDS_NO, IF_PSCHANGE_MC_NO,
/// TAA_NO, SBDR_SSDP_NO, FBSDP_NO, PSDP_NO, BHI_NO, PBRSB_NO, GDS_NO and RFDS_NO. Without
/// RDCL_NO, Linux takes an Intel model for Meltdown-vulnerable and isolates its page
/// tables (a CR3 write on every entry and exit, kernel pages not global), which QEMU's
/// default AMD model never asks of it.
const NOT_VULNERABLE: u64 = 1 << 0
    | 1 << 4
    | 1 << 5
    | 1 << 6
    | 1 << 8
    | 1 << 13
    | 1 << 14
    | 1 << 15
    | 1 << 20
    | 1 << 24
    | 1 << 26
    | 1 << 27;

impl Ctx<'_> {
    /// The TSC: 1 GHz of the board's clock, plus the guest's offset.
    pub fn tsc(&self, cpu: &CpuState) -> u64 {
        self.board.clock().now_ns().wrapping_add(cpu.tsc_offset)
    }

    pub(super) fn rdmsr(&mut self, cpu: &CpuState, msr: u32) -> Result<u64, Exception> {
        let m = &cpu.msr;
        Ok(match msr {
            MSR_TSC => self.tsc(cpu),
            MSR_PLATFORM_ID | MSR_BIOS_SIGN_ID => 0,
            MSR_ARCH_CAPABILITIES => NOT_VULNERABLE,
            MSR_APIC_BASE => self
                .board
                .with_lapic(|l| l.base_msr())
                .unwrap_or(m.apic_base),
            MSR_TSC_DEADLINE => self
                .board
                .with_lapic(|l| l.tsc_deadline())
                .ok_or_else(gp0)?,
            X2APIC_MSR_FIRST..=X2APIC_MSR_LAST => self
                .board
                .with_lapic(|l| l.read_msr(msr))
                .flatten()
                .ok_or_else(gp0)?,
            MSR_SYSENTER_CS => m.sysenter_cs,
            MSR_SYSENTER_ESP => m.sysenter_esp,
            MSR_SYSENTER_EIP => m.sysenter_eip,
            MSR_MISC_ENABLE => m.misc_enable,
            MSR_PAT => m.pat,
            MSR_EFER => cpu.efer,
            MSR_STAR => m.star,
            MSR_LSTAR => m.lstar,
            MSR_CSTAR => m.cstar,
            MSR_SFMASK => m.sfmask,
            MSR_FS_BASE => cpu.seg[FS].base,
            MSR_GS_BASE => cpu.seg[GS].base,
            MSR_KERNEL_GS_BASE => m.kernel_gs_base,
            MSR_TSC_AUX => m.tsc_aux,
            MSR_AMD_HWCR if self.vendor == Vendor::Amd => m.amd_hwcr | HWCR_TSC_FREQ_SEL,
            MSR_AMD_NB_CFG if self.vendor == Vendor::Amd => m.amd_nb_cfg,
            _ => {
                self.stats.unknown_msrs += 1;
                return Err(gp0());
            }
        })
    }

    pub(super) fn wrmsr(&mut self, cpu: &mut CpuState, msr: u32, v: u64) -> Result<(), Exception> {
        match msr {
            MSR_TSC => cpu.tsc_offset = v.wrapping_sub(self.board.clock().now_ns()),
            MSR_BIOS_SIGN_ID => {}
            MSR_APIC_BASE => {
                match self
                    .board
                    .with_lapic(|l| l.set_base_msr(v).map(|_| l.base_msr()))
                {
                    Some(Ok(base)) => cpu.msr.apic_base = base,
                    Some(Err(_)) => return Err(gp0()),
                    // No local APIC: the enable bit cannot be set.
                    None if v & (1 << 11) != 0 => return Err(gp0()),
                    None => cpu.msr.apic_base = v,
                }
                // Nothing cached depends on it: accesses to the xAPIC page take the TLB's
                // slow path to the board, which asks the APIC where its page is, and
                // CPUID asks it each time.
            }
            MSR_TSC_DEADLINE => {
                let now = self.board.clock().now_ns();
                let at = now.saturating_add(v.saturating_sub(self.tsc(cpu)));
                self.board
                    .with_lapic(|l| l.set_tsc_deadline(v, at))
                    .ok_or_else(gp0)?;
            }
            X2APIC_MSR_FIRST..=X2APIC_MSR_LAST => self
                .board
                .with_lapic(|l| l.write_msr(msr, v))
                .and_then(Result::ok)
                .ok_or_else(gp0)?,
            MSR_SYSENTER_CS => cpu.msr.sysenter_cs = v & 0xFFFF,
            MSR_SYSENTER_ESP => cpu.msr.sysenter_esp = v,
            MSR_SYSENTER_EIP => cpu.msr.sysenter_eip = v,
            MSR_MISC_ENABLE => cpu.msr.misc_enable = v,
            MSR_PAT => cpu.msr.pat = v,
            MSR_EFER => {
                let allowed = EFER_SCE | EFER_LME | EFER_NXE;
                if v & !(allowed | EFER_LMA) != 0 {
                    return Err(gp0());
                }
                if cpu.cr0 & CR0_PG != 0 && (v ^ cpu.efer) & EFER_LME != 0 {
                    return Err(gp0());
                }
                if (v ^ cpu.efer) & EFER_NXE != 0 {
                    self.mmu.flush(false);
                }
                cpu.efer = (cpu.efer & EFER_LMA) | (v & allowed);
            }
            MSR_STAR => cpu.msr.star = v,
            MSR_LSTAR | MSR_CSTAR | MSR_FS_BASE | MSR_GS_BASE | MSR_KERNEL_GS_BASE
                if !paging::canonical(v) =>
            {
                return Err(gp0())
            }
            MSR_LSTAR => cpu.msr.lstar = v,
            MSR_CSTAR => cpu.msr.cstar = v,
            MSR_SFMASK => cpu.msr.sfmask = v & 0xFFFF_FFFF,
            MSR_FS_BASE => cpu.seg[FS].base = v,
            MSR_GS_BASE => cpu.seg[GS].base = v,
            MSR_KERNEL_GS_BASE => cpu.msr.kernel_gs_base = v,
            MSR_TSC_AUX => cpu.msr.tsc_aux = v & 0xFFFF_FFFF,
            // Configuration bits the model has no behaviour behind (Linux sets NB_CFG's
            // EnableCf8ExtCfg for extended PCI configuration through 0xCF8, which the
            // board does not decode): kept, so they read back.
            MSR_AMD_HWCR if self.vendor == Vendor::Amd => cpu.msr.amd_hwcr = v & !HWCR_TSC_FREQ_SEL,
            MSR_AMD_NB_CFG if self.vendor == Vendor::Amd => cpu.msr.amd_nb_cfg = v,
            _ => {
                self.stats.unknown_msrs += 1;
                return Err(gp0());
            }
        }
        Ok(())
    }
}
