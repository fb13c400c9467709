//! Tier 1: compiles a hot block's IR to host code with Cranelift. It compiles the very ops
//! the interpreter runs ([`crate::block::Prepared`]), one for one, so x86 semantics stay
//! in the lifter and the JIT only lowers typed IR: values live in host registers instead
//! of a scratch array and there is no dispatch, while guest memory, helpers, segment
//! checks and flag evaluation go through the same [`Host`] and `flags` code as the
//! interpreter's, by calls out of the generated code ("shims"). The CPU tests run on both
//! tiers and compare the results.
//!
//! A block's function is `fn(cpu: *mut CpuState) -> u64` in Cranelift's `tail`
//! convention ([`crate::code_memory::block_signature`]). It writes RIP itself at every
//! exit, adds the instructions it completed to the run's count in the run's words of the
//! CPU state ([`word`]) (and, on a fault,
//! stores the faulting instruction's RIP and the exception), and either goes on into the
//! next block with a tail call, spending one from the run's budget there, or returns the
//! exit's kind.
//!
//! Code memory is [`crate::code_memory`]'s, freed and refilled whole; each compiled block
//! carries its epoch, so stale code is never entered. Only blocks that ran `hot` times are
//! compiled, which keeps memory and compile time to the hot code.

use cranelift_codegen::ir::condcodes::CondCode;
use cranelift_codegen::ir::{
    condcodes::IntCC, types, AbiParam, Block, BlockArg, InstBuilder, MemFlagsData, SigRef,
    Signature, Type, Value,
};
use cranelift_codegen::ir::{Function, UserFuncName};
use cranelift_codegen::isa::{CallConv, TargetIsa};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{Linkage, Module};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use gantry_frontend::flags::{self, CcKind, CcOp, Cond, FastCond};
use gantry_frontend::ir::*;
use gantry_frontend::state::{attr, off, CpuState, AF, ARITH_FLAGS, CF, OF, PF, SF, UD_VECTOR, ZF};
use gantry_frontend::vendor::FlatSegmentTop;

use crate::access_groups;
use crate::block::{ChainSlot, Compiled, Ir, Pending, Prepared, State};
use crate::code_memory::{block_signature, CodeMemory};
use crate::compiler::{Background, Compiler, Outcome, Source};
use crate::interp::Interp;
use crate::links::{Links, INDIRECT_TARGETS};
use crate::tlb::{self, Access, TlbEntry, PAGE_MASK, PAGE_SHIFT, TLB_SIZE};
use crate::{BlockEnd, Exception, Host};

/// Executions of a block before it is compiled, for a whole machine (difftest, whose
/// snippets run once each, compiles at once). Chosen on the Debian boot, where compiling
/// costs about 1 ms a block: 64 compiled 17,400 blocks in a 46.9 s boot, 256 compiled
/// 9,500 in 38.7-40.2 s, 1024 compiled 5,200 in 38.6 s, 4096 compiled 3,000 in 42.4 s.
pub const HOT: u32 = 256;

/// Where Cranelift's passes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compiles {
    /// On the thread that runs the block, before it runs.
    Inline,
    /// On a thread of the JIT's own ([`Jit::with_background_compiles`]).
    Background,
}

const KIND_NEXT: u64 = 0;
const KIND_SYNC: u64 = 1;
const KIND_HALT: u64 = 2;
const KIND_FAULT: u64 = 3;

/// Most arguments a helper call passes (the lifter's calls use at most 4).
const MAX_ARGS: usize = 8;

/// What the shims need of a run (a block and the blocks it chains into) beyond what
/// generated code reaches: the host and the chain links. Generated code reaches the run's
/// words ([`word`]) in the CPU state, from the same base as the registers.
pub struct Runtime<'a> {
    /// The code memory's epoch: a block compiled in another one is not chained into.
    epoch: u64,
    /// The chain links and what they assumed.
    links: &'a mut Links,
    /// Calls of the load and store shims.
    slow_accesses: u64,
    /// Set by a store that would have written translated code
    /// ([`Host::store_unless_code`]): the run ends before its instruction, which the run
    /// loop runs again on the interpreter ([`BlockEnd::Retry`]).
    retry: bool,
    host: &'a mut dyn Host,
}

/// The run's words in [`CpuState::jit`], which generated code and its shims share: a
/// block's function takes the CPU state's address as its one parameter and reaches its
/// registers and these through it, so that it holds one base for both. The run's state
/// had been a struct of its own, passed as the parameter, with the CPU state's address
/// in Cranelift's pinned register: every use of that took a copy of the register first
/// (7% of the decompressor's blocks' instructions), and the register was not allocatable.
mod word {
    /// A shim's result, read by the generated code after a call that returned no fault.
    pub const VALUE: usize = 0;
    /// What the shim called last returned, where the call goes through a trampoline that
    /// keeps every register ([`super::preserving`]).
    pub const RET: usize = 1;
    /// A trampoline's arguments past the runtime and the CPU, stored by the generated
    /// code before the call ([`super::Emit::call`]).
    pub const PASSED: usize = 2;
    /// A helper call's arguments.
    pub const ARGS: usize = PASSED + super::PASSED;
    /// The TLB table of the CPU's current privilege ([`super::Host::data_tlb`]), read by
    /// the inline look-up of every load and store; a helper may change the privilege, so
    /// the helper shim sets it again.
    pub const TLB: usize = ARGS + super::MAX_ARGS;
    /// Guest instructions the run completed: each exit of generated code adds its block's
    /// (a block that loops in its function carries the count in a host value from lap to
    /// lap).
    pub const INSNS: usize = TLB + 1;
    /// The exception that ended the run ([`super::encode`]d), written by the shim that
    /// raised it or by the generated code of a `raise` or `trap_if`.
    pub const FAULT: usize = INSNS + 1;
    /// In the low half, how many more blocks the run may chain into before it returns to
    /// the run loop: an exit that goes straight on spends one, as
    /// [`super::shim_chain`] does (a block that loops in its function carries it in a
    /// host value from lap to lap). In the high half, `ask`: not 0 when the next block
    /// boundary must ask the host ([`super::shim_chain`]): since the last one that did,
    /// the host was called (and may have raised an interrupt, flushed the TLB, written
    /// code, changed the mode...), or the run began where the run loop has work at the
    /// first boundary. One word, so that an exit loads both at once
    /// ([`super::Emit::next`]).
    pub const BUDGET: usize = FAULT + 1;
    /// The number of the lookup context the running block was entered in
    /// ([`super::Links::enter`]; 0: none), which the run stays in while it does not ask.
    pub const CTX: usize = BUDGET + 1;
    /// The address of the run's [`super::Runtime`], for the shims.
    pub const RUNTIME: usize = CTX + 1;
}
const _: () = assert!(word::RUNTIME < gantry_frontend::state::JIT_SCRATCH_WORDS);

/// The offset of run word `w` from the CPU state's address.
const fn rt_word(w: usize) -> usize {
    off::JIT + 8 * w
}

const RT_VALUE: i32 = rt_word(word::VALUE) as i32;
pub(crate) const RT_RET: usize = rt_word(word::RET);
pub(crate) const RT_PASSED: usize = rt_word(word::PASSED);
pub(crate) const RT_RUNTIME: usize = rt_word(word::RUNTIME);
/// The most arguments a shim takes past the runtime and the CPU.
pub(crate) const PASSED: usize = 3;
const RT_ARGS: i32 = rt_word(word::ARGS) as i32;
const RT_TLB: i32 = rt_word(word::TLB) as i32;
const RT_INSNS: i32 = rt_word(word::INSNS) as i32;
const RT_FAULT: i32 = rt_word(word::FAULT) as i32;
const RT_BUDGET: i32 = rt_word(word::BUDGET) as i32;
const RT_CTX: i32 = rt_word(word::CTX) as i32;
// An exit reads the budget and `ask` as one little-endian word, the budget its low half.
const _: () = assert!(cfg!(target_endian = "little"));

fn budget_of(cpu: &CpuState) -> u32 {
    cpu.jit.0[word::BUDGET] as u32
}

fn set_budget(cpu: &mut CpuState, budget: u32) {
    let w = &mut cpu.jit.0[word::BUDGET];
    *w = (*w & !0xFFFF_FFFF) | u64::from(budget);
}

fn set_ask(cpu: &mut CpuState, ask: bool) {
    let w = &mut cpu.jit.0[word::BUDGET];
    *w = (*w & 0xFFFF_FFFF) | u64::from(ask) << 32;
}

const SLOT_CODE: i32 = std::mem::offset_of!(ChainSlot, code) as i32;
const SLOT_STAMP: i32 = std::mem::offset_of!(ChainSlot, stamp) as i32;
const SLOT_RIP: i32 = std::mem::offset_of!(ChainSlot, rip) as i32;

/// An exception as one word, for generated code to store: vector, a bit for an error
/// code, and the code in the high half.
fn encode(e: Exception) -> u64 {
    e.vector as u64 | e.error_code.map_or(0, |c| 1 << 8 | (c as u64) << 32)
}

fn decode(w: u64) -> Exception {
    Exception {
        vector: w as u8,
        error_code: (w & 1 << 8 != 0).then_some((w >> 32) as u32),
    }
}

/// The table of a host without a TLB: every look-up misses.
static NO_TLB: [TlbEntry; TLB_SIZE] = [tlb::EMPTY; TLB_SIZE];

fn data_tlb(host: &mut dyn Host, cpu: &CpuState) -> *const TlbEntry {
    host.data_tlb(cpu).unwrap_or(NO_TLB.as_ptr())
}

pub struct Jit {
    code: CodeMemory,
    /// Compiles on the vCPU's thread, when there is no background thread.
    compiler: Compiler,
    background: Option<Background>,
    hot: u32,
    next_name: u64,
    /// Blocks compiled, and blocks the compiler turned down.
    pub compiled: u64,
    pub refused: u64,
    /// Times a hot block found the background compiler's queue full (and stayed
    /// interpreted for another run).
    pub deferred: u64,
    /// Queued blocks the compile thread dropped uncompiled: they hardly ran while they
    /// waited ([`crate::compiler`]'s staleness rule).
    pub dropped: u64,
    /// Blocks entered from another block's code rather than from the run loop.
    pub chained: u64,
    /// Guest instructions completed in generated code.
    pub insns: u64,
    /// Guest memory accesses of generated code that missed the inline TLB look-up (a
    /// miss, a flagged page or an access across pages) and took the call out.
    pub slow_accesses: u64,
    /// Time the vCPU's thread spent compiling: lowering to Cranelift and installing the
    /// code, and Cranelift's passes unless they ran in the background.
    pub compile_time: Duration,
    /// The chain slots' links and what they assumed, with the table of indirect
    /// targets.
    links: Links,
    /// The kinds of Cranelift error seen so far: the first of each is logged, so that a
    /// backend that refuses an op on some host shows up.
    errors_seen: Vec<String>,
    /// perf's map of JIT code ([`Self::write_perf_map`]), while it is written.
    perf_map: Option<std::fs::File>,
}

