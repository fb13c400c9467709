//! Gantry's IR: what the lifter turns a basic block of x86 into, and what the interpreter
//! and the Cranelift JIT execute.
//!
//! Values are typed SSA temporaries, each defined once. Guest state is touched only by
//! explicit `get`/`put` of named [`Loc`]ations (fields of [`crate::state::CpuState`] at
//! fixed offsets), memory only by `load`/`store` of linear addresses, and everything an IR
//! op cannot express (descriptor loads, CPUID, port I/O, ...) by a call to a numbered
//! [`Helper`] that the machine provides. A block ends with exactly one terminator.
//!
//! Faults are precise: `mark` opens each guest instruction, and the lifter orders every
//! instruction's memory accesses and helper calls before its register writes, so a fault
//! leaves the state as it was at the `mark`.

use std::fmt;

use crate::flags::{CcOp, Cond};
use crate::state::off;
use crate::vendor::FlatSegmentTop;

/// An IR value's width. The discriminant is log2 of the width in bytes, so that the
/// widths and masks below are shifts rather than jump tables: the interpreter asks for a
/// mask at nearly every op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Ty {
    I8 = 0,
    I16 = 1,
    I32 = 2,
    I64 = 3,
}

impl Ty {
    #[inline]
    pub fn bytes(self) -> u8 {
        1 << (self as u8)
    }
    #[inline]
    pub fn bits(self) -> u32 {
        8 << (self as u32)
    }
    pub fn from_bytes(n: u32) -> Ty {
        match n {
            1 => Ty::I8,
            2 => Ty::I16,
            4 => Ty::I32,
            _ => Ty::I64,
        }
    }
    /// The value with only the sign bit of this width set.
    #[inline]
    pub fn sign_bit(self) -> u64 {
        1 << (self.bits() - 1)
    }
    #[inline]
    pub fn mask(self) -> u64 {
        u64::MAX >> (64 - self.bits())
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.bits())
    }
}

