//! Cranelift's half of compiling a block: from a finished CLIF function to machine code.
//! It needs nothing but the target ISA (no guest state, no code memory), so a machine runs
//! it on a thread of its own ([`Background`]) while the block stays interpreted, and the
//! JIT installs the code into its code memory the next time the block runs.
//!
//! On the Debian boot, Cranelift's passes took 8.7 of 34.5 s on the vCPU's thread (about
//! 0.9 ms a block, regalloc2 a third of it); the lowering to CLIF and the install, which
//! stay there, take about 60 us a block.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::Function;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::Context;
use cranelift_module::{FuncId, ModuleReloc};

/// A compiled function, ready to be copied into code memory.
pub struct MachineCode {
    pub bytes: Vec<u8>,
    pub alignment: u64,
    pub relocs: Vec<ModuleReloc>,
}

/// Why Cranelift turned a function down: `kind` names the error (the JIT logs the first
/// of each kind), `message` says it in full.
pub struct Refusal {
    pub kind: String,
    pub message: String,
}

pub type Outcome = Result<MachineCode, Refusal>;

/// Compiles CLIF functions for one ISA, reusing Cranelift's context between them.
pub struct Compiler {
    isa: OwnedTargetIsa,
    ctx: Context,
}

impl Compiler {
    pub fn new(isa: OwnedTargetIsa) -> Self {
        Self {
            isa,
            ctx: Context::new(),
        }
    }

    /// Compiles `func`, which the code memory declared as `id`.
    pub fn compile(&mut self, func: Function, id: FuncId) -> Outcome {
        self.ctx.clear();
        self.ctx.func = func;
        let isa = &*self.isa;
        let ctx = &mut self.ctx;
        // A panic inside Cranelift must not take the machine down (nor, on the background
        // thread, leave the block waiting forever): the block is refused and stays
        // interpreted.
        let result = catch_unwind(AssertUnwindSafe(|| {
            if let Err(e) = ctx.compile(isa, &mut ControlPlane::default()) {
                let debug = format!("{:?}", e.inner);
                return Err(Refusal {
                    kind: debug
                        .split(['(', ' ', '{'])
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    message: e.inner.to_string(),
                });
            }
            let Some(code) = ctx.compiled_code() else {
                return Err(Refusal {
                    kind: "no code".into(),
                    message: "Cranelift returned no code".into(),
                });
            };
            Ok(MachineCode {
                bytes: code.code_buffer().to_vec(),
                alignment: u64::from(code.buffer.alignment),
                relocs: code
                    .buffer
                    .relocs()
                    .iter()
                    .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, id))
                    .collect(),
            })
        }));
        result.unwrap_or_else(|_| {
            self.ctx = Context::new();
            Err(Refusal {
                kind: "panic".into(),
                message: "Cranelift panicked".into(),
            })
        })
    }
}

/// A function on its way through the background compiler: `outcome` is set once.
pub type Ticket = Arc<OnceLock<Outcome>>;

struct Job {
    func: Function,
    id: FuncId,
    ticket: Ticket,
}

/// Functions queued for the background compiler at most: a block that gets hot while the
/// queue is full stays interpreted and asks again on a later run, so that a burst of new
/// code (a boot's early phases) does not leave blocks waiting behind hundreds of others.
const MAX_QUEUED: usize = 1024;

/// The compile thread. Dropping it ends the thread after the job it is on.
pub struct Background {
    jobs: Option<mpsc::Sender<Job>>,
    queued: Arc<AtomicUsize>,
    busy_nanos: Arc<AtomicU64>,
    /// Set when the JIT goes: the jobs still queued are dropped, not compiled.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn spawn(isa: OwnedTargetIsa) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let busy_nanos = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, busy, stopped) = (queued.clone(), busy_nanos.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("gantry-jit".into())
            .spawn(move || {
                let mut compiler = Compiler::new(isa);
                for job in rx {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = Instant::now();
                    // A job whose block was dropped meanwhile (its code rewritten) has no
                    // other holder of its ticket: skip it.
                    if Arc::strong_count(&job.ticket) > 1 {
                        let outcome = compiler.compile(job.func, job.id);
                        let _ = job.ticket.set(outcome);
                    }
                    busy.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    q.fetch_sub(1, Ordering::Release);
                }
            })?;
        Ok(Self {
            jobs: Some(tx),
            queued,
            busy_nanos,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether a job would be taken now: the queue is not full.
    pub fn has_room(&self) -> bool {
        self.queued.load(Ordering::Acquire) < MAX_QUEUED
    }

    /// Queues `func` (declared as `id`); gives it back if the thread is gone.
    pub fn submit(&self, func: Function, id: FuncId) -> Result<Ticket, Box<Function>> {
        let ticket = Ticket::default();
        let Some(jobs) = self.jobs.as_ref() else {
            return Err(Box::new(func));
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            func,
            id,
            ticket: ticket.clone(),
        };
        jobs.send(job).map(|()| ticket).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            Box::new(e.0.func)
        })
    }

    /// Time the thread spent compiling.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
