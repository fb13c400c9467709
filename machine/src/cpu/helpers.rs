//! The helper table: what generated code calls for the instructions IR cannot express.
//! Privilege checks and machine state live here; pure flag and arithmetic semantics stay
//! in the frontend.

use gantry_frontend::arith;
use gantry_frontend::flags;
use gantry_frontend::iced_x86;
use gantry_frontend::ir::Helper;
use gantry_frontend::lift::{sse_operand, SseOperand};
use gantry_frontend::sse;
use gantry_frontend::sse_fp;
use gantry_frontend::state::*;
use gantry_frontend::vendor::{FastCalls, SysretNonCanonical};
use gantry_translator::{Exception, Host};

use super::access::Ctx;
use super::cpuid::cpuid;
use super::interrupts::{deliver, Source};
use super::mmu::{Access, Privilege};
use super::paging;
use super::segments::{self, gp};

const UD: Exception = Exception::new(gantry_frontend::state::UD_VECTOR);
const NM: Exception = Exception::new(7);
const XM: Exception = Exception::new(19);
const DE: Exception = Exception::new(0);

fn gp0() -> Exception {
    gp(0)
}

/// Instructions that need CPL 0.
fn require_cpl0(cpu: &CpuState) -> Result<(), Exception> {
    if cpu.cpl() != 0 {
        Err(gp0())
    } else {
        Ok(())
    }
}

fn set_reg32(cpu: &mut CpuState, r: usize, v: u32) {
    cpu.gpr[r] = v as u64;
}

/// A data access's #GP(0) becomes #SS(0) when the access is through SS (SDM vol. 3,
/// "Interrupt 12"). The only #GP(0) a plain load or store gets from the softmmu is the
/// long-mode canonical check, which does not know the segment.
fn through_ss(e: Exception, ss: bool) -> Exception {
    if ss && e.vector == 13 && e.error_code == Some(0) {
        Exception::with_code(12, 0)
    } else {
        e
    }
}

