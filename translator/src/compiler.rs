//! The compile thread's half of compiling a block: from its [`Source`] (the JIT's copy
//! of the block's IR) to CLIF and on to machine code. It needs nothing but the target ISA
//! (no guest state, no code memory), so a machine runs it on a thread of its own
//! ([`Background`]) while the block stays interpreted, and the JIT installs the code into
//! its code memory the next time the block runs.
//!
//! On the Debian boot at 58e7139 a block takes the compile thread about 470 us, and the
//! vCPU's thread, which hands it over and installs its code, about 5 us.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::Function;
use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_codegen::timing;
use cranelift_codegen::Context;
use cranelift_frontend::FunctionBuilderContext;
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

/// What a block becomes a CLIF function from, on the thread that compiles it.
pub trait Source: Send {
    fn lower(&self, isa: &dyn TargetIsa, fctx: &mut FunctionBuilderContext) -> Function;
}

/// Lowers and compiles functions for one ISA, reusing Cranelift's contexts between them.
pub struct Compiler {
    isa: OwnedTargetIsa,
    ctx: Context,
    fctx: FunctionBuilderContext,
}

impl Compiler {
    pub fn new(isa: OwnedTargetIsa) -> Self {
        Self {
            isa,
            ctx: Context::new(),
            fctx: FunctionBuilderContext::new(),
        }
    }

    /// Lowers `source` and compiles it, as the function the code memory declared as `id`.
    pub fn compile(&mut self, source: &dyn Source, id: FuncId) -> Outcome {
        untimed();
        self.ctx.clear();
        let isa = &*self.isa;
        let (ctx, fctx) = (&mut self.ctx, &mut self.fctx);
        // A panic inside the lowering or Cranelift must not take the machine down (nor, on
        // the background thread, leave the block waiting forever): the block is refused
        // and stays interpreted.
        let result = catch_unwind(AssertUnwindSafe(|| {
            ctx.func = source.lower(isa, fctx);
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
            self.fctx = FunctionBuilderContext::new();
            Err(Refusal {
                kind: "panic".into(),
                message: "Cranelift panicked".into(),
            })
        })
    }
}

/// Cranelift's passes time themselves by default (two clock reads and a boxed token per
/// pass, about 2% of a block's compile here) for reports Gantry never reads: this thread's
/// profiler is replaced by one that does nothing, once.
fn untimed() {
    struct Untimed;
    impl timing::Profiler for Untimed {
        fn start_pass(&self, _: timing::Pass) -> Box<dyn std::any::Any> {
            Box::new(())
        }
    }
    thread_local!(static UNTIMED: Cell<bool> = const { Cell::new(false) });
    if !UNTIMED.replace(true) {
        timing::set_thread_profiler(Box::new(Untimed));
    }
}

/// A function on its way through the background compiler: its outcome, set once, and
/// how often its block ran (interpreted) while it waited.
#[derive(Default)]
pub struct TicketCell {
    outcome: OnceLock<Outcome>,
    waited_runs: AtomicU32,
    /// Set when the thread dropped the job instead of compiling it ([`Queue::take`]).
    dropped: AtomicBool,
}

impl TicketCell {
    pub fn get(&self) -> Option<&Outcome> {
        self.outcome.get()
    }

