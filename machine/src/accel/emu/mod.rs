//! Gantry's emulated CPU: the run loop that looks up (or lifts) the block at CS:RIP, runs
//! it in the IR interpreter against the softmmu and the board, takes interrupts at block
//! boundaries, and delivers exceptions.

mod access;
mod call_gates;
mod chain;
pub mod cpuid;
pub mod debug;
mod helpers;
pub mod interrupts;
pub mod mmu;
pub mod paging;
mod phys_memory;
pub mod segments;
mod smp;
mod tasks;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;

use gantry_frontend::lift::{self, CodeSource, FetchFault, Mode};
use gantry_frontend::state::{self as st, CpuState, IF, RF, TF};
use gantry_frontend::vendor::Vendor;
use gantry_translator::block::Prepared;
use gantry_translator::cache::{BlockKey, CodeCache, CodeSpan};
use gantry_translator::interp::Interp;
pub use gantry_translator::jit::Compiles;
use gantry_translator::jit::Jit;
use gantry_translator::{BlockEnd, Exception};

use crate::accel::vcpu::{DebugRequest, Ended, Vcpu, VcpuError};
use crate::accel::CpuStop;
use crate::board::Board;
use crate::memory::GuestMemory;
use access::Ctx;
use debug::{DebugCtl, DebugStop, DebugTraps, GuestBreakpoints, Watchpoint, DR6_BS, SLICE_BLOCKS};
use interrupts::{deliver, raise, Delivery, Source};
use mmu::{Access, Mmu, Privilege};

/// Counters for `--stats`.
#[derive(Default, Debug, Clone)]
pub struct CpuStats {
    pub blocks_translated: u64,
    pub blocks_run: u64,
    pub exceptions: u64,
    pub interrupts: u64,
    pub io: u64,
    pub unknown_msrs: u64,
    pub task_switches: u64,
    pub invalidated_blocks: u64,
    /// Writes to pages with translated code, and those of them that touched none of it.
    pub code_page_writes: u64,
    pub code_page_writes_missed: u64,
    /// Blocks run on the interpreter because compiled code stopped before a store that
    /// would have written translated code ([`BlockEnd::Retry`]).
    pub retries: u64,
    /// Times the jump cache was emptied (a TLB flush that may move code, or code
    /// invalidated), which also unlinks every chain, and look-ups it did not answer.
    pub jump_flushes: u64,
    pub jump_misses: u64,
    /// #UD raised for instructions Gantry does not implement, by iced-x86 code name.
    pub unimplemented: BTreeMap<String, u64>,
}

impl CpuStats {
    /// Counts an unimplemented instruction; the first of each kind is logged.
    pub fn count_unimplemented_at(&mut self, name: &str, rip: u64) {
        let n = self.unimplemented.entry(name.to_string()).or_insert(0);
        if *n == 0 {
            eprintln!("gantry: unimplemented instruction {name} at RIP {rip:#x}: #UD");
        }
        *n += 1;
    }
}

pub struct EmuCpu {
    pub state: CpuState,
    mmu: Mmu,
    /// The translator's code cache: blocks by physical address, jump cache in front.
    code: CodeCache,
    /// The TLB generation the jump cache was filled under.
    jump_generation: u64,
    interp: Interp,
    /// Tier 1, when enabled: hot blocks compiled with Cranelift.
    jit: Option<Jit>,
    /// Writes to pages with translated code since the run loop last looked: (physical
    /// address, bytes).
    dirty_code: Vec<(u64, u16)>,
    pub stats: CpuStats,
    /// Set while a debugger is attached.
    debug: Option<DebugCtl>,
    traps: DebugTraps,
    /// A fault of a task switch after its commit point, delivered at the next boundary.
    task_fault: Option<Exception>,
    /// The guest's own instruction breakpoints (DR0-3, DR7).
    guest_bps: GuestBreakpoints,
    limits: lift::Limits,
    /// The CPU model's vendor: CPUID and the undefined flags follow it.
    vendor: Vendor,
    /// The machine's CPUs: `state` is the running one's, the others are parked.
    cpus: smp::Cpus,
}

