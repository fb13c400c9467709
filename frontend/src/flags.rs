//! Lazy arithmetic flags. A flag-setting instruction records its operation and operands in
//! [`crate::state::LazyFlags`]; CF, PF, AF, ZF, SF and OF are computed from them only where
//! they are read (Jcc, SETcc, PUSHF, ...). The operand conventions follow QEMU's cc_op:
//!
//! | op         | dst           | src                     | aux      |
//! |------------|---------------|-------------------------|----------|
//! | Add/Sub    | result        | second operand          | -        |
//! | Adc/Sbb    | result        | second operand          | carry in |
//! | Logic      | result        | -                       | -        |
//! | Inc/Dec    | result        | CF before               | -        |
//! | Shl        | result        | operand << (count - 1)  | -        |
//! | Shr/Sar    | result        | operand >> (count - 1)  | operand  |
//! | Mul/Imul   | low half      | 1 if CF = OF = 1        | -        |
//! | Eflags     | -             | -                       | -        |
//!
//! With `Eflags`, the flags are in RFLAGS itself. A vendor whose shifts set AF (see
//! [`crate::vendor::ShiftAf`]) marks the op with [`CcOp::af_set`].

use crate::state::{CpuState, AF, ARITH_FLAGS, CF, OF, PF, SF, ZF};

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcKind {
    Eflags = 0,
    Add,
    Adc,
    Sub,
    Sbb,
    Logic,
    Inc,
    Dec,
    Shl,
    Shr,
    Sar,
    Mul,
}

/// Every kind, in encoding order.
pub const KINDS: [CcKind; 12] = [
    CcKind::Eflags,
    CcKind::Add,
    CcKind::Adc,
    CcKind::Sub,
    CcKind::Sbb,
    CcKind::Logic,
    CcKind::Inc,
    CcKind::Dec,
    CcKind::Shl,
    CcKind::Shr,
    CcKind::Sar,
    CcKind::Mul,
];

/// Operation and operand size (bytes) packed into the `cc.op` word:
/// af_set << 12 | kind << 4 | size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CcOp {
    pub kind: CcKind,
    pub size: u8,
    /// AF is 1 whatever the kind computes (an undefined AF the vendor sets).
    pub af_set: bool,
}

const AF_SET: u32 = 1 << 12;

impl CcOp {
    pub const EFLAGS: CcOp = CcOp {
        kind: CcKind::Eflags,
        size: 8,
        af_set: false,
    };

    pub fn new(kind: CcKind, size: u8) -> Self {
        Self {
            kind,
            size,
            af_set: false,
        }
    }
    pub fn with_af_set(self, af_set: bool) -> Self {
        Self { af_set, ..self }
    }
    pub fn encode(self) -> u32 {
        (self.af_set as u32) << 12 | (self.kind as u32) << 4 | self.size as u32
    }
    pub fn decode(v: u32) -> Self {
        let kind = KINDS
            .get((v >> 4 & 0xFF) as usize)
            .copied()
            .unwrap_or(CcKind::Eflags);
        let size = match v & 0xF {
            s @ (1 | 2 | 4 | 8) => s as u8,
            _ => 8,
        };
        Self {
            kind,
            size,
            af_set: v & AF_SET != 0 && kind != CcKind::Eflags,
        }
    }
}