impl Host for Ctx<'_> {
    fn load(
        &mut self,
        cpu: &mut CpuState,
        addr: u64,
        bytes: u8,
        ss: bool,
        rmw: bool,
    ) -> Result<u64, Exception> {
        let access = if rmw { Access::Write } else { Access::Read };
        self.read(cpu, addr, bytes, access, Privilege::User)
            .map_err(|e| through_ss(e, ss))
    }

    fn store(
        &mut self,
        cpu: &mut CpuState,
        addr: u64,
        bytes: u8,
        value: u64,
        ss: bool,
    ) -> Result<(), Exception> {
        self.write(cpu, addr, bytes, value, Privilege::User)
            .map_err(|e| through_ss(e, ss))
    }

    fn helper(&mut self, cpu: &mut CpuState, h: Helper, a: &[u64]) -> Result<u64, Exception> {
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        match h {
            Helper::IoPermission => self
                .io_permission(cpu, arg(0) as u16, arg(1) as u8)
                .map(|_| 0),
            Helper::In(bytes) => {
                self.stats.io += 1;
                let mut d = [0u8; 4];
                self.board.pio_read(arg(0) as u16, &mut d[..bytes as usize]);
                Ok(u32::from_le_bytes(d) as u64)
            }
            Helper::Out(bytes) => {
                self.stats.io += 1;
                let d = (arg(1) as u32).to_le_bytes();
                self.board.pio_write(arg(0) as u16, &d[..bytes as usize]);
                Ok(0)
            }
            Helper::Cpuid => {
                let r = cpuid(self.vendor, cpu.gpr[RAX] as u32, cpu.gpr[RCX] as u32);
                for (reg, v) in [RAX, RBX, RCX, RDX].iter().zip(r) {
                    set_reg32(cpu, *reg, v);
                }
                Ok(0)
            }
            Helper::Rdmsr => {
                require_cpl0(cpu)?;
                let v = self.rdmsr(cpu, cpu.gpr[RCX] as u32)?;
                set_reg32(cpu, RAX, v as u32);
                set_reg32(cpu, RDX, (v >> 32) as u32);
                Ok(0)
            }
            Helper::Wrmsr => {
                require_cpl0(cpu)?;
                let v = (cpu.gpr[RDX] & 0xFFFF_FFFF) << 32 | (cpu.gpr[RAX] & 0xFFFF_FFFF);
                self.wrmsr(cpu, cpu.gpr[RCX] as u32, v)?;
                Ok(0)
            }
            Helper::Rdtsc | Helper::Rdtscp => {
                if cpu.cr4 & CR4_TSD != 0 && cpu.cpl() != 0 {
                    return Err(gp0());
                }
                let t = self.tsc(cpu);
                set_reg32(cpu, RAX, t as u32);
                set_reg32(cpu, RDX, (t >> 32) as u32);
                if h == Helper::Rdtscp {
                    set_reg32(cpu, RCX, cpu.msr.tsc_aux as u32);
                }
                Ok(0)
            }
            Helper::Div(bytes) => arith::divide(cpu, bytes, arg(0), false)
                .map(|_| 0)
                .ok_or(DE),
            Helper::Idiv(bytes) => arith::divide(cpu, bytes, arg(0), true).map(|_| 0).ok_or(DE),
            Helper::LoadSeg(seg) => {
                segments::load_segment(cpu, self, seg as usize, arg(0) as u16)?;
                if seg as usize == SS {
                    cpu.interrupt_shadow = true;
                }
                Ok(0)
            }
            Helper::FarJmp => {
                segments::far_jmp(cpu, self, arg(0) as u16, arg(1), arg(2), arg(3)).map(|_| 0)
            }
            Helper::FarCall => {
                segments::far_call(cpu, self, arg(0) as u16, arg(1), arg(2), arg(3)).map(|_| 0)
            }
            Helper::FarRet => segments::far_ret(cpu, self, arg(0), arg(1)).map(|_| 0),
            Helper::Iret => segments::iret(cpu, self, arg(0), arg(1)).map(|_| 0),
            Helper::SoftInt => {
                let v = arg(0) as u8;
                if cpu.v86() && (flags::rflags(cpu) & IOPL) >> 12 < 3 && v != 3 {
                    return Err(gp0());
                }
                deliver(cpu, self, v, None, Source::Software, arg(1)).map(|_| 0)
            }
            Helper::Into => {
                if flags::rflags(cpu) & OF != 0 {
                    deliver(cpu, self, 4, None, Source::Software, arg(0))?;
                } else {
                    cpu.rip = arg(0);
                }
                Ok(0)
            }
            Helper::Lgdt | Helper::Lidt => {
                require_cpl0(cpu)?;
                let addr = arg(0);
                let limit = self.read(cpu, addr, 2, Access::Read, Privilege::User)? as u32;
                let base = match arg(1) {
                    8 => self.read(cpu, addr + 2, 8, Access::Read, Privilege::User)?,
                    4 => self.read(cpu, addr + 2, 4, Access::Read, Privilege::User)?,
                    _ => self.read(cpu, addr + 2, 4, Access::Read, Privilege::User)? & 0xFF_FFFF,
                };
                let t = DescriptorTable { base, limit };
                if h == Helper::Lgdt {
                    cpu.gdtr = t;
                } else {
                    cpu.idtr = t;
                }
                Ok(0)
            }
            Helper::Sgdt | Helper::Sidt => {
                let t = if h == Helper::Sgdt {
                    cpu.gdtr
                } else {
                    cpu.idtr
                };
                let addr = arg(0);
                self.write(cpu, addr, 2, t.limit as u64, Privilege::User)?;
                let (bytes, base) = match arg(1) {
                    8 => (8, t.base),
                    4 => (4, t.base & 0xFFFF_FFFF),
                    _ => (4, t.base & 0xFF_FFFF),
                };
                self.write(cpu, addr + 2, bytes, base, Privilege::User)?;
                Ok(0)
            }
            Helper::Lldt => self.lldt(cpu, arg(0) as u16).map(|_| 0),
            Helper::Ltr => self.ltr(cpu, arg(0) as u16).map(|_| 0),
            Helper::Sldt => self.umip(cpu).map(|_| cpu.ldtr.selector as u64),
            Helper::Str => self.umip(cpu).map(|_| cpu.tr.selector as u64),
            Helper::Smsw => self.umip(cpu).map(|_| cpu.cr0),
            Helper::Lmsw => {
                require_cpl0(cpu)?;
                // LMSW sets PE but cannot clear it; it touches only PE, MP, EM, TS.
                let v = arg(0) & 0xF;
                let new = (cpu.cr0 & !0xE) | v | (cpu.cr0 & CR0_PE);
                self.write_cr0(cpu, new)?;
                Ok(0)
            }
            Helper::Clts => {
                require_cpl0(cpu)?;
                cpu.cr0 &= !CR0_TS;
                Ok(0)
            }
            Helper::MovToCr(n) => {
                require_cpl0(cpu)?;
                self.write_cr(cpu, n, arg(0)).map(|_| 0)
            }
            Helper::MovFromCr(n) => {
                require_cpl0(cpu)?;
                match n {
                    0 => Ok(cpu.cr0),
                    2 => Ok(cpu.cr2),
                    3 => Ok(cpu.cr3),
                    4 => Ok(cpu.cr4),
                    8 => Ok(cpu.cr8),
                    _ => Err(UD),
                }
            }
            Helper::MovToDr(n) | Helper::MovFromDr(n) => {
                require_cpl0(cpu)?;
                let n = match n {
                    4 | 5 if cpu.cr4 & CR4_DE != 0 => return Err(UD),
                    4 => 6,
                    5 => 7,
                    n if n < 8 => n,
                    _ => return Err(UD),
                } as usize;
                if let Helper::MovToDr(_) = h {
                    cpu.dr[n] = arg(0);
                    self.traps.regs_changed = true;
                    Ok(0)
                } else {
                    Ok(cpu.dr[n])
                }
            }
            Helper::Invlpg => {
                require_cpl0(cpu)?;
                self.mmu.flush_page(arg(0));
                Ok(0)
            }
            Helper::Wbinvd => require_cpl0(cpu).map(|_| 0),
            Helper::Hlt => {
                require_cpl0(cpu)?;
                cpu.halted = true;
                Ok(0)
            }
            Helper::Cli | Helper::Sti => {
                let fl = flags::rflags(cpu);
                let iopl = ((fl & IOPL) >> 12) as u8;
                if cpu.protected() && (cpu.cpl() > iopl || (cpu.v86() && iopl < 3)) {
                    return Err(gp0());
                }
                if h == Helper::Cli {
                    flags::set_rflags(cpu, fl & !IF);
                } else {
                    if fl & IF == 0 {
                        cpu.interrupt_shadow = true;
                    }
                    flags::set_rflags(cpu, fl | IF);
                }
                Ok(0)
            }
            Helper::Pushf => {
                let fl = flags::rflags(cpu);
                if cpu.v86() && (fl & IOPL) >> 12 < 3 {
                    return Err(gp0());
                }
                Ok(fl & !(VM | RF))
            }
            Helper::Popf => {
                let fl = flags::rflags(cpu);
                if cpu.v86() && (fl & IOPL) >> 12 < 3 {
                    return Err(gp0());
                }
                let bytes = arg(1);
                let mut m = segments::writable_flags(cpu, bytes);
                if cpu.v86() {
                    m &= !IOPL;
                }
                let nf = (fl & !m) | (arg(0) & m);
                if nf & IF != 0 && fl & IF == 0 {
                    cpu.interrupt_shadow = true;
                }
                flags::set_rflags(cpu, nf);
                Ok(0)
            }
            Helper::Syscall => self.syscall(cpu, arg(0)).map(|_| 0),
            Helper::Sysret => self.sysret(cpu, arg(1)).map(|_| 0),
            Helper::Sysenter => self.sysenter(cpu).map(|_| 0),
            Helper::Sysexit => self.sysexit(cpu, arg(1)).map(|_| 0),
            Helper::Swapgs => {
                if !cpu.mode64() {
                    return Err(UD);
                }
                require_cpl0(cpu)?;
                std::mem::swap(&mut cpu.seg[GS].base, &mut cpu.msr.kernel_gs_base);
                Ok(0)
            }
            Helper::DescriptorCheck(which) => self.descriptor_check(cpu, which, arg(0) as u16),
            Helper::Fninit => {
                self.fpu_available(cpu, false)?;
                cpu.fx.set_fcw(FCW_INIT);
                fx_set16(cpu, FxState::FSW, 0);
                cpu.fx.bytes[FxState::FTW] = 0; // abridged tag word: all empty
                Ok(0)
            }
            Helper::Fnstsw => {
                self.fpu_available(cpu, false)?;
                Ok(fx_get16(cpu, FxState::FSW) as u64)
            }
            Helper::Fnstcw => {
                self.fpu_available(cpu, false)?;
                let v = fx_get16(cpu, FxState::FCW) as u64;
                self.write(cpu, arg(0), 2, v, Privilege::User)?;
                Ok(0)
            }
            Helper::Fldcw => {
                self.fpu_available(cpu, false)?;
                let v = self.read(cpu, arg(0), 2, Access::Read, Privilege::User)?;
                cpu.fx.set_fcw(gantry_frontend::state::fcw_loaded(v as u16));
                Ok(0)
            }
            Helper::Fxsave | Helper::Fxrstor => {
                self.fpu_available(cpu, false)?;
                let addr = arg(0);
                if addr & 15 != 0 {
                    return Err(gp0());
                }
                if h == Helper::Fxsave {
                    self.check_writable(cpu, addr, 512, Privilege::User)?;
                    for i in 0..64 {
                        let q = u64::from_le_bytes(
                            cpu.fx.bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]),
                        );
                        self.write(cpu, addr + i as u64 * 8, 8, q, Privilege::User)?;
                    }
                } else {
                    let mut img = [0u8; 512];
                    for i in 0..64 {
                        let q =
                            self.read(cpu, addr + i as u64 * 8, 8, Access::Read, Privilege::User)?;
                        img[i * 8..i * 8 + 8].copy_from_slice(&q.to_le_bytes());
                    }
                    let mut img = FxState { bytes: img };
                    if img.mxcsr() & !0xFFFF != 0 {
                        return Err(gp0());
                    }
                    img.set_fcw(gantry_frontend::state::fcw_loaded(img.fcw()));
                    cpu.fx = img;
                }
                Ok(0)
            }
            Helper::Ldmxcsr | Helper::Stmxcsr => {
                self.fpu_available(cpu, true)?;
                if h == Helper::Ldmxcsr {
                    let v = self.read(cpu, arg(0), 4, Access::Read, Privilege::User)?;
                    if v & !0xFFFF != 0 {
                        return Err(gp0());
                    }
                    cpu.fx.set_mxcsr(v as u32);
                } else {
                    let v = cpu.fx.mxcsr();
                    self.write(cpu, arg(0), 4, v as u64, Privilege::User)?;
                }
                Ok(0)
            }
            Helper::Xgetbv => {
                if cpu.cr4 & CR4_OSXSAVE == 0 {
                    return Err(UD);
                }
                if cpu.gpr[RCX] as u32 != 0 {
                    return Err(gp0());
                }
                set_reg32(cpu, RAX, cpu.xcr0 as u32);
                set_reg32(cpu, RDX, (cpu.xcr0 >> 32) as u32);
                Ok(0)
            }
            Helper::Sse => self.sse(cpu, a),
            Helper::Bcd => {
                let m = sse::mnemonic(arg(0)).ok_or(UD)?;
                let (ax, fl) = gantry_frontend::bcd::adjust(
                    m,
                    cpu.gpr[RAX] as u16,
                    flags::rflags(cpu),
                    arg(1) as u8,
                    self.vendor.bcd_flags(),
                )
                .ok_or(DE)?;
                cpu.gpr[RAX] = (cpu.gpr[RAX] & !0xFFFF) | ax as u64;
                flags::set_rflags(cpu, fl);
                Ok(0)
            }
            Helper::Unimplemented => {
                let code = iced_x86::Code::values()
                    .nth(arg(0) as usize)
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_else(|| format!("code {}", arg(0)));
                self.stats.count_unimplemented_at(&code, cpu.rip);
                Err(UD)
            }
        }
    }
}

