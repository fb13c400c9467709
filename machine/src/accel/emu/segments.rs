//! Segment descriptors: loading segment registers in every mode, and the far transfers
//! that change CS (JMP, CALL, RET, IRET; call gates are in `call_gates`, task switches in
//! `tasks`). Error codes follow the SDM: the selector with its RPL cleared.

use gantry_frontend::flags;
use gantry_frontend::state::*;
use gantry_translator::Exception;

use super::access::Ctx;
use super::mmu::Privilege;
use super::tasks::{self, Switch};

/// An 8-byte segment or gate descriptor (plus the high half of 16-byte system descriptors
/// in long mode, where that applies).
#[derive(Clone, Copy, Debug)]
pub struct Descriptor {
    pub raw: u64,
}

impl Descriptor {
    pub fn base(&self) -> u64 {
        ((self.raw >> 16) & 0xFF_FFFF) | ((self.raw >> 56) & 0xFF) << 24
    }
    pub fn limit(&self) -> u32 {
        let l = ((self.raw & 0xFFFF) | ((self.raw >> 48) & 0xF) << 16) as u32;
        if self.raw & (1 << 55) != 0 {
            (l << 12) | 0xFFF
        } else {
            l
        }
    }
    /// Access rights in [`attr`] layout.
    pub fn attr(&self) -> u16 {
        (((self.raw >> 40) & 0xFF) | ((self.raw >> 52) & 0xF) << 12) as u16
    }
    pub fn typ(&self) -> u8 {
        ((self.raw >> 40) & 0xF) as u8
    }
    pub fn s(&self) -> bool {
        self.raw & (1 << 44) != 0
    }
    pub fn dpl(&self) -> u8 {
        ((self.raw >> 45) & 3) as u8
    }
    pub fn present(&self) -> bool {
        self.raw & (1 << 47) != 0
    }
    pub fn is_code(&self) -> bool {
        self.s() && self.typ() & 8 != 0
    }
    pub fn conforming(&self) -> bool {
        self.is_code() && self.typ() & 4 != 0
    }
    pub fn readable(&self) -> bool {
        !self.is_code() || self.typ() & 2 != 0
    }
    pub fn writable_data(&self) -> bool {
        self.s() && self.typ() & 8 == 0 && self.typ() & 2 != 0
    }
    pub fn long(&self) -> bool {
        self.raw & (1 << 53) != 0
    }
    pub fn segment(&self, selector: u16) -> Segment {
        Segment {
            base: self.base(),
            limit: self.limit(),
            selector,
            attr: self.attr(),
        }
    }
}

pub fn gp(sel: u16) -> Exception {
    Exception::with_code(13, (sel & 0xFFFC) as u32)
}

/// Reads the descriptor a selector names; returns its linear address too.
pub fn fetch(cpu: &mut CpuState, ctx: &mut Ctx, sel: u16) -> Result<(u64, Descriptor), Exception> {
    let (base, limit) = if sel & 4 != 0 {
        if !cpu.ldtr.present() {
            return Err(gp(sel));
        }
        (cpu.ldtr.base, cpu.ldtr.limit)
    } else {
        (cpu.gdtr.base, cpu.gdtr.limit)
    };
    let index = (sel & !7) as u64;
    if index + 7 > limit as u64 {
        return Err(gp(sel));
    }
    let addr = base.wrapping_add(index);
    let raw = ctx.sys_read(cpu, addr, 8)?;
    Ok((addr, Descriptor { raw }))
}

/// Sets the accessed bit of a code/data descriptor in memory, as the CPU does on load.
pub fn mark_accessed(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    addr: u64,
    d: &Descriptor,
) -> Result<(), Exception> {
    if d.s() && d.typ() & 1 == 0 {
        ctx.sys_write(cpu, addr + 5, 1, (d.raw >> 40) | 1)?;
    }
    Ok(())
}