/// An SSA value: index into the block's value table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Val(pub u32);

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A location in the CPU state that IR may read and write directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loc {
    /// A whole 64-bit general-purpose register (partial writes are merged in IR).
    Gpr(u8),
    Rip,
    Rflags,
    CcOp,
    CcDst,
    CcSrc,
    CcAux,
    SegBase(u8),
    SegSelector(u8),
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
pub const SEG_NAMES: [&str; 6] = ["es", "cs", "ss", "ds", "fs", "gs"];

impl Loc {
    pub fn ty(self) -> Ty {
        match self {
            Loc::CcOp => Ty::I32,
            Loc::SegSelector(_) => Ty::I16,
            _ => Ty::I64,
        }
    }

    /// Byte offset in `CpuState`.
    /// RFLAGS or the lazy-flag record: where the arithmetic flags are.
    pub fn holds_flags(self) -> bool {
        matches!(
            self,
            Loc::Rflags | Loc::CcOp | Loc::CcDst | Loc::CcSrc | Loc::CcAux
        )
    }

    pub fn offset(self) -> usize {
        match self {
            Loc::Gpr(r) => off::gpr(r as usize),
            Loc::Rip => off::RIP,
            Loc::Rflags => off::RFLAGS,
            Loc::CcOp => off::CC_OP,
            Loc::CcDst => off::CC_DST,
            Loc::CcSrc => off::CC_SRC,
            Loc::CcAux => off::CC_AUX,
            Loc::SegBase(s) => off::seg_base(s as usize),
            Loc::SegSelector(s) => off::seg_selector(s as usize),
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Gpr(r) => write!(f, "{}", GPR_NAMES[*r as usize & 15]),
            Loc::Rip => write!(f, "rip"),
            Loc::Rflags => write!(f, "rflags"),
            Loc::CcOp => write!(f, "cc.op"),
            Loc::CcDst => write!(f, "cc.dst"),
            Loc::CcSrc => write!(f, "cc.src"),
            Loc::CcAux => write!(f, "cc.aux"),
            Loc::SegBase(s) => write!(f, "{}.base", SEG_NAMES[*s as usize % 6]),
            Loc::SegSelector(s) => write!(f, "{}.sel", SEG_NAMES[*s as usize % 6]),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    And,
    Or,
    Xor,
    /// Shifts take the count modulo the type's width.
    Shl,
    Shr,
    Sar,
    Rol,
    Ror,
    Mul,
    /// High half of the unsigned / signed double-width product.
    MulHiU,
    MulHiS,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
    /// Reverses the bytes of the value at its width.
    Bswap,
    Popcnt,
    /// Count trailing / leading zeros (the width for 0).
    Ctz,
    Clz,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Ult,
    Ule,
    Slt,
    Sle,
}

impl CmpOp {
    /// Whether `a op b` holds for two values of type `ty`: what the interpreter computes,
    /// and what the builder folds when both are constants.
    pub fn holds(self, ty: Ty, a: u64, b: u64) -> bool {
        let (a, b) = (a & ty.mask(), b & ty.mask());
        let shift = 64 - ty.bits();
        let signed = |v: u64| ((v << shift) as i64) >> shift;
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Ult => a < b,
            CmpOp::Ule => a <= b,
            CmpOp::Slt => signed(a) < signed(b),
            CmpOp::Sle => signed(a) <= signed(b),
        }
    }
}

/// Services the machine provides to generated code, by number. Arguments and result are
/// u64; a helper may fault (the block then stops at its instruction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Helper {
    /// (port) -> value; size in bytes.
    In(u8),
    /// (port, value)
    Out(u8),
    /// (leaf, subleaf) -> eax | ebx << 32; ecx/edx written to rcx/rdx by the helper.
    Cpuid,
    Rdmsr,
    Wrmsr,
    Rdtsc,
    Rdtscp,
    /// Unsigned / signed division of rdx:rax (or the narrower pair) by the argument;
    /// operand size in bytes. Writes the quotient and remainder; raises #DE.
    Div(u8),
    Idiv(u8),
    /// (selector) -> loads a segment register in the current mode.
    LoadSeg(u8),
    /// (selector, offset, operand bytes, next rip)
    FarJmp,
    FarCall,
    /// (operand bytes, stack bytes to release)
    FarRet,
    /// (operand bytes, next rip: where the old task resumes if IRET returns from a task)
    Iret,
    /// (vector, next rip): INT n / INT3 / INT1 as software interrupts.
    SoftInt,
    /// (next rip): INTO, which interrupts only when OF is set.
    Into,
    /// (linear address of the 6/10-byte operand, operand bytes)
    Lgdt,
    Lidt,
    Sgdt,
    Sidt,
    Lldt,
    Ltr,
    Sldt,
    Str,
    Lmsw,
    Smsw,
    Clts,
    /// (value) -> writes CRn / DRn; () -> reads.
    MovToCr(u8),
    MovFromCr(u8),
    MovToDr(u8),
    MovFromDr(u8),
    Invlpg,
    Wbinvd,
    /// () -> halts until an interrupt.
    Hlt,
    Cli,
    Sti,
    /// (value, operand bytes): POPF with its IOPL/VM rules.
    Popf,
    /// (operand bytes) -> RFLAGS as PUSHF stores it (VM/RF cleared).
    Pushf,
    Syscall,
    Sysret,
    Sysenter,
    Sysexit,
    Swapgs,
    /// (selector, which: 0 LAR, 1 LSL, 2 VERR, 3 VERW) -> value, sets ZF.
    DescriptorCheck(u8),
    Fxsave,
    Fxrstor,
    Ldmxcsr,
    Stmxcsr,
    Fninit,
    Fnstsw,
    /// EMMS: every x87 register empty.
    Emms,
    /// (linear address) FILD of an integer of this many bytes.
    Fild(u8),
    Fnstcw,
    Fldcw,
    Xgetbv,
    /// (mnemonic number, immediate): DAA/DAS/AAA/AAS/AAM/AAD on AX and the flags.
    Bcd,
    /// An SSE/SSE2 instruction: (operation, destination operand, source operand, memory
    /// address or general-register value, immediate, memory bytes); the operation and the
    /// operands as [`crate::sse_op::SseOp`] and [`crate::sse_op::SseOperand`] encode them.
    /// Semantics in [`crate::sse_op`].
    Sse,
    /// Raises #UD for an instruction Gantry does not implement (and counts it).
    Unimplemented,
    /// Checks CPL/IOPL for IN/OUT/INS/OUTS: (port, size).
    IoPermission,
}

impl fmt::Display for Helper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = format!("{self:?}");
        // Debug gives `In(1)`; print it as `in.1`.
        let s = s.replace('(', ".").replace(')', "");
        write!(f, "{}", s.to_lowercase())
    }
}

