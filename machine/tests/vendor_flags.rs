//! The flags the manuals leave undefined, on each vendor's model: known inputs with the
//! outputs each vendor gives. AMD's are as an AMD EPYC of family 1Ah left them (measured
//! with `gantry difftest` and a probe of the host CPU); Intel's are the model's earlier
//! choices, not yet measured on Intel silicon (see `frontend/src/vendor.rs`). Each case
//! runs on the interpreter and the JIT.

mod cpu_harness;

use cpu_harness::*;
use gantry_frontend::state::{AF, CF, OF, PF, SF, ZF};
use gantry_machine::cpu::cpuid::Vendor;
use iced_x86::code_asm::*;

const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

/// Runs `setup`, sets the six flags to `flags`, runs `insn`, all in 64-bit mode on
/// `vendor`'s model; returns the arithmetic flags at the end.
fn flags_after(vendor: Vendor, flags: u64, setup: Asm, insn: Asm) -> u64 {
    let d = run_as(
        vendor,
        Mode::Long64,
        |_, _| {},
        |a| {
            setup(a)?;
            a.push(flags as i32 | 2)?;
            a.popfq()?;
            insn(a)
        },
    );
    assert_eq!(d.vector(), None);
    d.flags() & ARITH
}

type Asm = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// (what, flags before, setup, instruction, Intel model's flags after, AMD's after).
type Case = (&'static str, u64, Asm, Asm, u64, u64);

const CASES: &[Case] = &[
    (
        "bsf of 0",
        ARITH,
        |a| a.xor(ecx, ecx),
        |a| a.bsf(eax, ecx),
        ARITH,
        ZF | PF,
    ),
    (
        "bsr of 8000h: index 15",
        0,
        |a| a.mov(ecx, 0x8000),
        |a| a.bsr(eax, ecx),
        0,
        PF,
    ),
    (
        "bsf of 6: index 1",
        ARITH & !ZF,
        |a| a.mov(ecx, 6),
        |a| a.bsf(eax, ecx),
        ARITH & !ZF,
        0,
    ),
    (
        "mul 0FFFFFFFFh by 2",
        ARITH,
        |a| {
            a.mov(eax, 0xFFFF_FFFFu32)?;
            a.mov(ebx, 2)
        },
        |a| a.mul(ebx),
        CF | OF | SF,
        ARITH,
    ),
    (
        "div 7 by 2",
        ARITH,
        |a| {
            a.mov(eax, 7)?;
            a.xor(edx, edx)?;
            a.mov(ebx, 2)
        },
        |a| a.div(ebx),
        ARITH,
        CF | OF | AF,
    ),
    ("shl 1 by 1", 0, |a| a.mov(eax, 1), |a| a.shl(eax, 1), 0, AF),
    (
        "shr 80000000h by 4",
        OF,
        |a| {
            a.mov(eax, 0x8000_0000u32)?;
            a.mov(cl, 4)
        },
        |a| a.shr(eax, cl),
        OF | PF,
        AF | PF,
    ),
    (
        "lzcnt of 0",
        ARITH,
        |a| a.xor(ebx, ebx),
        |a| a.lzcnt(eax, ebx),
        ARITH & !ZF,
        CF | OF,
    ),
];

#[test]
fn undefined_flags_follow_the_vendor() {
    for &(what, before, setup, insn, intel, amd) in CASES {
        for (vendor, want) in [(Vendor::Intel, intel), (Vendor::Amd, amd)] {
            let got = flags_after(vendor, before, setup, insn);
            assert_eq!(
                got, want,
                "{what} on the {vendor} model: {got:#x}, not {want:#x}"
            );
        }
    }
}