/// MOV/POP to a data segment register or SS (CS is loaded only by far transfers).
pub fn load_segment(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    seg: usize,
    sel: u16,
) -> Result<(), Exception> {
    if seg == CS {
        return Err(Exception::new(6));
    }
    if cpu.v86() {
        cpu.seg[seg] = v86_segment(sel, false);
        return Ok(());
    }
    if !cpu.protected() {
        // Real mode changes only selector and base: limit and attributes stay (so "unreal
        // mode" works, as on hardware).
        cpu.seg[seg].selector = sel;
        cpu.seg[seg].base = (sel as u64) << 4;
        return Ok(());
    }
    let cpl = cpu.cpl();
    let rpl = (sel & 3) as u8;
    if sel & !3 == 0 {
        if seg == SS && !(cpu.mode64() && cpl != 3 && rpl == cpl) {
            return Err(gp(0));
        }
        let keep_base = if cpu.mode64() { cpu.seg[seg].base } else { 0 };
        cpu.seg[seg] = Segment {
            base: if seg == FS || seg == GS { keep_base } else { 0 },
            limit: 0,
            selector: sel,
            attr: if seg == SS {
                (cpl as u16) << attr::DPL_SHIFT
            } else {
                0
            },
        };
        return Ok(());
    }
    let (addr, d) = fetch(cpu, ctx, sel)?;
    if seg == SS {
        if rpl != cpl || d.dpl() != cpl || !d.writable_data() {
            return Err(gp(sel));
        }
        if !d.present() {
            return Err(Exception::with_code(12, (sel & 0xFFFC) as u32));
        }
    } else {
        if !d.s() || !d.readable() {
            return Err(gp(sel));
        }
        if !d.conforming() && d.dpl() < cpl.max(rpl) {
            return Err(gp(sel));
        }
        if !d.present() {
            return Err(Exception::with_code(11, (sel & 0xFFFC) as u32));
        }
    }
    install(cpu, ctx, seg, sel, addr, &d)
}

/// Loads segment register `seg` from a descriptor whose checks passed, marking it
/// accessed in memory and in the cache.
pub fn install(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    seg: usize,
    sel: u16,
    addr: u64,
    d: &Descriptor,
) -> Result<(), Exception> {
    mark_accessed(cpu, ctx, addr, d)?;
    let mut s = d.segment(sel);
    s.attr |= 1;
    cpu.seg[seg] = s;
    Ok(())
}

/// A segment register in virtual-8086 mode: as in real mode, at privilege 3.
pub fn v86_segment(sel: u16, code: bool) -> Segment {
    let mut s = Segment::real(sel, code);
    s.attr |= 3 << attr::DPL_SHIFT;
    s
}

/// Installs a code segment at privilege `cpl` (RPL becomes CPL).
pub fn set_cs(cpu: &mut CpuState, d: &Descriptor, sel: u16, cpl: u8) {
    let mut s = d.segment((sel & !3) | cpl as u16);
    s.attr |= 1;
    cpu.seg[CS] = s;
    cpu.cpl = cpl;
}

/// Checks a code-segment target of JMP/CALL/RET at the same privilege.
fn check_code_same_level(cpu: &CpuState, d: &Descriptor, sel: u16) -> Result<(), Exception> {
    let cpl = cpu.cpl();
    if !d.is_code() {
        return Err(gp(sel));
    }
    let ok = if d.conforming() {
        d.dpl() <= cpl
    } else {
        (sel & 3) as u8 <= cpl && d.dpl() == cpl
    };
    if !ok {
        return Err(gp(sel));
    }
    if !d.present() {
        return Err(Exception::with_code(11, (sel & 0xFFFC) as u32));
    }
    Ok(())
}

pub fn mask_ip(offset: u64, bytes: u64) -> u64 {
    match bytes {
        2 => offset & 0xFFFF,
        4 => offset & 0xFFFF_FFFF,
        _ => offset,
    }
}

/// Pushes onto the current stack at its width (SS.B / 64-bit mode).
pub fn push(cpu: &mut CpuState, ctx: &mut Ctx, value: u64, bytes: u8) -> Result<(), Exception> {
    let sp_bits = cpu.stack_bits();
    let sp = cpu.gpr[RSP].wrapping_sub(bytes as u64);
    let sp = trunc_sp(sp, sp_bits);
    let lin = stack_linear(cpu, sp);
    check_stack(cpu, ctx, lin, bytes, true)?;
    ctx.write(cpu, lin, bytes, value, super::mmu::Privilege::User)?;
    set_sp(cpu, sp, sp_bits);
    Ok(())
}

