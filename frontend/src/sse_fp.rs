//! Scalar double-precision arithmetic as SSE2 does it: results under MXCSR's rounding
//! control, flush-to-zero and denormals-are-zero, x86's NaN rules, and the exception flags
//! it raises (IE, DE, ZE, OE, UE, PE; Intel SDM vol. 1, 11.5).
//!
//! The host's IEEE-754 operations give the round-to-nearest result on any host. Whether
//! that result is exact, and on which side of it the exact value lies, is decided with
//! exact integer arithmetic on the operands' significands (a product of two is 106 bits),
//! never by reading the host's own floating-point flags: Gantry runs on hosts whose FPU is
//! not an x86's. The other rounding directions step the nearest result by one ulp towards
//! the exact value where it lies on the wrong side.
//!
//! Tininess (for UE and FTZ) is detected after rounding, as x86 does: the result rounded
//! to 53 bits with an unbounded exponent, which is computed on operands scaled by 2^200.
//!
//! The flags returned are the masked response's. An unmasked one makes the caller raise
//! #XM without writing the destination; the CPU's unmasked underflow, which also fires
//! for exact tiny results, is not modelled.

use std::cmp::Ordering;

use iced_x86::Mnemonic as M;

use crate::sse::X;

/// MXCSR's exception flags; each one's mask bit is 7 places above it.
pub const IE: u32 = 1 << 0;
pub const DE: u32 = 1 << 1;
pub const ZE: u32 = 1 << 2;
pub const OE: u32 = 1 << 3;
pub const UE: u32 = 1 << 4;
pub const PE: u32 = 1 << 5;
pub const FLAGS: u32 = 0x3F;
pub const MASK_SHIFT: u32 = 7;
pub const DAZ: u32 = 1 << 6;
pub const FTZ: u32 = 1 << 15;
const RC_SHIFT: u32 = 13;

/// After an instruction raised the exception flags `raised`: MXCSR with them recorded,
/// and the exception the instruction takes before writing its result: none when MXCSR
/// masks every flag raised, else #XM (19), or #UD (6) when the OS has not set
/// CR4.OSXMMEXCPT (SDM vol. 1, 11.5.1).
pub fn simd_exception(mxcsr: u32, raised: u32, osxmmexcpt: bool) -> (u32, Option<u8>) {
    let masked = (mxcsr >> MASK_SHIFT) & FLAGS;
    let vector = match (raised & !masked == 0, osxmmexcpt) {
        (true, _) => None,
        (false, true) => Some(19),
        (false, false) => Some(crate::state::UD_VECTOR),
    };
    (mxcsr | raised, vector)
}

/// The QNaN an invalid operation returns: negative, payload 0 ("real indefinite").
pub const DEFAULT_NAN: u64 = 0xFFF8_0000_0000_0000;
const SIGN: u64 = 1 << 63;
const QUIET: u64 = 1 << 51;
const EXP: u64 = 0x7FF << 52;
const FRAC: u64 = (1 << 52) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    Nearest,
    Down,
    Up,
    TowardZero,
}

impl Rounding {
    pub fn of(mxcsr: u32) -> Self {
        match (mxcsr >> RC_SHIFT) & 3 {
            0 => Rounding::Nearest,
            1 => Rounding::Down,
            2 => Rounding::Up,
            _ => Rounding::TowardZero,
        }
    }
}

fn is_nan(x: u64) -> bool {
    x & EXP == EXP && x & FRAC != 0
}

fn is_snan(x: u64) -> bool {
    is_nan(x) && x & QUIET == 0
}

fn is_denormal(x: u64) -> bool {
    x & EXP == 0 && x & FRAC != 0
}

/// The operand as the operation sees it: with DAZ, denormals are zeros of their sign.
fn operand(x: u64, mxcsr: u32) -> u64 {
    if mxcsr & DAZ != 0 && is_denormal(x) {
        x & SIGN
    } else {
        x
    }
}

/// DE for denormal operands (never under DAZ, which made them zeros).
fn denormal_flag(xs: &[u64]) -> u32 {
    if xs.iter().any(|&x| is_denormal(x)) {
        DE
    } else {
        0
    }
}

/// |x| as significand * 2^exponent (x finite).
fn parts(x: f64) -> (u128, i32) {
    let b = x.to_bits() & !SIGN;
    let e = (b >> 52) as i32;
    if e == 0 {
        ((b & FRAC) as u128, -1074)
    } else {
        (((b & FRAC) | 1 << 52) as u128, e - 1075)
    }
}

