//! The task-state segment: the inner stacks a privilege change switches to, and hardware
//! task switches (SDM vol. 3, chapter 7) by far JMP and CALL, by interrupts through task
//! gates and by IRET with NT set, between 32-bit and 16-bit TSSs.
//!
//! A switch has a commit point (7.3, step 8, when TR is loaded). A fault before it leaves
//! the old task as it was; a fault after it (loading the new task's segments, pushing an
//! error code, its EIP past CS's limit) belongs to the new task: it is left in
//! [`Ctx::task_fault`] and the run loop delivers it with the new task's state.

use gantry_frontend::flags;
use gantry_frontend::state::*;
use gantry_translator::Exception;

use super::access::Ctx;
use super::segments::{self, fetch, gp, mark_accessed, Descriptor};

/// What started a task switch: it decides the busy bits, NT and the link field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Jmp,
    Call,
    Iret,
    Interrupt,
}

impl Switch {
    /// CALL and interrupts nest: the new task links back to the old one.
    fn nests(self) -> bool {
        matches!(self, Switch::Call | Switch::Interrupt)
    }
}

/// Where a TSS keeps each field: the 32-bit (types 9/B) and 16-bit (1/3) layouts.
#[derive(Clone, Copy)]
struct Layout {
    wide: bool,
}

impl Layout {
    fn of(typ: u8) -> Self {
        Self { wide: typ & 8 != 0 }
    }
    fn word(self) -> u8 {
        if self.wide {
            4
        } else {
            2
        }
    }
    fn ip(self) -> u64 {
        if self.wide {
            0x20
        } else {
            0x0E
        }
    }
    fn flags(self) -> u64 {
        self.ip() + self.word() as u64
    }
    fn gpr(self, i: usize) -> u64 {
        self.flags() + (1 + i as u64) * self.word() as u64
    }
    /// The selector slot of segment register `s` (the 16-bit TSS has no FS and GS).
    fn seg(self, s: usize) -> Option<u64> {
        if self.wide {
            Some(0x48 + 4 * s as u64)
        } else {
            (s <= DS).then_some(0x22 + 2 * s as u64)
        }
    }
    fn ldt(self) -> u64 {
        if self.wide {
            0x60
        } else {
            0x2A
        }
    }
    /// The smallest limit a TSS switched to may have (7.2.2: #TS below it).
    fn min_limit(self) -> u32 {
        if self.wide {
            0x67
        } else {
            0x2B
        }
    }
    /// The last byte a switch away from this TSS writes.
    fn last_saved(self) -> u32 {
        if self.wide {
            0x5F
        } else {
            0x29
        }
    }
}

fn ts(sel: u16) -> Exception {
    Exception::with_code(10, (sel & 0xFFFC) as u32)
}

fn np(sel: u16) -> Exception {
    Exception::with_code(11, (sel & 0xFFFC) as u32)
}

/// A descriptor-table lookup for a task switch: past the table's limit is #TS(sel), not
/// the #GP a segment load raises; page faults stay page faults.
fn fetch_ts(cpu: &mut CpuState, ctx: &mut Ctx, sel: u16) -> Result<(u64, Descriptor), Exception> {
    fetch(cpu, ctx, sel).map_err(|e| if e.vector == 13 { ts(sel) } else { e })
}

/// Reads `bytes` at `offset` in the current TSS, #TS(TR) if past its limit.
pub fn tss_read(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    offset: u64,
    bytes: u8,
) -> Result<u64, Exception> {
    let tss = cpu.tr;
    if offset + bytes as u64 - 1 > tss.limit as u64 {
        return Err(ts(tss.selector));
    }
    ctx.sys_read(cpu, tss.base.wrapping_add(offset), bytes)
}

