//! SSE/SSE2 semantics on 128-bit values: the integer, logic and move operations of the
//! SSE2 baseline (what a 64-bit C library's string and memory functions use). Pure
//! functions of their operands; [`crate::sse_op`] says which operation an instruction is
//! and what its operand forms do. The scalar double-precision arithmetic, with
//! MXCSR's rounding and exception flags, is [`crate::sse_fp`].

use iced_x86::Mnemonic as M;

pub type X = [u8; 16];

fn lanes<const N: usize>(x: &X) -> [u64; N] {
    let w = 16 / N;
    let mut out = [0u64; N];
    for (i, o) in out.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b[..w].copy_from_slice(&x[i * w..i * w + w]);
        *o = u64::from_le_bytes(b);
    }
    out
}

fn pack<const N: usize>(v: [u64; N]) -> X {
    let w = 16 / N;
    let mut out = [0u8; 16];
    for (i, l) in v.iter().enumerate() {
        out[i * w..i * w + w].copy_from_slice(&l.to_le_bytes()[..w]);
    }
    out
}

fn map2<const N: usize>(a: &X, b: &X, f: impl Fn(u64, u64) -> u64) -> X {
    let (x, y) = (lanes::<N>(a), lanes::<N>(b));
    let mut r = [0u64; N];
    for i in 0..N {
        r[i] = f(x[i], y[i]);
    }
    pack(r)
}

/// Lane `k` of `w` bytes.
fn lane_at(x: &X, w: usize, k: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..w].copy_from_slice(&x[k * w..k * w + w]);
    u64::from_le_bytes(b)
}

fn sx(v: u64, bits: u32) -> i64 {
    ((v << (64 - bits)) as i64) >> (64 - bits)
}

fn lane_mask(bits: u32) -> u64 {
    if bits == 64 {
        !0
    } else {
        (1 << bits) - 1
    }
}

macro_rules! elementwise {
    ($a:expr, $b:expr, $bits:expr, $f:expr) => {
        match $bits {
            8 => map2::<16>($a, $b, $f),
            16 => map2::<8>($a, $b, $f),
            32 => map2::<4>($a, $b, $f),
            _ => map2::<2>($a, $b, $f),
        }
    };
}

fn unpack_low(a: &X, b: &X, w: usize) -> X {
    let mut r = [0u8; 16];
    for i in 0..(8 / w) {
        r[2 * i * w..2 * i * w + w].copy_from_slice(&a[i * w..i * w + w]);
        r[(2 * i + 1) * w..(2 * i + 2) * w].copy_from_slice(&b[i * w..i * w + w]);
    }
    r
}

fn unpack_high(a: &X, b: &X, w: usize) -> X {
    let mut hi_a = [0u8; 16];
    let mut hi_b = [0u8; 16];
    hi_a[..8].copy_from_slice(&a[8..]);
    hi_b[..8].copy_from_slice(&b[8..]);
    unpack_low(&hi_a, &hi_b, w)
}

/// The mnemonic with this number (a helper argument: the BCD adjusts', an SSE lane
/// operation's).
pub fn mnemonic(n: u64) -> Option<M> {
    static ALL: std::sync::OnceLock<Vec<M>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| M::values().collect())
        .get(n as usize)
        .copied()
}

