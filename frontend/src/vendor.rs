//! The CPU model's vendor, and every behaviour in which Intel's and AMD's silicon differ
//! where software can see it. This is the one place those differences are written: the
//! lifter asks the vendor (it is part of the block's [`crate::lift::Mode`], so the block
//! cache keys on it) and CPUID answers with its identity.
//!
//! Most differences are flags the manuals leave undefined. Each rule below says what the
//! vendor's CPUs were seen to do and on which host it was measured (with `gantry difftest`
//! and a probe of every operand size over random and edge inputs, both against the host
//! CPU). A vendor's rule that no host of that vendor has confirmed says so: it is Gantry's
//! earlier choice (the SDM's pseudo-code where there is one), and difftest does not
//! compare those flags on such hosts (see [`Vendor::measured_on`]).

use core::fmt;

/// A CPU family as CPUID leaf 1 reports it (base family plus extended family).
pub type Family = u32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// The model users get by default.
    #[default]
    Intel,
    Amd,
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
        })
    }
}

/// AF after SHL/SAL/SHR/SAR/SHLD/SHRD by a nonzero count (SDM and APM: undefined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftAf {
    Cleared,
    Set,
}

/// OF after SHR by a count other than 1 (undefined; defined as the operand's top bit for a
/// count of 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShrOf {
    /// The operand's top bit, as for a count of 1.
    OperandTop,
    /// The top bit before the last 1-bit step, which is 0 for counts above 1.
    LastStep,
}

/// OF after SHLD/SHRD by a count other than 1 (undefined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoubleShiftOf {
    /// Whether the sign changed between the operand and the result.
    SignChange,
    /// The sign change of the last 1-bit step: SHLD: CF xor the result's top bit
    /// (16-bit SHLD by 16: CF); SHRD: the result's two top bits differ.
    LastStep,
}

/// SF, ZF, AF and PF after MUL and IMUL (undefined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulFlags {
    /// SF, ZF and PF of the low half of the product, AF cleared.
    FromLowHalf,
    /// As they were.
    Unchanged,
}

/// All six arithmetic flags after DIV and IDIV (undefined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DivFlags {
    Unchanged,
    /// CF and OF as they were; AF set; PF, ZF and SF cleared.
    AfSetRestCleared,
}

/// The five flags other than ZF after BSF and BSR (undefined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitScanFlags {
    Unchanged,
    /// PF the parity of the bit index found (of 0 for a zero source); CF, AF, SF and OF
    /// cleared.
    IndexParity,
}

/// OF, SF, AF and PF after LZCNT and TZCNT (undefined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountFlags {
    Unchanged,
    /// SF, AF and PF cleared, OF as it was.
    OfKept,
}

/// The undefined flags of the decimal adjusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BcdFlags {
    /// OF cleared; SF, ZF and PF of AL as the instruction leaves it (AAA/AAS: of AL with
    /// its high nibble cleared); AAD's CF and AF cleared.
    OfAl,
    /// As the arithmetic the instruction does: AAA and AAS are a 16-bit ADD and SUB of
    /// 106h to AX (of 0 when no adjustment is made), whose OF, SF, ZF and PF they leave;
    /// DAA and DAS leave OF as the 8-bit ADD or SUB of the correction (06h, 60h, 66h) to
    /// AL would; AAD's CF, AF and OF are those of adding AH * imm8 to AL.
    AsArithmetic,
}

/// Which of CMPS's two reads comes first: when both fault, the CPU reports that one's
/// fault (the SDM does not say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpsOrder {
    /// ES:rDI, then DS:rSI.
    DestinationFirst,
    /// DS:rSI, then ES:rDI.
    SourceFirst,
}

/// POPA/POPAD faulting on one of its reads (defined behaviour that differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PopaFault {
    /// No register changes: all eight are read before any is written.
    Atomic,
    /// The registers popped before the faulting read keep their new values (ESP does
    /// not change).
    KeepsPopped,
}

/// How much MOVSXD with a 16-bit operand size reads from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Movsxd16Read {
    /// A word, as the SDM gives the form (MOVSXD r16, r/m16).
    Word,
    /// A doubleword, of which the low word is kept: an access that the word would not make
    /// can fault.
    Doubleword,
}

/// The arithmetic flags while a REPE/REPNE CMPS or SCAS is under way: what an exception
/// in one of its elements (a page fault, say) finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepCompareFlags {
    /// Written when the instruction completes (the count runs out or the condition
    /// fails): an element that faults finds them as they were before the instruction.
    AtCompletion,
    /// Written by every element: a fault finds those of the last element completed.
    EveryElement,
}

/// OF after RCL/RCR by a count that is a whole turn: nonzero once masked to 5 bits, but
/// a multiple of the operand's width plus one (RCL AL, 9), so nothing rotates (OF is
/// undefined for counts other than 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotateCarryTurnOf {
    /// As it was: the instruction changes nothing.
    Unchanged,
    /// The top bit of the (unchanged) result xor CF (RCL), or its two top bits' xor (RCR),
    /// as for a count of 1.
    FromResult,
}