/// Compares m1 * 2^e1 with m2 * 2^e2 exactly.
fn cmp_exact((m1, e1): (u128, i32), (m2, e2): (u128, i32)) -> Ordering {
    if m1 == 0 || m2 == 0 {
        return m1.cmp(&m2);
    }
    let top1 = 128 - m1.leading_zeros() as i32 + e1;
    let top2 = 128 - m2.leading_zeros() as i32 + e2;
    if top1 != top2 {
        return top1.cmp(&top2);
    }
    // Same leading bit position: the shift is below the narrower significand's width.
    if e1 >= e2 {
        (m1 << (e1 - e2)).cmp(&m2)
    } else {
        m1.cmp(&(m2 << (e2 - e1)))
    }
}

/// The operations this module computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Sqrt,
}

/// The exact result compared with `r` (the result rounded to nearest, finite): Greater
/// when the exact value is above `r`.
fn exact_vs(op: Op, a: f64, b: f64, r: f64) -> Ordering {
    // Signed comparison from a comparison of magnitudes, by the result's sign.
    let signed = |mag: Ordering| {
        if r.is_sign_negative() {
            mag.reverse()
        } else {
            mag
        }
    };
    match op {
        Op::Add | Op::Sub => {
            let b = if op == Op::Sub { -b } else { b };
            // TwoSum: the rounding error of a + b, exactly (r is finite).
            let bb = r - a;
            let err = (a - (r - bb)) + (b - bb);
            err.partial_cmp(&0.0).unwrap_or(Ordering::Equal)
        }
        Op::Mul => {
            if a == 0.0 || b == 0.0 || a.is_infinite() || b.is_infinite() {
                return Ordering::Equal;
            }
            let ((ma, ea), (mb, eb)) = (parts(a), parts(b));
            signed(cmp_exact((ma * mb, ea + eb), parts(r)))
        }
        Op::Div => {
            if a == 0.0 || a.is_infinite() || b.is_infinite() {
                return Ordering::Equal;
            }
            // |a / b| against |r|: |a| against |r| * |b|.
            let ((mr, er), (mb, eb)) = (parts(r), parts(b));
            signed(cmp_exact(parts(a), (mr * mb, er + eb)))
        }
        Op::Sqrt => {
            if a == 0.0 || a.is_infinite() {
                return Ordering::Equal;
            }
            // sqrt(a) against r: a against r * r.
            let (mr, er) = parts(r);
            cmp_exact(parts(a), (mr * mr, 2 * er))
        }
    }
}

fn nearest(op: Op, a: f64, b: f64) -> f64 {
    match op {
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div => a / b,
        Op::Sqrt => a.sqrt(),
    }
}

/// The result under `rc`, whether it is inexact, and whether it overflowed. Operands are
/// not NaN and the operation is valid.
fn rounded(op: Op, a: f64, b: f64, rc: Rounding) -> (f64, bool, bool) {
    let r = nearest(op, a, b);
    let finite_in = a.is_finite() && (op == Op::Sqrt || b.is_finite());
    if r.is_infinite() && finite_in && !(op == Op::Div && b == 0.0) {
        // Overflow: infinity or the largest finite number, by direction.
        let up = r > 0.0;
        let r = match rc {
            Rounding::Nearest => r,
            Rounding::TowardZero => f64::MAX.copysign(r),
            Rounding::Down if up => f64::MAX,
            Rounding::Up if !up => -f64::MAX,
            _ => r,
        };
        return (r, true, true);
    }
    if !r.is_finite() {
        return (r, false, false);
    }
    let side = exact_vs(op, a, b, r);
    if side == Ordering::Equal {
        // An exact zero sum of opposite-signed operands is -0 when rounding down.
        if r == 0.0 && matches!(op, Op::Add | Op::Sub) && rc == Rounding::Down {
            let b_eff = if op == Op::Sub { -b } else { b };
            if a.is_sign_negative() != b_eff.is_sign_negative() {
                return (-0.0, false, false);
            }
        }
        return (r, false, false);
    }
    let stepped = directed(r, side, rc);
    // Stepping from the largest finite number reaches infinity: an overflow too.
    (stepped, true, stepped.is_infinite())
}