/// Code bytes for the lifter, fetched through the MMU as instruction fetches.
struct Fetcher<'a, 'b> {
    ctx: &'a mut Ctx<'b>,
    cpu: &'a mut CpuState,
    /// The bytes read, one span per fetch (merged per page by [`merge_spans`]).
    spans: Vec<CodeSpan>,
}

/// One span per page, covering every span read from it.
fn merge_spans(mut spans: Vec<CodeSpan>) -> Vec<CodeSpan> {
    spans.sort_unstable_by_key(|s| s.page);
    let mut merged: Vec<CodeSpan> = Vec::with_capacity(spans.len().min(2));
    for s in spans {
        match merged.last_mut() {
            Some(m) if m.page == s.page => {
                m.start = m.start.min(s.start);
                m.end = m.end.max(s.end);
            }
            _ => merged.push(s),
        }
    }
    merged
}

impl CodeSource for Fetcher<'_, '_> {
    fn fetch(&mut self, linear: u64, buf: &mut [u8]) -> Result<usize, FetchFault> {
        let phys = self
            .ctx
            .mmu
            .translate(
                self.cpu,
                self.ctx.mem,
                linear,
                Access::Exec,
                Privilege::User,
            )
            .map_err(|e| FetchFault {
                vector: e.vector,
                error_code: e.error_code,
                address: linear,
            })?;
        let n = buf.len().min((0x1000 - (linear & 0xFFF)) as usize);
        if self.ctx.mem.read(phys, &mut buf[..n]).is_err() {
            // Code in MMIO space (or a hole): byte by byte through the bus.
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = self
                    .ctx
                    .mmu
                    .phys_read(self.ctx.mem, self.ctx.board, phys + i as u64, 1)
                    as u8;
            }
        }
        let start = (phys & 0xFFF) as u16;
        self.spans.push(CodeSpan {
            page: phys >> 12,
            start,
            end: start + n as u16,
        });
        Ok(n)
    }
}

/// The linear address of the page after `linear`'s (outside 64-bit mode, linear
/// addresses wrap at 4 GiB).
fn next_page(cpu: &CpuState, linear: u64) -> u64 {
    let next = (linear | 0xFFF).wrapping_add(1);
    if cpu.mode64() {
        next
    } else {
        next & 0xFFFF_FFFF
    }
}

/// The CPU's view of the machine for one step; a macro rather than a method so that the
/// borrows of `self`'s fields stay disjoint from `self.state`.
macro_rules! ctx {
    ($cpu:expr, $mem:expr, $board:expr) => {
        Ctx {
            mmu: {
                // Bound once per `execute`, whose memory every context in it is made with.
                debug_assert!($cpu.mmu.is_bound($mem));
                &mut $cpu.mmu
            },
            mem: $mem,
            board: $board,
            dirty_code: &mut $cpu.dirty_code,
            stats: &mut $cpu.stats,
            traps: &mut $cpu.traps,
            task_fault: &mut $cpu.task_fault,
            vendor: $cpu.vendor,
            chain: None,
        }
    };
}

/// How many blocks run between board services (timers, console) while the CPU is busy;
/// also how far compiled blocks chain. At 7 instructions a block and about 7 ns a chained
/// block, 2048 blocks are about 15 us: timer interrupts come that much late at most (an
/// OUT or another exit that may raise one has the board serviced at once). Each service
/// reads the host clock and goes back through the run loop: the Debian boot took 0.956x
/// the time with 2048 as with 256 (median of 6 interleaved pairs); 8192 gained 2% more,
/// within the noise, at four times the latency. 32 had cost 1.24x the time of 256.
const SERVICE_INTERVAL: u32 = 2048;

impl EmuCpu {
    /// A CPU in `state` (a loader's entry state, or [`CpuState::reset`]) for a machine
    /// with `ram_size` bytes of RAM.
    pub fn new(state: CpuState, ram_size: u64) -> Self {
        Self {
            state,
            mmu: Mmu::new(ram_size),
            code: CodeCache::default(),
            jump_generation: 0,
            interp: Interp::new(),
            jit: None,
            dirty_code: Vec::new(),
            stats: CpuStats::default(),
            debug: None,
            traps: DebugTraps::default(),
            task_fault: None,
            guest_bps: GuestBreakpoints::default(),
            limits: lift::Limits::default(),
            vendor: Vendor::default(),
            cpus: smp::Cpus::default(),
        }
    }