/// A data or stack access in 32-bit code whose bytes run past 4 GiB in a segment whose
/// limit is 4 GiB - 1 (offset + size - 1 > limit; the SDM, 5.3: "may or may not cause
/// the indicated exceptions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlatSegmentTop {
    /// No limit fault: the access wraps past the top of the 4 GiB linear space.
    Wraps,
    /// #GP(0), or #SS(0) through SS.
    Faults,
}

/// When BOUND reads its upper bound: an index below the lower bound raises #BR, and the
/// upper bound's read may fault (#PF) instead if it comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundReads {
    /// The lower bound is read and checked first; the upper is read only if the index is
    /// not below it.
    CheckingEach,
    /// Both bounds are read before either is checked.
    BothFirst,
}

/// Which modes SYSCALL and SYSENTER work in (outside them they raise #UD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastCalls {
    /// SYSCALL only in 64-bit mode; SYSENTER/SYSEXIT in every protected mode, long mode
    /// included.
    Intel,
    /// SYSCALL in 64-bit and compatibility mode; SYSENTER/SYSEXIT not in long mode.
    Amd,
}

/// SYSRET to 64-bit code with a non-canonical RCX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysretNonCanonical {
    /// #GP(0) at CPL 0, before anything changes.
    FaultsInRing0,
    /// The return completes, and the fetch at RCX faults (#GP(0)) at CPL 3.
    FaultsInRing3,
}

/// Everything the lifter and CPUID need to know of a vendor.
impl Vendor {
    /// Parses a `--cpu` value (other than `host`, which [`Vendor::host`] answers).
    pub fn from_name(name: &str) -> Option<Vendor> {
        match name {
            "intel" => Some(Vendor::Intel),
            "amd" => Some(Vendor::Amd),
            _ => None,
        }
    }