/// `r`, rounded to nearest, moved by one ulp where `rc` rounds the other way: `side` is
/// where the exact value lies relative to `r`.
fn directed(r: f64, side: Ordering, rc: Rounding) -> f64 {
    match (rc, side) {
        (Rounding::Down, Ordering::Less) => next_down(r),
        (Rounding::Up, Ordering::Greater) => next_up(r),
        (Rounding::TowardZero, Ordering::Less) if r > 0.0 => next_down(r),
        (Rounding::TowardZero, Ordering::Greater) if r < 0.0 => next_up(r),
        _ => r,
    }
}

/// The next double above `x` (f64::next_up, which needs Rust 1.86; the MSRV is 1.85).
fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        x
    } else if x == 0.0 {
        f64::from_bits(1)
    } else if x > 0.0 {
        f64::from_bits(x.to_bits() + 1)
    } else {
        f64::from_bits(x.to_bits() - 1)
    }
}

fn next_down(x: f64) -> f64 {
    -next_up(-x)
}

/// 2^k as a double (|k| < 1023).
fn pow2(k: i32) -> f64 {
    f64::from_bits(((1023 + k) as u64) << 52)
}

/// Whether the exact result of a multiplication or division, rounded to 53 bits with an
/// unbounded exponent, is below the smallest normal: the same operation on operands
/// scaled by 2^200, where the result is normal.
fn tiny_after_rounding(op: Op, a: f64, b: f64, rc: Rounding) -> bool {
    const K: i32 = 200;
    let (a2, b2) = match op {
        // The smaller factor is below 2^-511 when the product is tiny: scaling it is exact.
        Op::Mul if a.abs() <= b.abs() => (a * pow2(K), b),
        Op::Mul => (a, b * pow2(K)),
        // A tiny quotient has a dividend below 4 (the divisor is below 2^1024).
        Op::Div => (a * pow2(K), b),
        _ => return false,
    };
    let (r2, _, _) = rounded(op, a2, b2, rc);
    r2.abs() < pow2(-1022 + K)
}

/// ADDSD, SUBSD, MULSD, DIVSD, SQRTSD, MINSD, MAXSD on the low doubles `a` (destination)
/// and `b` (source): the result's bits and the exception flags raised. None for other
/// mnemonics.
pub fn scalar(m: M, a: u64, b: u64, mxcsr: u32) -> Option<(u64, u32)> {
    let op = match m {
        M::Addsd => Op::Add,
        M::Subsd => Op::Sub,
        M::Mulsd => Op::Mul,
        M::Divsd => Op::Div,
        M::Sqrtsd => Op::Sqrt,
        M::Minsd | M::Maxsd => return Some(min_max(m == M::Minsd, a, b, mxcsr)),
        _ => return None,
    };
    let (a, b) = if op == Op::Sqrt {
        // SQRTSD's only input is the source.
        (operand(b, mxcsr), 0)
    } else {
        (operand(a, mxcsr), operand(b, mxcsr))
    };
    let inputs: &[u64] = if op == Op::Sqrt { &[a] } else { &[a, b] };
    if inputs.iter().any(|&x| is_nan(x)) {
        // The first NaN operand, quieted; an SNaN anywhere is invalid.
        let snan = inputs.iter().any(|&x| is_snan(x));
        let first = inputs
            .iter()
            .copied()
            .find(|&x| is_nan(x))
            .unwrap_or(DEFAULT_NAN);
        return Some((first | QUIET, if snan { IE } else { 0 }));
    }
    let (x, y) = (f64::from_bits(a), f64::from_bits(b));
    let invalid = match op {
        Op::Add => x.is_infinite() && y.is_infinite() && x.signum() != y.signum(),
        Op::Sub => x.is_infinite() && y.is_infinite() && x.signum() == y.signum(),
        Op::Mul => (x == 0.0 && y.is_infinite()) || (x.is_infinite() && y == 0.0),
        Op::Div => (x == 0.0 && y == 0.0) || (x.is_infinite() && y.is_infinite()),
        Op::Sqrt => x < 0.0,
    };
    // Invalid operations and division by zero take precedence over the denormal-operand
    // exception (SDM vol. 1, 4.9.2): with them, DE is not raised.
    if invalid {
        return Some((DEFAULT_NAN, IE));
    }
    if op == Op::Div && y == 0.0 && x.is_finite() {
        let inf = f64::INFINITY.copysign(x) * y.signum();
        return Some((inf.to_bits(), ZE));
    }
    let de = denormal_flag(inputs);
    let rc = Rounding::of(mxcsr);
    let (r, inexact, overflow) = rounded(op, x, y, rc);
    let mut flags = de;
    if overflow {
        flags |= OE | PE;
    } else if inexact {
        flags |= PE;
    }
    let mut r = r;
    let tiny = matches!(op, Op::Mul | Op::Div)
        && r.abs() <= f64::MIN_POSITIVE
        && (inexact || r != 0.0)
        && tiny_after_rounding(op, x, y, rc);
    if tiny {
        if mxcsr & FTZ != 0 && mxcsr & (UE << MASK_SHIFT) != 0 {
            // Flush to zero: a zero of the result's sign, underflow and inexact.
            r = 0.0f64.copysign(r);
            flags |= UE | PE;
        } else if inexact {
            flags |= UE;
        }
    }
    Some((r.to_bits(), flags))
}