/// Why a block ends with `exit` rather than a jump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitWhy {
    /// State the translation depends on changed (mode, CS, paging, IF); look up again.
    Sync,
    /// HLT: the CPU waits for an interrupt.
    Halt,
    /// The block hit its size cap or a page end.
    Continue,
}

/// An explicit one-byte tag (`repr(u8)`): without it the discriminant is packed into a
/// niche of a field, and the interpreter's dispatch decoded it with a compare, an XOR and
/// a conditional move before every op's jump.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Inst {
    /// Start of the guest instruction at `rip`, `len` bytes long.
    Mark {
        rip: u64,
        len: u8,
    },
    Const {
        dst: Val,
        value: u64,
    },
    Get {
        dst: Val,
        loc: Loc,
    },
    Put {
        loc: Loc,
        src: Val,
    },
    Bin {
        dst: Val,
        op: BinOp,
        a: Val,
        b: Val,
    },
    Un {
        dst: Val,
        op: UnOp,
        a: Val,
    },
    /// Zero- / sign-extend or truncate `a` to the type of `dst`.
    Zext {
        dst: Val,
        a: Val,
    },
    Sext {
        dst: Val,
        a: Val,
    },
    Trunc {
        dst: Val,
        a: Val,
    },
    /// `dst` (i8) = 1 if the comparison holds.
    Cmp {
        dst: Val,
        op: CmpOp,
        a: Val,
        b: Val,
    },
    Select {
        dst: Val,
        cond: Val,
        a: Val,
        b: Val,
    },
    /// Load from a linear address; the size is `dst`'s type. `ss`: the access goes
    /// through SS (a stack access), so a non-canonical address raises #SS(0), not #GP(0).
    /// `rmw`: the read half of a read-modify-write, which the CPU makes with write intent:
    /// the pages are checked for writing, so a read-only first page faults (as a write)
    /// before a missing second one.
    Load {
        dst: Val,
        addr: Val,
        ss: bool,
        rmw: bool,
    },
    Store {
        addr: Val,
        src: Val,
        ss: bool,
    },
    /// Outside 64-bit mode: raises #GP(0), or #SS(0) for SS, unless `bytes` bytes at
    /// linear `addr` lie within segment `seg`'s limit and its type allows the access
    /// ([`CpuState::segment_fault`](crate::state::CpuState::segment_fault)). Placed before
    /// the access it guards, so a fault leaves the instruction's state untouched. `top`:
    /// the CPU model's rule for an access past 4 GiB in a 4 GiB segment.
    SegCheck {
        seg: u8,
        addr: Val,
        bytes: u16,
        write: bool,
        top: FlatSegmentTop,
    },
    /// Records a flag-setting operation lazily.
    SetFlags {
        op: CcOp,
        dst: Val,
        src: Val,
        aux: Val,
    },
    /// `dst` (i64) = RFLAGS with the arithmetic flags computed.
    GetFlags {
        dst: Val,
    },
    /// `dst` (i8) = whether `cond` holds on the current flags.
    Test {
        dst: Val,
        cond: Cond,
    },
    Call {
        dst: Option<Val>,
        helper: Helper,
        /// Boxed rather than a `Vec`: the capacity word made every op 40 bytes instead of
        /// 32, and the interpreter streams a block's ops through the cache on every run.
        args: Box<[Val]>,
    },
    /// Raise an exception at the current instruction.
    Raise {
        vector: u8,
    },
    /// Raise `vector` (with `error` as its error code, if any) when `cond` (i8) is 1.
    TrapIf {
        cond: Val,
        vector: u8,
        error: Option<u32>,
    },
    /// Side exit: when `cond` (i8) is 1, the block ends here with RIP = `next`.
    ExitIf {
        cond: Val,
        next: u64,
    },
    // Terminators.
    Jump {
        target: Val,
    },
    Branch {
        cond: Val,
        taken: u64,
        not_taken: u64,
    },
    Exit {
        next: u64,
        why: ExitWhy,
    },
}

impl Inst {
    pub fn is_terminator(&self) -> bool {
        matches!(
            self,
            Inst::Jump { .. } | Inst::Branch { .. } | Inst::Exit { .. } | Inst::Raise { .. }
        )
    }
}

/// A translated basic block.
#[derive(Clone, Debug, Default)]
pub struct Block {
    /// Linear address of the first instruction.
    pub start: u64,
    /// Bytes of guest code covered.
    pub len: u32,
    pub guest_insns: u32,
    pub insts: Vec<Inst>,
    /// Type of each value.
    pub vals: Vec<Ty>,
}