    /// Makes the CPU a model of `vendor`. Blocks are keyed by the vendor, so those
    /// translated for the other one are never run.
    pub fn set_vendor(&mut self, vendor: Vendor) {
        self.vendor = vendor;
    }

    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    pub fn instructions(&self) -> u64 {
        self.interp.insns
    }

    fn mode(&self) -> Mode {
        chain::mode_of(&self.state, self.vendor)
    }

    fn invalidate_dirty(&mut self, mem: &GuestMemory) {
        for (phys, len) in std::mem::take(&mut self.dirty_code) {
            let page = phys >> 12;
            let start = phys & 0xFFF;
            let end = (start + u64::from(len)).min(0x1000);
            let (dropped, still) = self.code.invalidate(page, start as u16, end as u16);
            self.stats.invalidated_blocks += dropped;
            self.stats.code_page_writes += 1;
            self.stats.code_page_writes_missed += (dropped == 0) as u64;
            if !still {
                self.mmu.set_code_page(mem, page, false);
            }
        }
    }

    /// Runs until the CPU stops for good (`Err`) or, with a debugger attached, until
    /// something the debugger asked for happens (`Ok`).
    fn execute(&mut self, mem: &mut GuestMemory, board: &mut Board) -> Result<DebugStop, CpuStop> {
        // Once here rather than in every context the loop makes (one a block): comparing
        // the mapping's identity there cost a store-forwarding stall per interpreted block.
        self.mmu.bind(mem);
        let mut until_service = 0u32;
        loop {
            if until_service == 0 || self.state.halted {
                board.service();
                self.schedule(board);
                until_service = SERVICE_INTERVAL;
                if let Some(ev) = board.take_event() {
                    return Err(CpuStop::Board(ev));
                }
                let a20 = if board.a20() { !0u64 } else { !(1u64 << 20) };
                if a20 != self.state.a20_mask {
                    self.state.a20_mask = a20;
                    self.mmu.flush(false);
                }
            }
            until_service -= 1;

            // A task switch that faulted after its commit point: the new task takes the
            // exception at its first instruction.
            if let Some(e) = self.task_fault.take() {
                self.stats.exceptions += 1;
                let ret = self.state.rip;
                let mut ctx = ctx!(self, mem, board);
                if raise(&mut self.state, &mut ctx, e, ret) == Delivery::TripleFault {
                    return Err(CpuStop::TripleFault {
                        rip: self.state.rip,
                    });
                }
                self.invalidate_dirty(mem);
                continue;
            }

            // A debugger's single step executes one instruction: interrupts are held
            // off (as QEMU's default step mode) unless the CPU is halted waiting for one.
            let stepping = self.debug.as_ref().is_some_and(|d| d.step);
            // An NMI: neither IF nor an interrupt shadow holds it back (the shadow of
            // MOV SS would, which this model does not tell apart), only a handler of one
            // that has not yet returned with IRET.
            if !self.state.nmi_blocked
                && (!stepping || self.state.halted)
                && board.nmi_pending()
                && board.take_nmi()
            {
                self.state.nmi_blocked = true;
                self.take_external(mem, board, st::NMI_VECTOR)?;
                if stepping {
                    return Ok(DebugStop::Step);
                }
                continue;
            }
            // IF is never lazy: RFLAGS holds it.
            let if_set = self.state.rflags & IF != 0;
            if if_set
                && !self.state.interrupt_shadow
                && (!stepping || self.state.halted)
                && board.interrupt_pending()
            {
                let vector = board.acknowledge_interrupt();
                self.take_external(mem, board, vector)?;
                if stepping {
                    return Ok(DebugStop::Step);
                }
                continue;
            }
            if self.state.halted {
                // With other CPUs, one halted with interrupts off waits for them (an IPI,
                // INIT or their timers), unless none of them can run either.
                let alone = self.cpus.count() == 1 || self.all_cpus_stuck();
                if !if_set && alone {
                    if board.event_pending() {
                        continue;
                    }
                    if self.debug.is_some() {
                        // Under a debugger the CPU waits, as a halted CPU does: gdb can
                        // interrupt it, or move RIP (which wakes it).
                        board.wait_for_event();
                        return Ok(DebugStop::Slice);
                    }
                    return Err(CpuStop::HaltedForever {
                        rip: self.state.rip,
                    });
                }
                if !board.wait_for_event() {
                    return Err(CpuStop::HaltedForever {
                        rip: self.state.rip,
                    });
                }
                if self.debug.is_some() {
                    return Ok(DebugStop::Slice);
                }
                continue;
            }

            if let Some(d) = &mut self.debug {
                if d.slice_left == 0 {
                    d.slice_left = SLICE_BLOCKS;
                    return Ok(DebugStop::Slice);
                }
                d.slice_left -= 1;
                let at = self.state.linear_rip();
                let resuming = d.resume_from.take() == Some(at);
                if !resuming && d.breakpoints.binary_search(&at).is_ok() {
                    return Ok(DebugStop::Breakpoint);
                }
            }
            // The guest's own debugging: RF, instruction breakpoints, the trap flag.
            let fl = self.state.rflags;
            let mut guest_step = false;
            if fl & (TF | RF) != 0 || !self.guest_bps.exec.is_empty() {
                if fl & RF != 0 {
                    // RF holds off instruction breakpoints for one instruction; the CPU
                    // clears it as that instruction starts.
                    self.state.rflags &= !RF;
                } else {
                    let hits = self.guest_bps.hits_at(self.state.linear_rip());
                    if hits != 0 {
                        // A fault: the handler returns to the instruction (and sets RF in
                        // the frame to get past it; the CPU does not for this #DB).
                        self.debug_exception(mem, board, hits as u64)?;
                        continue;
                    }
                }
                guest_step = fl & TF != 0;
                self.traps.delivered = false;
            }
            let shadow = self.state.interrupt_shadow;
            let single = stepping || guest_step;
            let block = if single {
                self.lift_one_instruction(mem, board)
            } else {
                self.lookup(mem, board)
            };
            let end = match block {
                Ok(block) => {
                    self.stats.blocks_run += 1;
                    // Compiled code may go on into the blocks up to the next service,
                    // unless a debugger or the guest's breakpoints need every boundary.
                    let chaining =
                        !single && self.debug.is_none() && self.guest_bps.exec.is_empty();
                    let mut budget = if chaining { until_service } else { 0 };
                    let mut ctx = ctx!(self, mem, board);
                    if chaining {
                        ctx.chain = Some(chain::Chain {
                            code: &self.code,
                            jump_generation: self.jump_generation,
                        });
                    }
                    let end = match &mut self.jit {
                        Some(jit) => jit.run_chained(
                            &block,
                            &mut self.interp,
                            &mut self.state,
                            &mut ctx,
                            &mut budget,
                        ),
                        None => self.interp.run(&block, &mut self.state, &mut ctx),
                    };
                    if chaining {
                        self.stats.blocks_run += u64::from(until_service - budget);
                        until_service = budget;
                    }
                    end
                }
                Err(e) => BlockEnd::Fault(e),
            };
            let end = match end {
                BlockEnd::Retry => self.retry_interpreted(mem, board, single),
                end => end,
            };
            // A block that asks the loop to look again (an OUT, a mode or IF change) has the
            // board serviced first: an OUT may have ended the run or moved the A20 gate.
            if end == BlockEnd::Sync {
                until_service = 0;
            }
            // The shadow covers exactly one instruction boundary: the block ran at least
            // one instruction past it (a block ends after any instruction that sets it).
            if shadow {
                self.state.interrupt_shadow = false;
            }
            if let BlockEnd::Fault(e) = end {
                // A faulting instruction did not complete, and data breakpoints are traps
                // reported after an instruction completes: drop what its accesses hit.
                self.traps.hit = None;
                self.traps.guest_hits = 0;
                self.stats.exceptions += 1;
                let ret = self.state.rip;
                // Faults push RF = 1, so an instruction breakpoint at the restarted
                // instruction does not fire again (SDM vol. 3, 17.3.1.1).
                self.state.rflags |= RF;
                let mut ctx = ctx!(self, mem, board);
                if raise(&mut self.state, &mut ctx, e, ret) == Delivery::TripleFault {
                    return Err(CpuStop::TripleFault {
                        rip: self.state.rip,
                    });
                }
            } else if self.traps.guest_hits != 0 || guest_step {
                // Traps after the instruction: the guest's data breakpoints it hit, and
                // its single step (cancelled if the instruction delivered an interrupt,
                // whose handler starts with TF clear).
                let mut status = std::mem::take(&mut self.traps.guest_hits) as u64;
                if guest_step && !self.traps.delivered {
                    status |= DR6_BS;
                }
                if status != 0 {
                    self.debug_exception(mem, board, status)?;
                }
            }
            if self.traps.regs_changed {
                self.traps.regs_changed = false;
                self.guest_bps = GuestBreakpoints::load(&self.state.dr, &mut self.traps);
                self.mmu.set_watched(self.traps.ranges());
                self.refresh_limits();
            }
            if !self.dirty_code.is_empty() {
                self.invalidate_dirty(mem);
            }
            if let Some(hit) = self.traps.hit.take() {
                return Ok(DebugStop::Watch(hit));
            }
            if stepping {
                return Ok(DebugStop::Step);
            }
        }
    }