/// The SS limit and type check of a push or pop the CPU makes itself (real-mode interrupt
/// delivery, far CALL, RET and IRET on the current stack): #SS(0), as the lifter's checks
/// of instructions' own stack accesses. In real mode a push at SP = 1 thus faults, and
/// delivery escalates to a double and then a triple fault, as the SDM describes.
pub fn check_stack(
    cpu: &CpuState,
    ctx: &Ctx,
    lin: u64,
    bytes: u8,
    write: bool,
) -> Result<(), Exception> {
    if cpu.mode64() {
        return Ok(());
    }
    let top = ctx.vendor.flat_segment_top();
    match cpu.segment_fault(SS, lin, bytes as u32, write, top) {
        Some(vector) => Err(Exception::with_code(vector, 0)),
        None => Ok(()),
    }
}

pub fn pop(cpu: &mut CpuState, ctx: &mut Ctx, bytes: u8) -> Result<u64, Exception> {
    let sp_bits = cpu.stack_bits();
    let sp = trunc_sp(cpu.gpr[RSP], sp_bits);
    let lin = stack_linear(cpu, sp);
    check_stack(cpu, ctx, lin, bytes, false)?;
    let v = ctx.read(
        cpu,
        lin,
        bytes,
        super::mmu::Access::Read,
        super::mmu::Privilege::User,
    )?;
    set_sp(cpu, sp.wrapping_add(bytes as u64), sp_bits);
    Ok(v)
}

/// Pushes `values` in order, `bytes` each, onto SS:SP as interrupt delivery and call
/// gates build their frames: every slot is checked against SS's limit before any is
/// written (#SS(`error`): 0 on the current stack, the new SS's selector after a stack
/// switch), then written at the privilege of the level being entered.
pub fn push_frame(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    values: &[u64],
    bytes: u8,
    error: u32,
    cpl: u8,
) -> Result<(), Exception> {
    let bits = cpu.stack_bits();
    let top = cpu.gpr[RSP];
    let slot = |cpu: &CpuState, i: usize| {
        let sp = top.wrapping_sub((i as u64 + 1) * bytes as u64);
        stack_linear(cpu, trunc_sp(sp, bits))
    };
    if !cpu.mode64() {
        let top = ctx.vendor.flat_segment_top();
        for i in 0..values.len() {
            if cpu
                .segment_fault(SS, slot(cpu, i), bytes as u32, true, top)
                .is_some()
            {
                return Err(Exception::with_code(12, error));
            }
        }
    }
    // Entering level 3 means the current level is 3 already: a user access.
    let privilege = if cpl == 3 {
        Privilege::User
    } else {
        Privilege::Supervisor
    };
    for (i, v) in values.iter().enumerate() {
        let lin = slot(cpu, i);
        ctx.write(cpu, lin, bytes, *v, privilege)?;
    }
    set_sp(
        cpu,
        top.wrapping_sub(values.len() as u64 * bytes as u64),
        bits,
    );
    Ok(())
}

pub fn trunc_sp(sp: u64, bits: u32) -> u64 {
    match bits {
        16 => sp & 0xFFFF,
        32 => sp & 0xFFFF_FFFF,
        _ => sp,
    }
}

pub fn set_sp(cpu: &mut CpuState, sp: u64, bits: u32) {
    cpu.gpr[RSP] = match bits {
        16 => (cpu.gpr[RSP] & !0xFFFF) | (sp & 0xFFFF),
        32 => sp & 0xFFFF_FFFF,
        _ => sp,
    };
}

pub fn stack_linear(cpu: &CpuState, sp: u64) -> u64 {
    if cpu.mode64() {
        sp
    } else {
        (cpu.seg[SS].base.wrapping_add(sp)) & 0xFFFF_FFFF
    }
}

/// What the selector of a far JMP or CALL names.
enum FarTarget {
    /// Real or VM86 mode: the selector is a paragraph.
    Real(u64),
    /// A code segment at the current privilege (checked), its descriptor's address.
    Code(u64, u64, Descriptor),
    /// A call gate (privilege checked), its descriptor's address.
    CallGate(u64, Descriptor),
    /// A TSS, directly or through a task gate (privilege checked).
    Task(u16),
}