impl Jit {
    /// A JIT for the host CPU that compiles blocks once they ran `hot` times, at once
    /// and on the caller's thread: a block runs compiled from its `hot`th run on, every
    /// time (what tests comparing the tiers need).
    pub fn new(hot: u32) -> Result<Self, String> {
        let code = CodeMemory::new()?;
        Ok(Self {
            compiler: Compiler::new(code.isa()),
            background: None,
            code,
            hot,
            next_name: 0,
            compiled: 0,
            refused: 0,
            deferred: 0,
            dropped: 0,
            chained: 0,
            insns: 0,
            slow_accesses: 0,
            compile_time: Duration::ZERO,
            links: Links::new(),
            errors_seen: Vec::new(),
            perf_map: None,
        })
    }

    /// A JIT whose compiles run on a thread of their own (if one can be started), the
    /// block staying interpreted until its code is ready: what a machine uses, since the
    /// guest then no longer waits for Cranelift (which timing, not instruction counts,
    /// decides when a block turns compiled).
    pub fn with_background_compiles(hot: u32) -> Result<Self, String> {
        let mut jit = Self::new(hot)?;
        jit.background = Background::spawn(jit.code.isa()).ok();
        Ok(jit)
    }

    /// Time the background thread spent compiling.
    pub fn background_time(&self) -> Option<Duration> {
        self.background.as_ref().map(Background::busy)
    }

    /// Writes perf's map of JIT code, `/tmp/perf-<pid>.map`, from now on: a line for each
    /// block compiled, naming it by its guest address (`guest_<rip>`), so that `perf
    /// report` attributes the time in generated code to the guest code it runs. Code
    /// memory refilled reuses addresses; perf takes the latest line for an address.
    pub fn write_perf_map(&mut self) -> Result<(), String> {
        let path = format!("/tmp/perf-{}.map", std::process::id());
        let file = std::fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?;
        self.perf_map = Some(file);
        Ok(())
    }

    /// How often the code memory was freed and refilled.
    pub fn flushes(&self) -> u64 {
        self.code.flushes
    }

    /// How often every chain link was dropped ([`crate::links`]).
    pub fn link_clears(&self) -> u64 {
        self.links.clears
    }

    /// Runs a block: compiled once it is hot, interpreted until then (and for good if it
    /// cannot be compiled).
    pub fn run(
        &mut self,
        p: &Prepared,
        interp: &mut Interp,
        cpu: &mut CpuState,
        host: &mut dyn Host,
    ) -> BlockEnd {
        self.run_chained(p, interp, cpu, host, &mut 0)
    }

    /// Runs a block as [`Self::run`] does, and lets compiled code go on into up to
    /// `budget` further compiled blocks without returning ([`Host::next_block`] says
    /// which, if any); counts the blocks it chained into off `budget`.
    pub fn run_chained(
        &mut self,
        p: &Prepared,
        interp: &mut Interp,
        cpu: &mut CpuState,
        host: &mut dyn Host,
        budget: &mut u32,
    ) -> BlockEnd {
        {
            // The borrow lasts the run: only this function changes a block's tier, and a
            // block never runs another one.
            let state = p.tier.state.borrow();
            match &*state {
                State::Ready(c) if c.epoch == self.code.epoch() => {
                    return self.run_compiled(c, interp, cpu, host, budget);
                }
                State::Refused => return interp.run(p, cpu, host),
                State::Compiling(job) if job.ticket.get().is_none() && !job.ticket.dropped() => {
                    job.ticket.ran_waiting();
                    return interp.run(p, cpu, host);
                }
                _ => {}
            }
        }
        let state = std::mem::take(&mut *p.tier.state.borrow_mut());
        let next = match state {
            State::Compiling(job) if job.ticket.get().is_none() => {
                // Dropped from the queue: hot again after as many runs as the first time.
                self.dropped += 1;
                p.tier.runs.set(0);
                State::Cold
            }
            State::Compiling(job) => self.install(job),
            // Cold, or compiled into code memory since freed.
            _ => {
                let runs = p.tier.runs.get().saturating_add(1);
                p.tier.runs.set(runs);
                if runs < self.hot {
                    return interp.run(p, cpu, host);
                }
                self.start(p)
            }
        };
        match next {
            State::Ready(c) => {
                let r = self.run_compiled(&c, interp, cpu, host, budget);
                *p.tier.state.borrow_mut() = State::Ready(c);
                r
            }
            other => {
                *p.tier.state.borrow_mut() = other;
                interp.run(p, cpu, host)
            }
        }
    }

    fn run_compiled(
        &mut self,
        c: &Compiled,
        interp: &mut Interp,
        cpu: &mut CpuState,
        host: &mut dyn Host,
        budget: &mut u32,
    ) -> BlockEnd {
        // The block's links are checked for the context it runs in here, as the shim
        // checks a block it chains into; its exits go straight on from the first unless
        // the run loop has work at that boundary.
        let start = if *budget > 0 {
            host.chain_start(cpu)
        } else {
            None
        };
        let (ask, ctx) = match start {
            Some(s) => match s
                .context
                .and_then(|k| self.links.enter(s.chain_epoch, k, &c.linked))
            {
                Some(n) => (u32::from(!s.straight), u64::from(n)),
                None => (1, 0),
            },
            None => (1, 0),
        };
        let tlb = data_tlb(host, cpu) as u64;
        let mut rt = Runtime {
            epoch: self.code.epoch(),
            links: &mut self.links,
            retry: false,
            slow_accesses: 0,
            host,
        };
        let words = &mut cpu.jit.0;
        words[word::TLB] = tlb;
        words[word::INSNS] = 0;
        words[word::FAULT] = encode(Exception::new(UD_VECTOR));
        words[word::BUDGET] = u64::from(*budget) | u64::from(ask) << 32;
        words[word::CTX] = ctx;
        words[word::RUNTIME] = &mut rt as *mut Runtime as u64;
        let entry = self.code.entry();
        // SAFETY: `code` was compiled by `Jit::compile` in the current epoch (the caller
        // checked), with the block signature `entry` calls; it reads and writes `CpuState`
        // only at field offsets from `state::off` (its run words among them, at the
        // `RT_*` offsets), and reaches everything else through the shims below, which
        // get back the CPU state's pointer and, through its `RUNTIME` word, `rt`, both
        // live and exclusive for the call. A block it chains into was checked the same
        // way by `shim_chain`, and stays cached (so its helper table and chain slots live)
        // until the run loop drops blocks, after the run.
        let r = unsafe { entry(cpu, c.code) };
        let words = &mut cpu.jit.0;
        // `rt` ends here: no word keeps its address.
        words[word::RUNTIME] = 0;
        let (insns, fault) = (words[word::INSNS], words[word::FAULT]);
        let left = budget_of(cpu);
        self.chained += u64::from(*budget - left);
        self.insns += insns;
        self.slow_accesses += rt.slow_accesses;
        *budget = left;
        interp.insns += insns;
        match r {
            KIND_FAULT if rt.retry => BlockEnd::Retry,
            KIND_FAULT => BlockEnd::Fault(decode(fault)),
            KIND_SYNC => BlockEnd::Sync,
            KIND_HALT => BlockEnd::Halt,
            _ => BlockEnd::Next,
        }
    }

    /// Compiles a block that just got hot: at once, or on the background thread (the
    /// block is [`State::Compiling`] until its code is installed).
    fn start(&mut self, p: &Prepared) -> State {
        if self.background.as_ref().is_some_and(|bg| !bg.has_room()) {
            // Asked again on the block's next run.
            self.deferred += 1;
            return State::Cold;
        }
        let started = Instant::now();
        let Some((lowering, pending)) = self.lower(p) else {
            self.refused += 1;
            return State::Refused;
        };
        // A block the compile thread cannot take (it is gone) compiles here: the
        // thread's absence costs speed, never compiled code.
        let lowering = match &self.background {
            Some(bg) => match bg.submit(Box::new(lowering), pending.id) {
                Ok(ticket) => {
                    self.compile_time += started.elapsed();
                    return State::Compiling(Pending { ticket, ..pending });
                }
                Err(lowering) => lowering,
            },
            None => Box::new(lowering),
        };
        let outcome = self.compiler.compile(&*lowering, pending.id);
        let state = self.place(pending, &outcome);
        self.compile_time += started.elapsed();
        state
    }

    /// Installs the code of a block the background thread compiled.
    fn install(&mut self, mut job: Pending) -> State {
        let started = Instant::now();
        let ticket = std::mem::take(&mut job.ticket);
        let state = match ticket.get() {
            Some(outcome) => self.place(job, outcome),
            None => State::Cold,
        };
        self.compile_time += started.elapsed();
        state
    }

    /// Copies compiled code into code memory, unless the memory was refilled since the
    /// block was lowered (its function holds the address of the old table of indirect
    /// targets): then it is [`State::Cold`], and compiles again on its next run.
    fn place(&mut self, job: Pending, outcome: &Outcome) -> State {
        if job.epoch != self.code.epoch() {
            return State::Cold;
        }
        let code = match outcome {
            Ok(code) => code,
            Err(refusal) => {
                if !self.errors_seen.contains(&refusal.kind) {
                    eprintln!(
                        "gantry: the JIT could not compile a block ({}); such blocks stay on \
                         the interpreter",
                        refusal.message
                    );
                    self.errors_seen.push(refusal.kind.clone());
                }
                self.refused += 1;
                return State::Refused;
            }
        };
        let module = self.code.module();
        let defined = module
            .define_function_bytes(job.id, code.alignment, &code.bytes, &code.relocs)
            .is_ok()
            && module.finalize_definitions().is_ok();
        if !defined {
            self.refused += 1;
            return State::Refused;
        }
        let entry = module.get_finalized_function(job.id);
        self.code.add(code.bytes.len());
        if let Some(map) = &mut self.perf_map {
            use std::io::Write;
            let line = format!(
                "{:x} {:x} guest_{:x}\n",
                entry as usize,
                code.bytes.len(),
                job.rip
            );
            if map.write_all(line.as_bytes()).is_err() {
                // A full disk ends the map, not the run.
                self.perf_map = None;
            }
        }
        self.compiled += 1;
        self.links.register(&job.slots);
        State::Ready(Compiled {
            code: entry,
            helpers: job.helpers,
            slots: job.slots,
            linked: Cell::new(0),
            epoch: job.epoch,
        })
    }