/// A two-operand SSE operation `dst = op(dst, src)` with an immediate. Returns None for
/// mnemonics this module does not implement.
pub fn binary(m: M, dst: &X, src: &X, imm: u8) -> Option<X> {
    let wrap = |bits: u32| lane_mask(bits);
    Some(match m {
        M::Pxor | M::Xorps | M::Xorpd => map2::<2>(dst, src, |a, b| a ^ b),
        M::Por | M::Orps | M::Orpd => map2::<2>(dst, src, |a, b| a | b),
        M::Pand | M::Andps | M::Andpd => map2::<2>(dst, src, |a, b| a & b),
        M::Pandn | M::Andnps | M::Andnpd => map2::<2>(dst, src, |a, b| !a & b),
        M::Paddb | M::Paddw | M::Paddd | M::Paddq | M::Psubb | M::Psubw | M::Psubd | M::Psubq => {
            let bits = match m {
                M::Paddb | M::Psubb => 8,
                M::Paddw | M::Psubw => 16,
                M::Paddd | M::Psubd => 32,
                _ => 64,
            };
            let sub = matches!(m, M::Psubb | M::Psubw | M::Psubd | M::Psubq);
            elementwise!(dst, src, bits, |a: u64, b: u64| {
                (if sub {
                    a.wrapping_sub(b)
                } else {
                    a.wrapping_add(b)
                }) & wrap(bits)
            })
        }
        M::Pcmpeqb | M::Pcmpeqw | M::Pcmpeqd => {
            let bits = match m {
                M::Pcmpeqb => 8,
                M::Pcmpeqw => 16,
                _ => 32,
            };
            elementwise!(dst, src, bits, |a: u64, b: u64| if a == b {
                wrap(bits)
            } else {
                0
            })
        }
        M::Pcmpgtb | M::Pcmpgtw | M::Pcmpgtd => {
            let bits = match m {
                M::Pcmpgtb => 8,
                M::Pcmpgtw => 16,
                _ => 32,
            };
            elementwise!(dst, src, bits, |a: u64, b: u64| {
                if sx(a, bits) > sx(b, bits) {
                    wrap(bits)
                } else {
                    0
                }
            })
        }
        M::Paddsb | M::Paddsw | M::Psubsb | M::Psubsw => {
            let bits = if matches!(m, M::Paddsb | M::Psubsb) {
                8
            } else {
                16
            };
            let (lo, hi) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
            let sub = matches!(m, M::Psubsb | M::Psubsw);
            elementwise!(dst, src, bits, |a: u64, b: u64| {
                let (x, y) = (sx(a, bits), sx(b, bits));
                let r = if sub { x - y } else { x + y };
                r.clamp(lo, hi) as u64 & wrap(bits)
            })
        }
        M::Paddusb | M::Paddusw | M::Psubusb | M::Psubusw => {
            let bits = if matches!(m, M::Paddusb | M::Psubusb) {
                8
            } else {
                16
            };
            let sub = matches!(m, M::Psubusb | M::Psubusw);
            elementwise!(dst, src, bits, |a: u64, b: u64| {
                if sub {
                    a.saturating_sub(b)
                } else {
                    (a + b).min(wrap(bits))
                }
            })
        }
        M::Pmullw => map2::<8>(dst, src, |a, b| (a * b) & 0xFFFF),
        M::Pmulhw => map2::<8>(dst, src, |a, b| {
            ((sx(a, 16) * sx(b, 16)) >> 16) as u64 & 0xFFFF
        }),
        M::Pmulhuw => map2::<8>(dst, src, |a, b| (a * b) >> 16),
        M::Pmuludq => {
            // The even dwords, as unsigned 64-bit products.
            let (d, s) = (lanes::<4>(dst), lanes::<4>(src));
            pack::<2>([d[0] * s[0], d[2] * s[2]])
        }
        M::Pmaddwd => {
            let (d, s) = (lanes::<8>(dst), lanes::<8>(src));
            let dot = |i: usize| {
                let p = |k: usize| sx(d[k], 16) * sx(s[k], 16);
                // Only 8000h * 8000h twice overflows: it wraps to 8000_0000h.
                (p(2 * i) + p(2 * i + 1)) as u64 & 0xFFFF_FFFF
            };
            pack::<4>([dot(0), dot(1), dot(2), dot(3)])
        }
        M::Pavgb => map2::<16>(dst, src, |a, b| (a + b + 1) >> 1),
        M::Pavgw => map2::<8>(dst, src, |a, b| (a + b + 1) >> 1),
        M::Psadbw => {
            // Per quadword: the sum of absolute byte differences, in its low word.
            let sum = |h: usize| {
                (0..8)
                    .map(|i| dst[8 * h + i].abs_diff(src[8 * h + i]) as u64)
                    .sum::<u64>()
            };
            pack::<2>([sum(0), sum(1)])
        }
        M::Packsswb | M::Packssdw | M::Packuswb => {
            // Signed lanes of both operands, destination first, narrowed with saturation.
            let (from, to) = if m == M::Packssdw { (32, 16) } else { (16, 8) };
            let (lo, hi) = if m == M::Packuswb {
                (0, 0xFF)
            } else {
                (-(1i64 << (to - 1)), (1i64 << (to - 1)) - 1)
            };
            let sat = |v: u64| sx(v, from).clamp(lo, hi) as u64 & wrap(to);
            let mut out = [0u8; 16];
            let (fw, w) = ((from / 8) as usize, (to / 8) as usize);
            // Each operand fills half the result: 16 / fw narrowed lanes.
            let n = 16 / fw;
            for i in 0..2 * n {
                let v = if i < n {
                    lane_at(dst, fw, i)
                } else {
                    lane_at(src, fw, i - n)
                };
                out[i * w..i * w + w].copy_from_slice(&sat(v).to_le_bytes()[..w]);
            }
            out
        }
        M::Pinsrw => {
            let mut r = *dst;
            let i = (imm & 7) as usize * 2;
            r[i..i + 2].copy_from_slice(&src[..2]);
            r
        }
        M::Shufpd => {
            let (d, s) = (lanes::<2>(dst), lanes::<2>(src));
            pack::<2>([d[(imm & 1) as usize], s[((imm >> 1) & 1) as usize]])
        }
        M::Pminub => map2::<16>(dst, src, |a, b| a.min(b)),
        M::Pmaxub => map2::<16>(dst, src, |a, b| a.max(b)),
        M::Pminsw => map2::<8>(dst, src, |a, b| if sx(a, 16) < sx(b, 16) { a } else { b }),
        M::Pmaxsw => map2::<8>(dst, src, |a, b| if sx(a, 16) > sx(b, 16) { a } else { b }),
        M::Punpcklbw => unpack_low(dst, src, 1),
        M::Punpcklwd => unpack_low(dst, src, 2),
        M::Punpckldq | M::Unpcklps => unpack_low(dst, src, 4),
        M::Punpcklqdq | M::Unpcklpd | M::Movlhps => unpack_low(dst, src, 8),
        M::Punpckhbw => unpack_high(dst, src, 1),
        M::Punpckhwd => unpack_high(dst, src, 2),
        M::Punpckhdq | M::Unpckhps => unpack_high(dst, src, 4),
        M::Punpckhqdq | M::Unpckhpd => unpack_high(dst, src, 8),
        M::Pshufd => {
            let s = lanes::<4>(src);
            pack::<4>([0, 1, 2, 3].map(|i| s[((imm >> (2 * i)) & 3) as usize]))
        }
        M::Pshuflw | M::Pshufhw => {
            let s = lanes::<8>(src);
            let base = if m == M::Pshuflw { 0 } else { 4 };
            let mut r = s;
            for i in 0..4 {
                r[base + i] = s[base + ((imm >> (2 * i)) & 3) as usize];
            }
            pack::<8>(r)
        }
        M::Shufps => {
            let (d, s) = (lanes::<4>(dst), lanes::<4>(src));
            pack::<4>([
                d[(imm & 3) as usize],
                d[((imm >> 2) & 3) as usize],
                s[((imm >> 4) & 3) as usize],
                s[((imm >> 6) & 3) as usize],
            ])
        }
        M::Psrldq | M::Pslldq => {
            let n = (imm as usize).min(16);
            let mut r = [0u8; 16];
            if m == M::Psrldq {
                r[..16 - n].copy_from_slice(&dst[n..]);
            } else {
                r[n..].copy_from_slice(&dst[..16 - n]);
            }
            r
        }
        M::Psrlw | M::Psrld | M::Psrlq | M::Psllw | M::Pslld | M::Psllq | M::Psraw | M::Psrad => {
            let bits = match m {
                M::Psrlw | M::Psllw | M::Psraw => 16,
                M::Psrld | M::Pslld | M::Psrad => 32,
                _ => 64,
            };
            // The count: the immediate form passes it in `imm`, the register form in src.
            let count = if src.iter().any(|b| *b != 0) {
                lanes::<2>(src)[0]
            } else {
                imm as u64
            };
            let zero = [0u8; 16];
            elementwise!(dst, &zero, bits, |a: u64, _b: u64| {
                match m {
                    M::Psraw | M::Psrad => {
                        let c = count.min(bits as u64 - 1) as u32;
                        (sx(a, bits) >> c) as u64 & wrap(bits)
                    }
                    _ if count >= bits as u64 => 0,
                    M::Psrlw | M::Psrld | M::Psrlq => a >> count,
                    _ => (a << count) & wrap(bits),
                }
            })
        }
        _ => return None,
    })
}

