//! An SSE/SSE2 instruction as the lifter hands it to the machine's `Sse` helper: a typed
//! operation ([`SseOp`], chosen at lift time from the decoded instruction), the forms of
//! its two operands ([`SseOperand`]), and [`execute`], which is what the instruction does
//! as a pure function of the values it reads. The helper only fetches those values (XMM
//! registers, a general register, memory), applies the [`Effect`] and delivers the SIMD
//! exception [`crate::sse_fp::simd_exception`] names, so the x86 rules of the operand
//! forms (what a move keeps, how a 32-bit destination is written, which flags COMISD
//! sets) are written here, with the other data semantics, and nowhere in the machine.

use iced_x86::Mnemonic as M;

use crate::sse::{self, X};
use crate::sse_fp;

/// How an SSE instruction's operand is passed to the helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseOperand {
    None,
    Xmm(u8),
    /// A general register: index and size in bytes.
    Gpr(u8, u8),
    Memory,
}

impl SseOperand {
    /// As a helper argument.
    pub fn encode(self) -> u64 {
        match self {
            SseOperand::None => 0,
            SseOperand::Xmm(i) => 1 << 16 | i as u64,
            SseOperand::Gpr(i, size) => 2 << 16 | (size as u64) << 8 | i as u64,
            SseOperand::Memory => 3 << 16,
        }
    }

    pub fn decode(code: u64) -> Self {
        match code >> 16 {
            1 => SseOperand::Xmm(code as u8 & 15),
            2 => SseOperand::Gpr(code as u8 & 15, (code >> 8) as u8),
            3 => SseOperand::Memory,
            _ => SseOperand::None,
        }
    }
}

/// What an SSE instruction does with its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseOp {
    /// MOVD, MOVQ: the low 4 or 8 bytes, zero-extended into an XMM register, or out of one.
    MoveLow,
    /// MOVSS, MOVSD: the low `bytes`; loaded from memory the rest is zeroed, between
    /// registers it is kept.
    MoveScalar { bytes: u8 },
    /// MOVDQA, MOVDQU, MOVAPS, MOVUPS, MOVAPD, MOVUPD, MOVNTDQ, MOVNTPS, MOVNTPD.
    MoveFull,
    /// MOVHPS, MOVHPD: the high 8 bytes, from or to memory.
    MoveHigh,
    /// MOVLPS, MOVLPD: the low 8 bytes, from or to memory (the high 8 kept).
    MoveLowHalf,
    /// MOVHLPS: the source's high 8 bytes to the destination's low 8.
    MoveHighToLow,
    /// PMOVMSKB, MOVMSKPS, MOVMSKPD: the sign bits of the source's `lane`-byte lanes.
    MoveMask { lane: u8 },
    /// COMISD (`signalling` for any NaN), UCOMISD (for SNaNs only): ZF, PF and CF.
    CompareDouble { signalling: bool },
    /// CVTSI2SD.
    IntToDouble,
    /// CVTSD2SI, CVTTSD2SI (`truncate`).
    DoubleToInt { truncate: bool },
    /// PEXTRW.
    ExtractWord,
    /// `dst = op(dst, src, imm)` on lanes: the integer, logic, shuffle and unpack
    /// operations ([`sse::binary`]) and the double-precision arithmetic
    /// ([`sse_fp::binary`]). Those dozens of operations are named by iced's typed
    /// mnemonic, the one name each has.
    Lanes(M),
}

const TAG_BITS: u32 = 8;