/// The stack for privilege `cpl` from the current TSS, as an interrupt or a call gate to
/// an inner level switches to it (SDM vol. 3, 5.8.5, 6.12.1): its SS checked (#TS(SS) for
/// a selector that does not name a writable data segment at that level, #SS(SS) if not
/// present). In long mode SS is a null selector at the new level.
pub fn inner_stack(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    cpl: u8,
) -> Result<(Segment, u64), Exception> {
    if cpu.long_mode() {
        let sp = tss_read(cpu, ctx, 4 + cpl as u64 * 8, 8)?;
        let ss = Segment {
            base: 0,
            limit: 0,
            selector: cpl as u16,
            attr: (cpl as u16) << attr::DPL_SHIFT,
        };
        return Ok((ss, sp));
    }
    let l = Layout::of((cpu.tr.attr & attr::TYPE) as u8);
    let w = l.word() as u64;
    // ESPn/SPn, then SSn: 4 + 8n and 8 + 8n in a 32-bit TSS, 2 + 4n and 4 + 4n in a
    // 16-bit one.
    let at = w + cpl as u64 * 2 * w;
    let sp = tss_read(cpu, ctx, at, l.word())?;
    let sel = tss_read(cpu, ctx, at + w, 2)? as u16;
    if sel & !3 == 0 {
        return Err(ts(sel));
    }
    let (addr, d) = fetch_ts(cpu, ctx, sel)?;
    if (sel & 3) as u8 != cpl || d.dpl() != cpl || !d.writable_data() {
        return Err(ts(sel));
    }
    if !d.present() {
        return Err(Exception::with_code(12, (sel & 0xFFFC) as u32));
    }
    mark_accessed(cpu, ctx, addr, &d)?;
    let mut ss = d.segment(sel);
    ss.attr |= 1;
    Ok((ss, sp))
}

/// The state a switch loads, all read from the new TSS before anything changes.
struct Incoming {
    ip: u64,
    flags: u64,
    gpr: [u64; 8],
    seg: [u16; 6],
    ldt: u16,
    cr3: Option<u64>,
    /// The debug trap bit (T) of a 32-bit TSS.
    trap: bool,
}

fn read_incoming(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    base: u64,
    l: Layout,
) -> Result<Incoming, Exception> {
    let mut read = |cpu: &mut CpuState, off: u64, bytes: u8| {
        ctx.sys_read(cpu, base.wrapping_add(off) & 0xFFFF_FFFF, bytes)
    };
    // A 16-bit TSS holds 16-bit registers: the upper halves become FFFFh, as on the CPUs
    // Bochs's authors measured; EFLAGS's upper half becomes 0.
    let upper = if l.wide { 0 } else { 0xFFFF_0000 };
    let mut gpr = [0; 8];
    for (i, r) in gpr.iter_mut().enumerate() {
        *r = upper | read(cpu, l.gpr(i), l.word())?;
    }
    let mut seg = [0; 6];
    for (s, v) in seg.iter_mut().enumerate() {
        if let Some(off) = l.seg(s) {
            *v = read(cpu, off, 2)? as u16;
        }
    }
    Ok(Incoming {
        ip: read(cpu, l.ip(), l.word())?,
        flags: read(cpu, l.flags(), l.word())?,
        gpr,
        seg,
        ldt: read(cpu, l.ldt(), 2)? as u16,
        cr3: if l.wide && cpu.cr0 & CR0_PG != 0 {
            Some(read(cpu, 0x1C, 4)?)
        } else {
            None
        },
        trap: l.wide && read(cpu, 0x64, 2)? & 1 != 0,
    })
}

/// Sets or clears the busy bit of the TSS descriptor `sel` names in the GDT.
fn set_busy(cpu: &mut CpuState, ctx: &mut Ctx, sel: u16, busy: bool) -> Result<(), Exception> {
    let at = cpu.gdtr.base.wrapping_add((sel & !7) as u64 + 5);
    let access = ctx.sys_read(cpu, at, 1)?;
    let access = if busy { access | 2 } else { access & !2 };
    ctx.sys_write(cpu, at, 1, access)
}