/// MINSD/MAXSD: the source when either operand is a NaN (invalid, even for QNaNs) or when
/// both are zeros, whatever their signs.
fn min_max(min: bool, a: u64, b: u64, mxcsr: u32) -> (u64, u32) {
    let (a, b) = (operand(a, mxcsr), operand(b, mxcsr));
    if is_nan(a) || is_nan(b) {
        return (b, IE);
    }
    let (x, y) = (f64::from_bits(a), f64::from_bits(b));
    let r = if (min && x < y) || (!min && x > y) {
        a
    } else {
        b
    };
    (r, denormal_flag(&[a, b]))
}

/// The comparison of two doubles (None when unordered) and the flags raised:
/// `signaling` makes any NaN invalid, otherwise only SNaNs are.
fn compare(a: u64, b: u64, signaling: bool, mxcsr: u32) -> (Option<Ordering>, u32) {
    let (a, b) = (operand(a, mxcsr), operand(b, mxcsr));
    if is_nan(a) || is_nan(b) {
        let ie = signaling || is_snan(a) || is_snan(b);
        return (None, if ie { IE } else { 0 });
    }
    let (x, y) = (f64::from_bits(a), f64::from_bits(b));
    (x.partial_cmp(&y), denormal_flag(&[a, b]))
}

/// COMISD/UCOMISD: ZF, PF and CF as RFLAGS bits (unordered sets all three; OF, SF and
/// AF are cleared), and the flags raised. COMISD signals invalid for any NaN, UCOMISD
/// only for SNaNs.
pub fn comisd(a: u64, b: u64, signaling: bool, mxcsr: u32) -> (u64, u32) {
    use crate::state::{CF, PF, ZF};
    let (order, raised) = compare(a, b, signaling, mxcsr);
    let rflags = match order {
        None => ZF | PF | CF,
        Some(Ordering::Less) => CF,
        Some(Ordering::Equal) => ZF,
        Some(Ordering::Greater) => 0,
    };
    (rflags, raised)
}

/// The double-precision instructions whose destination is an XMM register and whose
/// operands are doubles: `dst op src` for ADDSD..MAXSD and CMPSD on the low lane (the high
/// lane kept), their packed forms on both lanes (the flags of both raised). The result
/// and the flags raised; None for other mnemonics.
pub fn binary(m: M, dst: &X, src: &X, imm: u8, mxcsr: u32) -> Option<(X, u32)> {
    let (scalar_m, lanes) = match m {
        M::Addsd | M::Subsd | M::Mulsd | M::Divsd | M::Sqrtsd | M::Minsd | M::Maxsd | M::Cmpsd => {
            (m, 1)
        }
        M::Addpd => (M::Addsd, 2),
        M::Subpd => (M::Subsd, 2),
        M::Mulpd => (M::Mulsd, 2),
        M::Divpd => (M::Divsd, 2),
        M::Sqrtpd => (M::Sqrtsd, 2),
        M::Minpd => (M::Minsd, 2),
        M::Maxpd => (M::Maxsd, 2),
        M::Cmppd => (M::Cmpsd, 2),
        _ => return None,
    };
    let lane = |x: &X, i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&x[8 * i..8 * i + 8]);
        u64::from_le_bytes(b)
    };
    let mut r = *dst;
    let mut raised = 0;
    for i in 0..lanes {
        let (a, b) = (lane(dst, i), lane(src, i));
        let (v, f) = if scalar_m == M::Cmpsd {
            // A mask: all ones where the predicate holds.
            let (holds, f) = predicate(a, b, imm, mxcsr);
            (if holds { u64::MAX } else { 0 }, f)
        } else {
            scalar(scalar_m, a, b, mxcsr)?
        };
        r[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        raised |= f;
    }
    Some((r, raised))
}

