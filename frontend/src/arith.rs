//! Integer arithmetic the IR has no single op for: DIV and IDIV of the double-width
//! accumulator pair (the helper turns `None` into #DE).

use crate::state::{CpuState, RAX, RDX};

/// DIV/IDIV of the double-width accumulator pair by `divisor` (SDM: DIV, IDIV).
pub fn divide(cpu: &mut CpuState, bytes: u8, divisor: u64, signed: bool) -> Option<()> {
    let bits = bytes as u32 * 8;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let d = divisor & mask;
    if d == 0 {
        return None;
    }
    let (lo, hi) = if bytes == 1 {
        (cpu.gpr[RAX] & 0xFF, (cpu.gpr[RAX] >> 8) & 0xFF)
    } else {
        (cpu.gpr[RAX] & mask, cpu.gpr[RDX] & mask)
    };
    let dividend = (hi as u128) << bits | lo as u128;
    let (q, r) = if signed {
        let sx = |v: u128, b: u32| ((v << (128 - b)) as i128) >> (128 - b);
        let n = sx(dividend, bits * 2);
        let dv = sx(d as u128, bits);
        let q = n.checked_div(dv)?;
        let r = n - q * dv;
        let min = -(1i128 << (bits - 1));
        let max = (1i128 << (bits - 1)) - 1;
        if q < min || q > max {
            return None;
        }
        (q as u128 as u64 & mask, r as u128 as u64 & mask)
    } else {
        let q = dividend / d as u128;
        if q > mask as u128 {
            return None;
        }
        (q as u64, (dividend % d as u128) as u64)
    };
    match bytes {
        1 => cpu.gpr[RAX] = (cpu.gpr[RAX] & !0xFFFF) | q | (r << 8),
        2 => {
            cpu.gpr[RAX] = (cpu.gpr[RAX] & !0xFFFF) | q;
            cpu.gpr[RDX] = (cpu.gpr[RDX] & !0xFFFF) | r;
        }
        4 => {
            cpu.gpr[RAX] = q;
            cpu.gpr[RDX] = r;
        }
        _ => {
            cpu.gpr[RAX] = q;
            cpu.gpr[RDX] = r;
        }
    }
    Some(())
}