    /// Makes ready what a block's function needs from the JIT (room in the code memory,
    /// its helper table and chain slots, its declaration) and the block's lowering to
    /// CLIF, which the compile thread does; `None` if the block cannot be compiled.
    fn lower(&mut self, p: &Prepared) -> Option<(Lowering, Pending)> {
        let epoch = self.code.epoch();
        self.code.make_room()?;
        if self.code.epoch() != epoch {
            // The slots' code pointers were into the memory just freed.
            self.links.forget_blocks();
        }
        let too_many_args = p
            .ops()
            .iter()
            .any(|i| matches!(i, Inst::Call { args, .. } if args.len() > MAX_ARGS));
        if too_many_args {
            return None;
        }
        let epoch = self.code.epoch();
        // The helper table is made first: the generated code holds its address.
        let helpers: Box<[Helper]> = p
            .ops()
            .iter()
            .filter_map(|i| match i {
                Inst::Call { helper, .. } => Some(*helper),
                _ => None,
            })
            .collect();
        let direct_exits = |i: &Inst| match i {
            Inst::ExitIf { .. } => 1,
            Inst::Exit {
                why: ExitWhy::Continue,
                ..
            } => 1,
            Inst::Branch { .. } => 2,
            Inst::Jump { target } if p.consts.iter().any(|&(v, _)| v == target.0) => 1,
            _ => 0,
        };
        let slots: Rc<[ChainSlot]> = (0..p.ops().iter().map(direct_exits).sum::<usize>())
            .map(|_| ChainSlot::default())
            .collect();
        let name = format!("b{}", self.next_name);
        self.next_name += 1;
        let id = self
            .code
            .module()
            .declare_function(&name, Linkage::Local, &block_signature())
            .ok()?;
        let lowering = Lowering {
            ir: p.ir.clone(),
            helpers: (helpers.as_ptr() as usize, helpers.len()),
            slots: (slots.as_ptr() as usize, slots.len()),
            targets: self.links.targets(),
        };
        Some((
            lowering,
            Pending {
                helpers,
                slots,
                epoch,
                rip: p.block.start,
                id,
                ticket: Default::default(),
            },
        ))
    }
}

/// A block as the compile thread lowers it to CLIF: a copy of its IR, and the addresses
/// its code holds of what stays with the JIT, in the block's [`Pending`] and then its
/// [`Compiled`] (the helper table and the chain slots, boxed, so their addresses hold)
/// or in the JIT (the table of indirect targets, replaced only with a new code memory
/// epoch, whose code never runs in another). Lowering there rather than on the CPU's
/// thread took about 30 us a block off the CPU's thread (0.2 s of the Debian boot; its
/// wall time stayed level, since the blocks wait for the compile thread).
pub(crate) struct Lowering {
    ir: Ir,
    /// The helper table's and the chain slots' addresses and lengths.
    helpers: (usize, usize),
    slots: (usize, usize),
    targets: usize,
}

impl Source for Lowering {
    fn lower(&self, isa: &dyn TargetIsa, fctx: &mut FunctionBuilderContext) -> Function {
        let ir = &self.ir;
        // Values the block defines as constants, with their values: a jump to one is a
        // direct exit.
        let mut consts = vec![None; ir.block.vals.len()];
        for &(v, k) in ir.consts.iter() {
            consts[v as usize] = Some(k);
        }
        let mut func = Function::with_name_signature(UserFuncName::default(), block_signature());
        let mut b = FunctionBuilder::new(&mut func, fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let base = b.block_params(entry)[0];
        let block_sig = b.import_signature(block_signature());
        let groups = access_groups::find(ir, &consts);
        let mut e = Emit {
            b,
            p: ir,
            base,
            vals: vec![None; ir.block.vals.len()],
            bools: vec![false; ir.block.vals.len()],
            helpers: self.helpers,
            next_helper: 0,
            consts: &consts,
            slots: self.slots,
            next_slot: 0,
            targets: self.targets,
            call_conv: isa.default_call_conv(),
            block_sig,
            flags: None,
            gprs: [None; 16],
            tlb: None,
            segs: [None; 6],
            eflags_home: false,
            looped: None,
            ask: None,
            exits: Vec::new(),
            group_probes: vec![None; groups.ranges.len()],
            groups,
        };
        e.body();
        e.b.seal_all_blocks();
        e.b.finalize(isa.frontend_config());
        func
    }
}

/// The address of element `i` of the table at `(address, length)`, which the code will
/// hold. A lowering that counts more exits or calls than the JIT made room for is a bug:
/// it panics (the compiler refuses the block) rather than have the code write past the
/// table.
fn element<T>((address, len): (usize, usize), i: usize) -> usize {
    assert!(i < len, "lowering wants entry {i} of a table of {len}");
    address + i * std::mem::size_of::<T>()
}

fn cl_type(t: Ty) -> Type {
    match t {
        Ty::I8 => types::I8,
        Ty::I16 => types::I16,
        Ty::I32 => types::I32,
        Ty::I64 => types::I64,
    }
}

struct Emit<'a, 'b> {
    b: FunctionBuilder<'a>,
    p: &'b Ir,
    /// The function's one parameter, the CPU state's address: the base of the guest's
    /// registers and of the run's words ([`word`]).
    base: Value,
    vals: Vec<Option<Value>>,
    /// Values known to be 0 or 1 (conditions), which a branch takes as they are.
    bools: Vec<bool>,
    /// The address and length of the block's helper table (in the order of its calls);
    /// the next call's is `next_helper`.
    helpers: (usize, usize),
    next_helper: usize,
    /// The values that are constants, with their values.
    consts: &'b [Option<u64>],
    /// The address and length of the chain slots of the block's direct exits, in the
    /// order of the ops.
    slots: (usize, usize),
    next_slot: usize,
    /// The address of the JIT's table of indirect targets.
    targets: usize,
    call_conv: CallConv,
    /// The signature of a block, for the tail call into the next one.
    block_sig: SigRef,
    /// The block's last flag-setting operation, while it is not stored in the CPU.
    flags: Option<PendingFlags>,
    /// The general registers the block has in host values: read once, and those it wrote
    /// (`dirty`) stored only where something outside the generated code may see them (as
    /// the flags), so a register written by several instructions is stored once.
    gprs: [Option<Gpr>; 16],
    /// The TLB table's address, once loaded (until a helper call, which may change the
    /// privilege and with it the table).
    tlb: Option<Value>,
    /// Whether the block made RFLAGS the flags' home (put EFLAGS in `cc.op`) with no
    /// flag-setting operation or helper call since.
    eflags_home: bool,
    /// The segments' base, limit and attributes, once loaded (until a helper call).
    segs: [Option<(Value, Value, Value)>; 6],
    /// The loop of a block that jumps to its own start, once its first such exit was
    /// emitted ([`Self::loop_back`]).
    looped: Option<Loop>,
    /// The exits' shared path to [`shim_chain`], once an exit needs it.
    ask: Option<Block>,
    /// The function's returns to the run loop, one per kind ([`Self::exit`]).
    exits: Vec<(u64, Block)>,
    /// The block's memory accesses that share a TLB look-up.
    groups: access_groups::Groups,
    /// Per group, whether its look-up missed (not 0) and the page's addend, once its
    /// first access made the look-up.
    group_probes: Vec<Option<(Value, Value)>>,
}

#[derive(Clone, Copy)]
struct Gpr {
    value: Value,
    dirty: bool,
}

/// A block that jumps to its own start is a loop in its function: the head, after the
/// entry, takes the registers a lap reads before it writes them (loaded at the entry) as
/// block parameters, so that going round loads no register; a register a lap writes
/// first is stored at the back edge. The run's budget and count stay in the run's words,
/// which each lap updates as an exit does (as two more loop-carried values they had been
/// spilled and reloaded by the decompressor's loops: `jit/integer_loop` and
/// `jit/memcpy_loop` about 5-10% faster in memory).
struct Loop {
    head: Block,
    /// Per register: held at the head, and whether dirty there (the block writes it).
    regs: [Option<bool>; 16],
    /// The registers a lap writes before it reads them: stored at the back edge.
    stored: [bool; 16],
}

/// Where a block's exit goes: to a constant address (with a chain slot of its own) or to
/// a computed one (through the JIT's table of indirect targets).
#[derive(Clone, Copy)]
enum ExitTo {
    Constant(u64),
    Computed(Value),
}

/// A flag-setting operation whose lazy-flag record the generated code has not stored:
/// conditions on it are computed from its operands, and the record is stored only where
/// something outside the generated code may see it.
struct PendingFlags {
    op: CcOp,
    /// dst, src and aux as the record holds them (i64, zero-extended).
    stored: [Value; 3],
}

impl Emit<'_, '_> {
    fn ty(&self, v: Val) -> Ty {
        self.p.block.ty(v)
    }

    /// The CPU state's address.
    fn cpu(&mut self) -> Value {
        self.base
    }

    /// An IR value; constants (kept in the prepared block's initial table) materialize
    /// where used.
    fn v(&mut self, v: Val) -> Value {
        if let Some(x) = self.vals[v.0 as usize] {
            return x;
        }
        let ty = self.ty(v);
        let k = self.consts[v.0 as usize].unwrap_or(0) & ty.mask();
        let x = self.b.ins().iconst(cl_type(ty), k as i64);
        self.vals[v.0 as usize] = Some(x);
        x
    }

    /// `v` converted to type `to` (zero-extended or truncated).
    fn as_ty(&mut self, v: Val, to: Ty) -> Value {
        let x = self.v(v);
        self.cast(x, self.ty(v), to)
    }

    fn cast(&mut self, x: Value, from: Ty, to: Ty) -> Value {
        match from.bits().cmp(&to.bits()) {
            std::cmp::Ordering::Equal => x,
            std::cmp::Ordering::Less => self.b.ins().uextend(cl_type(to), x),
            std::cmp::Ordering::Greater => self.b.ins().ireduce(cl_type(to), x),
        }
    }

    fn def(&mut self, v: Val, x: Value) {
        self.vals[v.0 as usize] = Some(x);
    }

    fn flags() -> MemFlagsData {
        MemFlagsData::trusted()
    }

    fn store_cpu(&mut self, x: Value, offset: usize) {
        let cpu = self.cpu();
        self.b.ins().store(Self::flags(), x, cpu, offset as i32);
    }

    fn set_rip(&mut self, rip: u64) {
        let x = self.b.ins().iconst(types::I64, rip as i64);
        self.store_cpu(x, off::RIP);
    }