    /// Delivers an interrupt from outside the CPU (the APIC's or the PIC's vector, or an
    /// NMI) at the current instruction boundary; a fault in its delivery is raised as an
    /// exception, and a triple fault ends the run.
    fn take_external(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        vector: u8,
    ) -> Result<(), CpuStop> {
        self.stats.interrupts += 1;
        let ret = self.state.rip;
        let mut ctx = ctx!(self, mem, board);
        if let Err(e) = deliver(
            &mut self.state,
            &mut ctx,
            vector,
            None,
            Source::External,
            ret,
        ) {
            if raise(&mut self.state, &mut ctx, e, ret) == Delivery::TripleFault {
                return Err(CpuStop::TripleFault {
                    rip: self.state.rip,
                });
            }
        }
        self.invalidate_dirty(mem);
        Ok(())
    }

    /// The block at CS:RIP, lifted on first use.
    fn lookup(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
    ) -> Result<Rc<Prepared>, Exception> {
        if self.jump_generation != self.mmu.generation {
            self.jump_generation = self.mmu.generation;
            self.stats.jump_flushes += 1;
            self.code.flush_jumps();
        }
        let jkey = chain::jump_key(&self.state, self.vendor);
        if let Some(b) = self.code.jump_lookup(&jkey) {
            return Ok(b);
        }
        self.stats.jump_misses += 1;
        let b = self.lookup_slow(mem, board, jkey.cs_base, jkey.rip)?;
        let linear = self.state.linear_rip();
        let next_page = b.second_page.map(|_| next_page(&self.state, linear));
        self.mmu.note_code_page(&self.state, linear, next_page);
        self.code.jump_insert(jkey, b.clone());
        Ok(b)
    }