fn xmm(cpu: &CpuState, i: u8) -> sse::X {
    cpu.fx.xmm(i as usize)
}

fn set_xmm(cpu: &mut CpuState, i: u8, x: &sse::X) {
    cpu.fx.set_xmm(i as usize, x)
}

/// Records SIMD floating-point exceptions in MXCSR; any that MXCSR does not mask is
/// delivered (#XM, or #UD when the OS has not set CR4.OSXMMEXCPT) before the result is
/// written.
fn simd_exceptions(cpu: &mut CpuState, raised: u32) -> Result<(), Exception> {
    let mxcsr = cpu.fx.mxcsr();
    cpu.fx.set_mxcsr(mxcsr | raised);
    let masked = (mxcsr >> sse_fp::MASK_SHIFT) & sse_fp::FLAGS;
    if raised & !masked == 0 {
        Ok(())
    } else if cpu.cr4 & CR4_OSXMMEXCPT != 0 {
        Err(XM)
    } else {
        Err(UD)
    }
}

/// `x` with its low 8 bytes replaced by `v`.
fn with_low(x: &sse::X, v: u64) -> sse::X {
    let mut r = *x;
    r[..8].copy_from_slice(&v.to_le_bytes());
    r
}

fn low(x: &sse::X, n: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..n.min(8)].copy_from_slice(&x[..n.min(8)]);
    u64::from_le_bytes(b)
}