/// PMOVMSKB / MOVMSKPS / MOVMSKPD: the sign bits of the source's `lane`-byte lanes (1, 4
/// or 8).
pub fn move_mask(lane: usize, src: &X) -> u64 {
    match lane {
        4 => lanes::<4>(src)
            .iter()
            .enumerate()
            .map(|(i, l)| (l >> 31) << i)
            .sum(),
        8 => lanes::<2>(src)
            .iter()
            .enumerate()
            .map(|(i, l)| (l >> 63) << i)
            .sum(),
        _ => src
            .iter()
            .enumerate()
            .map(|(i, b)| ((*b as u64) >> 7) << i)
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(v: u128) -> X {
        v.to_le_bytes()
    }

    #[test]
    fn byte_compare_and_mask_as_strlen_uses_them() {
        // PCMPEQB against zero, then PMOVMSKB: bit i set where byte i is 0.
        let s = *b"gantry\0padding!!";
        let eq = binary(M::Pcmpeqb, &s, &[0; 16], 0).unwrap();
        assert_eq!(move_mask(1, &eq), 1 << 6);
    }

    #[test]
    fn lane_arithmetic_wraps_per_lane() {
        let r = binary(M::Paddb, &x(0xFF), &x(0x01), 0).unwrap();
        assert_eq!(u128::from_le_bytes(r), 0);
        let r = binary(M::Psubd, &x(0), &x(1), 0).unwrap();
        assert_eq!(u128::from_le_bytes(r), 0xFFFF_FFFF);
        let r = binary(M::Pcmpgtb, &x(0x01), &x(0xFF), 0).unwrap();
        assert_eq!(r[0], 0xFF, "1 > -1 signed");
    }

    #[test]
    fn saturation_packing_and_multiply_add() {
        let r = binary(M::Paddsb, &x(0x7F), &x(0x01), 0).unwrap();
        assert_eq!(r[0], 0x7F, "signed saturation");
        let r = binary(M::Psubusw, &x(1), &x(2), 0).unwrap();
        assert_eq!(u128::from_le_bytes(r), 0, "unsigned saturation");
        // Words 0x0100 and 0xFF80 (-128): PACKUSWB gives 255 and 0, PACKSSWB 127 and -128.
        let w = x(0xFF80_0100);
        assert_eq!(&binary(M::Packuswb, &w, &w, 0).unwrap()[..2], &[0xFF, 0]);
        assert_eq!(&binary(M::Packsswb, &w, &w, 0).unwrap()[..2], &[0x7F, 0x80]);
        // 8000h * 8000h + 8000h * 8000h wraps to 8000_0000h.
        let r = binary(M::Pmaddwd, &x(0x8000_8000), &x(0x8000_8000), 0).unwrap();
        assert_eq!(u128::from_le_bytes(r), 0x8000_0000);
        let r = binary(M::Psadbw, &x(0x0005_FF00), &x(0x0003_00FF), 0).unwrap();
        assert_eq!(u128::from_le_bytes(r), 2 + 255 + 255);
    }

    #[test]
    fn shuffles_unpacks_and_byte_shifts() {
        let v = x(0x3333_3333_2222_2222_1111_1111_0000_0000);
        let r = binary(M::Pshufd, &[0; 16], &v, 0b00_01_10_11).unwrap();
        assert_eq!(
            u128::from_le_bytes(r),
            0x0000_0000_1111_1111_2222_2222_3333_3333
        );
        let r = binary(M::Punpcklbw, &x(0x0201), &x(0x0403), 0).unwrap();
        assert_eq!(&r[..4], &[1, 3, 2, 4]);
        let r = binary(M::Psrldq, &x(0xAABB), &[0; 16], 1).unwrap();
        assert_eq!(u128::from_le_bytes(r), 0xAA);
        let r = binary(M::Psllq, &x(1 | 1 << 64), &[0; 16], 4).unwrap();
        assert_eq!(u128::from_le_bytes(r), 16 | 16 << 64);
    }
}
