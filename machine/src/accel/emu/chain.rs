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
use gantry_translator::cache::{CodeCache, Found, JumpKey};

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

/// The block at CS:RIP if the run loop would run it straight away and has it in its jump
/// cache; `None` sends the run back to the loop.
pub fn next_block(ctx: &mut Ctx, cpu: &mut CpuState) -> Option<Found> {
    let chain = ctx.chain.as_ref()?;
    let traps = &ctx.traps;
    let loop_has_work = !ctx.dirty_code.is_empty()
        || ctx.task_fault.is_some()
        || traps.hit.is_some()
        || traps.guest_hits != 0
        || traps.regs_changed
        || ctx.mmu.generation != chain.jump_generation
        || cpu.halted
        // A single step or RF: the loop handles the instruction alone.
        || cpu.rflags & (TF | RF) != 0;
    if loop_has_work {
        return None;
    }
    // Past one boundary: a shadow the run began with (after STI or MOV SS) is over, as the
    // run loop would clear it after the first block.
    cpu.interrupt_shadow = false;
    if cpu.rflags & IF != 0 && ctx.board.interrupt_pending() || ctx.board.event_pending() {
        return None;
    }
    let key = jump_key(cpu, ctx.vendor);
    Some(Found {
        block: chain.code.jump_lookup(&key)?,
        chain_epoch: chain.code.chain_epoch(),
        context: key.context(),
    })
}