/// CMPSD/CMPPD's predicate (imm8 bits 2:0) on two doubles: whether it holds, and the
/// flags raised. EQ, UNORD, NEQ and ORD are quiet (invalid only for SNaNs); LT, LE, NLT
/// and NLE signal for any NaN.
fn predicate(a: u64, b: u64, imm: u8, mxcsr: u32) -> (bool, u32) {
    let (a, b) = (operand(a, mxcsr), operand(b, mxcsr));
    let pred = imm & 7;
    let signaling = matches!(pred, 1 | 2 | 5 | 6);
    let (order, flags) = compare(a, b, signaling, mxcsr);
    let holds = match (pred, order) {
        (0, o) => o == Some(Ordering::Equal),
        (1, o) => o == Some(Ordering::Less),
        (2, o) => matches!(o, Some(Ordering::Less | Ordering::Equal)),
        (3, o) => o.is_none(),
        (4, o) => o != Some(Ordering::Equal),
        (5, o) => o != Some(Ordering::Less),
        (6, o) => !matches!(o, Some(Ordering::Less | Ordering::Equal)),
        (_, o) => o.is_some(),
    };
    (holds, flags)
}

/// CVTSD2SI (`truncate` false: MXCSR's rounding) and CVTTSD2SI to a `bits`-bit integer:
/// the integer indefinite value (only the sign bit set) and IE for NaNs and results out
/// of range; PE when inexact.
pub fn to_int(v: u64, bits: u32, truncate: bool, mxcsr: u32) -> (u64, u32) {
    let indefinite = 1u64 << (bits - 1);
    let x = f64::from_bits(v);
    if x.is_nan() {
        return (indefinite, IE);
    }
    let r = match (truncate, Rounding::of(mxcsr)) {
        (true, _) | (false, Rounding::TowardZero) => x.trunc(),
        (false, Rounding::Nearest) => x.round_ties_even(),
        (false, Rounding::Down) => x.floor(),
        (false, Rounding::Up) => x.ceil(),
    };
    // The range is [-2^(bits-1), 2^(bits-1)): both bounds are exact doubles.
    let limit = pow2(bits as i32 - 1);
    if !(r >= -limit && r < limit) {
        return (indefinite, IE);
    }
    let mask = if bits == 64 { !0 } else { (1u64 << bits) - 1 };
    let out = (r as i64 as u64) & mask;
    (out, if r != x { PE } else { 0 })
}

