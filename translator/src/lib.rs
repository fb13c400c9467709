//! Executing Gantry's IR. Tier 0 is the interpreter ([`interp`]); tier 1, the Cranelift
//! JIT ([`jit`]), compiles the same blocks once hot and reaches the machine through the same
//! [`Host`] interface.

mod access_groups;
pub mod block;
pub mod cache;
mod code_arena;
pub mod code_memory;
mod compiler;
pub mod interp;
pub mod jit;
mod links;
pub mod tlb;

use gantry_frontend::ir::Helper;
use gantry_frontend::state::CpuState;
use gantry_frontend::vendor::FlatSegmentTop;

/// An exception raised by guest code: vector and error code. (CR2 is already written by
/// the memory system when the vector is #PF.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
}

impl Exception {
    pub const fn new(vector: u8) -> Self {
        Self {
            vector,
            error_code: None,
        }
    }
    pub const fn with_code(vector: u8, code: u32) -> Self {
        Self {
            vector,
            error_code: Some(code),
        }
    }
}

/// The IR's `SegCheck`, for both tiers: #GP(0), or #SS(0) through SS, unless the access
/// lies within segment `seg` and its type allows it.
pub fn seg_check(
    cpu: &CpuState,
    seg: usize,
    addr: u64,
    bytes: u32,
    write: bool,
    top: FlatSegmentTop,
) -> Result<(), Exception> {
    match cpu.segment_fault(seg, addr, bytes, write, top) {
        Some(vector) => Err(Exception::with_code(vector, 0)),
        None => Ok(()),
    }
}

/// What executing IR needs from the machine: guest memory by linear address (through the
/// softmmu) and the helper table. `ss` marks a stack access (through SS), whose faults
/// differ (#SS rather than #GP); `rmw` a load that is the read half of a read-modify-write
/// (translated for writing).
pub trait Host {
    fn load(
        &mut self,
        cpu: &mut CpuState,
        addr: u64,
        bytes: u8,
        ss: bool,
        rmw: bool,
    ) -> Result<u64, Exception>;
    fn store(
        &mut self,
        cpu: &mut CpuState,
        addr: u64,
        bytes: u8,
        value: u64,
        ss: bool,
    ) -> Result<(), Exception>;
    fn helper(&mut self, cpu: &mut CpuState, h: Helper, args: &[u64]) -> Result<u64, Exception>;

    /// The TLB table that guest loads and stores go through at the CPU's current
    /// privilege, for generated code's inline look-up: a hit there is plain host memory,
    /// and everything else goes to [`Self::load`] and [`Self::store`]. `None` (a host
    /// without a TLB) sends every access there.
    fn data_tlb(&mut self, _cpu: &CpuState) -> Option<*const tlb::TlbEntry> {
        None
    }

    /// Whether guest code was written since the block began: a page with translated code
    /// was stored to. The block then ends before its next instruction, whose bytes may be
    /// the ones written (the run loop drops the stale translations and translates anew).
    fn wrote_code(&self) -> bool {
        false
    }

    /// A store as [`Self::store`], unless it would write translated code: then nothing is
    /// written and the answer is `Ok(false)`. Compiled code's stores come here: its
    /// instruction then runs again alone on the interpreter ([`BlockEnd::Retry`]), which
    /// ends the block after it, so that compiled code needs no test after every store.
    /// A host that does not track translated code (whose [`Self::wrote_code`] is always
    /// false) never refuses.
    fn store_unless_code(
        &mut self,
        cpu: &mut CpuState,
        addr: u64,
        bytes: u8,
        value: u64,
        ss: bool,
    ) -> Result<bool, Exception> {
        self.store(cpu, addr, bytes, value, ss).map(|()| true)
    }

    /// The block the run loop would run next at CS:RIP, when it would run it at once
    /// (nothing to service, deliver or report first) and finds it in its jump cache:
    /// compiled code then goes on into that block's code without returning, and may go
    /// there again directly from the same exit while what the lookup held under holds
    /// and no host call came in between. `None` (the default) returns to the run loop
    /// after every block.
    fn next_block(&mut self, _cpu: &mut CpuState) -> Option<cache::Found> {
        None
    }

    /// For a run that may chain (the budget [`jit::Jit::run_chained`] got is not 0), what
    /// [`Self::next_block`] would have said of its first block at the boundary before it.
    /// `None` (the default) for a host that never chains.
    fn chain_start(&mut self, _cpu: &CpuState) -> Option<cache::Start> {
        None
    }
}

/// How a block's execution ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockEnd {
    /// RIP holds the next instruction.
    Next,
    /// The block asked the run loop to look again (mode or IF may have changed).
    Sync,
    /// HLT executed; RIP is past it.
    Halt,
    /// An exception at the instruction whose address RIP now holds.
    Fault(Exception),
    /// The instruction at RIP must run alone on the interpreter: compiled code stopped
    /// before it, with the state as it found it, because its store would write translated
    /// code ([`Host::store_unless_code`]). Its earlier accesses run again with it: loads
    /// and stores of RAM read and write the same, and a store to code that also touches
    /// MMIO in one instruction is not something guests do. A port read is not repeatable:
    /// INS stores to its destination before it reads the port, so that it stops first.
    Retry,
}