/// Resolves the target of a far JMP/CALL and makes the checks that come before the
/// transfer: in protected mode a code segment at the current privilege, or a gate or TSS
/// whose DPL admits both CPL and RPL (SDM: JMP, CALL).
fn far_target(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    sel: u16,
    offset: u64,
    bytes: u64,
) -> Result<FarTarget, Exception> {
    let ip = mask_ip(offset, bytes);
    if !cpu.protected() || cpu.v86() {
        return Ok(FarTarget::Real(ip));
    }
    if sel & !3 == 0 {
        return Err(gp(0));
    }
    let (addr, d) = fetch(cpu, ctx, sel)?;
    if !d.s() {
        let long = cpu.long_mode();
        let target = match d.typ() {
            0xC => FarTarget::CallGate(addr, d),
            4 if !long => FarTarget::CallGate(addr, d),
            5 if !long => FarTarget::Task((d.raw >> 16) as u16),
            1 | 9 if !long => FarTarget::Task(sel),
            _ => return Err(gp(sel)),
        };
        if d.dpl() < cpu.cpl() || d.dpl() < (sel & 3) as u8 {
            return Err(gp(sel));
        }
        // A TSS named directly has its presence checked after its busy bit, by the switch.
        let tss = matches!(d.typ(), 1 | 9);
        if !tss && !d.present() {
            return Err(Exception::with_code(11, (sel & 0xFFFC) as u32));
        }
        return Ok(target);
    }
    check_code_same_level(cpu, &d, sel)?;
    if !(cpu.long_mode() && d.long()) && ip > d.limit() as u64 {
        return Err(gp(0));
    }
    Ok(FarTarget::Code(ip, addr, d))
}

/// Loads CS for a far JMP/CALL to the code segment `far_target` approved (none in real
/// and VM86 mode).
fn enter_far_target(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    sel: u16,
    ip: u64,
    target: Option<(u64, Descriptor)>,
) -> Result<(), Exception> {
    match target {
        None => {
            cpu.seg[CS].selector = sel;
            cpu.seg[CS].base = (sel as u64) << 4;
        }
        Some((addr, d)) => {
            mark_accessed(cpu, ctx, addr, &d)?;
            let cpl = cpu.cpl();
            set_cs(cpu, &d, sel, cpl);
        }
    }
    cpu.rip = ip;
    Ok(())
}

/// JMP far (args: selector, offset, operand bytes, address of the next instruction).
pub fn far_jmp(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    sel: u16,
    offset: u64,
    bytes: u64,
    next: u64,
) -> Result<(), Exception> {
    transactional(cpu, ctx, |cpu, ctx| {
        match far_target(cpu, ctx, sel, offset, bytes)? {
            FarTarget::CallGate(addr, d) => super::call_gates::jmp(cpu, ctx, sel, addr, d),
            FarTarget::Task(tss) => tasks::switch_to(cpu, ctx, tss, Switch::Jmp, next, None),
            FarTarget::Real(ip) => enter_far_target(cpu, ctx, sel, ip, None),
            FarTarget::Code(ip, addr, d) => enter_far_target(cpu, ctx, sel, ip, Some((addr, d))),
        }
    })
}

/// Runs a far transfer as a fault would leave it: if it raises an exception, the CPU
/// state is restored (memory writes already made stay, as on hardware).
fn transactional(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    f: impl FnOnce(&mut CpuState, &mut Ctx) -> Result<(), Exception>,
) -> Result<(), Exception> {
    let saved = cpu.clone();
    let r = f(cpu, ctx);
    if r.is_err() {
        *cpu = saved;
    }
    r
}

/// CALL far (args: selector, offset, operand bytes, return address).
pub fn far_call(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    sel: u16,
    offset: u64,
    bytes: u64,
    next: u64,
) -> Result<(), Exception> {
    transactional(cpu, ctx, |cpu, ctx| {
        match far_target(cpu, ctx, sel, offset, bytes)? {
            FarTarget::CallGate(addr, d) => super::call_gates::call(cpu, ctx, sel, addr, d, next),
            FarTarget::Task(tss) => tasks::switch_to(cpu, ctx, tss, Switch::Call, next, None),
            FarTarget::Real(ip) => {
                push_return(cpu, ctx, bytes, next)?;
                enter_far_target(cpu, ctx, sel, ip, None)
            }
            FarTarget::Code(ip, addr, d) => {
                push_return(cpu, ctx, bytes, next)?;
                enter_far_target(cpu, ctx, sel, ip, Some((addr, d)))
            }
        }
    })
}

/// The return address of a far CALL that stays at its level: CS, then the offset.
fn push_return(cpu: &mut CpuState, ctx: &mut Ctx, bytes: u64, next: u64) -> Result<(), Exception> {
    let old_cs = cpu.seg[CS].selector as u64;
    push(cpu, ctx, old_cs, bytes as u8)?;
    push(cpu, ctx, next, bytes as u8)
}