fn mask(size: u8) -> u64 {
    if size >= 8 {
        !0
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn sign(size: u8) -> u64 {
    1u64 << (size * 8 - 1)
}

fn parity(v: u64) -> u64 {
    if (v as u8).count_ones().is_multiple_of(2) {
        PF
    } else {
        0
    }
}

/// ZF, SF and PF of a result.
fn zsp(dst: u64, size: u8) -> u64 {
    let d = dst & mask(size);
    let mut f = parity(d);
    if d == 0 {
        f |= ZF;
    }
    if d & sign(size) != 0 {
        f |= SF;
    }
    f
}

/// The six arithmetic flags (as RFLAGS bits) described by a lazy state.
pub fn compute(op: CcOp, dst: u64, src: u64, aux: u64, rflags: u64) -> u64 {
    let f = compute_kind(op, dst, src, aux, rflags);
    if op.af_set {
        f | AF
    } else {
        f
    }
}

fn compute_kind(op: CcOp, dst: u64, src: u64, aux: u64, rflags: u64) -> u64 {
    let m = mask(op.size);
    let s = sign(op.size);
    let d = dst & m;
    let src = src & m;
    match op.kind {
        CcKind::Eflags => rflags & ARITH_FLAGS,
        CcKind::Add | CcKind::Adc => {
            let cin = (op.kind == CcKind::Adc && aux & 1 != 0) as u64;
            let a = d.wrapping_sub(src).wrapping_sub(cin) & m;
            let cf = if cin != 0 { d <= a } else { d < a };
            let of = (a ^ d) & (src ^ d) & s != 0;
            zsp(d, op.size)
                | if cf { CF } else { 0 }
                | if of { OF } else { 0 }
                | (((a ^ src ^ d) & 0x10) * (AF / 0x10))
        }
        CcKind::Sub | CcKind::Sbb => {
            let bin = (op.kind == CcKind::Sbb && aux & 1 != 0) as u64;
            let a = d.wrapping_add(src).wrapping_add(bin) & m;
            let cf = if bin != 0 { a <= src } else { a < src };
            let of = (a ^ src) & (a ^ d) & s != 0;
            zsp(d, op.size)
                | if cf { CF } else { 0 }
                | if of { OF } else { 0 }
                | (((a ^ src ^ d) & 0x10) * (AF / 0x10))
        }
        CcKind::Logic => zsp(d, op.size),
        CcKind::Inc => {
            let a = d.wrapping_sub(1) & m;
            zsp(d, op.size)
                | (aux_cf(src))
                | if d == s { OF } else { 0 }
                | (((a ^ 1 ^ d) & 0x10) * (AF / 0x10))
        }
        CcKind::Dec => {
            let a = d.wrapping_add(1) & m;
            zsp(d, op.size)
                | (aux_cf(src))
                | if d == s - 1 { OF } else { 0 }
                | (((a ^ 1 ^ d) & 0x10) * (AF / 0x10))
        }
        CcKind::Shl => {
            let cf = src & s != 0;
            let of = cf != (d & s != 0);
            zsp(d, op.size) | if cf { CF } else { 0 } | if of { OF } else { 0 }
        }
        CcKind::Shr => {
            // OF is the operand's top bit (defined for 1-bit shifts).
            let of = aux & m & s != 0;
            zsp(d, op.size) | ((src & 1) * CF) | if of { OF } else { 0 }
        }
        CcKind::Sar => zsp(d, op.size) | ((src & 1) * CF),
        CcKind::Mul => {
            let co = if src != 0 { CF | OF } else { 0 };
            zsp(d, op.size) | co
        }
    }
}

fn aux_cf(old_cf: u64) -> u64 {
    if old_cf & 1 != 0 {
        CF
    } else {
        0
    }
}

/// A condition that, after some operations, is a plain function of the recorded result
/// (`dst`) and source operand (`src`), both taken at the operation's size: what
/// [`cond_holds`] computes without RFLAGS, and what generated code computes inline when the
/// operation is in the same block ([`fast_cond`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastCond {
    /// `dst == 0`.
    Zero,
    /// The sign bit of `dst`.
    Sign,
    /// `dst == 0` or its sign bit: ZF or SF (SF != OF with OF = 0).
    ZeroOrSign,
    /// After SUB/CMP, comparisons of the operands `a = dst + src` and `b = src`:
    /// unsigned `a < b`, `a <= b`, and signed `a < b`, `a <= b`.
    Below,
    BelowOrEqual,
    Less,
    LessOrEqual,
    /// After ADD, the carry: the result below the source operand, unsigned (`dst < src`);
    /// ADC after ADD and JC after an ADD of a pointer or counter read it.
    Carry,
    /// Bit 0 of `src` (INC/DEC keep CF there).
    SrcBit0,
    /// Never (CF and OF after a logic operation).
    Never,
}

/// How `cond` reads after `op`, if it is a [`FastCond`]: that condition, and whether it is
/// negated.
pub fn fast_cond(op: CcOp, cond: Cond) -> Option<(FastCond, bool)> {
    use CcKind::*;
    let neg = cond as u8 & 1 != 0;
    let fast = match (op.kind, cond as u8 >> 1) {
        (Add | Sub | Logic | Inc | Dec, 2) => FastCond::Zero,
        (Add | Sub | Logic | Inc | Dec, 4) => FastCond::Sign,
        (Sub, 1) => FastCond::Below,
        (Sub, 3) => FastCond::BelowOrEqual,
        (Sub, 6) => FastCond::Less,
        (Sub, 7) => FastCond::LessOrEqual,
        (Add, 1) => FastCond::Carry,
        // After logic ops CF = OF = 0.
        (Logic, 0 | 1) => FastCond::Never,
        (Logic, 3) => FastCond::Zero,
        (Logic, 6) => FastCond::Sign,
        (Logic, 7) => FastCond::ZeroOrSign,
        (Inc | Dec, 1) => FastCond::SrcBit0,
        _ => return None,
    };
    Some((fast, neg))
}

impl FastCond {
    /// The condition on a recorded result and source of `size` bytes.
    pub fn eval(self, size: u8, dst: u64, src: u64) -> bool {
        let m = mask(size);
        let (d, src) = (dst & m, src & m);
        let a = d.wrapping_add(src) & m;
        match self {
            FastCond::Zero => d == 0,
            FastCond::Sign => d & sign(size) != 0,
            FastCond::ZeroOrSign => d == 0 || d & sign(size) != 0,
            FastCond::Below => a < src,
            FastCond::BelowOrEqual => a <= src,
            FastCond::Less => sext(a, size) < sext(src, size),
            FastCond::LessOrEqual => sext(a, size) <= sext(src, size),
            FastCond::Carry => d < src,
            FastCond::SrcBit0 => src & 1 != 0,
            FastCond::Never => false,
        }
    }
}

/// Whether `cond` holds on the CPU's flags: from the recorded operation where
/// [`fast_cond`] says how, else from the computed RFLAGS.
pub fn cond_holds(st: &CpuState, cond: Cond) -> bool {
    let op = CcOp::decode(st.cc.op);
    match fast_cond(op, cond) {
        Some((fast, neg)) => fast.eval(op.size, st.cc.dst, st.cc.src) != neg,
        None => cond.holds(rflags(st)),
    }
}

fn sext(v: u64, size: u8) -> i64 {
    let shift = 64 - size as u32 * 8;
    ((v << shift) as i64) >> shift
}

/// RFLAGS with the arithmetic flags brought up to date.
pub fn rflags(st: &CpuState) -> u64 {
    let op = CcOp::decode(st.cc.op);
    if op.kind == CcKind::Eflags {
        return st.rflags;
    }
    (st.rflags & !ARITH_FLAGS) | compute(op, st.cc.dst, st.cc.src, st.cc.aux, st.rflags)
}

/// Writes RFLAGS wholesale and makes it the flags' home (`cc.op = Eflags`).
pub fn set_rflags(st: &mut CpuState, value: u64) {
    st.rflags = value | crate::state::RFLAGS_FIXED;
    st.cc.op = CcOp::EFLAGS.encode();
}

/// Replaces the six arithmetic flags (CF, PF, AF, ZF, SF, OF) with those of `arith`,
/// keeping the other bits of RFLAGS.
pub fn set_arith_flags(st: &mut CpuState, arith: u64) {
    let old = rflags(st);
    set_rflags(st, (old & !ARITH_FLAGS) | (arith & ARITH_FLAGS));
}

/// The x86 condition codes, in the encoding of Jcc/SETcc/CMOVcc's low nibble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    O = 0,
    No,
    B,
    Ae,
    E,
    Ne,
    Be,
    A,
    S,
    Ns,
    P,
    Np,
    L,
    Ge,
    Le,
    G,
}