    fn lookup_slow(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        cs_base: u64,
        rip: u64,
    ) -> Result<Rc<Prepared>, Exception> {
        let linear = self.state.linear_rip();
        let mode = self.mode();
        let phys =
            self.mmu
                .translate(&mut self.state, mem, linear, Access::Exec, Privilege::User)?;
        let key = BlockKey { phys, rip, mode };
        if let Some(b) = self.code.get(&key) {
            if b.second_page
                .is_none_or(|p| self.next_page_maps(mem, linear, p))
            {
                return Ok(b);
            }
            // The next page maps elsewhere now: the block is lifted again (replacing
            // this one in the cache), as QEMU compares a block's second page.
        }
        let limits = std::mem::take(&mut self.limits);
        let lifted = self.lift(mem, board, cs_base, rip, &limits);
        self.limits = limits;
        let (block, spans) = lifted?;
        for span in &spans {
            self.mmu.set_code_page(mem, span.page, true);
            self.mmu.note_code_span(span);
        }
        self.stats.blocks_translated += 1;
        let mut block = Prepared::new(block);
        block.second_page = spans.iter().map(|s| s.page).find(|&p| p != phys >> 12);
        let block = Rc::new(block);
        self.code.insert(key, &spans, block.clone());
        Ok(block)
    }

