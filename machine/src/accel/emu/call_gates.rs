//! Far CALL and JMP through call gates (SDM vol. 3, 5.8.3-5.8.6; CALL, JMP). A gate names
//! a code segment and its entry point. A CALL to a more privileged non-conforming segment
//! switches to that level's stack from the TSS and copies the gate's count of parameters
//! from the caller's stack; far RET with an outer RPL undoes it. In long mode the gates
//! are 16 bytes, lead only to 64-bit code and copy no parameters.

use gantry_frontend::state::*;
use gantry_translator::Exception;

use super::access::Ctx;
use super::segments::{
    fetch, gp, mark_accessed, push_frame, set_cs, stack_linear, trunc_sp, Descriptor,
};
use super::tasks::inner_stack;

struct Gate {
    code: u16,
    entry: u64,
    /// Width of the pushed slots: 2 (16-bit gate), 4 (32-bit) or 8 (long mode).
    bytes: u8,
    params: u8,
}

fn np(sel: u16) -> Exception {
    Exception::with_code(11, (sel & 0xFFFC) as u32)
}

/// Reads the gate at `addr` (`sel` names it) and checks the code segment it leads to is
/// code at or above the current privilege (#GP(code selector); #GP(0) for a null one).
fn read(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    sel: u16,
    addr: u64,
    d: Descriptor,
) -> Result<(Gate, u64, Descriptor), Exception> {
    let lo = d.raw;
    let offset_lo = (lo & 0xFFFF) | ((lo >> 48) & 0xFFFF) << 16;
    let gate = if cpu.long_mode() {
        // The upper half must lie within the table and have type 0.
        let table_limit = if sel & 4 != 0 {
            cpu.ldtr.limit
        } else {
            cpu.gdtr.limit
        };
        if (sel & !7) as u64 + 15 > table_limit as u64 {
            return Err(gp(sel));
        }
        let hi = ctx.sys_read(cpu, addr + 8, 8)?;
        if (hi >> 40) & 0x1F != 0 {
            return Err(gp(sel));
        }
        Gate {
            code: (lo >> 16) as u16,
            entry: offset_lo | (hi & 0xFFFF_FFFF) << 32,
            bytes: 8,
            params: 0,
        }
    } else {
        let wide = d.typ() & 8 != 0;
        Gate {
            code: (lo >> 16) as u16,
            entry: if wide { offset_lo } else { lo & 0xFFFF },
            bytes: if wide { 4 } else { 2 },
            params: ((lo >> 32) & 0x1F) as u8,
        }
    };
    if gate.code & !3 == 0 {
        return Err(gp(0));
    }
    let (code_addr, cd) = fetch(cpu, ctx, gate.code)?;
    let sixty_four = cd.long() && cd.raw & (1 << 54) == 0;
    if !cd.is_code() || cd.dpl() > cpu.cpl() || (cpu.long_mode() && !sixty_four) {
        return Err(gp(gate.code));
    }
    Ok((gate, code_addr, cd))
}

/// The entry point must lie within the code segment (#GP(0)); 64-bit code has no limit.
fn check_entry(cpu: &CpuState, gate: &Gate, cd: &Descriptor) -> Result<(), Exception> {
    if !cpu.long_mode() && gate.entry > cd.limit() as u64 {
        return Err(gp(0));
    }
    Ok(())
}

/// JMP through a call gate: to a conforming segment, or a non-conforming one at the
/// current level. The privilege never changes.
pub fn jmp(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    sel: u16,
    addr: u64,
    d: Descriptor,
) -> Result<(), Exception> {
    let (gate, code_addr, cd) = read(cpu, ctx, sel, addr, d)?;
    let cpl = cpu.cpl();
    if !cd.conforming() && cd.dpl() != cpl {
        return Err(gp(gate.code));
    }
    if !cd.present() {
        return Err(np(gate.code));
    }
    check_entry(cpu, &gate, &cd)?;
    mark_accessed(cpu, ctx, code_addr, &cd)?;
    set_cs(cpu, &cd, gate.code, cpl);
    cpu.rip = gate.entry;
    Ok(())
}

/// CALL through a call gate; `next` is the return address.
pub fn call(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    sel: u16,
    addr: u64,
    d: Descriptor,
    next: u64,
) -> Result<(), Exception> {
    let (gate, code_addr, cd) = read(cpu, ctx, sel, addr, d)?;
    if !cd.present() {
        return Err(np(gate.code));
    }
    let cpl = cpu.cpl();
    let new_cpl = if !cd.conforming() && cd.dpl() < cpl {
        cd.dpl()
    } else {
        cpl
    };
    let old_cs = cpu.seg[CS].selector as u64;
    let b = gate.bytes;
    if new_cpl < cpl {
        // The parameters, read from the caller's stack before it is left: parameter i
        // (pushed first by the caller is the highest) at SP + i * size.
        let mut params = [0u64; 31];
        let count = gate.params as usize;
        let bits = cpu.stack_bits();
        for (i, p) in params[..count].iter_mut().enumerate() {
            let sp = trunc_sp(cpu.gpr[RSP].wrapping_add((i * b as usize) as u64), bits);
            let lin = stack_linear(cpu, sp);
            super::segments::check_stack(cpu, ctx, lin, b, false)?;
            *p = ctx.sys_read(cpu, lin, b)?;
        }
        let (old_ss, old_sp) = (cpu.seg[SS].selector as u64, cpu.gpr[RSP]);
        let (ss, sp) = inner_stack(cpu, ctx, new_cpl)?;
        cpu.seg[SS] = ss;
        cpu.gpr[RSP] = sp;
        check_entry(cpu, &gate, &cd)?;
        let mut frame = [0u64; 35];
        frame[0] = old_ss;
        frame[1] = old_sp;
        for (slot, p) in frame[2..2 + count]
            .iter_mut()
            .zip(params[..count].iter().rev())
        {
            *slot = *p;
        }
        frame[2 + count] = old_cs;
        frame[3 + count] = next;
        let error = if cpu.long_mode() {
            0
        } else {
            (ss.selector & 0xFFFC) as u32
        };
        push_frame(cpu, ctx, &frame[..4 + count], b, error, new_cpl)?;
    } else {
        check_entry(cpu, &gate, &cd)?;
        push_frame(cpu, ctx, &[old_cs, next], b, 0, cpl)?;
    }
    mark_accessed(cpu, ctx, code_addr, &cd)?;
    set_cs(cpu, &cd, gate.code, new_cpl);
    cpu.rip = gate.entry;
    Ok(())
}