    /// Whether the job was dropped from the queue uncompiled: its block hardly ran while
    /// it waited, and starts counting its runs again.
    pub fn dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// The block ran once more, interpreted, while its code was not ready. Only the
    /// block's CPU thread counts, so a load and a store do (the compile thread only reads
    /// the count): a locked add at every such run had stalled on the line the compile
    /// thread reads.
    pub fn ran_waiting(&self) {
        let n = self.waited_runs.load(Ordering::Relaxed);
        self.waited_runs
            .store(n.saturating_add(1), Ordering::Relaxed);
    }
}

pub type Ticket = Arc<TicketCell>;

struct Job {
    source: Box<dyn Source>,
    id: FuncId,
    ticket: Ticket,
    queued: Instant,
}

/// A queued job whose block ran fewer times than the milliseconds it waited (and at
/// least [`STALE_AFTER`]) is dropped: a compile costs about 400 us, some 4,000 runs of a
/// typical block interpreted, which such a block would take seconds to repay. In a Linux
/// boot a fifth of the blocks compiled had not run at all since they were queued (their
/// 256th run was their last), and took that share of the compile thread's time from
/// blocks that were running.
const STALE_AFTER: Duration = Duration::from_millis(2);

fn stale(job: &Job, now: Instant) -> bool {
    let waited = now.saturating_duration_since(job.queued);
    waited >= STALE_AFTER
        && u128::from(job.ticket.waited_runs.load(Ordering::Relaxed)) < waited.as_millis()
}

/// The queued jobs, which the thread takes most wanted first (the block that ran most
/// while it waited, the newest among equals), not in the order they came: in a Linux
/// boot, blocks waiting for their code ran 25 million guest instructions interpreted
/// (more than the blocks not yet hot), a hot loop behind hundreds of blocks queued in a
/// burst of new code that may not run again.
#[derive(Default)]
struct Queue {
    jobs: Mutex<Vec<Job>>,
    ready: Condvar,
}

impl Queue {
    /// The next job, or `None` once `stop` is set; drops the stale ones first
    /// ([`STALE_AFTER`]), counting them off `queued`.
    fn take(&self, stop: &AtomicBool, queued: &AtomicUsize) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let now = Instant::now();
            jobs.retain(|j| {
                if !stale(j, now) {
                    return true;
                }
                j.ticket.dropped.store(true, Ordering::Release);
                queued.fetch_sub(1, Ordering::Release);
                false
            });
            // The last of the maxima, and a removal that keeps the order: the newest
            // among equals.
            let best = jobs
                .iter()
                .enumerate()
                .max_by_key(|(_, j)| j.ticket.waited_runs.load(Ordering::Relaxed))
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Some(jobs.remove(i));
            }
            jobs = self.ready.wait(jobs).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Functions queued for the background compiler at most: a block that gets hot while the
/// queue is full stays interpreted and asks again on a later run, so that a burst of new
/// code (a boot's early phases) does not leave blocks waiting behind hundreds of others.
const MAX_QUEUED: usize = 1024;

/// The compile thread. Dropping it ends the thread after the job it is on.
pub struct Background {
    jobs: Arc<Queue>,
    queued: Arc<AtomicUsize>,
    busy_nanos: Arc<AtomicU64>,
    /// Set when the JIT goes: the jobs still queued are dropped, not compiled.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn spawn(isa: OwnedTargetIsa) -> std::io::Result<Self> {
        let jobs = Arc::new(Queue::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let busy_nanos = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (rx, q, busy, stopped) = (
            jobs.clone(),
            queued.clone(),
            busy_nanos.clone(),
            stop.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("gantry-jit".into())
            .spawn(move || {
                let mut compiler = Compiler::new(isa);
                while let Some(job) = rx.take(&stopped, &q) {
                    let started = Instant::now();
                    // A job whose block was dropped meanwhile (its code rewritten) has no
                    // other holder of its ticket: skip it.
                    if Arc::strong_count(&job.ticket) > 1 {
                        let outcome = compiler.compile(&*job.source, job.id);
                        let _ = job.ticket.outcome.set(outcome);
                    }
                    busy.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    q.fetch_sub(1, Ordering::Release);
                }
            })?;
        Ok(Self {
            jobs,
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

    /// Queues `source` (declared as `id`); gives it back if the thread is gone.
    pub fn submit(&self, source: Box<dyn Source>, id: FuncId) -> Result<Ticket, Box<dyn Source>> {
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(source);
        }
        let ticket = Ticket::default();
        self.queued.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            source,
            id,
            ticket: ticket.clone(),
            queued: Instant::now(),
        };
        let mut jobs = self.jobs.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.push(job);
        drop(jobs);
        self.jobs.ready.notify_one();
        Ok(ticket)
    }

    /// Time the thread spent compiling.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Under the lock, so that the thread is either not yet waiting (and sees `stop`)
        // or waiting (and is woken).
        drop(self.jobs.jobs.lock().unwrap_or_else(|e| e.into_inner()));
        self.jobs.ready.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u32, waited: u32) -> Job {
        job_queued(id, waited, Instant::now())
    }

    fn job_queued(id: u32, waited: u32, queued: Instant) -> Job {
        let ticket = Ticket::default();
        for _ in 0..waited {
            ticket.ran_waiting();
        }
        struct Empty;
        impl Source for Empty {
            fn lower(&self, _: &dyn TargetIsa, _: &mut FunctionBuilderContext) -> Function {
                Function::new()
            }
        }
        Job {
            source: Box::new(Empty),
            id: FuncId::from_u32(id),
            ticket,
            queued,
        }
    }

    #[test]
    fn the_block_that_ran_most_while_it_waited_compiles_first_then_the_newest() {
        let q = Queue::default();
        let stop = AtomicBool::new(false);
        {
            let mut jobs = q.jobs.lock().expect("not poisoned");
            jobs.extend([job(0, 0), job(1, 5), job(2, 0), job(3, 5), job(4, 1)]);
        }
        let queued = AtomicUsize::new(5);
        let order: Vec<u32> = (0..5)
            .map(|_| q.take(&stop, &queued).expect("a job").id.as_u32())
            .collect();
        assert_eq!(order, [3, 1, 4, 2, 0]);
        stop.store(true, Ordering::Relaxed);
        assert!(q.take(&stop, &queued).is_none(), "stopped: no wait");
    }

    #[test]
    fn a_job_whose_block_ran_less_than_once_a_millisecond_of_its_wait_is_dropped() {
        let q = Queue::default();
        let stop = AtomicBool::new(false);
        let now = Instant::now();
        let ago = |ms| now.checked_sub(Duration::from_millis(ms)).expect("uptime");
        let (idle, slow, busy, new) = (
            job_queued(0, 0, ago(50)),
            job_queued(1, 10, ago(50)),
            // Far more runs than milliseconds, however slow the host.
            job_queued(2, 60_000, ago(50)),
            // Queued "just now" as the second take sees it: a time ahead of the test's
            // clock, so that a slow host (user-mode QEMU runs these tests for aarch64, and
            // once took longer than STALE_AFTER between the two takes) cannot make it stale.
            job_queued(3, 0, now + Duration::from_secs(60)),
        );
        let tickets = [&idle, &slow, &busy, &new].map(|j| j.ticket.clone());
        q.jobs
            .lock()
            .expect("not poisoned")
            .extend([idle, slow, busy, new]);
        let queued = AtomicUsize::new(4);
        let first = q.take(&stop, &queued).expect("a job").id.as_u32();
        assert_eq!(first, 2, "the block that ran 60,000 times in 50 ms");
        assert_eq!(queued.load(Ordering::Relaxed), 2, "two dropped");
        let dropped = tickets.each_ref().map(|t| t.dropped());
        assert_eq!(dropped, [true, true, false, false]);
        let next = q.take(&stop, &queued).expect("a job").id.as_u32();
        assert_eq!(next, 3, "queued just now: not yet stale");
    }
}