impl SseOp {
    /// The operation of an SSE instruction with mnemonic `m`, if Gantry implements it.
    pub fn of(m: M) -> Option<Self> {
        let op = match m {
            M::Movd | M::Movq => SseOp::MoveLow,
            M::Movss => SseOp::MoveScalar { bytes: 4 },
            M::Movsd => SseOp::MoveScalar { bytes: 8 },
            M::Movdqa
            | M::Movdqu
            | M::Movaps
            | M::Movups
            | M::Movapd
            | M::Movupd
            | M::Movntdq
            | M::Movntps
            | M::Movntpd => SseOp::MoveFull,
            M::Movhps | M::Movhpd => SseOp::MoveHigh,
            M::Movlps | M::Movlpd => SseOp::MoveLowHalf,
            M::Movhlps => SseOp::MoveHighToLow,
            M::Pmovmskb => SseOp::MoveMask { lane: 1 },
            M::Movmskps => SseOp::MoveMask { lane: 4 },
            M::Movmskpd => SseOp::MoveMask { lane: 8 },
            M::Comisd => SseOp::CompareDouble { signalling: true },
            M::Ucomisd => SseOp::CompareDouble { signalling: false },
            M::Cvtsi2sd => SseOp::IntToDouble,
            M::Cvttsd2si => SseOp::DoubleToInt { truncate: true },
            M::Cvtsd2si => SseOp::DoubleToInt { truncate: false },
            M::Pextrw => SseOp::ExtractWord,
            m if sse::binary(m, &[0; 16], &[0; 16], 0).is_some()
                || sse_fp::binary(m, &[0; 16], &[0; 16], 0, crate::state::MXCSR_RESET)
                    .is_some() =>
            {
                SseOp::Lanes(m)
            }
            _ => return None,
        };
        Some(op)
    }

    /// As the helper's first argument: a tag in the low byte, its parameter above.
    pub fn encode(self) -> u64 {
        let (tag, param) = match self {
            SseOp::MoveLow => (0, 0),
            SseOp::MoveScalar { bytes } => (1, bytes as u64),
            SseOp::MoveFull => (2, 0),
            SseOp::MoveHigh => (3, 0),
            SseOp::MoveLowHalf => (4, 0),
            SseOp::MoveHighToLow => (5, 0),
            SseOp::MoveMask { lane } => (6, lane as u64),
            SseOp::CompareDouble { signalling } => (7, signalling as u64),
            SseOp::IntToDouble => (8, 0),
            SseOp::DoubleToInt { truncate } => (9, truncate as u64),
            SseOp::ExtractWord => (10, 0),
            SseOp::Lanes(m) => (11, m as u64),
        };
        param << TAG_BITS | tag
    }

    /// The operation [`Self::encode`] made this argument from.
    pub fn decode(arg: u64) -> Option<Self> {
        let p = arg >> TAG_BITS;
        Some(match arg & ((1 << TAG_BITS) - 1) {
            0 => SseOp::MoveLow,
            1 => SseOp::MoveScalar { bytes: p as u8 },
            2 => SseOp::MoveFull,
            3 => SseOp::MoveHigh,
            4 => SseOp::MoveLowHalf,
            5 => SseOp::MoveHighToLow,
            6 => SseOp::MoveMask { lane: p as u8 },
            7 => SseOp::CompareDouble { signalling: p != 0 },
            8 => SseOp::IntToDouble,
            9 => SseOp::DoubleToInt { truncate: p != 0 },
            10 => SseOp::ExtractWord,
            11 => SseOp::Lanes(sse::mnemonic(p)?),
            _ => return None,
        })
    }
}

/// Whether the instruction's 16-byte memory operand must be aligned (#GP(0) if not):
/// all but the unaligned moves.
pub fn needs_alignment(m: M, bytes: u32) -> bool {
    bytes == 16 && !matches!(m, M::Movdqu | M::Movups | M::Movupd)
}

/// The values an instruction reads.
#[derive(Clone, Copy, Debug)]
pub struct Inputs {
    /// The destination XMM register's value (zeros for another destination).
    pub dst: X,
    /// The source as 128 bits (a general register or a narrower memory operand in the low
    /// bytes).
    pub src: X,
    pub mxcsr: u32,
}

/// What an instruction writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Xmm(u8, X),
    /// A general register, written whole (a 32-bit destination is zero-extended).
    Gpr(u8, u64),
    /// The low `len` bytes to the memory operand.
    Memory(X, usize),
    /// RFLAGS's six arithmetic flags (CF, PF, AF, ZF, SF, OF), the other bits kept.
    ArithFlags(u64),
}

/// An instruction's effect, and the MXCSR exception flags it raised (which the helper
/// delivers before applying the effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub effect: Effect,
    pub raised: u32,
}

fn low(x: &X, n: usize) -> u64 {
    let n = n.min(8);
    let mut b = [0u8; 8];
    b[..n].copy_from_slice(&x[..n]);
    u64::from_le_bytes(b)
}