/// Switches to the task whose TSS descriptor `sel` names (directly by JMP/CALL, from a
/// task gate, or the link of IRET). `next` is where the old task resumes; `error` is an
/// exception's error code, pushed on the new task's stack. The caller has made the
/// privilege checks of the instruction or gate.
pub fn switch_to(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    sel: u16,
    how: Switch,
    next: u64,
    error: Option<u32>,
) -> Result<(), Exception> {
    // IRET's link names a busy TSS and reports problems as #TS; the others need an
    // available one and report #GP (SDM: JMP, CALL, INT n, IRET).
    let bad = |sel| {
        if how == Switch::Iret {
            ts(sel)
        } else {
            gp(sel)
        }
    };
    if sel & 4 != 0 {
        return Err(bad(sel));
    }
    let (_, d) = fetch(cpu, ctx, sel).map_err(|e| if e.vector == 13 { bad(sel) } else { e })?;
    let is_tss = !d.s() && matches!(d.typ() & !2, 1 | 9);
    let busy = d.typ() & 2 != 0;
    if !is_tss || busy != (how == Switch::Iret) {
        return Err(bad(sel));
    }
    if !d.present() {
        return Err(np(sel));
    }
    let new = Layout::of(d.typ());
    if d.limit() < new.min_limit() {
        return Err(ts(sel));
    }
    let old = Layout::of((cpu.tr.attr & attr::TYPE) as u8);
    if cpu.tr.limit < old.last_saved() {
        return Err(ts(cpu.tr.selector));
    }
    let incoming = read_incoming(cpu, ctx, d.base(), new)?;

    // Save the old task (its busy bit, and NT in the image IRET saves, per 7.4).
    let mut fl = flags::rflags(cpu);
    if how == Switch::Iret {
        fl &= !NT;
    }
    let (ob, w) = (cpu.tr.base, old.word());
    let mut save = |cpu: &mut CpuState, off: u64, bytes: u8, v: u64| {
        ctx.sys_write(cpu, ob.wrapping_add(off) & 0xFFFF_FFFF, bytes, v)
    };
    save(cpu, old.ip(), w, next)?;
    save(cpu, old.flags(), w, fl)?;
    for i in 0..8 {
        save(cpu, old.gpr(i), w, cpu.gpr[i])?;
    }
    for s in 0..6 {
        if let Some(off) = old.seg(s) {
            save(cpu, off, 2, cpu.seg[s].selector as u64)?;
        }
    }
    let old_sel = cpu.tr.selector;
    if matches!(how, Switch::Jmp | Switch::Iret) {
        set_busy(cpu, ctx, old_sel, false)?;
    }
    if how.nests() {
        ctx.sys_write(cpu, d.base(), 2, old_sel as u64)?;
    }
    if how != Switch::Iret {
        set_busy(cpu, ctx, sel, true)?;
    }

    // The commit point.
    ctx.stats.task_switches += 1;
    let mut tr = d.segment(sel);
    tr.attr |= 2;
    cpu.tr = tr;
    cpu.cr0 |= CR0_TS;
    // Local breakpoint enables belong to the task (17.2.4).
    cpu.dr[7] &= !0x155;
    ctx.traps.regs_changed = true;
    if let Err(e) = load(cpu, ctx, &incoming, how, new, error) {
        *ctx.task_fault = Some(e);
    }
    Ok(())
}

