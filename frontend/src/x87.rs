//! The x87 register stack as the FXSAVE image holds it: ST(0)-ST(7) in stack order at
//! 16-byte slots from [`FxState::ST0`], TOP in FSW bits 11-13, and the abridged tag word
//! with one bit per physical register. What the implemented x87 loads need: a push, and
//! the exact conversion of an integer to the 80-bit extended format.

use crate::state::FxState;

const FSW_IE: u16 = 1 << 0;
const FSW_SF: u16 = 1 << 6;
const FSW_ES: u16 = 1 << 7;
const FSW_C1: u16 = 1 << 9;
const FSW_TOP: u16 = 7 << 11;
const FSW_B: u16 = 1 << 15;
const FCW_IM: u16 = 1 << 0;

/// The "real indefinite" QNaN a masked invalid operation produces.
const INDEFINITE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0xFF];

/// `v` in the 80-bit extended format (exact: 64 mantissa bits hold any i64).
pub fn extended_from_i64(v: i64) -> [u8; 10] {
    let mut out = [0u8; 10];
    if v == 0 {
        return out;
    }
    let magnitude = v.unsigned_abs();
    let shift = magnitude.leading_zeros();
    let mantissa = magnitude << shift;
    let exponent = (16383 + 63 - shift) as u16 | if v < 0 { 0x8000 } else { 0 };
    out[..8].copy_from_slice(&mantissa.to_le_bytes());
    out[8..].copy_from_slice(&exponent.to_le_bytes());
    out
}

fn fsw(fx: &FxState) -> u16 {
    u16::from_le_bytes([fx.bytes[FxState::FSW], fx.bytes[FxState::FSW + 1]])
}

fn set_fsw(fx: &mut FxState, v: u16) {
    fx.bytes[FxState::FSW..FxState::FSW + 2].copy_from_slice(&v.to_le_bytes());
}

/// Pushes `value` onto the register stack. Onto a full register (stack overflow) it sets
/// IE, SF and C1; masked, the QNaN indefinite is pushed instead, unmasked nothing is
/// (the pending #MF is not modelled: the lifter has no x87 arithmetic to report it).
pub fn push(fx: &mut FxState, value: [u8; 10]) {
    let status = fsw(fx);
    let top = ((status & FSW_TOP) >> 11).wrapping_sub(1) & 7;
    let occupied = fx.bytes[FxState::FTW] & (1 << top) != 0;
    let mut status = status & !FSW_C1;
    let value = if occupied {
        status |= FSW_IE | FSW_SF | FSW_C1;
        if fx.fcw() & FCW_IM == 0 {
            set_fsw(fx, status | FSW_ES | FSW_B);
            return;
        }
        INDEFINITE
    } else {
        value
    };
    // ST(i) becomes ST(i+1): the slots move down one, the last (the register the new
    // TOP names) taking the new value as ST(0).
    let slots = FxState::ST0..FxState::ST0 + 8 * 16;
    fx.bytes[slots].copy_within(0..7 * 16, 16);
    let st0 = &mut fx.bytes[FxState::ST0..FxState::ST0 + 16];
    st0.fill(0);
    st0[..10].copy_from_slice(&value);
    fx.bytes[FxState::FTW] |= 1 << top;
    set_fsw(fx, (status & !FSW_TOP) | (top << 11));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_convert_exactly() {
        assert_eq!(extended_from_i64(0), [0; 10]);
        // 1.0: exponent 0x3FFF, integer bit set.
        assert_eq!(
            extended_from_i64(1),
            [0, 0, 0, 0, 0, 0, 0, 0x80, 0xFF, 0x3F]
        );
        // -3: 1.5 * 2^1, negative.
        assert_eq!(
            extended_from_i64(-3),
            [0, 0, 0, 0, 0, 0, 0, 0xC0, 0x00, 0xC0]
        );
        // i64::MIN: -2^63.
        assert_eq!(
            extended_from_i64(i64::MIN),
            [0, 0, 0, 0, 0, 0, 0, 0x80, 0x3E, 0xC0]
        );
    }

    #[test]
    fn pushes_rotate_the_stack_and_overflow_to_the_indefinite() {
        let mut fx = FxState::default();
        fx.set_fcw(crate::state::FCW_INIT);
        for i in 1..=8 {
            push(&mut fx, extended_from_i64(i));
        }
        assert_eq!(fx.bytes[FxState::FTW], 0xFF);
        assert_eq!((fsw(&fx) & FSW_TOP) >> 11, 0);
        assert_eq!(
            fx.bytes[FxState::ST0..FxState::ST0 + 10],
            extended_from_i64(8)
        );
        assert_eq!(
            fx.bytes[FxState::ST0 + 7 * 16..FxState::ST0 + 7 * 16 + 10],
            extended_from_i64(1)
        );
        push(&mut fx, extended_from_i64(9));
        assert_eq!(fx.bytes[FxState::ST0..FxState::ST0 + 10], INDEFINITE);
        assert_eq!(
            fsw(&fx) & (FSW_IE | FSW_SF | FSW_C1),
            FSW_IE | FSW_SF | FSW_C1
        );
    }
}