/// After a return to an outer privilege level, data segments the new CPL may not use
/// become null (SDM: RET, IRET).
fn scrub_data_segments(cpu: &mut CpuState) {
    let cpl = cpu.cpl();
    for seg in [ES, DS, FS, GS] {
        let s = cpu.seg[seg];
        let code_conforming = s.attr & attr::CODE != 0 && s.attr & 4 != 0;
        if s.present() && !code_conforming && s.dpl() < cpl {
            cpu.seg[seg].selector = 0;
            cpu.seg[seg].attr = 0;
        }
    }
}

/// The checks on the code segment a far RET or IRET returns to (SDM: RET, IRET).
fn return_target(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    sel: u16,
) -> Result<(u64, Descriptor), Exception> {
    if sel & !3 == 0 {
        return Err(gp(0));
    }
    let (addr, d) = fetch(cpu, ctx, sel)?;
    let cpl = cpu.cpl();
    let rpl = (sel & 3) as u8;
    let dpl_ok = if d.conforming() {
        d.dpl() <= rpl
    } else {
        d.dpl() == rpl
    };
    if !d.is_code() || rpl < cpl || !dpl_ok {
        return Err(gp(sel));
    }
    if !d.present() {
        return Err(Exception::with_code(11, (sel & 0xFFFC) as u32));
    }
    Ok((addr, d))
}

/// RET far (args: operand bytes, bytes of parameters to release).
pub fn far_ret(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    bytes: u64,
    release: u64,
) -> Result<(), Exception> {
    transactional(cpu, ctx, |cpu, ctx| {
        let b = bytes as u8;
        let ip = pop(cpu, ctx, b)?;
        let sel = pop(cpu, ctx, b)? as u16;
        let sp_bits = cpu.stack_bits();
        if !cpu.protected() || cpu.v86() {
            cpu.seg[CS].selector = sel;
            cpu.seg[CS].base = (sel as u64) << 4;
            cpu.rip = mask_ip(ip, bytes);
            set_sp(cpu, cpu.gpr[RSP].wrapping_add(release), sp_bits);
            return Ok(());
        }
        let (addr, d) = return_target(cpu, ctx, sel)?;
        let (cpl, rpl) = (cpu.cpl(), (sel & 3) as u8);
        set_sp(cpu, cpu.gpr[RSP].wrapping_add(release), sp_bits);
        mark_accessed(cpu, ctx, addr, &d)?;
        if rpl > cpl {
            // Return to an outer level: the caller's SS:SP follow.
            let new_sp = pop(cpu, ctx, b)?;
            let new_ss = pop(cpu, ctx, b)? as u16;
            set_cs(cpu, &d, sel, rpl);
            load_segment(cpu, ctx, SS, new_ss)?;
            cpu.gpr[RSP] = new_sp.wrapping_add(release);
            scrub_data_segments(cpu);
        } else {
            set_cs(cpu, &d, sel, cpl);
        }
        cpu.rip = mask_ip(ip, bytes);
        Ok(())
    })
}

/// The RFLAGS bits IRET/POPF may change at this privilege (SDM: POPF, IRET).
pub fn writable_flags(cpu: &CpuState, bytes: u64) -> u64 {
    let cpl = cpu.cpl();
    let iopl = ((flags::rflags(cpu) & IOPL) >> 12) as u8;
    let mut mask = CF | PF | AF | ZF | SF | TF | DF | OF | NT | AC | ID;
    if !cpu.protected() || cpl == 0 {
        mask |= IOPL;
    }
    if !cpu.protected() || cpl <= iopl {
        mask |= IF;
    }
    match bytes {
        2 => mask & 0xFFFF,
        _ => mask,
    }
}

/// IRETD/IRETQ load RF from the frame (POPF does not), so a debug handler can return
/// past an instruction breakpoint.
fn iret_rf(bytes: u64) -> u64 {
    if bytes == 2 {
        0
    } else {
        RF
    }
}

/// IRET in every mode (args: operand bytes, address of the next instruction, where a
/// task return leaves the old task).
pub fn iret(cpu: &mut CpuState, ctx: &mut Ctx, bytes: u64, next: u64) -> Result<(), Exception> {
    transactional(cpu, ctx, |cpu, ctx| iret_inner(cpu, ctx, bytes, next))
}