    /// Stores the flags of the block's last flag-setting operation, if it has not been
    /// stored yet, into the CPU's lazy-flag state, on the path being emitted: where
    /// something outside the generated code may see them (an exit, a fault). The main
    /// path goes on without them stored.
    fn store_flags(&mut self) {
        let Some(f) = &self.flags else {
            return;
        };
        let stored = f.stored;
        let k = self.b.ins().iconst(types::I32, f.op.encode() as i64);
        let cpu = self.cpu();
        let mem = Self::flags();
        self.b.ins().store(mem, k, cpu, off::CC_OP as i32);
        for (x, o) in stored
            .into_iter()
            .zip([off::CC_DST, off::CC_SRC, off::CC_AUX])
        {
            self.b.ins().store(mem, x, cpu, o as i32);
        }
    }

    /// Stores the pending flags on the main path: what follows reads or changes the
    /// CPU's flag state itself.
    fn flush_flags(&mut self) {
        self.store_flags();
        self.flags = None;
    }

    /// `cond` computed inline (an i8, 0 or 1) from the pending flag-setting operation's
    /// operands, where [`flags::fast_cond`] says how; `None` otherwise.
    fn fast_test(&mut self, cond: Cond) -> Option<Value> {
        let f = self.flags.as_ref()?;
        let (fast, negate) = flags::fast_cond(f.op, cond)?;
        let [dst, src, _] = f.stored;
        let ty = Ty::from_bytes(f.op.size as u32);
        let d = self.cast(dst, Ty::I64, ty);
        let s = self.cast(src, Ty::I64, ty);
        // A negated condition is the complemented comparison, which a branch on it
        // lowers to one compare and jump.
        let cc = |c: IntCC| if negate { c.complement() } else { c };
        let i = self.b.ins();
        let r = match fast {
            FastCond::Zero => i.icmp_imm_s(cc(IntCC::Equal), d, 0),
            FastCond::Sign => i.icmp_imm_s(cc(IntCC::SignedLessThan), d, 0),
            FastCond::ZeroOrSign => i.icmp_imm_s(cc(IntCC::SignedLessThanOrEqual), d, 0),
            FastCond::Below | FastCond::BelowOrEqual | FastCond::Less | FastCond::LessOrEqual => {
                let a = i.iadd(d, s);
                let c = match fast {
                    FastCond::Below => IntCC::UnsignedLessThan,
                    FastCond::BelowOrEqual => IntCC::UnsignedLessThanOrEqual,
                    FastCond::Less => IntCC::SignedLessThan,
                    _ => IntCC::SignedLessThanOrEqual,
                };
                self.b.ins().icmp(cc(c), a, s)
            }
            FastCond::Carry => i.icmp(cc(IntCC::UnsignedLessThan), d, s),
            FastCond::SrcBit0 => {
                let bit = i.band_imm_s(s, 1);
                let bit = self.cast(bit, ty, Ty::I8);
                if negate {
                    self.b.ins().bxor_imm_s(bit, 1)
                } else {
                    bit
                }
            }
            FastCond::Never => i.iconst(types::I8, negate as i64),
        };
        Some(r)
    }

    /// RFLAGS computed inline, when the block knows how: from the pending operation
    /// ([`Self::arith_flags`]), or read as it is when the block made RFLAGS the flags'
    /// home (`cc.op` = EFLAGS, as a rotate or POPF leaves it).
    fn whole_flags(&mut self) -> Option<Value> {
        let arith = match self.flags {
            Some(_) => Some(self.arith_flags()?),
            None if self.eflags_home => None,
            None => return None,
        };
        let cpu = self.cpu();
        let f = self
            .b
            .ins()
            .load(types::I64, Self::flags(), cpu, off::RFLAGS as i32);
        Some(match arith {
            Some(a) => {
                let f = self.b.ins().band_imm_s(f, !ARITH_FLAGS as i64);
                self.b.ins().bor(f, a)
            }
            None => f,
        })
    }

    /// Whether `cond` holds for RFLAGS value `f`, as an i8 (0 or 1): the frontend's test
    /// of it ([`Cond::on_rflags`]) lowered.
    fn cond_of_rflags(&mut self, f: Value, cond: Cond) -> Value {
        let t = cond.on_rflags();
        let mut r = None;
        if t.any != 0 {
            let set = self.b.ins().band_imm_s(f, t.any as i64);
            r = Some(self.b.ins().icmp_imm_s(IntCC::NotEqual, set, 0));
        }
        if t.sf_ne_of {
            let apart = (OF.trailing_zeros() - SF.trailing_zeros()) as i64;
            let of_at_sf = self.b.ins().ushr_imm_s(f, apart);
            let differ = self.b.ins().bxor(f, of_at_sf);
            let differ = self.b.ins().band_imm_s(differ, SF as i64);
            let l = self.b.ins().icmp_imm_s(IntCC::NotEqual, differ, 0);
            r = Some(match r {
                Some(x) => self.b.ins().bor(x, l),
                None => l,
            });
        }
        let r = r.unwrap_or_else(|| self.b.ins().iconst(types::I8, 0));
        if t.negate {
            self.b.ins().bxor_imm_s(r, 1)
        } else {
            r
        }
    }

    /// The six arithmetic flags of the pending flag-setting operation, computed inline
    /// (an i64 in RFLAGS's layout) for the kinds that precede most reads of the whole
    /// RFLAGS in hot code (a rotate after an ALU operation or a shift, PUSHF, LAHF): what
    /// `flags::compute` gives for them, which the tier comparisons and difftest on the
    /// JIT hold it to. `None` for the other kinds, which go to the shim.
    fn arith_flags(&mut self) -> Option<Value> {
        let f = self.flags.as_ref()?;
        let op = f.op;
        let [dst, src, aux] = f.stored;
        let ty = Ty::from_bytes(op.size as u32);
        let d = self.cast(dst, Ty::I64, ty);
        let s = self.cast(src, Ty::I64, ty);
        let bit = |e: &mut Self, b: Value, flag: u64| {
            let b = e.b.ins().uextend(types::I64, b);
            e.b.ins().ishl_imm_s(b, flag.trailing_zeros() as i64)
        };
        let zf = self.b.ins().icmp_imm_s(IntCC::Equal, d, 0);
        let sf = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, d, 0);
        let (zf, sf) = (bit(self, zf, ZF), bit(self, sf, SF));
        // PF: the low byte has an even number of ones.
        let low = self.b.ins().band_imm_s(dst, 0xFF);
        let ones = self.b.ins().popcnt(low);
        let odd = self.b.ins().band_imm_s(ones, 1);
        let even = self.b.ins().bxor_imm_s(odd, 1);
        let pf = self.b.ins().ishl_imm_s(even, PF.trailing_zeros() as i64);
        let mut r = self.b.ins().bor(zf, sf);
        r = self.b.ins().bor(r, pf);
        let top = |e: &mut Self, v: Value| e.b.ins().icmp_imm_s(IntCC::SignedLessThan, v, 0);
        let low = |e: &mut Self, v: Value| {
            let b = e.b.ins().band_imm_s(v, 1);
            e.b.ins().ireduce(types::I8, b)
        };
        let none = self.b.ins().iconst(types::I8, 0);
        // CF, OF, and AF (already in place, as an i64), per kind.
        let (cf, of, af) = match op.kind {
            CcKind::Logic => (none, none, None),
            CcKind::Add | CcKind::Sub => {
                // The first operand back from the result, then as ADD/SUB set them.
                let (a, cf) = if op.kind == CcKind::Add {
                    let a = self.b.ins().isub(d, s);
                    (a, self.b.ins().icmp(IntCC::UnsignedLessThan, d, a))
                } else {
                    let a = self.b.ins().iadd(d, s);
                    (a, self.b.ins().icmp(IntCC::UnsignedLessThan, a, s))
                };
                let i = self.b.ins();
                let (x, y) = if op.kind == CcKind::Add {
                    let x = i.bxor(a, d);
                    (x, self.b.ins().bxor(s, d))
                } else {
                    let x = i.bxor(a, s);
                    (x, self.b.ins().bxor(a, d))
                };
                let both = self.b.ins().band(x, y);
                let of = top(self, both);
                let carries = self.b.ins().bxor(a, s);
                (cf, of, Some(self.b.ins().bxor(carries, d)))
            }
            CcKind::Inc | CcKind::Dec => {
                // CF is the one before (in src); OF at the one result that overflows.
                let cf = low(self, src);
                let (a, edge) = if op.kind == CcKind::Inc {
                    (self.b.ins().iadd_imm_s(d, -1), ty.sign_bit())
                } else {
                    (self.b.ins().iadd_imm_s(d, 1), ty.sign_bit() - 1)
                };
                let edge = self.b.ins().iconst(cl_type(ty), (edge & ty.mask()) as i64);
                let of = self.b.ins().icmp(IntCC::Equal, d, edge);
                let carries = self.b.ins().bxor_imm_s(a, 1);
                (cf, of, Some(self.b.ins().bxor(carries, d)))
            }
            CcKind::Shl => {
                let cf = top(self, s);
                let df = top(self, d);
                (cf, self.b.ins().bxor(cf, df), None)
            }
            CcKind::Shr => {
                let a = self.cast(aux, Ty::I64, ty);
                (low(self, src), top(self, a), None)
            }
            CcKind::Sar => (low(self, src), none, None),
            _ => return None,
        };
        let (cf, of) = (bit(self, cf, CF), bit(self, of, OF));
        r = self.b.ins().bor(r, cf);
        r = self.b.ins().bor(r, of);
        if let Some(carries) = af {
            let af = self.b.ins().band_imm_s(carries, AF as i64);
            let af = self.cast(af, ty, Ty::I64);
            r = self.b.ins().bor(r, af);
        }
        if op.af_set {
            r = self.b.ins().bor_imm_s(r, AF as i64);
        }
        Some(r)
    }

    /// Stores the registers the block wrote and has not stored, on the path being
    /// emitted (as [`Self::store_flags`]).
    fn store_gprs(&mut self) {
        let cpu = self.cpu();
        for (r, g) in self.gprs.iter().enumerate() {
            if let Some(Gpr { value, dirty: true }) = *g {
                self.b
                    .ins()
                    .store(Self::flags(), value, cpu, off::gpr(r) as i32);
            }
        }
    }

    /// Stores the pending registers on the main path and forgets them all (before a
    /// helper, which sees the CPU state and may change it).
    fn flush_gprs(&mut self) {
        self.store_gprs();
        self.gprs = [None; 16];
    }