fn from_low(v: u64, n: usize) -> sse::X {
    let mut x = [0u8; 16];
    x[..n.min(8)].copy_from_slice(&v.to_le_bytes()[..n.min(8)]);
    x
}

fn fx_get16(cpu: &CpuState, off: usize) -> u16 {
    u16::from_le_bytes([cpu.fx.bytes[off], cpu.fx.bytes[off + 1]])
}
fn fx_set16(cpu: &mut CpuState, off: usize, v: u16) {
    cpu.fx.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

const MSR_TSC: u32 = 0x10;
const MSR_PLATFORM_ID: u32 = 0x17;
const MSR_APIC_BASE: u32 = 0x1B;
const MSR_BIOS_SIGN_ID: u32 = 0x8B;
const MSR_SYSENTER_CS: u32 = 0x174;
const MSR_SYSENTER_ESP: u32 = 0x175;
const MSR_SYSENTER_EIP: u32 = 0x176;
const MSR_MISC_ENABLE: u32 = 0x1A0;
const MSR_PAT: u32 = 0x277;
const MSR_EFER: u32 = 0xC000_0080;
const MSR_STAR: u32 = 0xC000_0081;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_CSTAR: u32 = 0xC000_0083;
const MSR_SFMASK: u32 = 0xC000_0084;
const MSR_FS_BASE: u32 = 0xC000_0100;
const MSR_GS_BASE: u32 = 0xC000_0101;
const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
const MSR_TSC_AUX: u32 = 0xC000_0103;

impl Ctx<'_> {
    /// The TSC: 1 GHz of the board's clock, plus the guest's offset.
    pub fn tsc(&self, cpu: &CpuState) -> u64 {
        self.board.clock().now_ns().wrapping_add(cpu.tsc_offset)
    }

    fn rdmsr(&mut self, cpu: &CpuState, msr: u32) -> Result<u64, Exception> {
        let m = &cpu.msr;
        Ok(match msr {
            MSR_TSC => self.tsc(cpu),
            MSR_PLATFORM_ID | MSR_BIOS_SIGN_ID => 0,
            MSR_APIC_BASE => m.apic_base,
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
            _ => {
                self.stats.unknown_msrs += 1;
                return Err(gp0());
            }
        })
    }

    fn wrmsr(&mut self, cpu: &mut CpuState, msr: u32, v: u64) -> Result<(), Exception> {
        match msr {
            MSR_TSC => cpu.tsc_offset = v.wrapping_sub(self.board.clock().now_ns()),
            MSR_BIOS_SIGN_ID => {}
            MSR_APIC_BASE => {
                // No local APIC: the enable bit cannot be set.
                if v & (1 << 11) != 0 {
                    return Err(gp0());
                }
                cpu.msr.apic_base = v;
            }
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
            _ => {
                self.stats.unknown_msrs += 1;
                return Err(gp0());
            }
        }
        Ok(())
    }

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

    fn write_cr(&mut self, cpu: &mut CpuState, n: u8, v: u64) -> Result<(), Exception> {
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
                Ok(())
            }
            _ => Err(UD),
        }
    }

    fn read_x(&mut self, cpu: &mut CpuState, addr: u64, n: usize) -> Result<sse::X, Exception> {
        let mut x = [0u8; 16];
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(8);
            let v = self.read(
                cpu,
                addr + done as u64,
                chunk as u8,
                Access::Read,
                Privilege::User,
            )?;
            x[done..done + chunk].copy_from_slice(&v.to_le_bytes()[..chunk]);
            done += chunk;
        }
        Ok(x)
    }

    fn write_x(
        &mut self,
        cpu: &mut CpuState,
        addr: u64,
        x: &sse::X,
        n: usize,
    ) -> Result<(), Exception> {
        self.check_writable(cpu, addr, n as u64, Privilege::User)?;
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(8);
            let mut b = [0u8; 8];
            b[..chunk].copy_from_slice(&x[done..done + chunk]);
            self.write(
                cpu,
                addr + done as u64,
                chunk as u8,
                u64::from_le_bytes(b),
                Privilege::User,
            )?;
            done += chunk;
        }
        Ok(())
    }

    /// An SSE/SSE2 instruction (see `Helper::Sse` for the arguments).
    fn sse(&mut self, cpu: &mut CpuState, a: &[u64]) -> Result<u64, Exception> {
        use gantry_frontend::iced_x86::Mnemonic as M;
        use SseOperand::*;
        self.fpu_available(cpu, true)?;
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        let m = sse::mnemonic(arg(0)).ok_or(UD)?;
        let (dst, src) = (sse_operand(arg(1)), sse_operand(arg(2)));
        let (value, imm, mem) = (arg(3), arg(4) as u8, (arg(5) as usize).min(16));
        let mxcsr = cpu.fx.mxcsr();
        // Memory operands were checked by the translation (alignment, then the segment).
        // The source operand as 128 bits (narrower sources in the low bytes).
        let source = |ctx: &mut Self, cpu: &mut CpuState| -> Result<sse::X, Exception> {
            match src {
                Xmm(i) => Ok(xmm(cpu, i)),
                Gpr(_, size) => Ok(from_low(value, size as usize)),
                Memory => ctx.read_x(cpu, value, mem),
                None => Ok([0; 16]),
            }
        };
        let write_gpr = |cpu: &mut CpuState, i: u8, size: u8, v: u64| {
            cpu.gpr[i as usize & 15] = if size >= 8 { v } else { v & 0xFFFF_FFFF };
        };
        match (m, dst) {
            (M::Movd | M::Movq, Xmm(d)) => {
                let n = match src {
                    Gpr(_, size) => size as usize,
                    Memory => mem,
                    _ => 8,
                };
                let s = source(self, cpu)?;
                set_xmm(cpu, d, &from_low(low(&s, n), n));
            }
            (M::Movd | M::Movq, Gpr(i, size)) => {
                if let Xmm(s) = src {
                    write_gpr(cpu, i, size, low(&xmm(cpu, s), size as usize));
                }
            }
            (M::Movd | M::Movq | M::Movsd | M::Movss | M::Movlps | M::Movlpd, Memory) => {
                if let Xmm(s) = src {
                    let x = xmm(cpu, s);
                    self.write_x(cpu, value, &x, mem)?;
                }
            }
            (M::Movhps | M::Movhpd, Memory) => {
                if let Xmm(s) = src {
                    let x = xmm(cpu, s);
                    let mut hi = [0u8; 16];
                    hi[..8].copy_from_slice(&x[8..]);
                    self.write_x(cpu, value, &hi, 8)?;
                }
            }
            (_, Xmm(d)) if sse::is_full_move(m) => {
                let s = source(self, cpu)?;
                set_xmm(cpu, d, &s);
            }
            (_, Memory) if sse::is_full_move(m) => {
                if let Xmm(s) = src {
                    let x = xmm(cpu, s);
                    self.write_x(cpu, value, &x, 16)?;
                }
            }
            (M::Movsd | M::Movss, Xmm(d)) => {
                let n = if m == M::Movsd { 8 } else { 4 };
                let s = source(self, cpu)?;
                // From memory the rest is zeroed; between registers it is kept.
                let mut r = if src == Memory {
                    [0u8; 16]
                } else {
                    xmm(cpu, d)
                };
                r[..n].copy_from_slice(&s[..n]);
                set_xmm(cpu, d, &r);
            }
            (M::Movhps | M::Movhpd | M::Movlps | M::Movlpd | M::Movhlps, Xmm(d)) => {
                let s = source(self, cpu)?;
                let mut r = xmm(cpu, d);
                match m {
                    M::Movhps | M::Movhpd => r[8..].copy_from_slice(&s[..8]),
                    M::Movhlps => r[..8].copy_from_slice(&s[8..]),
                    _ => r[..8].copy_from_slice(&s[..8]),
                }
                set_xmm(cpu, d, &r);
            }
            (M::Pmovmskb | M::Movmskps | M::Movmskpd, Gpr(i, size)) => {
                let s = source(self, cpu)?;
                write_gpr(cpu, i, size, sse::move_mask(m, &s));
            }
            (M::Comisd | M::Ucomisd, Xmm(d)) => {
                let s = source(self, cpu)?;
                let (f, raised) =
                    sse_fp::comisd(low(&xmm(cpu, d), 8), low(&s, 8), m == M::Comisd, mxcsr);
                simd_exceptions(cpu, raised)?;
                let old = flags::rflags(cpu);
                flags::set_rflags(cpu, (old & !(CF | PF | AF | ZF | SF | OF)) | f);
            }
            (M::Cvtsi2sd, Xmm(d)) => {
                let n = match src {
                    Gpr(_, size) => size as usize,
                    _ => mem,
                };
                let s = source(self, cpu)?;
                let v = low(&s, n);
                let int = if n == 8 {
                    v as i64
                } else {
                    v as u32 as i32 as i64
                };
                let (r, raised) = sse_fp::from_int(int, mxcsr);
                simd_exceptions(cpu, raised)?;
                set_xmm(cpu, d, &with_low(&xmm(cpu, d), r));
            }
            (M::Cvttsd2si | M::Cvtsd2si, Gpr(i, size)) => {
                let s = source(self, cpu)?;
                let truncate = m == M::Cvttsd2si;
                let (v, raised) = sse_fp::to_int(low(&s, 8), size as u32 * 8, truncate, mxcsr);
                simd_exceptions(cpu, raised)?;
                write_gpr(cpu, i, size, v);
            }
            (M::Pextrw, Gpr(i, size)) => {
                let s = source(self, cpu)?;
                let at = (imm & 7) as usize * 2;
                write_gpr(cpu, i, size, u16::from_le_bytes([s[at], s[at + 1]]) as u64);
            }
            (_, Xmm(d)) => {
                let s = source(self, cpu)?;
                let dst = xmm(cpu, d);
                let r = match sse_fp::binary(m, &dst, &s, imm, mxcsr) {
                    Some((r, raised)) => {
                        simd_exceptions(cpu, raised)?;
                        r
                    }
                    Option::None => sse::binary(m, &dst, &s, imm).ok_or(UD)?,
                };
                set_xmm(cpu, d, &r);
            }
            _ => {
                self.stats
                    .count_unimplemented_at(&format!("{m:?} (operand form)"), cpu.rip);
                return Err(UD);
            }
        }
        Ok(0)
    }

    fn umip(&self, cpu: &CpuState) -> Result<(), Exception> {
        if cpu.cr4 & CR4_UMIP != 0 && cpu.cpl() > 0 {
            Err(gp0())
        } else {
            Ok(())
        }
    }

    /// x87 and SSE state instructions: #NM with CR0.TS, #UD with CR0.EM (or, for SSE,
    /// without CR4.OSFXSR).
    fn fpu_available(&self, cpu: &CpuState, sse: bool) -> Result<(), Exception> {
        if cpu.cr0 & CR0_EM != 0 || (sse && cpu.cr4 & CR4_OSFXSR == 0) {
            return Err(UD);
        }
        if cpu.cr0 & CR0_TS != 0 {
            return Err(NM);
        }
        Ok(())
    }

    /// IN/OUT/INS/OUTS in protected mode with CPL > IOPL (or in VM86): the TSS I/O bitmap.
    fn io_permission(&mut self, cpu: &mut CpuState, port: u16, size: u8) -> Result<(), Exception> {
        if !cpu.protected() {
            return Ok(());
        }
        let iopl = ((flags::rflags(cpu) & IOPL) >> 12) as u8;
        if !cpu.v86() && cpu.cpl() <= iopl {
            return Ok(());
        }
        let tr = cpu.tr;
        if tr.attr & 0x8 == 0 || tr.limit < 0x67 {
            return Err(gp0());
        }
        let map = self.sys_read(cpu, tr.base + 0x66, 2)?;
        let byte = map + port as u64 / 8;
        if byte + 1 > tr.limit as u64 {
            return Err(gp0());
        }
        let bits = self.sys_read(cpu, tr.base + byte, 2)?;
        let mask = ((1u64 << size) - 1) << (port % 8);
        if bits & mask != 0 {
            return Err(gp0());
        }
        Ok(())
    }

    /// Loads the GDT descriptor of an LDT or TSS (16 bytes in long mode) for LLDT/LTR,
    /// checked against the system types `ok`; returns its address and the segment.
    fn system_descriptor(
        &mut self,
        cpu: &mut CpuState,
        sel: u16,
        ok: impl Fn(u8) -> bool,
    ) -> Result<(u64, u64, Segment), Exception> {
        if sel & 4 != 0 {
            return Err(gp(sel));
        }
        let (addr, d) = segments::fetch(cpu, self, sel)?;
        if d.s() || !ok(d.typ()) {
            return Err(gp(sel));
        }
        if !d.present() {
            return Err(Exception::with_code(11, (sel & 0xFFFC) as u32));
        }
        let mut s = d.segment(sel);
        if cpu.long_mode() {
            s.base |= (self.sys_read(cpu, addr + 8, 4)? & 0xFFFF_FFFF) << 32;
        }
        Ok((addr, d.raw, s))
    }

    fn lldt(&mut self, cpu: &mut CpuState, sel: u16) -> Result<(), Exception> {
        require_cpl0(cpu)?;
        if !cpu.protected() || cpu.v86() {
            return Err(UD);
        }
        if sel & !3 == 0 {
            cpu.ldtr = Segment {
                selector: sel,
                ..Default::default()
            };
            return Ok(());
        }
        let (_, _, s) = self.system_descriptor(cpu, sel, |t| t == 2)?;
        cpu.ldtr = s;
        Ok(())
    }

    fn ltr(&mut self, cpu: &mut CpuState, sel: u16) -> Result<(), Exception> {
        require_cpl0(cpu)?;
        if !cpu.protected() || cpu.v86() {
            return Err(UD);
        }
        if sel & !3 == 0 {
            return Err(gp(sel));
        }
        // Available 16-bit (1) or 32/64-bit (9) TSS.
        let long = cpu.long_mode();
        let (addr, raw, mut s) =
            self.system_descriptor(cpu, sel, |t| t == 9 || (t == 1 && !long))?;
        // Mark it busy, in memory and in TR.
        self.sys_write(cpu, addr + 5, 1, (raw >> 40) | 2)?;
        s.attr |= 2;
        cpu.tr = s;
        Ok(())
    }

    fn descriptor_check(
        &mut self,
        cpu: &mut CpuState,
        which: u8,
        sel: u16,
    ) -> Result<u64, Exception> {
        if !cpu.protected() || cpu.v86() {
            return Err(UD);
        }
        let fl = flags::rflags(cpu);
        let result = (|| {
            if sel & !3 == 0 {
                return None;
            }
            let (_, d) = segments::fetch(cpu, self, sel).ok()?;
            let cpl = cpu.cpl();
            let rpl = (sel & 3) as u8;
            let privileged_ok = d.conforming() || (d.dpl() >= cpl && d.dpl() >= rpl);
            match which {
                0 | 1 => {
                    let sys_ok = d.s()
                        || matches!(d.typ(), 1 | 2 | 3 | 9 | 11)
                        || (which == 0 && matches!(d.typ(), 4 | 5 | 12));
                    if !sys_ok || !privileged_ok {
                        return None;
                    }
                    Some(if which == 0 {
                        (d.raw >> 32) & 0x00F0_FF00
                    } else {
                        d.limit() as u64
                    })
                }
                2 => (d.s() && d.readable() && privileged_ok).then_some(0),
                _ => (d.writable_data() && privileged_ok).then_some(0),
            }
        })();
        let zf = result.is_some();
        flags::set_rflags(cpu, if zf { fl | ZF } else { fl & !ZF });
        Ok(result.unwrap_or(0))
    }

    /// SYSCALL and SYSRET exist in 64-bit mode, and on AMD in compatibility mode too.
    fn syscall_mode_ok(&self, cpu: &CpuState) -> bool {
        cpu.efer & EFER_SCE != 0
            && cpu.long_mode()
            && (cpu.mode64() || self.vendor.fast_calls() == FastCalls::Amd)
    }

    fn syscall(&mut self, cpu: &mut CpuState, next: u64) -> Result<(), Exception> {
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
    fn sysenter(&mut self, cpu: &mut CpuState) -> Result<(), Exception> {
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
    fn sysenter_mode_ok(&self, cpu: &CpuState) -> Result<(), Exception> {
        if cpu.long_mode() && self.vendor.fast_calls() == FastCalls::Amd {
            Err(UD)
        } else {
            Ok(())
        }
    }

    fn sysexit(&mut self, cpu: &mut CpuState, bytes: u64) -> Result<(), Exception> {
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

    fn sysret(&mut self, cpu: &mut CpuState, bytes: u64) -> Result<(), Exception> {
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