fn iret_inner(cpu: &mut CpuState, ctx: &mut Ctx, bytes: u64, next: u64) -> Result<(), Exception> {
    let b = bytes as u8;
    let old_flags = flags::rflags(cpu);
    if !cpu.protected() || cpu.v86() {
        if cpu.v86() && (old_flags & IOPL) >> 12 < 3 {
            return Err(gp(0));
        }
        let ip = pop(cpu, ctx, b)?;
        let cs = pop(cpu, ctx, b)? as u16;
        let fl = pop(cpu, ctx, b)?;
        let m = if cpu.v86() {
            // IOPL stays; VM86 code cannot change it.
            (CF | PF | AF | ZF | SF | TF | DF | OF | NT | AC | ID | IF)
                & if bytes == 2 { 0xFFFF } else { !0 }
        } else {
            writable_flags(cpu, bytes)
        } | iret_rf(bytes);
        if cpu.v86() {
            cpu.seg[CS] = v86_segment(cs, true);
        } else {
            cpu.seg[CS].selector = cs;
            cpu.seg[CS].base = (cs as u64) << 4;
        }
        cpu.rip = mask_ip(ip, bytes);
        flags::set_rflags(cpu, (old_flags & !m) | (fl & m));
        return Ok(());
    }
    if old_flags & NT != 0 {
        if cpu.long_mode() {
            return Err(gp(0));
        }
        // A task return: back to the task the current TSS links to.
        let link = tasks::tss_read(cpu, ctx, 0, 2)? as u16;
        return tasks::switch_to(cpu, ctx, link, Switch::Iret, next, None);
    }
    let ip = pop(cpu, ctx, b)?;
    let sel = pop(cpu, ctx, b)? as u16;
    let fl = pop(cpu, ctx, b)?;
    let cpl = cpu.cpl();
    if fl & VM != 0 && cpl == 0 && bytes == 4 && !cpu.long_mode() {
        return iret_to_v86(cpu, ctx, ip, sel, fl);
    }
    let (addr, d) = return_target(cpu, ctx, sel)?;
    let rpl = (sel & 3) as u8;
    let m = writable_flags(cpu, bytes) | iret_rf(bytes);
    let pops_stack = rpl > cpl || cpu.mode64();
    let new_stack = if pops_stack {
        let sp = pop(cpu, ctx, b)?;
        let ss = pop(cpu, ctx, b)? as u16;
        Some((sp, ss))
    } else {
        None
    };
    mark_accessed(cpu, ctx, addr, &d)?;
    set_cs(cpu, &d, sel, rpl);
    if let Some((sp, ss)) = new_stack {
        load_segment(cpu, ctx, SS, ss)?;
        cpu.gpr[RSP] = if cpu.seg[SS].db() || cpu.mode64() {
            sp
        } else {
            (cpu.gpr[RSP] & !0xFFFF) | (sp & 0xFFFF)
        };
    }
    cpu.rip = mask_ip(ip, bytes);
    flags::set_rflags(cpu, (old_flags & !m) | (fl & m));
    if rpl > cpl {
        scrub_data_segments(cpu);
    }
    Ok(())
}

/// IRETD at CPL 0 whose EFLAGS image has VM set enters virtual-8086 mode: ESP, SS, ES,
/// DS, FS and GS follow in the frame, and every segment register loads as in real mode
/// (SDM: IRET, RETURN-TO-VIRTUAL-8086-MODE).
fn iret_to_v86(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    ip: u64,
    cs: u16,
    fl: u64,
) -> Result<(), Exception> {
    let mut rest = [0u64; 6];
    for r in rest.iter_mut() {
        *r = pop(cpu, ctx, 4)?;
    }
    let [sp, ss, es, ds, fs, gs] = rest;
    // The new CS's limit is FFFFh.
    if ip > 0xFFFF {
        return Err(gp(0));
    }
    flags::set_rflags(cpu, fl & RFLAGS_DEFINED);
    cpu.seg[CS] = v86_segment(cs, true);
    for (seg, sel) in [(SS, ss), (ES, es), (DS, ds), (FS, fs), (GS, gs)] {
        cpu.seg[seg] = v86_segment(sel as u16, false);
    }
    cpu.gpr[RSP] = sp & 0xFFFF_FFFF;
    cpu.rip = ip;
    cpu.cpl = 3;
    Ok(())
}