    /// Adds the block's first `n` instructions (or the lap's) to the run's count, on a
    /// path that leaves the block or goes round its loop.
    fn count(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let base = self.base;
        let mem = Self::flags();
        let insns = self.b.ins().load(types::I64, mem, base, RT_INSNS);
        let insns = self.b.ins().iadd_imm_s(insns, n as i64);
        self.b.ins().store(mem, insns, base, RT_INSNS);
    }

    /// Ends the run with `kind` after op `at`, whose instruction completed (RIP is
    /// written).
    fn leave(&mut self, kind: u64, at: usize) {
        self.store_flags();
        self.store_gprs();
        self.count(self.p.locate(at).0);
        self.exit(kind);
    }

    /// Returns `kind` to the run loop, through the function's one return of it
    /// ([`Self::emit_exits`]): a constant returned from many cold paths had been one
    /// value, placed where all of them start (in a loop, its lap) and kept in a register
    /// or a stack slot across the hot path.
    fn exit(&mut self, kind: u64) {
        let b = match self.exits.iter().find(|(k, _)| *k == kind) {
            Some(&(_, b)) => b,
            None => {
                let b = self.b.create_block();
                self.b.set_cold_block(b);
                self.exits.push((kind, b));
                b
            }
        };
        self.b.ins().jump(b, &[]);
    }

    /// The returns [`Self::exit`] jumps to, after the block's code.
    fn emit_exits(&mut self) {
        for (kind, b) in std::mem::take(&mut self.exits) {
            self.b.switch_to_block(b);
            let code = self.b.ins().iconst(types::I64, kind as i64);
            self.b.ins().return_(&[code]);
        }
    }

    /// Ends the run with a fault at op `at`: RIP at its instruction, the instructions
    /// before it counted, and `raise` as the run's exception unless the shim that failed
    /// wrote one.
    fn fault(&mut self, at: usize, raise: Option<Exception>) {
        // The registers and flags as the faulting instruction found them: it writes its
        // own after its accesses.
        self.store_flags();
        self.store_gprs();
        let (begun, rip) = self.p.locate(at);
        self.set_rip(rip);
        self.count(begun.saturating_sub(1));
        if let Some(e) = raise {
            let w = self.konst(encode(e));
            let base = self.base;
            self.b.ins().store(Self::flags(), w, base, RT_FAULT);
        }
        self.exit(KIND_FAULT);
    }

    /// Leaves the block for the next one after op `at` (RIP is written): a tail call of
    /// its code when [`shim_chain`] finds it compiled and nothing needs the run loop
    /// first, else a return to the loop. The exit's chain slot (its own for a constant
    /// address, the JIT's table entry for the address otherwise) takes it there straight
    /// while the slot holds a link ([`crate::links`]) and the budget lasts.
    fn next(&mut self, at: usize, exit: ExitTo) {
        if let ExitTo::Constant(rip) = exit {
            if rip == self.p.block.start {
                self.loop_back(at);
            }
            self.set_rip(rip);
        }
        self.store_flags();
        self.store_gprs();
        self.count(self.p.locate(at).0);
        let base = self.base;
        let (slot, target) = match exit {
            ExitTo::Constant(_) => {
                let slot = element::<ChainSlot>(self.slots, self.next_slot);
                self.next_slot += 1;
                (self.konst(slot as u64), None)
            }
            ExitTo::Computed(target) => {
                // The table entry of the address: the jump cache's slot function.
                let i = self.b.ins();
                let high = i.ushr_imm_s(target, 12);
                let folded = self.b.ins().bxor(target, high);
                let index = self
                    .b
                    .ins()
                    .band_imm_s(folded, (INDIRECT_TARGETS - 1) as i64);
                let at = self
                    .b
                    .ins()
                    .imul_imm_s(index, std::mem::size_of::<ChainSlot>() as i64);
                let table = self.konst(self.targets as u64);
                (self.b.ins().iadd(table, at), Some(target))
            }
        };
        let flags = Self::flags();
        let ask = self.ask_block();
        // Goes straight on when neither the budget is spent nor the run must ask the
        // host, and the slot holds a link (an entry of the table of indirect targets: for
        // this address, in this context).
        let (budget, stop) = self.spend_budget();
        let linked = self.b.create_block();
        self.b.ins().brif(stop, ask, &[slot.into()], linked, &[]);
        self.b.switch_to_block(linked);
        let code = self.b.ins().load(types::I64, flags, slot, SLOT_CODE);
        let mut unlinked = self.b.ins().icmp_imm_s(IntCC::Equal, code, 0);
        if let Some(target) = target {
            let slot_rip = self.b.ins().load(types::I64, flags, slot, SLOT_RIP);
            let other = self.b.ins().icmp(IntCC::NotEqual, slot_rip, target);
            let stamp = self.b.ins().load(types::I64, flags, slot, SLOT_STAMP);
            let ctx = self.b.ins().load(types::I64, flags, base, RT_CTX);
            let wrong = self.b.ins().icmp(IntCC::NotEqual, stamp, ctx);
            unlinked = self.b.ins().bor(unlinked, other);
            unlinked = self.b.ins().bor(unlinked, wrong);
        }
        let straight = self.b.create_block();
        self.b
            .ins()
            .brif(unlinked, ask, &[slot.into()], straight, &[]);
        self.b.switch_to_block(straight);
        self.b.ins().store(flags, budget, base, RT_BUDGET);
        self.b
            .ins()
            .return_call_indirect(self.block_sig, code, &[base]);
    }

    /// The run's budget word less one, and whether a block boundary must stop there
    /// rather than go straight on (not 0). The budget and `ask` are one word, the budget
    /// its low half: its decrement is at least 2^31 when the budget was 0 or `ask` is
    /// not. The caller that goes on stores it back whole (`ask` is 0 then), so that the
    /// next boundary's load of it is forwarded from that store.
    fn spend_budget(&mut self) -> (Value, Value) {
        let base = self.base;
        let word = self
            .b
            .ins()
            .load(types::I64, Self::flags(), base, RT_BUDGET);
        let budget = self.b.ins().iadd_imm_s(word, -1);
        (budget, self.b.ins().ushr_imm_s(budget, 31))
    }

    /// The block every exit goes to when it cannot chain straight on: one per function,
    /// emitted after the block's code ([`Self::emit_ask`]), so that each exit costs a
    /// branch to it rather than a copy of it: about 5% fewer CLIF instructions a block,
    /// though Cranelift's time per block measured the same either way.
    fn ask_block(&mut self) -> Block {
        if let Some(b) = self.ask {
            return b;
        }
        let b = self.b.create_block();
        self.b.append_block_param(b, types::I64);
        self.b.set_cold_block(b);
        self.ask = Some(b);
        b
    }

    /// The exits' shared path when they cannot chain straight on (parameter: the exit's
    /// chain slot; the run's count and budget are in the run's words): asks [`shim_chain`],
    /// which spends from the budget there and may end the run.
    fn emit_ask(&mut self) {
        let Some(ask) = self.ask else {
            return;
        };
        self.b.switch_to_block(ask);
        let &[slot] = self.b.block_params(ask) else {
            unreachable!("the ask block has one parameter");
        };
        let base = self.base;
        let code = self.call(Shim::Chain, &[slot]);
        let chain = self.b.create_block();
        let back = self.b.create_block();
        self.b.ins().brif(code, chain, &[], back, &[]);
        self.b.switch_to_block(chain);
        self.b
            .ins()
            .return_call_indirect(self.block_sig, code, &[base]);
        self.b.switch_to_block(back);
        self.exit(KIND_NEXT);
    }

    /// At an exit to the block's own start (op `at`): goes round again inside the
    /// function, into the loop's head ([`Loop`]), when the exit could chain straight:
    /// the run's `ask` is 0, so the run's last boundary passed the host's checks with no
    /// host call since (so no code was written, no TLB flushed, no mode changed, no
    /// breakpoint set: the block is still what runs there), and the budget lasts, which
    /// going round spends as a chain does. Otherwise the exit goes on as any other.
    fn loop_back(&mut self, at: usize) {
        let Some(l) = &self.looped else {
            return;
        };
        let (head, regs, stored) = (l.head, l.regs, l.stored);
        let base = self.base;
        let mem = Self::flags();
        let (budget, stop) = self.spend_budget();
        let again = self.b.create_block();
        let other = self.b.create_block();
        self.b.ins().brif(stop, other, &[], again, &[]);
        self.b.switch_to_block(again);
        // The flags go round in the CPU (the head cannot know which operation set
        // them), the budget and the count in the run's words, as between blocks.
        self.store_flags();
        self.b.ins().store(mem, budget, base, RT_BUDGET);
        self.count(self.p.locate(at).0);
        for (r, _) in stored.iter().enumerate().filter(|(_, s)| **s) {
            if let Some(Gpr { value, dirty: true }) = self.gprs[r] {
                self.store_cpu(value, off::gpr(r));
            }
        }
        let mut args: Vec<BlockArg> = Vec::new();
        for (r, held) in regs.iter().enumerate() {
            if held.is_none() {
                continue;
            }
            // A register a helper call made the block forget is in the CPU.
            let value = match self.gprs[r] {
                Some(g) => g.value,
                None => {
                    let cpu = self.cpu();
                    self.b.ins().load(types::I64, mem, cpu, off::gpr(r) as i32)
                }
            };
            args.push(BlockArg::Value(value));
        }
        self.b.ins().jump(head, &args);
        self.b.switch_to_block(other);
    }