    /// Whether the linear page after `linear`'s still maps to physical page `page` (for
    /// fetching code: a fault there says no, and the block's lifting raises it).
    fn next_page_maps(&mut self, mem: &mut GuestMemory, linear: u64, page: u64) -> bool {
        let next = next_page(&self.state, linear);
        self.mmu
            .translate(&mut self.state, mem, next, Access::Exec, Privilege::User)
            .is_ok_and(|p| p >> 12 == page)
    }

    /// Lifts the block at `cs_base:rip`; returns it with the bytes of each physical page
    /// its code was read from.
    fn lift(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        cs_base: u64,
        rip: u64,
        limits: &lift::Limits,
    ) -> Result<(gantry_frontend::ir::Block, Vec<CodeSpan>), Exception> {
        let mode = self.mode();
        let mut ctx = ctx!(self, mem, board);
        let mut fetch = Fetcher {
            ctx: &mut ctx,
            cpu: &mut self.state,
            spans: Vec::new(),
        };
        let cs_for_fetch = if mode.mode64 { 0 } else { cs_base };
        let block =
            lift::translate_with(&mut fetch, rip, cs_for_fetch, mode, limits).map_err(|f| {
                Exception {
                    vector: f.vector,
                    error_code: f.error_code,
                }
            })?;
        Ok((block, merge_spans(fetch.spans)))
    }

    /// Runs the block at CS:RIP on the interpreter (the instruction alone when stepping):
    /// compiled code stopped before its first instruction because its store would write
    /// translated code ([`BlockEnd::Retry`]). The interpreter writes it and ends the block
    /// after it, and the run loop then drops what it overwrote. The block is the one a
    /// jump there finds, cached (retries come back to the same places: Linux's code
    /// patching, about 9,400 times a boot), not an instruction lifted alone each time.
    fn retry_interpreted(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        single: bool,
    ) -> BlockEnd {
        let block = if single {
            self.lift_one_instruction(mem, board)
        } else {
            self.lookup(mem, board)
        };
        match block {
            Ok(block) => {
                self.stats.blocks_run += 1;
                self.stats.retries += 1;
                let mut ctx = ctx!(self, mem, board);
                self.interp.run(&block, &mut self.state, &mut ctx)
            }
            Err(e) => BlockEnd::Fault(e),
        }
    }

    /// A block of just the instruction at CS:RIP, for a debugger's single step; not cached
    /// (stepping is at human speed).
    fn lift_one_instruction(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
    ) -> Result<Rc<Prepared>, Exception> {
        let limits = lift::Limits {
            max_insns: 1,
            stop_before: Vec::new(),
        };
        let cs_base = self.state.seg[st::CS].base;
        let rip = self.state.rip;
        let (block, _) = self.lift(mem, board, cs_base, rip, &limits)?;
        self.stats.blocks_translated += 1;
        Ok(Rc::new(Prepared::new(block)))
    }

    /// Drops every translation (the debugger changed where blocks must end).
    fn drop_translations(&mut self) {
        self.code.clear();
        self.mmu.clear_code_pages();
        // Write comparators may still carry TLB_CODE: they take the slow path until
        // refilled, which is correct, and this is rare (the debugger's breakpoints changed).
        self.mmu.flush(false);
    }

    /// Raises #DB with these DR6 status bits (B0-B3, BS) at the current instruction
    /// boundary.
    fn debug_exception(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        status: u64,
    ) -> Result<(), CpuStop> {
        self.state.dr[6] |= status;
        // A trap after HLT wakes the CPU into the handler, as any delivered event does.
        self.state.halted = false;
        self.stats.exceptions += 1;
        let ret = self.state.rip;
        let mut ctx = ctx!(self, mem, board);
        if raise(&mut self.state, &mut ctx, Exception::new(1), ret) == Delivery::TripleFault {
            return Err(CpuStop::TripleFault {
                rip: self.state.rip,
            });
        }
        self.invalidate_dirty(mem);
        Ok(())
    }

