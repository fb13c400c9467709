//! Delivering exceptions and interrupts: the real-mode IVT, protected-mode IDT gates (16-
//! and 32-bit interrupt and trap gates, with the stack switch through the TSS and the VM86
//! frame), the long-mode IDT with IST, and the double/triple fault rules.

use gantry_frontend::flags;
use gantry_frontend::state::*;
use gantry_translator::Exception;

use super::access::Ctx;
use super::segments::{fetch, Descriptor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A fault or trap raised by an instruction (pushes an error code where defined).
    Exception,
    /// INT n, INT3, INTO: gate DPL is checked, no error code.
    Software,
    /// From the interrupt controller.
    External,
}

/// Exceptions that push an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
}

fn idt_error(vector: u8, source: Source) -> u32 {
    (vector as u32) * 8 + 2 + (source == Source::External) as u32
}

/// Delivers `vector`; `ret` is the address the handler returns to. On failure the state is
/// unchanged and the nested exception is returned.
pub fn deliver(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    vector: u8,
    error: Option<u32>,
    source: Source,
    ret: u64,
) -> Result<(), Exception> {
    ctx.traps.delivered = true;
    let error = if source == Source::Exception && has_error_code(vector) {
        Some(error.unwrap_or(0))
    } else {
        None
    };
    let saved = cpu.clone();
    let r = if !cpu.protected() {
        deliver_real(cpu, ctx, vector, ret)
    } else if cpu.long_mode() {
        deliver_long(cpu, ctx, vector, error, source, ret)
    } else {
        deliver_protected(cpu, ctx, vector, error, source, ret)
    };
    if r.is_err() {
        *cpu = saved;
    } else {
        cpu.halted = false;
    }
    r
}

fn deliver_real(cpu: &mut CpuState, ctx: &mut Ctx, vector: u8, ret: u64) -> Result<(), Exception> {
    let entry = vector as u64 * 4;
    if entry + 3 > cpu.idtr.limit as u64 {
        return Err(Exception::with_code(
            13,
            idt_error(vector, Source::Exception),
        ));
    }
    let ivt = ctx.sys_read(cpu, cpu.idtr.base + entry, 4)?;
    let fl = flags::rflags(cpu);
    super::segments::push(cpu, ctx, fl & 0xFFFF, 2)?;
    let cs = cpu.seg[CS].selector as u64;
    super::segments::push(cpu, ctx, cs, 2)?;
    super::segments::push(cpu, ctx, ret & 0xFFFF, 2)?;
    let sel = (ivt >> 16) as u16;
    cpu.seg[CS].selector = sel;
    cpu.seg[CS].base = (sel as u64) << 4;
    cpu.rip = ivt & 0xFFFF;
    flags::set_rflags(cpu, fl & !(IF | TF | AC | RF));
    Ok(())
}

/// Reads a gate and the code descriptor it names, with the checks common to both modes.
/// Returns (gate low, gate high (long mode), code selector, code descriptor).
fn gate_and_target(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    vector: u8,
    source: Source,
    wide: bool,
) -> Result<(u64, u64, u16, Descriptor), Exception> {
    let size = if wide { 16 } else { 8 };
    let off = vector as u64 * size;
    let gp_idt = Exception::with_code(13, idt_error(vector, source));
    if off + size - 1 > cpu.idtr.limit as u64 {
        return Err(gp_idt);
    }
    let lo = ctx.sys_read(cpu, cpu.idtr.base + off, 8)?;
    let hi = if wide {
        ctx.sys_read(cpu, cpu.idtr.base + off + 8, 8)?
    } else {
        0
    };
    let gate = Descriptor { raw: lo };
    let typ = gate.typ();
    let valid = if wide {
        matches!(typ, 0xE | 0xF)
    } else {
        matches!(typ, 0x6 | 0x7 | 0xE | 0xF)
    };
    if gate.s() || !valid {
        if typ == 0x5 {
            ctx.stats.unsupported_gates += 1; // task gates: no task switching
        }
        return Err(gp_idt);
    }
    if source == Source::Software && gate.dpl() < cpu.cpl() {
        return Err(gp_idt);
    }
    if !gate.present() {
        return Err(Exception::with_code(11, idt_error(vector, source)));
    }
    let sel = (lo >> 16) as u16;
    if sel & !3 == 0 {
        return Err(Exception::with_code(
            13,
            (source == Source::External) as u32,
        ));
    }
    let (_, d) = fetch(cpu, ctx, sel)?;
    if !d.is_code() || d.dpl() > cpu.cpl() {
        return Err(Exception::with_code(13, (sel & 0xFFFC) as u32));
    }
    if !d.present() {
        return Err(Exception::with_code(11, (sel & 0xFFFC) as u32));
    }
    Ok((lo, hi, sel, d))
}

