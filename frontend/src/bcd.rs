//! Decimal adjust instructions (DAA, DAS, AAA, AAS, AAM, AAD), as the SDM's pseudocode
//! gives them (AAA/AAS in the current form: AL and AH adjusted separately). Their
//! undefined flags follow the vendor ([`BcdFlags`]).

use iced_x86::Mnemonic as M;

use crate::state::{AF, CF, OF, PF, SF, ZF};
use crate::vendor::BcdFlags;

/// ZF, SF and PF of a 16-bit result (PF of its low byte).
fn szp16(v: u16) -> u64 {
    let f = szp(v as u8) & PF;
    f | if v == 0 { ZF } else { 0 } | if v & 0x8000 != 0 { SF } else { 0 }
}

fn overflow8(a: u8, b: u8, r: u8, sub: bool) -> u64 {
    let o = if sub {
        (a ^ b) & (a ^ r)
    } else {
        (a ^ r) & (b ^ r)
    };
    if o & 0x80 != 0 {
        OF
    } else {
        0
    }
}

fn szp(al: u8) -> u64 {
    let mut f = 0;
    if al == 0 {
        f |= ZF;
    }
    if al & 0x80 != 0 {
        f |= SF;
    }
    if al.count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

/// Applies `m` to AX with the given RFLAGS; returns the new AX and RFLAGS, or None for
/// #DE (AAM with a zero base).
pub fn adjust(m: M, ax: u16, rflags: u64, imm: u8, undefined: BcdFlags) -> Option<(u16, u64)> {
    let arith = undefined == BcdFlags::AsArithmetic;
    let (mut al, mut ah) = (ax as u8, (ax >> 8) as u8);
    let af_in = rflags & AF != 0;
    let cf_in = rflags & CF != 0;
    let keep = rflags & !(CF | PF | AF | ZF | SF | OF);
    let f = match m {
        M::Daa | M::Das => {
            let old_al = al;
            let mut cf = false;
            let mut af = false;
            if al & 0xF > 9 || af_in {
                let (v, carry) = if m == M::Daa {
                    al.overflowing_add(6)
                } else {
                    al.overflowing_sub(6)
                };
                al = v;
                cf = cf_in || carry;
                af = true;
            }
            if old_al > 0x99 || cf_in {
                al = if m == M::Daa {
                    al.wrapping_add(0x60)
                } else {
                    al.wrapping_sub(0x60)
                };
                cf = true;
            }
            let of = if arith {
                // The 8-bit ADD or SUB of the whole correction (06h, 60h or 66h).
                let corr = if m == M::Daa {
                    al.wrapping_sub(old_al)
                } else {
                    old_al.wrapping_sub(al)
                };
                overflow8(old_al, corr, al, m == M::Das)
            } else {
                0
            };
            szp(al) | of | if cf { CF } else { 0 } | if af { AF } else { 0 }
        }
        M::Aaa | M::Aas => {
            let adjust = al & 0xF > 9 || af_in;
            let old_ax = ax;
            if adjust {
                if m == M::Aaa {
                    // AX + 106h as one 16-bit add (SDM): a carry out of AL + 6 reaches
                    // AH too (AX = FFFFh gives 0105h; found by difftest).
                    let ax2 = ((ah as u16) << 8 | al as u16).wrapping_add(0x106);
                    al = ax2 as u8;
                    ah = (ax2 >> 8) as u8;
                } else {
                    let ax2 = ((ah as u16) << 8 | al as u16).wrapping_sub(6);
                    al = ax2 as u8;
                    ah = ((ax2 >> 8) as u8).wrapping_sub(1);
                }
            }
            al &= 0xF;
            let defined = if adjust { AF | CF } else { 0 };
            if arith {
                // A 16-bit ADD or SUB of 106h (or of 0) to AX.
                let k: u16 = if adjust { 0x106 } else { 0 };
                let (r, o) = if m == M::Aaa {
                    let r = old_ax.wrapping_add(k);
                    (r, (old_ax ^ r) & (k ^ r))
                } else {
                    let r = old_ax.wrapping_sub(k);
                    (r, (old_ax ^ k) & (old_ax ^ r))
                };
                szp16(r) | defined | if o & 0x8000 != 0 { OF } else { 0 }
            } else {
                szp(al) | defined
            }
        }
        M::Aam => {
            if imm == 0 {
                return None;
            }
            ah = al / imm;
            al %= imm;
            szp(al)
        }
        M::Aad => {
            let b = ah.wrapping_mul(imm);
            let (r, carry) = al.overflowing_add(b);
            let add = if arith {
                overflow8(al, b, r, false)
                    | if carry { CF } else { 0 }
                    | if (al ^ b ^ r) & 0x10 != 0 { AF } else { 0 }
            } else {
                0
            };
            al = r;
            ah = 0;
            szp(al) | add
        }
        _ => return Some((ax, rflags)),
    };
    Some(((ah as u16) << 8 | al as u16, keep | f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_bcd_addition_and_subtraction() {
        // 0x79 + 0x35 = 0xAE -> DAA -> 0x14, CF (79 + 35 = 114).
        assert_eq!(
            adjust(M::Daa, 0xAE, 0, 0, BcdFlags::OfAl).map(|(a, f)| (a & 0xFF, f & CF)),
            Some((0x14, CF))
        );
        // 0x35 - 0x47 = 0xEE (CF) -> DAS -> 0x88, CF (35 - 47 = -12 -> 88 borrow 1).
        assert_eq!(
            adjust(M::Das, 0xEE, CF, 0, BcdFlags::OfAl).map(|(a, f)| (a & 0xFF, f & CF)),
            Some((0x88, CF))
        );
    }

    #[test]
    fn unpacked_bcd() {
        // 8 + 9 = 0x11 with AF -> AAA -> AH 1, AL 7.
        assert_eq!(
            adjust(M::Aaa, 0x0011, AF, 0, BcdFlags::OfAl).map(|(a, f)| (a, f & CF)),
            Some((0x0107, CF))
        );
        // AAM 10: 63 -> 6, 3. AAD 10: 6, 3 -> 63.
        assert_eq!(
            adjust(M::Aam, 63, 0, 10, BcdFlags::OfAl).map(|(a, _)| a),
            Some(0x0603)
        );
        assert_eq!(
            adjust(M::Aad, 0x0603, 0, 10, BcdFlags::OfAl).map(|(a, _)| a),
            Some(63)
        );
        assert_eq!(adjust(M::Aam, 5, 0, 0, BcdFlags::OfAl), None, "#DE");
    }

    /// (instruction, AX in, RFLAGS in, AX out, arithmetic flags out), as an AMD EPYC
    /// (family 1Ah) left them: cases where the SDM's flags and AMD's differ.
    const AMD_MEASURED: &[(M, u16, u64, u16, u64)] = &[
        // AAA of 7F4Fh: AX + 106h = 8055h, whose OF, SF and PF it leaves.
        (M::Aaa, 0x7F4F, 0, 0x8005, OF | SF | PF | AF | CF),
        // AAA of 007Ah: AX + 106h = 0180h, so ZF stays clear although AL ends as 0.
        (M::Aaa, 0x007A, 0, 0x0100, AF | CF),
        // AAS of 004Ch: AX - 106h = FF46h: SF, PF of 46h clear.
        (M::Aas, 0x004C, 0, 0xFF06, SF | AF | CF),
        // AAD of AH 1, AL F8h: F8h + 0Ah carries.
        (M::Aad, 0x01F8, 0, 0x0002, CF | AF),
        // DAA of 7Ah: 7Ah + 06h overflows.
        (M::Daa, 0x017A, 0, 0x0180, OF | SF | AF),
        // DAS of A1h: A1h - 60h overflows.
        (M::Das, 0x00A1, 0, 0x0041, OF | PF | CF),
    ];

    #[test]
    fn amd_undefined_flags_as_measured() {
        for &(m, ax, fl, ax_out, f_out) in AMD_MEASURED {
            let got = adjust(m, ax, fl, 10, BcdFlags::AsArithmetic);
            assert_eq!(
                got.map(|(a, f)| (a, f & (CF | PF | AF | ZF | SF | OF))),
                Some((ax_out, f_out)),
                "{m:?} {ax:#x}"
            );
        }
    }
}
