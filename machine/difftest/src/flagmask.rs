//! Flags the manual leaves undefined, and when a comparison ignores them.
//!
//! The rule: every flag is compared, undefined ones included, because real software (and
//! other emulators' test suites) does read them, and difftest runs the CPU model of the
//! host's vendor ([`Vendor`]), whose rules were measured on its silicon. That holds only
//! on a host of a generation the rules were measured on ([`Vendor::measured_on`]):
//! generations of one vendor differ too (AMD's families 19h and 1Ah do, in BSF's flags).
//! On any other host the undefined flags are not compared, and difftest's header says
//! so, naming the host's family, so that a run there can measure them.
//!
//! A masked flag also taints what reads it: the generator does not make cases in which
//! an instruction reads (ADC, SETcc, PUSHF, ...) a flag an earlier one left masked.

use std::sync::OnceLock;

use gantry_frontend::vendor::{Family, Vendor};
use iced_x86::{Instruction, Mnemonic, OpCodeOperandKind, OpKind, RflagsBits};

use super::gen::decode;
use super::Case;
use gantry_machine::accel::emu::cpuid;

/// Whether undefined flags are compared on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The host's vendor and family, where it has one Gantry models.
    pub host: Option<(Vendor, Family)>,
    /// The model's vendor rules were measured on the host's generation: undefined flags
    /// are compared and the vendor-specific forms generated.
    pub measured: bool,
}

impl Policy {
    pub fn for_host(host: Option<(Vendor, Family)>) -> Policy {
        let measured = host.is_some_and(|(vendor, family)| vendor.measured_on().contains(&family));
        Policy { host, measured }
    }

    /// For the header: what of the flags is compared.
    pub fn describe(&self) -> String {
        match (self.host, self.measured) {
            (Some((v, f)), true) => {
                format!("undefined flags and vendor forms compared ({v} family {f:#x})")
            }
            (Some((v, f)), false) => format!(
                "undefined flags and vendor forms not compared: the {v} model's rules were \
                 not measured on family {f:#x} (measured on: {})",
                families(v)
            ),
            (None, _) => "undefined flags not compared: no model of the host's vendor".into(),
        }
    }
}

fn families(v: Vendor) -> String {
    let f: Vec<String> = v.measured_on().iter().map(|f| format!("{f:#x}")).collect();
    if f.is_empty() {
        "none yet".into()
    } else {
        f.join(", ")
    }
}

/// This host's policy.
pub fn policy() -> Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    *POLICY.get_or_init(|| Policy::for_host(cpuid::host()))
}

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

/// Shifts and rotates: a count that masks to 0 changes no flags.
const SHIFTS: &[Mnemonic] = &[
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

/// The undefined flags of `i` that `policy` masks (iced's bits).
fn masked(policy: Policy, i: &Instruction) -> u32 {
    if policy.measured {
        0
    } else {
        i.rflags_undefined()
    }
}

/// Instructions that change no flags for some inputs: REP string instructions with
/// RCX = 0, shifts and rotates by a count that masks to 0.
fn may_leave_flags(i: &Instruction) -> bool {
    if i.has_rep_prefix() || i.has_repne_prefix() {
        return true;
    }
    SHIFTS.contains(&i.mnemonic()) && !by_one_form(i) && immediate_count(i).is_none_or(|c| c == 0)
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
fn walk(policy: Policy, instrs: &[Instruction], stop_rip: Option<u64>) -> (u64, bool) {
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
        live = (live & !defined) | masked(policy, i);
    }
    (rflags_of(live), tainted)
}

pub fn reads_masked_flag(case: &Case) -> bool {
    walk(policy(), &decode(case), None).1
}

/// The RFLAGS bits not compared for a run that stopped at `rip`: after a fault, the
/// instructions before the faulting one count; after the end marker, all of them.
pub fn ignored_flags(case: &Case, fault_rip: Option<u64>) -> u64 {
    walk(policy(), &decode(case), fault_rip).0
}