impl Cond {
    pub fn from_nibble(n: u8) -> Cond {
        use Cond::*;
        [O, No, B, Ae, E, Ne, Be, A, S, Ns, P, Np, L, Ge, Le, G][(n & 15) as usize]
    }

    pub fn name(self) -> &'static str {
        [
            "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
        ][self as usize]
    }

    /// The condition as a test of RFLAGS, the one statement of it that [`Self::holds`]
    /// and the JIT (which lowers it to host code) both evaluate.
    pub fn on_rflags(self) -> RflagsTest {
        let (any, sf_ne_of) = match self as u8 >> 1 {
            0 => (OF, false),
            1 => (CF, false),
            2 => (ZF, false),
            3 => (CF | ZF, false),
            4 => (SF, false),
            5 => (PF, false),
            6 => (0, true),
            _ => (ZF, true),
        };
        RflagsTest {
            any,
            sf_ne_of,
            negate: self as u8 & 1 != 0,
        }
    }

    /// Whether the condition holds for these RFLAGS.
    pub fn holds(self, f: u64) -> bool {
        let t = self.on_rflags();
        let sf_ne_of = (f & SF != 0) != (f & OF != 0);
        (f & t.any != 0 || t.sf_ne_of && sf_ne_of) != t.negate
    }
}