    /// For a block that jumps to its own start: loads the registers it uses, and goes
    /// into the loop's head, where they are block parameters.
    fn enter_loop(&mut self) {
        let start = self.p.block.start;
        let consts = self.consts;
        let to_start = |v: &Val| consts[v.0 as usize] == Some(start);
        let loops = self.p.ops().iter().any(|i| match i {
            Inst::ExitIf { next, .. } => *next == start,
            Inst::Exit {
                next,
                why: ExitWhy::Continue,
            } => *next == start,
            Inst::Branch {
                taken, not_taken, ..
            } => *taken == start || *not_taken == start,
            Inst::Jump { target } => to_start(target),
            _ => false,
        });
        if !loops {
            return;
        }
        // Per register: whether its first access in a lap writes it, and whether the lap
        // writes it at all. A register a lap writes before reading goes round in the CPU
        // (stored at the back edge) rather than in a host register: the value a lap
        // starts with is never read, and the register allocator had spilled and reloaded
        // such loop-carried values for nothing but the exits.
        let mut first_write = [None; 16];
        let mut written = [false; 16];
        for i in self.p.ops() {
            match i {
                Inst::Get {
                    loc: Loc::Gpr(r), ..
                } => {
                    first_write[*r as usize & 15].get_or_insert(false);
                }
                Inst::Put {
                    loc: Loc::Gpr(r), ..
                } => {
                    first_write[*r as usize & 15].get_or_insert(true);
                    written[*r as usize & 15] = true;
                }
                _ => {}
            }
        }
        let regs: [Option<bool>; 16] =
            std::array::from_fn(|r| (first_write[r] == Some(false)).then_some(written[r]));
        let stored: [bool; 16] = std::array::from_fn(|r| first_write[r] == Some(true));
        let cpu = self.cpu();
        let mem = Self::flags();
        let head = self.b.create_block();
        let mut args: Vec<BlockArg> = Vec::new();
        for (r, held) in regs.iter().enumerate() {
            if held.is_some() {
                let x = self.b.ins().load(types::I64, mem, cpu, off::gpr(r) as i32);
                args.push(BlockArg::Value(x));
                self.b.append_block_param(head, types::I64);
            }
        }
        self.b.ins().jump(head, &args);
        self.b.switch_to_block(head);
        let mut params = self.b.block_params(head).to_vec().into_iter();
        for (r, held) in regs.iter().enumerate() {
            self.gprs[r] = held.and_then(|dirty| {
                Some(Gpr {
                    value: params.next()?,
                    dirty,
                })
            });
        }
        self.looped = Some(Loop { head, regs, stored });
    }

    /// Continues in `next` (with `args`) when `cond` is 0; otherwise the block ends with a
    /// fault at op `at` ([`Self::fault`]). A slow path's end branches so straight to
    /// where its fast path rejoins, rather than through a block of its own: one CLIF
    /// block fewer a memory access, and Cranelift's time a block about 5% less (each
    /// block compiled twice in one boot, both ways).
    fn fault_else_to(
        &mut self,
        cond: Value,
        at: usize,
        raise: Option<Exception>,
        next: Block,
        args: &[Value],
    ) {
        let fault = self.b.create_block();
        let args: Vec<BlockArg> = args.iter().map(|&v| v.into()).collect();
        self.b.ins().brif(cond, fault, &[], next, &args);
        self.b.set_cold_block(fault);
        self.b.switch_to_block(fault);
        self.fault(at, raise);
        self.b.switch_to_block(next);
    }

    /// Continues in a fresh block when `cond` is 0; otherwise the block ends with a fault
    /// at op `at` ([`Self::fault`]).
    fn fault_if(&mut self, cond: Value, at: usize, raise: Option<Exception>) {
        let cont = self.b.create_block();
        self.fault_else_to(cond, at, raise, cont, &[]);
    }

    /// Calls a shim with the runtime, the CPU state and `args` (i64, at most
    /// [`PASSED`]); returns its i64 result.
    fn call(&mut self, shim: Shim, args: &[Value]) -> Value {
        debug_assert!(args.len() <= PASSED);
        let base = self.base;
        if let Some(trampoline) = preserving::trampoline(shim) {
            // Through a trampoline that keeps every register ([`preserving`]), with the
            // arguments in the run's words: the call's only register operand is the CPU
            // state's address, which every block holds in that register from its entry
            // anyway, so that no value the block keeps across its cold calls competes
            // for the argument registers. The trampoline reads the runtime's address
            // from the CPU state.
            for (i, &a) in args.iter().enumerate() {
                self.b
                    .ins()
                    .store(Self::flags(), a, base, (RT_PASSED + 8 * i) as i32);
            }
            let mut sig = Signature::new(CallConv::PreserveAll);
            sig.params.push(AbiParam::new(types::I64));
            let sig = self.b.import_signature(sig);
            let callee = self.b.ins().iconst(types::I64, trampoline as i64);
            self.b.ins().call_indirect(sig, callee, &[base]);
            return self
                .b
                .ins()
                .load(types::I64, Self::flags(), base, RT_RET as i32);
        }
        let cpu = self.cpu();
        let runtime = self
            .b
            .ins()
            .load(types::I64, Self::flags(), cpu, RT_RUNTIME as i32);
        let all: Vec<Value> = [runtime, cpu]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let mut sig = Signature::new(self.call_conv);
        for _ in &all {
            sig.params.push(AbiParam::new(types::I64));
        }
        sig.returns.push(AbiParam::new(types::I64));
        let sig = self.b.import_signature(sig);
        let callee = self.b.ins().iconst(types::I64, shim.address() as i64);
        let call = self.b.ins().call_indirect(sig, callee, &all);
        self.b.inst_results(call)[0]
    }

    fn konst(&mut self, v: u64) -> Value {
        self.b.ins().iconst(types::I64, v as i64)
    }

    /// Guest memory as generated code reaches it on a TLB hit: any alignment, never
    /// trapping (the TLB only hands out mapped pages), little-endian on any host.
    fn guest_flags() -> MemFlagsData {
        MemFlagsData::new()
            .with_notrap()
            .with_endianness(cranelift_codegen::ir::Endianness::Little)
    }

    /// The TLB entry of the bytes from `a + lo` up to `a + hi` (exclusive) for `access`,
    /// its comparator, and the page the comparator must equal for the entry to map them
    /// all: the page of the last byte, which is the first byte's page exactly when the
    /// range fits in one page (a page and the next never share a slot).
    fn tlb_entry(&mut self, a: Value, lo: i64, hi: i64, access: Access) -> (Value, Value, Value) {
        let base = self.base;
        let table = match self.tlb {
            Some(t) => t,
            None => {
                let t = self.b.ins().load(types::I64, Self::flags(), base, RT_TLB);
                self.tlb = Some(t);
                t
            }
        };
        let b = &mut self.b;
        let first = if lo == 0 {
            a
        } else {
            b.ins().iadd_imm_s(a, lo)
        };
        // tlb::slot, times the entry's size: the page number's low bits, in place.
        let shifted = b
            .ins()
            .ushr_imm_s(first, (PAGE_SHIFT - tlb::layout::ENTRY_SHIFT) as i64);
        let at = b
            .ins()
            .band_imm_s(shifted, ((TLB_SIZE - 1) << tlb::layout::ENTRY_SHIFT) as i64);
        let entry = b.ins().iadd(table, at);
        let cmp_at = (tlb::layout::CMP + 8 * access as usize) as i32;
        let cmp = b.ins().load(types::I64, Self::flags(), entry, cmp_at);
        let last = b.ins().iadd_imm_s(a, hi - 1);
        let page = b.ins().band_imm_s(last, !PAGE_MASK as i64);
        (entry, cmp, page)
    }

    /// The TLB look-up of an access in group `g` ([`access_groups`]) at guest linear
    /// address `a`: the group's one look-up, made at its first access for all of them,
    /// decides. Continues in the block of a hit and returns the host address, with the
    /// (cold) block of a miss, which takes the access's slow path.
    fn grouped_probe(&mut self, g: usize, a: Value) -> (Value, Block) {
        let (miss, addend) = match self.group_probes[g] {
            Some(p) => p,
            None => {
                let r = self.groups.ranges[g];
                let (entry, cmp, page) = self.tlb_entry(a, r.lo, r.hi, r.access);
                // The outcome as one value, 0 on a hit, which every access of the group
                // tests: a compare there would be made again at each branch (Cranelift
                // fuses it into the branch), keeping both its operands live through the
                // group, and the decompressor's blocks spilled them (its part of the
                // boot 0.965x the time with this, 8 interleaved pairs).
                let miss = self.b.ins().bxor(cmp, page);
                // Read on a miss too (the entry is there, only not this page's): the
                // value is used only on a hit.
                let addend =
                    self.b
                        .ins()
                        .load(types::I64, Self::flags(), entry, tlb::layout::ADDEND as i32);
                self.group_probes[g] = Some((miss, addend));
                (miss, addend)
            }
        };
        let slow = self.on_miss(miss);
        (self.b.ins().iadd(addend, a), slow)
    }

    /// Goes on in a new block when a TLB look-up hit (`miss` is 0); returns the (cold)
    /// block of a miss.
    fn on_miss(&mut self, miss: Value) -> Block {
        let b = &mut self.b;
        let fast = b.create_block();
        let slow = b.create_block();
        b.ins().brif(miss, slow, &[], fast, &[]);
        b.set_cold_block(slow);
        b.switch_to_block(fast);
        slow
    }

    /// The look-up of the memory access at op `at`: its group's, or its own.
    fn access_probe(&mut self, at: usize, a: Value, bytes: u32, access: Access) -> (Value, Block) {
        match self.groups.of.get(at).copied().flatten() {
            Some(g) => self.grouped_probe(g as usize, a),
            None => self.tlb_probe(a, bytes, access),
        }
    }

    /// The inline TLB look-up of `bytes` at guest linear address `a` for `access`, as
    /// [`crate::tlb::Tlb::lookup`] does it on the table alone: continues in the block of
    /// a hit and returns the host address, with the (cold) block a miss, a flagged page
    /// or an access across pages goes to instead.
    fn tlb_probe(&mut self, a: Value, bytes: u32, access: Access) -> (Value, Block) {
        let (entry, cmp, page) = self.tlb_entry(a, 0, i64::from(bytes), access);
        let miss = self.b.ins().icmp(IntCC::NotEqual, cmp, page);
        let slow = self.on_miss(miss);
        let addend =
            self.b
                .ins()
                .load(types::I64, Self::flags(), entry, tlb::layout::ADDEND as i32);
        (self.b.ins().iadd(addend, a), slow)
    }

    /// A condition's low bit, which is what the IR's branches test: the condition
    /// itself when it is 0 or 1.
    fn low_bit(&mut self, cond: Val, c: Value) -> Value {
        if self.bools[cond.0 as usize] {
            c
        } else {
            self.b.ins().band_imm_s(c, 1)
        }
    }

    /// Segment `seg`'s base, limit (i64) and attributes (i16) from the descriptor cache,
    /// loaded once per block (until a helper call, which may load the register).
    fn segment(&mut self, seg: usize) -> (Value, Value, Value) {
        let seg = seg % 6;
        if let Some(s) = self.segs[seg] {
            return s;
        }
        let cpu = self.cpu();
        let mem = Self::flags();
        let i = self.b.ins();
        let base = i.load(types::I64, mem, cpu, off::seg_base(seg) as i32);
        let limit = self.b.ins().uload32(mem, cpu, off::seg_limit(seg) as i32);
        let attrs = self
            .b
            .ins()
            .load(types::I16, mem, cpu, off::seg_attr(seg) as i32);
        self.segs[seg] = Some((base, limit, attrs));
        (base, limit, attrs)
    }

