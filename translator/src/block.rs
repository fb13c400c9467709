//! A translated block as both tiers hold it: the IR made ready to interpret
//! ([`Prepared`]) and its tier state ([`Tier`]: how often it ran, and its compiled code once
//! hot). The code cache keeps these; the interpreter and the JIT both take them, and
//! neither tier's module depends on the other's for it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use gantry_frontend::ir::*;

/// A block made ready to interpret ([`Ir`]) and its tier state. It derefs to its IR.
#[derive(Debug)]
pub struct Prepared {
    pub ir: Ir,
    /// How often the block ran, and its compiled code once it is hot.
    pub tier: Tier,
    /// The physical page (number) its last instruction continues on, for a block whose
    /// code does not lie on its first page alone: the cache is keyed by the first page,
    /// so a look-up also checks that the next linear page still maps here.
    pub second_page: Option<u64>,
}

impl Prepared {
    pub fn new(block: Block) -> Self {
        Self {
            ir: Ir::new(block),
            tier: Default::default(),
            second_page: None,
        }
    }
}

impl std::ops::Deref for Prepared {
    type Target = Ir;
    fn deref(&self) -> &Ir {
        &self.ir
    }
}

/// A block's IR in the form that runs: constants moved to a list written into the value
/// table before a run, and instruction marks to a side table consulted only on faults, so
/// neither costs a dispatch when the block runs. Held inside [`Prepared`] (no pointer to
/// follow when the interpreter runs it); the JIT hands a copy to its compile thread,
/// which lowers it to CLIF there.
#[derive(Clone, Debug)]
pub struct Ir {
    /// The lifted block, without its instructions (`ops`, `consts` and `marks` hold them
    /// in the form that runs): a cached block keeps only what runs.
    pub block: Block,
    pub(crate) ops: Box<[Inst]>,
    /// The constants as (value, content): what the interpreter writes into its value
    /// table before a run. Every other value is defined before it is used (the IR is
    /// SSA), so a run needs no table of initial contents (copying one cost 2.5% of a
    /// Linux boot, and keeping one per block, with a flag per value, about 600 bytes of
    /// each of 60,000 blocks).
    pub(crate) consts: Box<[(u32, u64)]>,
    /// (index in `ops` where the instruction starts, its RIP), in order.
    pub(crate) marks: Vec<(u32, u64)>,
    /// Where the last instruction starts in `ops`: an exit from there on completes every
    /// instruction ([`Self::completed`] without a look at `marks`, another allocation).
    last_op: u32,
}

impl Ir {
    fn new(mut block: Block) -> Self {
        let insts = std::mem::take(&mut block.insts);
        // Sized exactly (the tables stay with the block), rather than grown.
        let n_consts = insts
            .iter()
            .filter(|i| matches!(i, Inst::Const { .. }))
            .count();
        let n_marks = insts
            .iter()
            .filter(|i| matches!(i, Inst::Mark { .. }))
            .count();
        let mut ops = Vec::with_capacity(insts.len() - n_consts - n_marks);
        let mut marks = Vec::with_capacity(n_marks);
        let mut consts = Vec::with_capacity(n_consts);
        for i in insts {
            match i {
                Inst::Const { dst, value } => {
                    consts.push((dst.0, value));
                }
                Inst::Mark { rip, .. } => marks.push((ops.len() as u32, rip)),
                other => ops.push(other),
            }
        }
        Self {
            block,
            ops: ops.into_boxed_slice(),
            consts: consts.into_boxed_slice(),
            last_op: marks.last().map_or(0, |&(i, _)| i),
            marks,
        }
    }

    /// The instructions completed by an exit at op `op`: all those begun.
    #[inline]
    pub fn completed(&self, op: usize) -> u64 {
        if op >= self.last_op as usize {
            return self.marks.len() as u64;
        }
        self.locate(op).0
    }

    /// The ops that run: the block's instructions without constants and marks.
    pub fn ops(&self) -> &[Inst] {
        &self.ops
    }