/// CVTSI2SD: the signed integer as a double under MXCSR's rounding; PE when inexact.
pub fn from_int(v: i64, mxcsr: u32) -> (u64, u32) {
    let r = v as f64;
    // r is an integer of at most 2^63: exactly representable as an i128.
    let side = (v as i128).cmp(&(r as i128));
    if side == Ordering::Equal {
        return (r.to_bits(), 0);
    }
    (directed(r, side, Rounding::of(mxcsr)).to_bits(), PE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEAREST: u32 = 0x1F80;
    const DOWN: u32 = 0x1F80 | 1 << RC_SHIFT;
    const UP: u32 = 0x1F80 | 2 << RC_SHIFT;
    const ZERO: u32 = 0x1F80 | 3 << RC_SHIFT;

    fn f(x: f64) -> u64 {
        x.to_bits()
    }

    fn run(m: M, a: f64, b: f64, mxcsr: u32) -> (f64, u32) {
        let (r, flags) = scalar(m, f(a), f(b), mxcsr).unwrap();
        (f64::from_bits(r), flags)
    }

    #[test]
    fn exact_and_inexact_results() {
        assert_eq!(run(M::Addsd, 1.5, 2.25, NEAREST), (3.75, 0));
        assert_eq!(run(M::Addsd, 1.0, 1e-30, NEAREST), (1.0, PE));
        assert_eq!(run(M::Divsd, 1.0, 3.0, NEAREST).1, PE);
        assert_eq!(run(M::Mulsd, 3.0, 0.5, NEAREST), (1.5, 0));
        assert_eq!(run(M::Sqrtsd, 0.0, 2.0, NEAREST).1, PE);
        assert_eq!(run(M::Sqrtsd, 0.0, 2.25, NEAREST), (1.5, 0));
    }

    #[test]
    fn directed_rounding_steps_towards_the_exact_value() {
        let third = 1.0 / 3.0; // below the exact third
        assert_eq!(run(M::Divsd, 1.0, 3.0, DOWN).0, third);
        assert_eq!(run(M::Divsd, 1.0, 3.0, UP).0, next_up(third));
        assert_eq!(run(M::Divsd, -1.0, 3.0, UP).0, -third);
        assert_eq!(run(M::Divsd, -1.0, 3.0, ZERO).0, -third);
        assert_eq!(run(M::Divsd, -1.0, 3.0, DOWN).0, next_down(-third));
        // x + (-x) is -0 when rounding down, +0 otherwise.
        assert!(run(M::Addsd, 1.0, -1.0, DOWN).0.is_sign_negative());
        assert!(run(M::Addsd, 1.0, -1.0, NEAREST).0.is_sign_positive());
        // Overflow: infinity, or the largest finite number by direction.
        assert_eq!(
            run(M::Mulsd, f64::MAX, 2.0, NEAREST),
            (f64::INFINITY, OE | PE)
        );
        assert_eq!(run(M::Mulsd, f64::MAX, 2.0, ZERO), (f64::MAX, OE | PE));
        assert_eq!(run(M::Mulsd, -f64::MAX, 2.0, UP), (-f64::MAX, OE | PE));
    }

    #[test]
    fn invalid_operations_and_nans() {
        let (r, flags) = scalar(M::Subsd, f(f64::INFINITY), f(f64::INFINITY), NEAREST).unwrap();
        assert_eq!((r, flags), (DEFAULT_NAN, IE));
        let (r, flags) = scalar(M::Sqrtsd, 0, f(-1.0), NEAREST).unwrap();
        assert_eq!((r, flags), (DEFAULT_NAN, IE));
        // The destination's NaN wins, quieted; an SNaN is invalid.
        let snan = 0x7FF0_0000_0000_0001;
        let qnan = 0x7FF8_0000_0000_1234;
        assert_eq!(
            scalar(M::Addsd, snan, qnan, NEAREST),
            Some((snan | QUIET, IE))
        );
        assert_eq!(scalar(M::Addsd, f(1.0), qnan, NEAREST), Some((qnan, 0)));
        // MINSD returns the source for any NaN, and signals.
        assert_eq!(scalar(M::Minsd, qnan, f(1.0), NEAREST), Some((f(1.0), IE)));
        assert_eq!(
            scalar(M::Divsd, f(1.0), f(-0.0), NEAREST),
            Some((f(f64::NEG_INFINITY), ZE))
        );
    }

    #[test]
    fn underflow_is_tiny_and_inexact() {
        let min_den = f64::from_bits(1);
        // Exact denormal results raise DE (for a denormal operand) but not UE.
        assert_eq!(run(M::Mulsd, min_den, 1.0, NEAREST), (min_den, DE));
        // Half the smallest denormal rounds to zero (ties to even): tiny and inexact.
        assert_eq!(run(M::Mulsd, min_den, 0.5, NEAREST), (0.0, DE | UE | PE));
        assert_eq!(run(M::Divsd, f64::MIN_POSITIVE, 3.0, NEAREST).1, UE | PE);
        // Flush to zero.
        let ftz = NEAREST | FTZ;
        assert_eq!(run(M::Divsd, f64::MIN_POSITIVE, 3.0, ftz), (0.0, UE | PE));
    }

    #[test]
    fn conversions() {
        assert_eq!(
            to_int(f(-2.5), 32, false, NEAREST),
            (-2i32 as u32 as u64, PE)
        );
        assert_eq!(to_int(f(-2.5), 32, false, DOWN), (-3i32 as u32 as u64, PE));
        assert_eq!(to_int(f(-2.7), 64, true, NEAREST), (-2i64 as u64, PE));
        // 2^63 is out of range; -2^63 is not.
        assert_eq!(to_int(f(pow2(63)), 64, true, NEAREST), (1 << 63, IE));
        assert_eq!(to_int(f(-pow2(63)), 64, true, NEAREST), (1 << 63, 0));
        assert_eq!(to_int(f(2147483648.0), 32, true, NEAREST), (1 << 31, IE));
        assert_eq!(to_int(f(f64::NAN), 64, false, NEAREST), (1 << 63, IE));
        assert_eq!(from_int(3, NEAREST), (f(3.0), 0));
        let big = (1i64 << 53) + 1;
        assert_eq!(from_int(big, NEAREST), (f((1u64 << 53) as f64), PE));
        assert_eq!(from_int(big, UP), (f((1u64 << 53) as f64 + 2.0), PE));
    }
}