/// Loads the new task's state after the commit point (7.3, steps 10-12).
fn load(
    cpu: &mut CpuState,
    ctx: &mut Ctx,
    new: &Incoming,
    how: Switch,
    l: Layout,
    error: Option<u32>,
) -> Result<(), Exception> {
    cpu.rip = new.ip;
    cpu.gpr[..8].copy_from_slice(&new.gpr);
    let fl = if how.nests() {
        new.flags | NT
    } else {
        new.flags
    };
    flags::set_rflags(cpu, fl & RFLAGS_DEFINED);
    // Selectors load first, with empty caches; each cache fills as its checks pass.
    for (s, sel) in new.seg.iter().enumerate() {
        cpu.seg[s] = Segment {
            selector: *sel,
            ..Default::default()
        };
    }
    cpu.ldtr = Segment {
        selector: new.ldt,
        ..Default::default()
    };
    if let Some(cr3) = new.cr3 {
        if cr3 != cpu.cr3 {
            cpu.cr3 = cr3;
            ctx.mmu.flush(true);
        }
    }
    let v86 = fl & VM != 0;
    cpu.cpl = if v86 { 3 } else { (new.seg[CS] & 3) as u8 };

    if new.ldt & 4 != 0 {
        return Err(ts(new.ldt));
    }
    if new.ldt & !3 != 0 {
        let (_, d) = fetch_ts(cpu, ctx, new.ldt)?;
        if d.s() || d.typ() != 2 || !d.present() {
            return Err(ts(new.ldt));
        }
        cpu.ldtr = d.segment(new.ldt);
    }
    if v86 {
        for (s, sel) in new.seg.iter().enumerate() {
            cpu.seg[s] = segments::v86_segment(*sel, s == CS);
        }
    } else {
        load_stack(cpu, ctx, new.seg[SS])?;
        for s in [DS, ES, FS, GS] {
            load_data(cpu, ctx, s, new.seg[s])?;
        }
        load_code(cpu, ctx, new.seg[CS])?;
    }
    if let Some(e) = error {
        segments::push(cpu, ctx, e as u64, l.word())?;
    }
    if cpu.rip > cpu.seg[CS].limit as u64 {
        return Err(gp(0));
    }
    if new.trap {
        cpu.dr[6] |= super::debug::DR6_BT;
        return Err(Exception::new(1));
    }
    Ok(())
}

fn load_stack(cpu: &mut CpuState, ctx: &mut Ctx, sel: u16) -> Result<(), Exception> {
    if sel & !3 == 0 {
        return Err(ts(sel));
    }
    let (addr, d) = fetch_ts(cpu, ctx, sel)?;
    if !d.writable_data() {
        return Err(ts(sel));
    }
    if !d.present() {
        return Err(Exception::with_code(12, (sel & 0xFFFC) as u32));
    }
    if d.dpl() != cpu.cpl || (sel & 3) as u8 != cpu.cpl {
        return Err(ts(sel));
    }
    segments::install(cpu, ctx, SS, sel, addr, &d)
}

/// DS, ES, FS, GS: null is allowed; otherwise data or readable code the new CPL may use.
fn load_data(cpu: &mut CpuState, ctx: &mut Ctx, s: usize, sel: u16) -> Result<(), Exception> {
    if sel & !3 == 0 {
        return Ok(());
    }
    let (addr, d) = fetch_ts(cpu, ctx, sel)?;
    if !d.s() || !d.readable() {
        return Err(ts(sel));
    }
    if !d.conforming() && ((sel & 3) as u8 > d.dpl() || cpu.cpl > d.dpl()) {
        return Err(ts(sel));
    }
    if !d.present() {
        return Err(np(sel));
    }
    segments::install(cpu, ctx, s, sel, addr, &d)
}

fn load_code(cpu: &mut CpuState, ctx: &mut Ctx, sel: u16) -> Result<(), Exception> {
    if sel & !3 == 0 {
        return Err(ts(sel));
    }
    let (addr, d) = fetch_ts(cpu, ctx, sel)?;
    let rpl = (sel & 3) as u8;
    let dpl_ok = if d.conforming() {
        d.dpl() <= rpl
    } else {
        d.dpl() == rpl
    };
    if !d.is_code() || !dpl_ok {
        return Err(ts(sel));
    }
    if !d.present() {
        return Err(np(sel));
    }
    segments::install(cpu, ctx, CS, sel, addr, &d)
}