/// Reads `bytes` at `offset` in the current TSS, #TS(TR) if past its limit.
fn tss_read(cpu: &mut CpuState, ctx: &mut Ctx, offset: u64, bytes: u8) -> Result<u64, Exception> {
    let tss = cpu.tr;
    if offset + bytes as u64 - 1 > tss.limit as u64 {
        return Err(Exception::with_code(10, (tss.selector & 0xFFFC) as u32));
    }
    ctx.sys_read(cpu, tss.base + offset, bytes)
}

fn deliver_protected(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    vector: u8,
    error: Option<u32>,
    source: Source,
    ret: u64,
) -> Result<(), Exception> {
    let (lo, _, sel, d) = gate_and_target(cpu, ctx, vector, source, false)?;
    let gate_type = ((lo >> 40) & 0xF) as u8;
    let gate32 = gate_type & 8 != 0;
    let b: u8 = if gate32 { 4 } else { 2 };
    let offset = if gate32 {
        (lo & 0xFFFF) | ((lo >> 48) & 0xFFFF) << 16
    } else {
        lo & 0xFFFF
    };
    let cpl = cpu.cpl();
    let fl = flags::rflags(cpu);
    let v86 = fl & VM != 0;
    let new_cpl = if !d.conforming() && d.dpl() < cpl {
        d.dpl()
    } else {
        cpl
    };
    if v86 && new_cpl != 0 {
        return Err(Exception::with_code(13, (sel & 0xFFFC) as u32));
    }
    let old_ss = cpu.seg[SS].selector as u64;
    let old_sp = cpu.gpr[RSP];
    let mut frame: Vec<u64> = Vec::new();
    if new_cpl < cpl {
        // Inner stack from the TSS.
        let tss32 = cpu.tr.attr & 8 != 0;
        let (sp_off, ss_off, w) = if tss32 {
            (4 + new_cpl as u64 * 8, 8 + new_cpl as u64 * 8, 4)
        } else {
            (2 + new_cpl as u64 * 4, 4 + new_cpl as u64 * 4, 2)
        };
        let new_sp = tss_read(cpu, ctx, sp_off, w)?;
        let new_ss = tss_read(cpu, ctx, ss_off, 2)? as u16;
        if v86 {
            for s in [GS, FS, DS, ES] {
                frame.push(cpu.seg[s].selector as u64);
            }
        }
        frame.push(old_ss);
        frame.push(old_sp);
        // Switch to the new stack (load SS at the new CPL).
        let (ss_addr, ss_d) = fetch(cpu, ctx, new_ss)?;
        let _ = ss_addr;
        if (new_ss & 3) as u8 != new_cpl || ss_d.dpl() != new_cpl || !ss_d.writable_data() {
            return Err(Exception::with_code(10, (new_ss & 0xFFFC) as u32));
        }
        if !ss_d.present() {
            return Err(Exception::with_code(12, (new_ss & 0xFFFC) as u32));
        }
        cpu.seg[SS] = ss_d.segment(new_ss);
        cpu.gpr[RSP] = new_sp;
    }
    frame.push(fl);
    frame.push(cpu.seg[CS].selector as u64);
    frame.push(ret);
    if let Some(e) = error {
        frame.push(e as u64);
    }
    let sp_bits = if cpu.seg[SS].db() { 32 } else { 16 };
    let mut sp = cpu.gpr[RSP];
    for v in &frame {
        sp = sp.wrapping_sub(b as u64);
        let spm = if sp_bits == 32 {
            sp & 0xFFFF_FFFF
        } else {
            sp & 0xFFFF
        };
        let lin = (cpu.seg[SS].base + spm) & 0xFFFF_FFFF;
        ctx.sys_write(cpu, lin, b, *v)?;
    }
    super::segments::set_sp(cpu, sp, sp_bits);
    if v86 {
        for s in [ES, DS, FS, GS] {
            cpu.seg[s] = Segment::default();
        }
    }
    let mut cs = d.segment((sel & !3) | new_cpl as u16);
    cs.attr |= 1;
    cpu.seg[CS] = cs;
    cpu.cpl = new_cpl;
    cpu.rip = offset;
    let mut nf = fl & !(TF | NT | RF | VM);
    if gate_type & 1 == 0 {
        nf &= !IF;
    }
    flags::set_rflags(cpu, nf);
    Ok(())
}

