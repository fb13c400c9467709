//! The helper table: what generated code calls for the instructions IR cannot express,
//! one instruction family a file (`msr`, `control_regs`, `descriptor_tables`, `syscall`,
//! `sse_ops`).
//!
//! Where x86 semantics live: the data semantics (arithmetic, flags, BCD, the SSE
//! operations and their operand forms, the CPU model's vendor rules) are pure functions
//! in `gantry_frontend`, beside the lifter, so the interpreter and the JIT, which only run
//! IR, hold none. The system semantics (privilege checks, MSRs, control registers,
//! descriptor tables, SYSCALL/SYSENTER, interrupt and task delivery in the modules beside
//! this one) live here in the emulated CPU: each reads and writes guest memory through the
//! softmmu, the TSS and descriptor tables, and machine state the frontend does not have.

use gantry_frontend::arith;
use gantry_frontend::flags;
use gantry_frontend::iced_x86;
use gantry_frontend::ir::Helper;
use gantry_frontend::sse;
use gantry_frontend::sse_fp;
use gantry_frontend::state::*;
use gantry_frontend::vendor::{FastCalls, SysretNonCanonical};
use gantry_translator::{Exception, Host};

use super::access::Ctx;
use super::cpuid::cpuid;
use super::interrupts::{deliver, Source};
use super::mmu::{Access, Mmu, Privilege};
use super::paging;
use super::segments::{self, gp};

mod control_regs;
mod descriptor_tables;
mod msr;
mod sse_ops;
mod syscall;

const UD: Exception = Exception::new(gantry_frontend::state::UD_VECTOR);
const NM: Exception = Exception::new(7);
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

    fn store_unless_code(
        &mut self,
        cpu: &mut CpuState,
        addr: u64,
        bytes: u8,
        value: u64,
        ss: bool,
    ) -> Result<bool, Exception> {
        self.write_unless_code(cpu, addr, bytes, value, Privilege::User)
            .map_err(|e| through_ss(e, ss))
    }

    fn data_tlb(&mut self, cpu: &CpuState) -> Option<*const gantry_translator::tlb::TlbEntry> {
        Some(self.mmu.tlb.table(Mmu::index(cpu, Privilege::User)))
    }

    fn wrote_code(&self) -> bool {
        !self.dirty_code.is_empty()
    }

    fn next_block(&mut self, cpu: &mut CpuState) -> Option<gantry_translator::cache::Found> {
        super::chain::next_block(self, cpu)
    }

    fn chain_start(&mut self, cpu: &CpuState) -> Option<gantry_translator::cache::Start> {
        super::chain::chain_start(self, cpu)
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
                self.note_device_writes();
                self.apply_memory_map();
                Ok(0)
            }
            Helper::Cpuid => {
                let apic = self
                    .board
                    .with_lapic(|l| l.hw_enabled().then_some(l.id()))
                    .flatten();
                let r = cpuid(self.vendor, apic, cpu.gpr[RAX] as u32, cpu.gpr[RCX] as u32);
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
            Helper::Iret => segments::iret(cpu, self, arg(0), arg(1)).map(|_| {
                // IRET ends the NMI handler's blocking (any IRET, as on hardware).
                cpu.nmi_blocked = false;
                0
            }),
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
                    8 => Ok(self.board.with_lapic(|l| l.cr8()).unwrap_or(cpu.cr8)),
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
            Helper::Emms => {
                self.fpu_available(cpu, false)?;
                cpu.fx.bytes[FxState::FTW] = 0;
                Ok(0)
            }
            Helper::Fild(bytes) => {
                self.fpu_available(cpu, false)?;
                let raw = self.read(cpu, arg(0), bytes, Access::Read, Privilege::User)?;
                let v = match bytes {
                    2 => raw as i16 as i64,
                    4 => raw as i32 as i64,
                    _ => raw as i64,
                };
                gantry_frontend::x87::push(&mut cpu.fx, gantry_frontend::x87::extended_from_i64(v));
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

fn fx_get16(cpu: &CpuState, off: usize) -> u16 {
    u16::from_le_bytes([cpu.fx.bytes[off], cpu.fx.bytes[off + 1]])
}
fn fx_set16(cpu: &mut CpuState, off: usize, v: u16) {
    cpu.fx.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

impl Ctx<'_> {
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
}
