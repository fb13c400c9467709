//! A mismatch as a reader wants it: the snippet as assembly, then the initial state and
//! both final states side by side, differences marked.

use std::fmt::Write;

use iced_x86::{Formatter, IntelFormatter};

use super::gen::decode;
use super::{compare, Case, Final, Mode};

pub const REG_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// "CF ZF DF" for the set arithmetic flags and DF.
pub fn flags_string(f: u64) -> String {
    let names = [
        (0, "CF"),
        (2, "PF"),
        (4, "AF"),
        (6, "ZF"),
        (7, "SF"),
        (10, "DF"),
        (11, "OF"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & (1 << b) != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(" ")
    }
}

/// The snippet, one instruction per line with its address and bytes.
pub fn disassemble(case: &Case) -> String {
    let mut out = String::new();
    let mut fmt = IntelFormatter::new();
    fmt.options_mut().set_first_operand_char_index(8);
    let mut at = 0usize;
    for i in decode(case) {
        let mut text = String::new();
        fmt.format(&i, &mut text);
        let bytes: String = case.code[at..at + i.len()]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let _ = writeln!(out, "    {:#010x}  {bytes:<24} {text}", i.ip());
        at += i.len();
    }
    out
}

/// The full report of one mismatch.
pub fn mismatch(case: &Case, oracle_name: &str, oracle: &Final, gantry: &Final) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "  {}:", case.mode.describe());
    out.push_str(&disassemble(case));
    let _ = writeln!(out, "  case: {}", super::corpus::format_case(case));
    let regs = if case.mode == Mode::B64 { 16 } else { 8 };
    let _ = writeln!(
        out,
        "  {:<8} {:<20} {:<20} {:<20}",
        "", "initial", "oracle", "gantry"
    );
    for (r, name) in REG_NAMES.iter().enumerate().take(regs) {
        let mark = if oracle.gpr[r] != gantry.gpr[r] {
            "  <-"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {name:<8} {:<20} {:<20} {:<20}{mark}",
            format!("{:#x}", case.gpr[r]),
            format!("{:#x}", oracle.gpr[r]),
            format!("{:#x}", gantry.gpr[r]),
        );
    }
    let _ = writeln!(
        out,
        "  {:<8} {:<20} {:<20} {:<20}",
        "flags",
        flags_string(case.rflags),
        flags_string(oracle.rflags),
        flags_string(gantry.rflags)
    );
    let mark = |differ: bool| if differ { "  <-" } else { "" };
    let _ = writeln!(
        out,
        "  {:<8} {:<20} {:<20} {:<20}{}",
        "mxcsr",
        format!("{:#x}", super::MXCSR_START),
        format!("{:#x}", oracle.mxcsr),
        format!("{:#x}", gantry.mxcsr),
        mark(oracle.mxcsr != gantry.mxcsr)
    );
    // XMM registers are too wide for the columns: a block each, for those that are not
    // zero throughout.
    for r in 0..16 {
        let (i, o, g) = (case.xmm[r], oracle.xmm[r], gantry.xmm[r]);
        if i == 0 && o == 0 && g == 0 {
            continue;
        }
        let _ = writeln!(out, "  {:<8} initial {i:032x}", format!("xmm{r}"));
        let _ = writeln!(out, "  {:<8} oracle  {o:032x}", "");
        let _ = writeln!(out, "  {:<8} gantry  {g:032x}{}", "", mark(o != g));
    }
    let _ = writeln!(
        out,
        "  {:<8} {:<20} {:<20} {:<20}",
        "rip",
        "",
        format!("{:#x}", oracle.rip),
        format!("{:#x}", gantry.rip)
    );
    let _ = writeln!(
        out,
        "  {:<8} {:<20} {:<20} {:<20}",
        "ended",
        "",
        oracle.event.to_string(),
        gantry.event.to_string()
    );
    let _ = writeln!(out, "  differences ({oracle_name} vs gantry):");
    for d in compare(case, oracle, gantry) {
        let _ = writeln!(out, "    {}: {} vs {}", d.what, d.oracle, d.gantry);
    }
    out
}