fn deliver_long(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    vector: u8,
    error: Option<u32>,
    source: Source,
    ret: u64,
) -> Result<(), Exception> {
    let (lo, hi, sel, d) = gate_and_target(cpu, ctx, vector, source, true)?;
    if !d.long() || d.raw & (1 << 54) != 0 {
        return Err(Exception::with_code(13, (sel & 0xFFFC) as u32));
    }
    let offset = (lo & 0xFFFF) | ((lo >> 48) & 0xFFFF) << 16 | (hi & 0xFFFF_FFFF) << 32;
    let ist = (lo >> 32) & 7;
    let cpl = cpu.cpl();
    let new_cpl = if !d.conforming() && d.dpl() < cpl {
        d.dpl()
    } else {
        cpl
    };
    let fl = flags::rflags(cpu);
    let old_ss = cpu.seg[SS].selector as u64;
    let old_sp = cpu.gpr[RSP];
    let mut sp = if ist != 0 {
        tss_read(cpu, ctx, 0x24 + (ist - 1) * 8, 8)?
    } else if new_cpl < cpl {
        tss_read(cpu, ctx, 4 + new_cpl as u64 * 8, 8)?
    } else {
        old_sp
    };
    sp &= !0xF;
    let mut frame = vec![old_ss, old_sp, fl, cpu.seg[CS].selector as u64, ret];
    if let Some(e) = error {
        frame.push(e as u64);
    }
    for v in &frame {
        sp = sp.wrapping_sub(8);
        ctx.sys_write(cpu, sp, 8, *v)?;
    }
    if new_cpl < cpl {
        cpu.seg[SS] = Segment {
            base: 0,
            limit: 0,
            selector: new_cpl as u16,
            attr: (new_cpl as u16) << attr::DPL_SHIFT,
        };
    }
    cpu.gpr[RSP] = sp;
    let mut cs = d.segment((sel & !3) | new_cpl as u16);
    cs.attr |= 1;
    cpu.seg[CS] = cs;
    cpu.cpl = new_cpl;
    cpu.rip = offset;
    let mut nf = fl & !(TF | NT | RF | VM);
    if (lo >> 40) & 1 == 0 {
        nf &= !IF;
    }
    flags::set_rflags(cpu, nf);
    Ok(())
}

/// What happened when delivering an exception raised by guest code.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    TripleFault,
}

fn contributory(v: u8) -> bool {
    matches!(v, 0 | 10 | 11 | 12 | 13)
}

/// Delivers an exception raised by an instruction, escalating to #DF and to a triple
/// fault (shutdown) as the SDM's table 6-5 says.
pub fn raise(cpu: &mut CpuState, ctx: &mut Ctx, first: Exception, ret: u64) -> Delivery {
    let mut current = first;
    let mut previous: Option<u8> = None;
    for _ in 0..4 {
        match deliver(
            cpu,
            ctx,
            current.vector,
            current.error_code,
            Source::Exception,
            ret,
        ) {
            Ok(()) => return Delivery::Delivered,
            Err(next) => {
                let prev = current.vector;
                if prev == 8 || previous == Some(8) {
                    return Delivery::TripleFault;
                }
                let double = (contributory(prev) && contributory(next.vector))
                    || (prev == 14 && (contributory(next.vector) || next.vector == 14));
                previous = Some(prev);
                current = if double {
                    Exception::with_code(8, 0)
                } else {
                    next
                };
            }
        }
    }
    Delivery::TripleFault
}
