//! Chaining: compiled code going on from one block into the next without returning to the
//! run loop (`Host::next_block`). The run loop does a fixed round of work at every block
//! boundary; a chained boundary may skip it only when that round would do nothing, which
//! is what [`next_block`] checks: no code to invalidate, no debug trap to report, no TLB
//! flush the jump cache has not seen, no deliverable interrupt, no board event, no
//! single step or guest breakpoint pending. The run loop gives each run a budget of
//! blocks, the blocks left until its next board service, so timers and the console are
//! serviced as often as without chaining.

use gantry_frontend::lift::Mode;
use gantry_frontend::state::{self as st, CpuState, IF, RF, TF};
use gantry_frontend::vendor::Vendor;
use gantry_translator::cache::{CodeCache, Found, JumpKey, Start};

use super::access::Ctx;

/// What a chained boundary needs of the run loop's state.
pub struct Chain<'a> {
    pub code: &'a CodeCache,
    /// The TLB generation the jump cache was filled under.
    pub jump_generation: u64,
}

/// The translation mode of the CPU's current state.
pub fn mode_of(cpu: &CpuState, vendor: Vendor) -> Mode {
    Mode {
        code_bits: cpu.code_bits(),
        stack_bits: cpu.stack_bits(),
        mode64: cpu.mode64(),
        vendor,
    }
}

/// The jump cache's key for the block at CS:RIP.
pub fn jump_key(cpu: &CpuState, vendor: Vendor) -> JumpKey {
    JumpKey {
        cs_base: cpu.seg[st::CS].base,
        rip: cpu.rip,
        mode: mode_of(cpu, vendor),
        cpl: cpu.cpl(),
    }
}

/// Whether the run loop has anything to do at a boundary before the next block, but
/// deliver an interrupt or take a board event ([`interrupt_or_event`]).
fn loop_has_work(ctx: &Ctx, chain: &Chain, cpu: &CpuState) -> bool {
    let traps = &ctx.traps;
    !ctx.dirty_code.is_empty()
        || ctx.task_fault.is_some()
        || traps.hit.is_some()
        || traps.guest_hits != 0
        || traps.regs_changed
        || ctx.mmu.generation != chain.jump_generation
        || cpu.halted
        // A single step or RF: the loop handles the instruction alone.
        || cpu.rflags & (TF | RF) != 0
}

fn interrupt_or_event(ctx: &mut Ctx, cpu: &CpuState) -> bool {
    cpu.rflags & IF != 0 && ctx.board.interrupt_pending()
        || !cpu.nmi_blocked && ctx.board.nmi_pending()
        || ctx.board.event_pending()
}

/// The block at CS:RIP if the run loop would run it straight away and has it in its jump
/// cache; `None` sends the run back to the loop.
pub fn next_block(ctx: &mut Ctx, cpu: &mut CpuState) -> Option<Found> {
    if loop_has_work(ctx, ctx.chain.as_ref()?, cpu) {
        return None;
    }
    // Past one boundary: a shadow the run began with (after STI or MOV SS) is over, as the
    // run loop would clear it after the first block.
    cpu.interrupt_shadow = false;
    if interrupt_or_event(ctx, cpu) {
        return None;
    }
    let chain = ctx.chain.as_ref()?;
    let key = jump_key(cpu, ctx.vendor);
    Some(Found {
        block: chain.code.jump_lookup(&key)?,
        chain_epoch: chain.code.chain_epoch(),
        context: key.context(),
    })
}

/// Where a chaining run begins, at the block the loop looked up: its exits may go
/// straight on unless the boundary after it must be the loop's (an interrupt shadow the
/// run begins in ends there, and the loop then delivers what it held off).
pub fn chain_start(ctx: &mut Ctx, cpu: &CpuState) -> Option<Start> {
    let straight = !cpu.interrupt_shadow
        && !loop_has_work(ctx, ctx.chain.as_ref()?, cpu)
        && !interrupt_or_event(ctx, cpu);
    let chain = ctx.chain.as_ref()?;
    Some(Start {
        chain_epoch: chain.code.chain_epoch(),
        context: jump_key(cpu, ctx.vendor).context(),
        straight,
    })
}
