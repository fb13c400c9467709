//! Delivering exceptions and interrupts: the real-mode IVT, protected-mode IDT gates (16-
//! and 32-bit interrupt and trap gates, with the stack switch through the TSS and the VM86
//! frame; task gates), the long-mode IDT with IST, and the double/triple fault rules.

use gantry_frontend::flags;
use gantry_frontend::state::*;
use gantry_translator::Exception;

use super::access::Ctx;
use super::segments::{fetch, push_frame, Descriptor};
use super::tasks::{self, inner_stack, tss_read, Switch};

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

/// Reads the IDT's gate for `vector` (16 bytes in long mode) with the checks common to
/// every gate: within the IDT, a gate type the mode allows, the DPL of INT n, present.
fn read_gate(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    vector: u8,
    source: Source,
    wide: bool,
) -> Result<(u64, u64), Exception> {
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
    let valid = if wide {
        matches!(gate.typ(), 0xE | 0xF)
    } else {
        matches!(gate.typ(), 0x5 | 0x6 | 0x7 | 0xE | 0xF)
    };
    if gate.s() || !valid {
        return Err(gp_idt);
    }
    if source == Source::Software && gate.dpl() < cpu.cpl() {
        return Err(gp_idt);
    }
    if !gate.present() {
        return Err(Exception::with_code(11, idt_error(vector, source)));
    }
    Ok((lo, hi))
}

/// The code segment an interrupt or trap gate names: code at or above the current level.
fn gate_target(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    lo: u64,
    source: Source,
) -> Result<(u16, Descriptor), Exception> {
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
    Ok((sel, d))
}

fn deliver_protected(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    vector: u8,
    error: Option<u32>,
    source: Source,
    ret: u64,
) -> Result<(), Exception> {
    let (lo, _) = read_gate(cpu, ctx, vector, source, false)?;
    let gate_type = ((lo >> 40) & 0xF) as u8;
    if gate_type == 5 {
        // A task gate: the handler is a task of its own, and the error code goes on its
        // stack.
        return tasks::switch_to(cpu, ctx, (lo >> 16) as u16, Switch::Interrupt, ret, error);
    }
    let (sel, d) = gate_target(cpu, ctx, lo, source)?;
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
    let ext = (source == Source::External) as u32;
    let mut frame = [0u64; 10];
    let mut n = 0;
    let mut put = |v: u64| {
        frame[n] = v;
        n += 1;
    };
    let stack_error = if new_cpl < cpl {
        let (ss, sp) = inner_stack(cpu, ctx, new_cpl)?;
        if v86 {
            for s in [GS, FS, DS, ES] {
                put(cpu.seg[s].selector as u64);
            }
        }
        put(cpu.seg[SS].selector as u64);
        put(cpu.gpr[RSP]);
        cpu.seg[SS] = ss;
        cpu.gpr[RSP] = sp;
        (ss.selector & 0xFFFC) as u32 | ext
    } else {
        ext
    };
    put(fl);
    put(cpu.seg[CS].selector as u64);
    put(ret);
    if let Some(e) = error {
        put(e as u64);
    }
    // The frame goes onto the handler's stack, which VM86's rules no longer describe.
    flags::set_rflags(cpu, fl & !VM);
    push_frame(cpu, ctx, &frame[..n], b, stack_error, new_cpl)?;
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
    let (lo, hi) = read_gate(cpu, ctx, vector, source, true)?;
    let (sel, d) = gate_target(cpu, ctx, lo, source)?;
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
    // The stack: IST's if the gate names one, else the inner level's from the TSS on a
    // privilege change (SS becomes null at that level), else the current one.
    let inner = if new_cpl < cpl {
        Some(inner_stack(cpu, ctx, new_cpl)?)
    } else {
        None
    };
    let mut sp = if ist != 0 {
        tss_read(cpu, ctx, 0x24 + (ist - 1) * 8, 8)?
    } else {
        inner.map_or(old_sp, |(_, sp)| sp)
    };
    sp &= !0xF;
    let frame = [old_ss, old_sp, fl, cpu.seg[CS].selector as u64, ret];
    let code = error.map(|e| e as u64);
    for v in frame.iter().chain(code.iter()) {
        sp = sp.wrapping_sub(8);
        ctx.sys_write(cpu, sp, 8, *v)?;
    }
    if let Some((ss, _)) = inner {
        cpu.seg[SS] = ss;
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
