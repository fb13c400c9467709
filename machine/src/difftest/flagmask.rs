//! Flags the manual leaves undefined, and which of them a comparison ignores.
//!
//! The rule: every flag is compared, undefined ones included, wherever the host CPU gives a
//! stable answer, because real software (and other emulators' test suites) does read them.
//! A flag is ignored only when an entry below says so, with the reason. Gantry's CPU
//! model says GenuineIntel; where Intel and AMD CPUs leave an undefined flag differently
//! and the host is of the other vendor, the entry names both behaviours.
//!
//! A masked flag also taints what reads it: the generator does not make cases in which
//! an instruction reads (ADC, SETcc, PUSHF, ...) a flag an earlier one left masked.

use iced_x86::{Instruction, Mnemonic, OpCodeOperandKind, OpKind, RflagsBits};

use super::gen::decode;
use super::Case;

const AF: u32 = RflagsBits::AF;
const PF: u32 = RflagsBits::PF;
const SF: u32 = RflagsBits::SF;
const ZF: u32 = RflagsBits::ZF;
/// Whichever of the six the instruction leaves undefined.
const ALL: u32 = RflagsBits::OF | SF | ZF | AF | PF | RflagsBits::CF;

/// (instruction, undefined flags not compared (iced's RflagsBits), why). Each entry was
/// added for a mismatch difftest found on an AMD EPYC host (family 17h+); the flags are
/// undefined in the Intel SDM, and Gantry keeps what Intel-model emulators (Bochs, QEMU)
/// produce.
pub const TABLE: &[(Mnemonic, u32, &str)] = &[
    (
        Mnemonic::Shl,
        AF,
        "AMD sets AF after a nonzero shift; Gantry clears it",
    ),
    (Mnemonic::Sal, AF, "as SHL"),
    (Mnemonic::Shr, AF, "as SHL"),
    (Mnemonic::Sar, AF, "as SHL"),
    (Mnemonic::Shld, AF, "as SHL"),
    (Mnemonic::Shrd, AF, "as SHL"),
    (
        Mnemonic::Mul,
        SF | ZF | AF | PF,
        "AMD derives them from a different part of the product than Gantry",
    ),
    (Mnemonic::Imul, SF | ZF | AF | PF, "as MUL"),
    (
        Mnemonic::Div,
        SF | ZF | AF | PF,
        "AMD changes them; Gantry leaves the flags as they were",
    ),
    (Mnemonic::Idiv, SF | ZF | AF | PF, "as DIV"),
    (
        Mnemonic::Aaa,
        ALL,
        "BCD adjustments: AMD and Intel CPUs leave different values in their undefined flags",
    ),
    (Mnemonic::Aas, ALL, "as AAA"),
    (Mnemonic::Daa, ALL, "as AAA"),
    (Mnemonic::Das, ALL, "as AAA"),
    (Mnemonic::Aad, ALL, "as AAA"),
    (Mnemonic::Aam, ALL, "as AAA"),
    (
        Mnemonic::Lzcnt,
        AF | SF | PF,
        "AMD computes them from the result; Gantry clears them",
    ),
];

/// x86 RFLAGS bits of iced's flag bits.
pub fn rflags_of(bits: u32) -> u64 {
    let map = [
        (RflagsBits::CF, 1u64 << 0),
        (RflagsBits::PF, 1 << 2),
        (RflagsBits::AF, 1 << 4),
        (RflagsBits::ZF, 1 << 6),
        (RflagsBits::SF, 1 << 7),
        (RflagsBits::DF, 1 << 10),
        (RflagsBits::OF, 1 << 11),
    ];
    map.iter()
        .filter(|(b, _)| bits & b != 0)
        .fold(0, |acc, (_, r)| acc | r)
}

/// Shifts and rotates whose OF is defined for a count of 1 only (SDM: "undefined for
/// multi-bit shifts"); CPUs differ for the other counts.
const OF_ONLY_FOR_ONE: &[Mnemonic] = &[
    Mnemonic::Shl,
    Mnemonic::Sal,
    Mnemonic::Shr,
    Mnemonic::Sar,
    Mnemonic::Shld,
    Mnemonic::Shrd,
    Mnemonic::Rol,
    Mnemonic::Ror,
    Mnemonic::Rcl,
    Mnemonic::Rcr,
];

/// The undefined flags of `i` that the table masks (iced's bits).
fn masked(i: &Instruction) -> u32 {
    let mut bits = TABLE
        .iter()
        .filter(|(m, _, _)| *m == i.mnemonic())
        .fold(0, |acc, (_, f, _)| acc | f);
    // OF after a shift by anything but an immediate 1 (a count in CL may be 1, but then
    // the flag is compared on the cases where CL is not: both are generated).
    if OF_ONLY_FOR_ONE.contains(&i.mnemonic()) && !count_is_one(i) {
        bits |= RflagsBits::OF;
    }
    bits & i.rflags_undefined()
}

/// Instructions that change no flags for some inputs: REP string instructions with
/// RCX = 0, shifts and rotates by a count that masks to 0.
fn may_leave_flags(i: &Instruction) -> bool {
    if i.has_rep_prefix() || i.has_repne_prefix() {
        return true;
    }
    OF_ONLY_FOR_ONE.contains(&i.mnemonic())
        && !by_one_form(i)
        && immediate_count(i).is_none_or(|c| c == 0)
}

fn count_is_one(i: &Instruction) -> bool {
    by_one_form(i) || immediate_count(i) == Some(1)
}

/// The D0/D1 forms, whose count is an implicit 1.
fn by_one_form(i: &Instruction) -> bool {
    i.op_code()
        .op_kinds()
        .contains(&OpCodeOperandKind::imm8_const_1)
}

/// A shift's immediate count as the CPU masks it (6 bits for 64-bit operands, else 5).
fn immediate_count(i: &Instruction) -> Option<u8> {
    let wide = i.op0_register().size() == 8 || i.memory_size().size() == 8;
    let mask = if wide { 0x3F } else { 0x1F };
    (0..i.op_count())
        .find(|&n| i.op_kind(n) == OpKind::Immediate8)
        .map(|_| i.immediate8() & mask)
}

/// Walks the snippet's instructions up to (not including) the one at `stop_rip`, or all
/// of them; returns the masked flags live at the end (RFLAGS bits) and whether any
/// instruction read a masked flag.
fn walk(instrs: &[Instruction], stop_rip: Option<u64>) -> (u64, bool) {
    let mut live = 0u32;
    let mut tainted = false;
    for i in instrs {
        if stop_rip == Some(i.ip()) {
            break;
        }
        if i.rflags_read() & live != 0 {
            tainted = true;
        }
        // Only a flag the instruction defines ends a masked flag's life: one it leaves
        // undefined may be left as it was on one side and not the other.
        let defined = if may_leave_flags(i) {
            0
        } else {
            i.rflags_modified() & !i.rflags_undefined()
        };
        live = (live & !defined) | masked(i);
    }
    (rflags_of(live), tainted)
}

pub fn reads_masked_flag(case: &Case) -> bool {
    walk(&decode(case), None).1
}

/// The RFLAGS bits not compared for a run that stopped at `rip`: after a fault, the
/// instructions before the faulting one count; after the end marker, all of them.
pub fn ignored_flags(case: &Case, fault_rip: Option<u64>) -> u64 {
    walk(&decode(case), fault_rip).0
}