fn from_low(v: u64, n: usize) -> X {
    let n = n.min(8);
    let mut x = [0u8; 16];
    x[..n].copy_from_slice(&v.to_le_bytes()[..n]);
    x
}

/// A general-register destination of `size` bytes: 64-bit writes whole, 32-bit writes
/// zero-extend (the SSE forms have no 8- or 16-bit destinations).
fn gpr(i: u8, size: u8, v: u64) -> Effect {
    Effect::Gpr(i, if size >= 8 { v } else { v & 0xFFFF_FFFF })
}

fn done(effect: Effect) -> Option<Outcome> {
    Some(Outcome { effect, raised: 0 })
}

/// What `op` with destination `dst` and source `src` does, given the values it reads;
/// `mem` is the memory operand's size in bytes. `None` for an operand form Gantry does
/// not implement.
pub fn execute(
    op: SseOp,
    dst: SseOperand,
    src: SseOperand,
    imm: u8,
    mem: usize,
    input: &Inputs,
) -> Option<Outcome> {
    use SseOperand::{Gpr, Memory, Xmm};
    let (d, s, mxcsr) = (&input.dst, &input.src, input.mxcsr);
    let src_bytes = match src {
        Gpr(_, size) => size as usize,
        Memory => mem,
        _ => 8,
    };
    match (op, dst) {
        (SseOp::MoveLow, Xmm(i)) => done(Effect::Xmm(i, from_low(low(s, src_bytes), src_bytes))),
        (SseOp::MoveLow, Gpr(i, size)) if matches!(src, Xmm(_)) => {
            done(gpr(i, size, low(s, size as usize)))
        }
        (SseOp::MoveLow | SseOp::MoveScalar { .. } | SseOp::MoveLowHalf, Memory)
            if matches!(src, Xmm(_)) =>
        {
            done(Effect::Memory(*s, mem))
        }
        (SseOp::MoveHigh, Memory) if matches!(src, Xmm(_)) => {
            let mut hi = [0u8; 16];
            hi[..8].copy_from_slice(&s[8..]);
            done(Effect::Memory(hi, 8))
        }
        (SseOp::MoveFull, Xmm(i)) => done(Effect::Xmm(i, *s)),
        (SseOp::MoveFull, Memory) if matches!(src, Xmm(_)) => done(Effect::Memory(*s, 16)),
        (SseOp::MoveScalar { bytes }, Xmm(i)) => {
            let n = (bytes as usize).min(16);
            let mut r = if src == Memory { [0u8; 16] } else { *d };
            r[..n].copy_from_slice(&s[..n]);
            done(Effect::Xmm(i, r))
        }
        (SseOp::MoveHigh | SseOp::MoveLowHalf | SseOp::MoveHighToLow, Xmm(i)) => {
            let mut r = *d;
            match op {
                SseOp::MoveHigh => r[8..].copy_from_slice(&s[..8]),
                SseOp::MoveHighToLow => r[..8].copy_from_slice(&s[8..]),
                _ => r[..8].copy_from_slice(&s[..8]),
            }
            done(Effect::Xmm(i, r))
        }
        (SseOp::MoveMask { lane }, Gpr(i, size)) => {
            done(gpr(i, size, sse::move_mask(lane as usize, s)))
        }
        (SseOp::CompareDouble { signalling }, Xmm(_)) => {
            let (flags, raised) = sse_fp::comisd(low(d, 8), low(s, 8), signalling, mxcsr);
            Some(Outcome {
                effect: Effect::ArithFlags(flags),
                raised,
            })
        }
        (SseOp::IntToDouble, Xmm(i)) => {
            let v = low(s, src_bytes);
            let int = if src_bytes == 8 {
                v as i64
            } else {
                v as u32 as i32 as i64
            };
            let (r, raised) = sse_fp::from_int(int, mxcsr);
            let mut x = *d;
            x[..8].copy_from_slice(&r.to_le_bytes());
            Some(Outcome {
                effect: Effect::Xmm(i, x),
                raised,
            })
        }
        (SseOp::DoubleToInt { truncate }, Gpr(i, size)) => {
            let (v, raised) = sse_fp::to_int(low(s, 8), size as u32 * 8, truncate, mxcsr);
            Some(Outcome {
                effect: gpr(i, size, v),
                raised,
            })
        }
        (SseOp::ExtractWord, Gpr(i, size)) => {
            let at = (imm & 7) as usize * 2;
            done(gpr(i, size, u16::from_le_bytes([s[at], s[at + 1]]) as u64))
        }
        (SseOp::Lanes(m), Xmm(i)) => match sse_fp::binary(m, d, s, imm, mxcsr) {
            Some((r, raised)) => Some(Outcome {
                effect: Effect::Xmm(i, r),
                raised,
            }),
            None => done(Effect::Xmm(i, sse::binary(m, d, s, imm)?)),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_survive_their_helper_argument() {
        let ms = [
            M::Movd,
            M::Movss,
            M::Movsd,
            M::Movapd,
            M::Movhps,
            M::Movlpd,
            M::Movhlps,
            M::Movmskpd,
            M::Comisd,
            M::Ucomisd,
            M::Cvtsi2sd,
            M::Cvttsd2si,
            M::Cvtsd2si,
            M::Pextrw,
            M::Paddq,
            M::Addsd,
        ];
        for m in ms {
            let op = SseOp::of(m).unwrap_or_else(|| panic!("{m:?} is implemented"));
            assert_eq!(SseOp::decode(op.encode()), Some(op), "{m:?}");
        }
        assert_eq!(
            SseOp::of(M::Addss),
            None,
            "single precision is not implemented"
        );
        assert_eq!(SseOp::decode(99), None);
    }

    fn inputs(dst: u64, src: u64) -> Inputs {
        let mut i = Inputs {
            dst: [0xAA; 16],
            src: [0x55; 16],
            mxcsr: crate::state::MXCSR_RESET,
        };
        i.dst[..8].copy_from_slice(&dst.to_le_bytes());
        i.src[..8].copy_from_slice(&src.to_le_bytes());
        i
    }

    #[test]
    fn moves_keep_what_the_manual_says() {
        use SseOperand::*;
        let i = inputs(1, 2);
        // MOVSD from memory zeroes the high lane; between registers keeps it.
        let op = SseOp::MoveScalar { bytes: 8 };
        let Some(Outcome {
            effect: Effect::Xmm(0, m),
            ..
        }) = execute(op, Xmm(0), Memory, 0, 8, &i)
        else {
            panic!("movsd xmm0, m64")
        };
        assert_eq!((low(&m, 8), &m[8..]), (2, &[0u8; 8][..]));
        let Some(Outcome {
            effect: Effect::Xmm(0, r),
            ..
        }) = execute(op, Xmm(0), Xmm(1), 0, 0, &i)
        else {
            panic!("movsd xmm0, xmm1")
        };
        assert_eq!((low(&r, 8), &r[8..]), (2, &[0xAAu8; 8][..]));
        // A 32-bit general-register destination is zero-extended.
        let w = execute(
            SseOp::ExtractWord,
            Gpr(3, 4),
            Xmm(1),
            0,
            0,
            &inputs(0, 0xBEEF),
        );
        assert_eq!(w.map(|o| o.effect), Some(Effect::Gpr(3, 0xBEEF)));
        // MOVD into a general register from memory is no SSE form.
        assert_eq!(
            execute(SseOp::MoveLow, Gpr(0, 4), Memory, 0, 4, &i),
            Option::None
        );
    }

    #[test]
    fn comisd_sets_the_arithmetic_flags() {
        use crate::state::{CF, PF, ZF};
        let (one, two) = (1f64.to_bits(), 2f64.to_bits());
        let op = SseOp::CompareDouble { signalling: true };
        let lt = execute(
            op,
            SseOperand::Xmm(0),
            SseOperand::Xmm(1),
            0,
            0,
            &inputs(one, two),
        );
        assert_eq!(lt.map(|o| o.effect), Some(Effect::ArithFlags(CF)));
        let nan = f64::NAN.to_bits();
        let un = execute(
            op,
            SseOperand::Xmm(0),
            SseOperand::Xmm(1),
            0,
            0,
            &inputs(nan, two),
        );
        assert_eq!(un.map(|o| o.effect), Some(Effect::ArithFlags(ZF | PF | CF)));
        assert_ne!(
            un.map_or(0, |o| o.raised),
            0,
            "COMISD signals invalid on a QNaN"
        );
    }
}