    /// CPUID leaf 0's vendor string.
    pub fn cpuid_vendor(self) -> &'static [u8; 12] {
        match self {
            Vendor::Intel => b"GenuineIntel",
            Vendor::Amd => b"AuthenticAMD",
        }
    }

    /// CPUID leaf 1's EAX: family, model and stepping of a part with no more features than
    /// the model claims, and well known to operating systems.
    pub fn signature(self) -> u32 {
        match self {
            // Family 6, model 3Ah, stepping 9: Ivy Bridge.
            Vendor::Intel => 0x0003_06A9,
            // Family 17h (0Fh + extended 08h), model 31h, stepping 0: Zen 2 (Rome).
            Vendor::Amd => 0x0083_0F10,
        }
    }

    /// CPUID 80000002h-80000004h: the brand string, NUL-padded to 48 bytes.
    pub fn brand(self) -> [u8; 48] {
        let name: &[u8] = match self {
            Vendor::Intel => b"Gantry emulated x86-64 CPU (Intel model)",
            Vendor::Amd => b"Gantry emulated x86-64 CPU (AMD model)",
        };
        let mut b = [0u8; 48];
        b[..name.len()].copy_from_slice(name);
        b
    }

    /// The host generations on which every rule of this vendor was measured. On a host of
    /// this vendor and another family, or of this vendor when the list is empty, difftest
    /// cannot hold Gantry to the undefined flags and does not compare them.
    pub fn measured_on(self) -> &'static [Family] {
        match self {
            // No Intel host yet: Intel's rules are Gantry's earlier choices.
            Vendor::Intel => &[],
            // AMD EPYC, family 1Ah (Zen 5). An earlier EPYC (family 17h or 19h) kept
            // BSF/BSR's flags, computed LZCNT's from the result and read CMPS's
            // destination first, so the generations differ and only this one is claimed.
            Vendor::Amd => &[0x1A],
        }
    }

    pub fn popa_fault(self) -> PopaFault {
        match self {
            Vendor::Intel => PopaFault::Atomic,
            Vendor::Amd => PopaFault::KeepsPopped,
        }
    }

    pub fn movsxd16_read(self) -> Movsxd16Read {
        match self {
            Vendor::Intel => Movsxd16Read::Word,
            Vendor::Amd => Movsxd16Read::Doubleword,
        }
    }

    /// From the manuals (Intel SDM, SYSCALL/SYSENTER; AMD APM vol. 3): privileged, so
    /// difftest (at CPL 3) does not reach them; `machine/tests/vendor_model.rs` checks
    /// the model against the manuals.
    pub fn fast_calls(self) -> FastCalls {
        match self {
            Vendor::Intel => FastCalls::Intel,
            Vendor::Amd => FastCalls::Amd,
        }
    }

    /// From the manuals (Intel SDM, SYSRET; AMD APM vol. 3): the difference behind
    /// CVE-2012-0217.
    pub fn sysret_non_canonical(self) -> SysretNonCanonical {
        match self {
            Vendor::Intel => SysretNonCanonical::FaultsInRing0,
            Vendor::Amd => SysretNonCanonical::FaultsInRing3,
        }
    }

    pub fn cmps_order(self) -> CmpsOrder {
        match self {
            Vendor::Intel => CmpsOrder::DestinationFirst,
            // Family 1Ah. An AMD EPYC of an earlier family read the destination first.
            Vendor::Amd => CmpsOrder::SourceFirst,
        }
    }

    /// Intel: measured on a Xeon of family 6 (`gantry difftest`, 16-, 32- and 64-bit
    /// code, every element size, REPE and REPNE, faults after 1-15 elements). AMD: Gantry's
    /// earlier behaviour, which AMD EPYCs of families 17h and 1Ah showed on the same
    /// generated cases.
    pub fn rep_compare_flags(self) -> RepCompareFlags {
        match self {
            Vendor::Intel => RepCompareFlags::AtCompletion,
            Vendor::Amd => RepCompareFlags::EveryElement,
        }
    }

    /// Intel: measured on a Xeon of family 6 (RCL/RCR of 8- and 16-bit operands by 9, 17
    /// and 18, with OF clear and set). AMD: Gantry's earlier behaviour, not measured.
    pub fn rotate_carry_turn_of(self) -> RotateCarryTurnOf {
        match self {
            Vendor::Intel => RotateCarryTurnOf::Unchanged,
            Vendor::Amd => RotateCarryTurnOf::FromResult,
        }
    }

    /// Intel: measured on a Xeon of family 6 (loads, stores, PUSH, POP, LEAVE and ENTER
    /// running past 4 GiB in compatibility mode, each page-faulting on its first byte
    /// instead). AMD: seen on EPYCs of families 17h and 1Ah.
    pub fn flat_segment_top(self) -> FlatSegmentTop {
        match self {
            Vendor::Intel => FlatSegmentTop::Wraps,
            Vendor::Amd => FlatSegmentTop::Faults,
        }
    }

    /// Intel: measured on a Xeon of family 6 (bounds at the end of a page before one not
    /// present, the index below, within and at the lower bound). AMD: Gantry's earlier
    /// behaviour, which AMD EPYCs showed on the same generated case.
    pub fn bound_reads(self) -> BoundReads {
        match self {
            Vendor::Intel => BoundReads::CheckingEach,
            Vendor::Amd => BoundReads::BothFirst,
        }
    }

    pub fn shift_af(self) -> ShiftAf {
        match self {
            Vendor::Intel => ShiftAf::Cleared,
            Vendor::Amd => ShiftAf::Set,
        }
    }

    pub fn shr_of(self) -> ShrOf {
        match self {
            Vendor::Intel => ShrOf::OperandTop,
            Vendor::Amd => ShrOf::LastStep,
        }
    }

    pub fn double_shift_of(self) -> DoubleShiftOf {
        match self {
            Vendor::Intel => DoubleShiftOf::SignChange,
            Vendor::Amd => DoubleShiftOf::LastStep,
        }
    }

    pub fn mul_flags(self) -> MulFlags {
        match self {
            Vendor::Intel => MulFlags::FromLowHalf,
            Vendor::Amd => MulFlags::Unchanged,
        }
    }

    pub fn div_flags(self) -> DivFlags {
        match self {
            Vendor::Intel => DivFlags::Unchanged,
            Vendor::Amd => DivFlags::AfSetRestCleared,
        }
    }

    pub fn bit_scan_flags(self) -> BitScanFlags {
        match self {
            Vendor::Intel => BitScanFlags::Unchanged,
            Vendor::Amd => BitScanFlags::IndexParity,
        }
    }

    pub fn count_flags(self) -> CountFlags {
        match self {
            Vendor::Intel => CountFlags::Unchanged,
            Vendor::Amd => CountFlags::OfKept,
        }
    }

    pub fn bcd_flags(self) -> BcdFlags {
        match self {
            Vendor::Intel => BcdFlags::OfAl,
            Vendor::Amd => BcdFlags::AsArithmetic,
        }
    }
}

/// The family in a CPUID leaf 1 signature (SDM vol. 2, CPUID: the extended family counts
/// only when the base family is 0Fh).
pub fn family_of(signature: u32) -> Family {
    let base = (signature >> 8) & 0xF;
    if base == 0xF {
        base + ((signature >> 20) & 0xFF)
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_from_signatures() {
        assert_eq!(family_of(Vendor::Intel.signature()), 6);
        assert_eq!(family_of(Vendor::Amd.signature()), 0x17);
        // AMD EPYC 9005 (Zen 5): family 1Ah.
        assert_eq!(family_of(0x00B0_0F21), 0x1A);
    }

    #[test]
    fn names_round_trip() {
        for v in [Vendor::Intel, Vendor::Amd] {
            assert_eq!(Vendor::from_name(&v.to_string()), Some(v));
        }
        assert_eq!(Vendor::from_name("host"), None);
    }

    #[test]
    fn brands_fit_cpuid() {
        for v in [Vendor::Intel, Vendor::Amd] {
            let b = v.brand();
            assert_eq!(b[47], 0, "NUL-terminated");
            assert!(b.starts_with(b"Gantry emulated x86-64 CPU ("));
        }
    }
}