    fn rt_value(&mut self, ty: Ty) -> Value {
        let base = self.base;
        self.b
            .ins()
            .load(cl_type(ty), Self::flags(), base, RT_VALUE)
    }

    fn body(&mut self) {
        self.enter_loop();
        self.ops();
        self.emit_ask();
        self.emit_exits();
    }

    fn ops(&mut self) {
        let ops = self.p.ops();
        for (at, inst) in ops.iter().enumerate() {
            self.inst(at, inst);
            if inst.is_terminator() {
                return;
            }
        }
        // A lifter bug (no terminator): #UD at the end, as the interpreter.
        self.fault(ops.len(), Some(Exception::new(UD_VECTOR)));
    }

    fn inst(&mut self, at: usize, inst: &Inst) {
        let rip_here = self.p.locate(at).1;
        match inst {
            Inst::Mark { .. } | Inst::Const { .. } => {}
            Inst::Get { dst, loc } => {
                if loc.holds_flags() {
                    self.flush_flags();
                }
                if let Loc::Gpr(r) = loc {
                    if let Some(g) = self.gprs[*r as usize & 15] {
                        let x = self.cast(g.value, Ty::I64, self.ty(*dst));
                        self.def(*dst, x);
                        return;
                    }
                }
                let cpu = self.cpu();
                let x =
                    self.b
                        .ins()
                        .load(cl_type(loc.ty()), Self::flags(), cpu, loc.offset() as i32);
                if let Loc::Gpr(r) = loc {
                    let value = self.cast(x, loc.ty(), Ty::I64);
                    self.gprs[*r as usize & 15] = Some(Gpr {
                        value,
                        dirty: false,
                    });
                }
                let x = self.cast(x, loc.ty(), self.ty(*dst));
                self.def(*dst, x);
            }
            Inst::Put { loc, src } => {
                if loc.holds_flags() {
                    self.flush_flags();
                }
                let x = self.as_ty(*src, loc.ty());
                if *loc == Loc::CcOp {
                    self.eflags_home = self.consts[src.0 as usize]
                        .is_some_and(|k| k as u32 == CcOp::EFLAGS.encode());
                }
                if let Loc::SegBase(_) | Loc::SegSelector(_) = loc {
                    self.segs = [None; 6];
                }
                if let Loc::Gpr(r) = loc {
                    let value = self.cast(x, loc.ty(), Ty::I64);
                    self.gprs[*r as usize & 15] = Some(Gpr { value, dirty: true });
                    return;
                }
                self.store_cpu(x, loc.offset());
            }
            Inst::Bin { dst, op, a, b } => {
                let ty = self.ty(*dst);
                let x = self.as_ty(*a, ty);
                let shift = matches!(
                    op,
                    BinOp::Shl | BinOp::Shr | BinOp::Sar | BinOp::Rol | BinOp::Ror
                );
                let y = if shift {
                    self.v(*b)
                } else {
                    self.as_ty(*b, ty)
                };
                let i = self.b.ins();
                let r = match op {
                    BinOp::Add => i.iadd(x, y),
                    BinOp::Sub => i.isub(x, y),
                    BinOp::And => i.band(x, y),
                    BinOp::Or => i.bor(x, y),
                    BinOp::Xor => i.bxor(x, y),
                    // Cranelift takes shift and rotate counts modulo the width, as the IR.
                    BinOp::Shl => i.ishl(x, y),
                    BinOp::Shr => i.ushr(x, y),
                    BinOp::Sar => i.sshr(x, y),
                    BinOp::Rol => i.rotl(x, y),
                    BinOp::Ror => i.rotr(x, y),
                    BinOp::Mul => i.imul(x, y),
                    BinOp::MulHiU => i.umulhi(x, y),
                    BinOp::MulHiS => i.smulhi(x, y),
                };
                self.def(*dst, r);
            }
            Inst::Un { dst, op, a } => {
                let ty = self.ty(*dst);
                let x = self.as_ty(*a, ty);
                let r = match (op, ty) {
                    (UnOp::Not, _) => self.b.ins().bnot(x),
                    (UnOp::Neg, _) => self.b.ins().ineg(x),
                    (UnOp::Bswap, Ty::I8) => x,
                    (UnOp::Bswap, _) => self.b.ins().bswap(x),
                    (UnOp::Popcnt, _) => self.b.ins().popcnt(x),
                    (UnOp::Ctz, _) => self.b.ins().ctz(x),
                    (UnOp::Clz, _) => self.b.ins().clz(x),
                };
                self.def(*dst, r);
            }
            Inst::Zext { dst, a } | Inst::Trunc { dst, a } => {
                let x = self.as_ty(*a, self.ty(*dst));
                self.def(*dst, x);
            }
            Inst::Sext { dst, a } => {
                let (from, to) = (self.ty(*a), self.ty(*dst));
                let x = self.v(*a);
                let r = match from.bits().cmp(&to.bits()) {
                    std::cmp::Ordering::Less => self.b.ins().sextend(cl_type(to), x),
                    _ => self.cast(x, from, to),
                };
                self.def(*dst, r);
            }
            Inst::Cmp { dst, op, a, b } => {
                let ty = self.ty(*a);
                let x = self.v(*a);
                let y = self.as_ty(*b, ty);
                let cc = match op {
                    CmpOp::Eq => IntCC::Equal,
                    CmpOp::Ne => IntCC::NotEqual,
                    CmpOp::Ult => IntCC::UnsignedLessThan,
                    CmpOp::Ule => IntCC::UnsignedLessThanOrEqual,
                    CmpOp::Slt => IntCC::SignedLessThan,
                    CmpOp::Sle => IntCC::SignedLessThanOrEqual,
                };
                let r = self.b.ins().icmp(cc, x, y);
                let r = self.cast(r, Ty::I8, self.ty(*dst));
                self.def(*dst, r);
                self.bools[dst.0 as usize] = true;
            }
            Inst::Select { dst, cond, a, b } => {
                let ty = self.ty(*dst);
                let c = self.v(*cond);
                let x = self.as_ty(*a, ty);
                let y = self.as_ty(*b, ty);
                let r = self.b.ins().select(c, x, y);
                self.def(*dst, r);
            }
            Inst::Load { dst, addr, ss, rmw } => {
                let ty = self.ty(*dst);
                let a = self.as_ty(*addr, Ty::I64);
                // The read half of a read-modify-write is translated for writing.
                let access = if *rmw { Access::Write } else { Access::Read };
                let join = self.b.create_block();
                let x = self.b.append_block_param(join, cl_type(ty));
                let (host, slow) = self.access_probe(at, a, ty.bytes() as u32, access);
                let v = self.b.ins().load(cl_type(ty), Self::guest_flags(), host, 0);
                self.b.ins().jump(join, &[v.into()]);
                // The slow path: a miss, a flagged page or an access across pages.
                self.b.switch_to_block(slow);
                let info = self.konst(ty.bytes() as u64 | (*ss as u64) << 8 | (*rmw as u64) << 9);
                let fault = self.call(Shim::Load, &[a, info]);
                // Read before the branch: the value is only taken where there was no fault.
                let v = self.rt_value(ty);
                self.fault_else_to(fault, at, None, join, &[v]);
                self.def(*dst, x);
            }
            Inst::Store { addr, src, ss } => {
                let ty = self.ty(*src);
                let a = self.as_ty(*addr, Ty::I64);
                // Both forms of the value before the branch: a value first made in one
                // arm would not dominate the other.
                let v = self.v(*src);
                let x = self.as_ty(*src, Ty::I64);
                // Only the slow path may reach translated code (its pages are flagged in
                // the TLB), and there a store that would write it leaves the block as a
                // fault before its instruction, which then runs on the interpreter
                // ([`BlockEnd::Retry`]): no code changes under the block as it runs.
                let join = self.b.create_block();
                let (host, slow) = self.access_probe(at, a, ty.bytes() as u32, Access::Write);
                self.b.ins().store(Self::guest_flags(), v, host, 0);
                self.b.ins().jump(join, &[]);
                self.b.switch_to_block(slow);
                let info = self.konst(ty.bytes() as u64 | (*ss as u64) << 8);
                let fault = self.call(Shim::Store, &[a, x, info]);
                self.fault_else_to(fault, at, None, join, &[]);
            }
            Inst::SegCheck {
                seg,
                addr,
                bytes,
                write,
                top,
            } => {
                let a = self.as_ty(*addr, Ty::I64);
                // Inline: a present, writable, expand-up data segment and the last byte
                // within the limit pass (attr::FAST); the rest is `segment_fault`'s.
                let (base, limit, attrs) = self.segment(*seg as usize);
                let i = self.b.ins();
                let offset = i.isub(a, base);
                let offset = self.b.ins().ireduce(types::I32, offset);
                let offset = self.b.ins().uextend(types::I64, offset);
                let last = self
                    .b
                    .ins()
                    .iadd_imm_s(offset, i64::from((*bytes).max(1)) - 1);
                let within = self
                    .b
                    .ins()
                    .icmp(IntCC::UnsignedLessThanOrEqual, last, limit);
                let kind = self.b.ins().band_imm_s(attrs, i64::from(attr::FAST_MASK));
                let data = self
                    .b
                    .ins()
                    .icmp_imm_s(IntCC::Equal, kind, i64::from(attr::FAST));
                let pass = self.b.ins().band(within, data);
                let slow = self.b.create_block();
                let cont = self.b.create_block();
                self.b.ins().brif(pass, cont, &[], slow, &[]);
                self.b.set_cold_block(slow);
                self.b.switch_to_block(slow);
                let wraps = *top == FlatSegmentTop::Wraps;
                let info = self.konst(
                    *seg as u64
                        | (*bytes as u64) << 8
                        | (*write as u64) << 24
                        | (wraps as u64) << 25,
                );
                let fault = self.call(Shim::SegCheck, &[a, info]);
                self.fault_else_to(fault, at, None, cont, &[]);
            }
            Inst::SetFlags { op, dst, src, aux } => {
                // The stored forms are made here, where they dominate every later place
                // that may store them.
                let stored = [*dst, *src, *aux].map(|v| self.as_ty(v, Ty::I64));
                self.flags = Some(PendingFlags { op: *op, stored });
                self.eflags_home = false;
            }
            Inst::GetFlags { dst } => {
                if let Some(r) = self.whole_flags() {
                    let r = self.cast(r, Ty::I64, self.ty(*dst));
                    self.def(*dst, r);
                    return;
                }
                self.flush_flags();
                let r = self.call(Shim::Rflags, &[]);
                let r = self.cast(r, Ty::I64, self.ty(*dst));
                self.def(*dst, r);
            }
            Inst::Test { dst, cond } => {
                self.bools[dst.0 as usize] = true;
                if let Some(r) = self.fast_test(*cond) {
                    let r = self.cast(r, Ty::I8, self.ty(*dst));
                    self.def(*dst, r);
                    return;
                }
                if let Some(f) = self.whole_flags() {
                    let r = self.cond_of_rflags(f, *cond);
                    let r = self.cast(r, Ty::I8, self.ty(*dst));
                    self.def(*dst, r);
                    return;
                }
                self.flush_flags();
                let c = self.konst(*cond as u64);
                let r = self.call(Shim::Test, &[c]);
                let r = self.cast(r, Ty::I64, self.ty(*dst));
                self.def(*dst, r);
            }
            Inst::Call { dst, args, .. } => {
                // A helper may read the registers and flags, and may set them.
                self.flush_flags();
                self.flush_gprs();
                let base = self.base;
                for (i, a) in args.iter().enumerate() {
                    let x = self.as_ty(*a, Ty::I64);
                    self.b
                        .ins()
                        .store(Self::flags(), x, base, RT_ARGS + 8 * i as i32);
                }
                // The helper sees RIP at the calling instruction, as in the interpreter.
                self.set_rip(rip_here);
                // Its entry in the block's helper table, which lists the calls' helpers in
                // order.
                let which = element::<Helper>(self.helpers, self.next_helper);
                self.next_helper += 1;
                let which = self.konst(which as u64);
                let n = self.konst(args.len() as u64);
                let fault = self.call(Shim::Helper, &[which, n]);
                self.tlb = None;
                self.segs = [None; 6];
                self.eflags_home = false;
                self.fault_if(fault, at, None);
                if let Some(d) = dst {
                    let x = self.rt_value(Ty::I64);
                    let x = self.cast(x, Ty::I64, self.ty(*d));
                    self.def(*d, x);
                }
            }
            Inst::Raise { vector } => self.fault(at, Some(Exception::new(*vector))),
            Inst::TrapIf {
                cond,
                vector,
                error,
            } => {
                let c = self.v(*cond);
                let one = self.low_bit(*cond, c);
                let e = Exception {
                    vector: *vector,
                    error_code: *error,
                };
                self.fault_if(one, at, Some(e));
            }
            Inst::ExitIf { cond, next } => {
                let c = self.v(*cond);
                let c = self.low_bit(*cond, c);
                let exit = self.b.create_block();
                let cont = self.b.create_block();
                self.b.ins().brif(c, exit, &[], cont, &[]);
                self.b.switch_to_block(exit);
                self.next(at, ExitTo::Constant(*next));
                self.b.switch_to_block(cont);
            }
            Inst::Jump { target } => {
                let exit = if let Some(k) = self.consts[target.0 as usize] {
                    ExitTo::Constant(k)
                } else {
                    let t = self.as_ty(*target, Ty::I64);
                    self.store_cpu(t, off::RIP);
                    ExitTo::Computed(t)
                };
                self.next(at, exit);
            }
            Inst::Branch {
                cond,
                taken,
                not_taken,
            } => {
                let c = self.v(*cond);
                let c = self.low_bit(*cond, c);
                let (yes, no) = (self.b.create_block(), self.b.create_block());
                self.b.ins().brif(c, yes, &[], no, &[]);
                for (block, rip) in [(yes, *taken), (no, *not_taken)] {
                    self.b.switch_to_block(block);
                    self.next(at, ExitTo::Constant(rip));
                }
            }
            Inst::Exit { next, why } => match why {
                ExitWhy::Continue => self.next(at, ExitTo::Constant(*next)),
                ExitWhy::Sync | ExitWhy::Halt => {
                    self.set_rip(*next);
                    let kind = if *why == ExitWhy::Sync {
                        KIND_SYNC
                    } else {
                        KIND_HALT
                    };
                    self.leave(kind, at);
                }
            },
        }
    }
}