    /// Where blocks must end: before the debugger's and the guest's instruction
    /// breakpoints, and after every instruction while any data breakpoint is set (its trap
    /// comes after the instruction that hit it). Drops the translations when that changes.
    fn refresh_limits(&mut self) {
        let mut stop: Vec<u64> = self
            .debug
            .iter()
            .flat_map(|d| d.breakpoints.iter().copied())
            .collect();
        stop.extend(self.guest_bps.exec.iter().map(|&(_, a)| a));
        stop.sort_unstable();
        stop.dedup();
        let limits = lift::Limits {
            max_insns: if self.traps.active() {
                1
            } else {
                lift::MAX_BLOCK_INSNS
            },
            stop_before: stop,
        };
        if limits.max_insns != self.limits.max_insns
            || limits.stop_before != self.limits.stop_before
        {
            self.limits = limits;
            self.drop_translations();
        }
    }

    /// Sets the debugger's breakpoints (linear addresses) and watchpoints, and how the
    /// next [`Self::execute`] runs: one instruction (`step`) or on; when `resuming`, a
    /// breakpoint at the current instruction is executed rather than reported.
    fn apply_debug(
        &mut self,
        breakpoints: &[u64],
        watchpoints: &[Watchpoint],
        step: bool,
        resuming: bool,
    ) {
        let mut bps = breakpoints.to_vec();
        bps.sort_unstable();
        bps.dedup();
        self.traps.set_watchpoints(watchpoints);
        self.mmu.set_watched(self.traps.ranges());
        let at = self.state.linear_rip();
        let d = self.debug.get_or_insert_with(DebugCtl::default);
        d.breakpoints = bps;
        d.step = step;
        d.resume_from = resuming.then_some(at);
        d.slice_left = SLICE_BLOCKS;
        self.refresh_limits();
    }

    /// Compiles blocks with Cranelift from now on (`--accel jit`), once they ran `hot`
    /// times ([`gantry_translator::jit::HOT`] for a machine): at once on this thread
    /// (the tests that compare the tiers), or on a compile thread.
    pub fn enable_jit(&mut self, hot: u32, compiles: Compiles) -> Result<(), String> {
        self.jit = Some(match compiles {
            Compiles::Inline => Jit::new(hot)?,
            Compiles::Background => Jit::with_background_compiles(hot)?,
        });
        Ok(())
    }

    /// Names the JIT's blocks for perf from now on ([`Jit::write_perf_map`]).
    pub fn write_perf_map(&mut self) -> Result<(), String> {
        match &mut self.jit {
            Some(jit) => jit.write_perf_map(),
            None => Err("--perf-map needs --accel jit".into()),
        }
    }

    pub fn jit_enabled(&self) -> bool {
        self.jit.is_some()
    }
}

impl Vcpu for EmuCpu {
    fn run(&mut self, mem: &mut GuestMemory, board: &mut Board) -> Result<DebugStop, Ended> {
        self.execute(mem, board).map_err(Ended::Stop)
    }

    fn state(&self) -> &CpuState {
        &self.state
    }

    /// When the paging registers change, the TLB is dropped, as loading them would drop
    /// it: its entries were walked under the old ones.
    fn set_state(&mut self, state: CpuState) -> Result<(), VcpuError> {
        let paging = |s: &CpuState| (s.cr0, s.cr3, s.cr4, s.efer);
        if paging(&state) != paging(&self.state) {
            self.mmu.flush(false);
        }
        self.state = state;
        Ok(())
    }

    /// Software and hardware breakpoints are the same here: the run loop checks both at
    /// block starts, and guest memory is never patched.
    fn set_debug(&mut self, _mem: &mut GuestMemory, req: &DebugRequest) -> Result<(), String> {
        let bps: Vec<u64> = req
            .sw_breaks
            .iter()
            .chain(&req.hw_breaks)
            .copied()
            .collect();
        self.apply_debug(&bps, &req.watches, req.step, req.resuming);
        Ok(())
    }