    pub fn op(&self, at: usize) -> Option<&Inst> {
        self.ops.get(at)
    }

    /// The guest instruction an op belongs to: (instructions begun, its RIP).
    pub fn locate(&self, op: usize) -> (u64, u64) {
        // Most asked for: an op of the last instruction (the block's end).
        if let Some(&(i, rip)) = self.marks.last() {
            if i as usize <= op {
                return (self.marks.len() as u64, rip);
            }
        }
        let n = self.marks.partition_point(|(i, _)| *i as usize <= op);
        let rip = n
            .checked_sub(1)
            .map_or(self.block.start, |k| self.marks[k].1);
        (n as u64, rip)
    }
}

/// A compiled block.
pub struct Compiled {
    /// The generated function, in Cranelift's `tail` calling convention (so that a block
    /// can end in a tail call of the next one): entered from Rust only through the code
    /// memory's entry trampoline, [`crate::code_memory::Entry`].
    pub(crate) code: *const u8,
    /// The helpers its calls make: the generated code holds their addresses, and reads
    /// them through those alone.
    #[expect(dead_code, reason = "read by generated code, through addresses")]
    pub(crate) helpers: Box<[Helper]>,
    /// One for each exit to a constant address, in the order of the ops; like the
    /// helpers, reached through the addresses the generated code holds (and by
    /// [`crate::links`], which empties them).
    #[expect(dead_code, reason = "read by generated code, through addresses")]
    pub(crate) slots: Rc<[ChainSlot]>,
    /// The number of the lookup context its slots were filled in, 0 before any
    /// ([`crate::links::Links::enter`]).
    pub(crate) linked: Cell<u16>,
    /// The code memory it lives in: stale once that was freed.
    pub(crate) epoch: u64,
}

/// A block whose function the background compiler has: the parts of [`Compiled`] that
/// exist before its code does (the function holds their addresses already).
pub(crate) struct Pending {
    pub(crate) helpers: Box<[Helper]>,
    pub(crate) slots: Rc<[ChainSlot]>,
    pub(crate) epoch: u64,
    /// The guest address the block starts at (for the perf map).
    pub(crate) rip: u64,
    pub(crate) id: cranelift_module::FuncId,
    pub(crate) ticket: crate::compiler::Ticket,
}

/// Where an exit keeps the code of the block it found at `rip`, so that the next time
/// it goes there directly: `code`, 0 while the slot is empty. An exit to a constant
/// address has a slot of its own, which holds for every run that reaches it
/// ([`crate::links`] empties it when it may not); an entry of the table of indirect
/// targets holds only for `rip` and the context numbered `stamp`, which the exit compares.
/// Generated code reads it; [`crate::jit`]'s chaining shim fills it.
#[repr(C)]
#[derive(Default)]
pub(crate) struct ChainSlot {
    pub(crate) code: Cell<u64>,
    pub(crate) stamp: Cell<u64>,
    pub(crate) rip: Cell<u64>,
}

impl ChainSlot {
    pub(crate) fn empty(&self) {
        self.code.set(0);
    }
}

#[derive(Default)]
pub(crate) enum State {
    #[default]
    Cold,
    /// Being compiled in the background: interpreted until its code is ready.
    Compiling(Pending),
    Ready(Compiled),
    /// The compiler turned it down: it stays interpreted.
    Refused,
}

/// Per-block JIT state, kept with the prepared block: how often it ran, and its code.
#[derive(Default)]
pub struct Tier {
    pub(crate) runs: Cell<u32>,
    pub(crate) state: RefCell<State>,
}

impl Tier {
    /// Whether compiled code may go straight into this block: it has code of its own
    /// (a chain slot is filled only with a compiled block's code).
    pub fn may_be_chained_to(&self) -> bool {
        self.state
            .try_borrow()
            .map_or(true, |s| matches!(*s, State::Ready(_)))
    }
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tier({} runs)", self.runs.get())
    }
}