// The shims: generated code calls these. Each returns 1 if the operation faulted (the
// exception is left in the run's `FAULT` word), else 0 with any result in the run's
// `VALUE` word. They take the runtime and the CPU state (the trampolines
// of [`preserving`] read the runtime's address from the CPU state's `RUNTIME` word).

/// Recovers the references the generated code was given.
///
/// # Safety
/// `cpu` must be the pointer `run_compiled` passed to the generated code, and `rt` the
/// runtime its `RUNTIME` word holds.
unsafe fn parts<'r, 'a>(
    rt: *mut Runtime<'a>,
    cpu: *mut CpuState,
) -> (&'r mut Runtime<'a>, &'r mut CpuState) {
    // SAFETY: per the contract above, both are live, distinct and not otherwise borrowed
    // while generated code runs.
    unsafe { (&mut *rt, &mut *cpu) }
}

fn outcome(cpu: &mut CpuState, r: Result<u64, Exception>) -> u64 {
    match r {
        Ok(v) => {
            cpu.jit.0[word::VALUE] = v;
            0
        }
        Err(e) => {
            cpu.jit.0[word::FAULT] = encode(e);
            1
        }
    }
}

extern "C" fn shim_load(rt: *mut Runtime, cpu: *mut CpuState, addr: u64, info: u64) -> u64 {
    // SAFETY: called only by generated code, with its own arguments.
    let (rt, cpu) = unsafe { parts(rt, cpu) };
    set_ask(cpu, true);
    rt.slow_accesses += 1;
    let r = rt
        .host
        .load(cpu, addr, info as u8, info & 0x100 != 0, info & 0x200 != 0);
    outcome(cpu, r)
}

extern "C" fn shim_store(
    rt: *mut Runtime,
    cpu: *mut CpuState,
    addr: u64,
    value: u64,
    info: u64,
) -> u64 {
    // SAFETY: called only by generated code, with its own arguments.
    let (rt, cpu) = unsafe { parts(rt, cpu) };
    set_ask(cpu, true);
    rt.slow_accesses += 1;
    let r = rt
        .host
        .store_unless_code(cpu, addr, info as u8, value, info & 0x100 != 0);
    if r == Ok(false) {
        rt.retry = true;
        return 1;
    }
    outcome(cpu, r.map(|_| 0))
}

extern "C" fn shim_seg_check(rt: *mut Runtime, cpu: *mut CpuState, addr: u64, info: u64) -> u64 {
    // SAFETY: called only by generated code, with its own arguments.
    let (_, cpu) = unsafe { parts(rt, cpu) };
    let seg = (info & 0xFF) as usize;
    let bytes = ((info >> 8) & 0xFFFF) as u32;
    let write = info >> 24 & 1 != 0;
    let top = if info >> 25 & 1 != 0 {
        FlatSegmentTop::Wraps
    } else {
        FlatSegmentTop::Faults
    };
    let r = crate::seg_check(cpu, seg, addr, bytes, write, top).map(|_| 0);
    outcome(cpu, r)
}

extern "C" fn shim_rflags(_rt: *mut Runtime, cpu: *const CpuState) -> u64 {
    // SAFETY: called only by generated code with its CPU pointer.
    flags::rflags(unsafe { &*cpu })
}

extern "C" fn shim_test(_rt: *mut Runtime, cpu: *const CpuState, cond: u64) -> u64 {
    // SAFETY: called only by generated code with its CPU pointer.
    let cpu = unsafe { &*cpu };
    flags::cond_holds(cpu, Cond::from_nibble(cond as u8)) as u64
}

extern "C" fn shim_helper(
    rt: *mut Runtime,
    cpu: *mut CpuState,
    helper: *const Helper,
    args: u64,
) -> u64 {
    // SAFETY: called only by generated code, with its own arguments.
    let (rt, cpu) = unsafe { parts(rt, cpu) };
    // SAFETY: `helper` points into the helper table of the compiled block making the call,
    // which lives while its code runs (see `run_compiled`).
    let h = unsafe { *helper };
    set_ask(cpu, true);
    let n = (args as usize).min(MAX_ARGS);
    let mut passed = [0; MAX_ARGS];
    passed.copy_from_slice(&cpu.jit.0[word::ARGS..word::ARGS + MAX_ARGS]);
    let r = rt.host.helper(cpu, h, &passed[..n]);
    cpu.jit.0[word::TLB] = data_tlb(rt.host, cpu) as u64;
    outcome(cpu, r)
}

/// The code of the block to run next, or 0 to return to the run loop: when the budget is
/// spent, when the host has something to do first or no block looked up by the linear
/// address ([`Host::next_block`]), or when that block is not compiled in this epoch. A
/// direct exit passes its chain slot, filled here for the next time.
extern "C" fn shim_chain(rt: *mut Runtime, cpu: *mut CpuState, slot: *const ChainSlot) -> u64 {
    // SAFETY: called only by generated code, with its own arguments.
    let (rt, cpu) = unsafe { parts(rt, cpu) };
    set_ask(cpu, true);
    let budget = budget_of(cpu);
    if budget == 0 {
        return 0;
    }
    let Some(found) = rt.host.next_block(cpu) else {
        return 0;
    };
    let state = found.block.tier.state.try_borrow();
    let target = match state.as_deref() {
        Ok(State::Ready(c)) if c.epoch == rt.epoch => c,
        _ => return 0,
    };
    let code = target.code as u64;
    set_budget(cpu, budget - 1);
    // The link's context: the one the exit's block was entered in, which the run is still
    // in unless a host call in that block changed it (then the block, marked with the
    // other, gets no link made in this one).
    let entered = found
        .context
        .and_then(|k| rt.links.enter(found.chain_epoch, k, &target.linked))
        .map(u64::from);
    let Some(n) = entered else {
        // A context past the numbered ones: on, asking at every boundary.
        cpu.jit.0[word::CTX] = 0;
        return code;
    };
    let same = n == cpu.jit.0[word::CTX];
    cpu.jit.0[word::CTX] = n;
    set_ask(cpu, false);
    // SAFETY: a slot pointer is into the calling block's own `Compiled::slots`, alive
    // while its code runs, or into the JIT's table of indirect targets, alive while any
    // code is.
    if let Some(slot) = unsafe { slot.as_ref() }.filter(|_| same) {
        slot.code.set(code);
        slot.stamp.set(n);
        slot.rip.set(cpu.rip);
    }
    code
}

/// The shims generated code calls, each with the runtime as its first argument (their
/// addresses and trampolines: [`preserving`]).
#[derive(Clone, Copy)]
enum Shim {
    Load,
    Store,
    SegCheck,
    Rflags,
    Test,
    Helper,
    Chain,
}

impl Shim {
    fn address(self) -> *const u8 {
        preserving::address(self)
    }
}

#[path = "preserving.rs"]
mod preserving;