impl Block {
    pub fn ty(&self, v: Val) -> Ty {
        self.vals[v.0 as usize]
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "block {:#x} ({} bytes, {} insns):",
            self.start, self.len, self.guest_insns
        )?;
        for i in &self.insts {
            let t = |v: &Val| self.ty(*v);
            let line = match i {
                Inst::Mark { rip, len } => format!("; {rip:#x} ({len} bytes)"),
                Inst::Const { dst, value } => format!("  {dst}:{} = const {value:#x}", t(dst)),
                Inst::Get { dst, loc } => format!("  {dst}:{} = get {loc}", t(dst)),
                Inst::Put { loc, src } => format!("  put {loc}, {src}"),
                Inst::Bin { dst, op, a, b } => {
                    format!(
                        "  {dst}:{} = {} {a}, {b}",
                        t(dst),
                        format!("{op:?}").to_lowercase()
                    )
                }
                Inst::Un { dst, op, a } => {
                    format!(
                        "  {dst}:{} = {} {a}",
                        t(dst),
                        format!("{op:?}").to_lowercase()
                    )
                }
                Inst::Zext { dst, a } => format!("  {dst}:{} = zext {a}", t(dst)),
                Inst::Sext { dst, a } => format!("  {dst}:{} = sext {a}", t(dst)),
                Inst::Trunc { dst, a } => format!("  {dst}:{} = trunc {a}", t(dst)),
                Inst::Cmp { dst, op, a, b } => {
                    format!(
                        "  {dst}:{} = cmp.{} {a}, {b}",
                        t(dst),
                        format!("{op:?}").to_lowercase()
                    )
                }
                Inst::Select { dst, cond, a, b } => {
                    format!("  {dst}:{} = select {cond}, {a}, {b}", t(dst))
                }
                Inst::Load { dst, addr, ss, rmw } => {
                    let s = if *ss { ".ss" } else { "" };
                    let w = if *rmw { ".rmw" } else { "" };
                    format!("  {dst}:{} = load{s}{w} {addr}", t(dst))
                }
                Inst::Store { addr, src, ss } => {
                    let s = if *ss { ".ss" } else { "" };
                    format!("  store{s}.{} {addr}, {src}", t(src))
                }
                Inst::SegCheck {
                    seg,
                    addr,
                    bytes,
                    write,
                    top,
                } => format!(
                    "  segcheck.{}{} {}, {addr}, {bytes}",
                    if *write { "w" } else { "r" },
                    if *top == FlatSegmentTop::Wraps {
                        ".wrap"
                    } else {
                        ""
                    },
                    SEG_NAMES[*seg as usize % 6]
                ),
                Inst::SetFlags { op, dst, src, aux } => format!(
                    "  flags {}.{} {dst}, {src}, {aux}",
                    format!("{:?}", op.kind).to_lowercase(),
                    op.size * 8
                ),
                Inst::GetFlags { dst } => format!("  {dst}:{} = rflags", t(dst)),
                Inst::Test { dst, cond } => format!("  {dst}:{} = test.{}", t(dst), cond.name()),
                Inst::Call { dst, helper, args } => {
                    let a: Vec<String> = args.iter().map(|v| v.to_string()).collect();
                    match dst {
                        Some(d) => format!("  {d}:{} = call {helper}({})", t(d), a.join(", ")),
                        None => format!("  call {helper}({})", a.join(", ")),
                    }
                }
                Inst::Raise { vector } => format!("  raise #{vector}"),
                Inst::ExitIf { cond, next } => format!("  exitif {cond}, {next:#x}"),
                Inst::TrapIf {
                    cond,
                    vector,
                    error,
                } => match error {
                    Some(e) => format!("  trapif {cond}, #{vector}({e:#x})"),
                    None => format!("  trapif {cond}, #{vector}"),
                },
                Inst::Jump { target } => format!("  jump {target}"),
                Inst::Branch {
                    cond,
                    taken,
                    not_taken,
                } => format!("  branch {cond}, {taken:#x}, {not_taken:#x}"),
                Inst::Exit { next, why } => {
                    format!("  exit.{} {next:#x}", format!("{why:?}").to_lowercase())
                }
            };
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_is_half_a_cache_line() {
        // The interpreter reads a block's ops on every run, mostly from outside the
        // cache (a boot interprets tens of thousands of blocks a few hundred times each).
        assert_eq!(std::mem::size_of::<Inst>(), 32);
    }
}