/// A condition on RFLAGS ([`Cond::on_rflags`]): it holds when a flag of `any` is set or,
/// with `sf_ne_of`, when SF differs from OF; `negate` inverts that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RflagsTest {
    pub any: u64,
    pub sf_ne_of: bool,
    pub negate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: CcKind, size: u8, dst: u64, src: u64, aux: u64) -> u64 {
        compute(CcOp::new(kind, size), dst, src, aux, 0)
    }

    #[test]
    fn add_flags() {
        // 0x7F + 1 = 0x80: OF, SF, AF
        assert_eq!(f(CcKind::Add, 1, 0x80, 1, 0), OF | SF | AF);
        // 0xFF + 1 = 0x00: CF, ZF, PF, AF
        assert_eq!(f(CcKind::Add, 1, 0x00, 1, 0), CF | ZF | PF | AF);
        // adc 0xFF + 0 + 1 = 0: CF
        assert_eq!(f(CcKind::Adc, 1, 0x00, 0, 1) & CF, CF);
        assert_eq!(f(CcKind::Add, 8, 0, 1, 0) & (CF | ZF), CF | ZF);
    }

    #[test]
    fn sub_flags() {
        // 0 - 1 = 0xFFFF: CF, SF, PF, AF
        assert_eq!(f(CcKind::Sub, 2, 0xFFFF, 1, 0), CF | SF | PF | AF);
        // 0x80 - 1 = 0x7F: OF, AF
        assert_eq!(f(CcKind::Sub, 1, 0x7F, 1, 0), OF | AF);
        // sbb 5 - 5 - 1 = -1: CF
        assert_eq!(f(CcKind::Sbb, 4, 0xFFFF_FFFF, 5, 1) & CF, CF);
        // cmp equal
        assert_eq!(f(CcKind::Sub, 4, 0, 7, 0), ZF | PF);
    }

    #[test]
    fn inc_dec_keep_cf() {
        assert_eq!(f(CcKind::Inc, 1, 0x80, 1, 0), OF | SF | AF | CF);
        assert_eq!(f(CcKind::Dec, 1, 0x7F, 0, 0), OF | AF);
    }

    #[test]
    fn conditions() {
        assert!(Cond::L.holds(SF));
        assert!(!Cond::L.holds(SF | OF));
        assert!(Cond::Be.holds(ZF));
        assert!(Cond::A.holds(0));
        assert!(Cond::Np.holds(0));
        assert_eq!(Cond::from_nibble(0x4), Cond::E);
    }

    #[test]
    fn fast_conditions_agree_with_full_flags() {
        // Every condition, for every kind and a spread of operands, against the full
        // computation.
        let vals = [
            0u64,
            1,
            2,
            0x7F,
            0x80,
            0xFF,
            0x7FFF_FFFF,
            0x8000_0000,
            u64::MAX,
            0x1234_5678_9ABC_DEF0,
        ];
        for k in KINDS {
            for size in [1u8, 2, 4, 8] {
                for &d in &vals {
                    for &src in &vals {
                        let mut st = CpuState::reset();
                        st.cc.op = CcOp::new(k, size).encode();
                        st.cc.dst = d;
                        st.cc.src = src;
                        st.cc.aux = src & 1;
                        st.rflags = 0x2 | (d & ARITH_FLAGS);
                        let full = rflags(&st);
                        for n in 0..16 {
                            let c = Cond::from_nibble(n);
                            assert_eq!(
                                cond_holds(&st, c),
                                c.holds(full),
                                "{k:?} {size} {d:#x} {src:#x} {c:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn op_encoding_round_trips() {
        for k in KINDS {
            for s in [1u8, 2, 4, 8] {
                let op = CcOp::new(k, s);
                assert_eq!(CcOp::decode(op.encode()), op);
                if k != CcKind::Eflags {
                    let af = op.with_af_set(true);
                    assert_eq!(CcOp::decode(af.encode()), af);
                }
            }
        }
    }
}