    fn code_written(&mut self, mem: &GuestMemory, phys: u64) {
        // The whole page: the caller says where a write began, not how far it went.
        self.dirty_code.push((phys & !0xFFF, 0x1000));
        self.invalidate_dirty(mem);
    }

    fn report(&self, out: &mut String, seconds: f64) {
        let s = &self.stats;
        let insns = self.interp.insns;
        let c = &self.state;
        let _ = writeln!(
            out,
            "cpu stopped at {:04x}:{:#x} ({}-bit code, CPL {}, CR0 {:#x}, CR3 {:#x}, EFER {:#x})",
            c.seg[st::CS].selector,
            c.rip,
            c.code_bits(),
            c.cpl(),
            c.cr0,
            c.cr3,
            c.efer
        );
        let _ = writeln!(
            out,
            "guest instructions: {insns} ({:.1} MIPS over the run)",
            insns as f64 / seconds.max(1e-9) / 1e6
        );
        if self.cpus.count() > 1 {
            let _ = writeln!(
                out,
                "cpus: {} on one host thread, CPU {} running at the end, {} switches",
                self.cpus.count(),
                self.cpus.current,
                self.cpus.switches
            );
        }
        let _ = writeln!(
            out,
            "blocks: {} translated, {} run ({:.1} instructions a run), {} invalidated by {} \
             writes to their pages ({} of them to other bytes of the page); jump cache \
             emptied {} times ({} by TLB flushes that may move code), chains unlinked {} \
             times (those and dropped blocks that compiled code may chain into), {} \
             look-ups past it",
            s.blocks_translated,
            s.blocks_run,
            insns as f64 / s.blocks_run.max(1) as f64,
            s.invalidated_blocks,
            s.code_page_writes,
            s.code_page_writes_missed,
            self.code.jump_epoch(),
            s.jump_flushes,
            self.code.chain_epoch(),
            s.jump_misses
        );
        if let Some(j) = &self.jit {
            let secs = j.compile_time.as_secs_f64();
            let each = |s: f64| s * 1e6 / j.compiled.max(1) as f64;
            let background = match j.background_time() {
                Some(t) => format!(
                    " and {:.2} s on the compile thread ({:.0} us each; its queue full {} times, \
                     {} dropped from it as they stopped running)",
                    t.as_secs_f64(),
                    each(t.as_secs_f64()),
                    j.deferred,
                    j.dropped
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "jit: {} blocks compiled in {secs:.2} s on the CPU's thread ({:.0} us each){background}, \
                 {} left to the interpreter, {} entered by chaining (every link dropped {} times), \
                 code memory refilled {} times",
                j.compiled,
                each(secs),
                j.refused,
                j.chained,
                j.link_clears(),
                j.flushes()
            );
            let _ = writeln!(
                out,
                "jit: {} instructions in generated code ({:.1}%), {} memory accesses past the \
                 inline TLB look-up, {} blocks run again on the interpreter from a store that \
                 would have written translated code",
                j.insns,
                j.insns as f64 * 100.0 / insns.max(1) as f64,
                j.slow_accesses,
                s.retries
            );
        }
        let m = self.mmu.stats;
        let _ = writeln!(
            out,
            "mmu: {} TLB misses, {} page faults, {} flushes, {} MMIO accesses",
            m.tlb_misses, m.page_faults, m.tlb_flushes, m.mmio_accesses
        );
        let _ = writeln!(
            out,
            "exceptions: {}, interrupts taken: {}, port I/O: {}, unknown MSRs: {}, task switches: {}",
            s.exceptions, s.interrupts, s.io, s.unknown_msrs, s.task_switches
        );
        let total: u64 = s.unimplemented.values().sum();
        let list: Vec<String> = s
            .unimplemented
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        let _ = writeln!(
            out,
            "unimplemented instructions (#UD): {total} [{}]",
            list.join(", ")
        );
    }
}
