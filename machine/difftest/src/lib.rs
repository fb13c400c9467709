//! Differential testing: the same snippet, from the same state, on Gantry's CPU and on an
//! oracle (the host CPU itself, or KVM running Gantry's sandbox guest), final states
//! compared.
//!
//! A case is a few user-level instructions ([`gen`]), the sixteen GPRs, the arithmetic
//! flags and DF, the sixteen XMM registers (MXCSR starts at its reset value, 1F80h), and
//! 8 KiB of data that is also the stack ([`layout`]), and the mode and CPL it runs in
//! ([`Mode`]: long mode's 64-, 32- and 16-bit code, real mode, legacy protected mode; CPL
//! 3, or 0 under KVM). Each side runs it with the same linear addresses, and reports a
//! [`Final`]: the registers, flags and MXCSR, and what ended the run — the end marker
//! (INT3's #BP, or at CPL 0 HLT), or the exception the snippet raised (vector, and for
//! #PF the faulting address). A snippet that faults on the oracle must fault the same
//! way in Gantry, at the same instruction, with the same state.

pub mod corpus;
pub mod emu;
pub mod flagmask;
pub mod gen;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod host;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod kvm;
pub mod layout;
pub mod report;
pub mod shrink;

use std::fmt;

use gantry_frontend::state::FxState;

/// Which vectors push an error code: the architecture's table, as the CPU delivers them.
pub use gantry_machine::accel::emu::interrupts::has_error_code;

use layout::{end_rip, DATA_SIZE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 16-bit code: a 16-bit code segment (with 16-bit data and stack segments, see
    /// [`layout::seg_base`]) in compatibility mode under a 64-bit kernel.
    B16,
    /// 32-bit code: a compatibility-mode code segment under a 64-bit kernel.
    B32,
    B64,
    /// 16-bit code in real mode, segments based at [`layout::REAL_BASE`]. The host cannot
    /// run it (Linux offers no vm86 to 64-bit processes): the KVM oracle only.
    Real,
    /// 16-bit code in legacy protected mode (no long mode, 32-bit paging), segments laid
    /// out as for [`Mode::B16`]: the KVM oracle only.
    Pm16,
    /// 32-bit code in legacy protected mode (no long mode, 32-bit paging), flat segments:
    /// the KVM oracle only.
    Pm32,
}

impl Mode {
    pub fn bits(self) -> u32 {
        match self {
            Mode::B16 | Mode::Real | Mode::Pm16 => 16,
            Mode::B32 | Mode::Pm32 => 32,
            Mode::B64 => 64,
        }
    }

    /// The name `--mode` and the corpus use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::B16 => "16",
            Mode::B32 => "32",
            Mode::B64 => "64",
            Mode::Real => "real",
            Mode::Pm16 => "pm16",
            Mode::Pm32 => "pm32",
        }
    }

    /// Every mode, for parsing the names [`Mode::name`] gives.
    pub const ALL: [Mode; 6] = [
        Mode::B16,
        Mode::B32,
        Mode::B64,
        Mode::Real,
        Mode::Pm16,
        Mode::Pm32,
    ];

    /// Legacy protected mode: a 32-bit kernel, no long mode.
    pub fn legacy(self) -> bool {
        matches!(self, Mode::Pm16 | Mode::Pm32)
    }

    /// What the code is, for reports: "16-bit code", "real-mode code".
    pub fn describe(self) -> String {
        match self {
            Mode::Real => "real-mode code".into(),
            Mode::Pm16 | Mode::Pm32 => {
                format!("{}-bit code in legacy protected mode", self.bits())
            }
            b => format!("{}-bit code", b.bits()),
        }
    }
}

/// The initial contents of the data pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataInit {
    Zero,
    /// Bytes from [`gen::Rng`] with this seed.
    Seed(u64),
}

impl DataInit {
    pub fn bytes(self) -> Vec<u8> {
        let mut out = vec![0u8; DATA_SIZE];
        if let DataInit::Seed(s) = self {
            let mut rng = gen::Rng::new(s);
            for chunk in out.chunks_mut(8) {
                // Mostly random, with runs of edge bytes that comparisons and scans stop at.
                let v = match rng.below(8) {
                    0 => 0,
                    1 => !0,
                    _ => rng.next_u64(),
                };
                chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
            }
        }
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub mode: Mode,
    /// The snippet, without the end marker.
    pub code: Vec<u8>,
    /// RAX..R15 in encoding order.
    pub gpr: [u64; 16],
    /// The arithmetic flags and DF (the rest of RFLAGS is the user default, IF set).
    pub rflags: u64,
    /// XMM0..XMM15 (little-endian: bit 0 of the value is bit 0 of the register).
    pub xmm: [u128; 16],
    pub data: DataInit,
    /// The privilege level the snippet runs at: 3, or 0 (the KVM oracle only). Real-mode
    /// code has no other than 0 ([`Mode::default_cpl`]).
    pub cpl: u8,
}

impl Mode {
    /// The CPL a case of this mode runs at unless it says otherwise: user code's 3,
    /// except in real mode, which is always at 0.
    pub fn default_cpl(self) -> u8 {
        if self == Mode::Real {
            0
        } else {
            3
        }
    }
}

/// Why the host CPU oracle cannot run code of this mode at this CPL, if it cannot: it
/// runs user code in a 64-bit Linux process, so only at CPL 3. It runs legacy protected
/// mode's cases in compatibility mode, whose user-level semantics are the same (see
/// `host.rs` for the one difference its answers are adjusted for).
pub fn host_cannot_run(mode: Mode, cpl: u8) -> Option<String> {
    let why = if mode == Mode::Real {
        "real-mode code (a 64-bit process has no vm86)".to_string()
    } else if cpl != 3 {
        format!("code at CPL {cpl}")
    } else {
        return None;
    };
    Some(format!(
        "the host CPU oracle cannot run {why}; use --oracle kvm"
    ))
}

impl Case {
    /// Whether exception delivery pushes its frame on the snippet's own stack, not on
    /// the kernel's: real mode, and CPL 0 in legacy protected mode (no stack switch,
    /// and no IST outside long mode). The width of each slot when it does.
    pub fn frame_on_own_stack(&self) -> Option<u64> {
        match self.mode {
            Mode::Real => Some(2),
            Mode::Pm16 | Mode::Pm32 if self.cpl == 0 => Some(4),
            _ => None,
        }
    }
}

/// MXCSR at the start of every case: its reset value, all exceptions masked, round to
/// nearest, no flush-to-zero.
pub const MXCSR_START: u32 = gantry_frontend::state::MXCSR_RESET;

/// The x87/SSE state a case starts with: FNINIT's x87 state, MXCSR at reset, and the
/// case's XMM registers.
pub fn fx_image(xmm: &[u128; 16]) -> FxState {
    let mut fx = FxState::default();
    fx.set_mxcsr(MXCSR_START);
    for (i, x) in xmm.iter().enumerate() {
        fx.set_xmm(i, &x.to_le_bytes());
    }
    fx
}

/// The x87 control word, status word and abridged tag word in an FXSAVE image.
pub fn x87_of(fx: &FxState) -> [u16; 3] {
    let fsw = u16::from_le_bytes([fx.bytes[FxState::FSW], fx.bytes[FxState::FSW + 1]]);
    [fx.fcw(), fsw, fx.bytes[FxState::FTW] as u16]
}

/// The XMM registers in an FXSAVE image.
pub fn xmm_of(fx: &FxState) -> [u128; 16] {
    std::array::from_fn(|i| u128::from_le_bytes(fx.xmm(i)))
}

/// What ended a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An exception: its vector, its error code for the vectors that push one, and for
    /// #PF the faulting linear address.
    Exception {
        vector: u8,
        error: Option<u32>,
        address: Option<u64>,
    },
    /// The CPU halted: at CPL 0, the end marker's HLT ([`layout::END_MARKER_RING0`]).
    Halted,
    /// A triple fault: delivering an exception raised another that could not be
    /// delivered either (at CPL 0 in legacy protected mode, a stack pointer outside the
    /// data pages). The CPU stops; its registers are no longer observable.
    Shutdown,
    /// Anything else (a device event, a stop outside the exception stubs): a failure in
    /// itself.
    Other(String),
}

/// The state at the end of a run: after the end marker's #BP, or as of the faulting
/// instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Final {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub xmm: [u128; 16],
    pub mxcsr: u32,
    /// The x87 control word, status word and abridged tag word.
    pub x87: [u16; 3],
    pub event: Event,
    pub data: Vec<u8>,
}

impl Final {
    /// The run reached the end marker.
    pub fn completed(&self, case: &Case) -> bool {
        let end = if layout::end_marker(case.mode, case.cpl) == layout::END_MARKER {
            Event::Exception {
                vector: 3,
                error: None,
                address: None,
            }
        } else {
            Event::Halted
        };
        self.event == end && self.rip == end_rip(case.mode, case.code.len())
    }
}

/// The flags compared: the arithmetic flags and DF.
pub const COMPARED_FLAGS: u64 = 0x0CD5 | 0x400;

/// The vector names of the exceptions a snippet can raise.
pub fn vector_name(v: u8) -> &'static str {
    match v {
        0 => "#DE",
        1 => "#DB",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        19 => "#XM",
        _ => "#?",
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Exception {
                vector,
                error,
                address,
            } => {
                f.write_str(vector_name(*vector))?;
                if let Some(e) = error {
                    write!(f, "({e:#x})")?;
                }
                if let Some(a) = address {
                    write!(f, " at {a:#x}")?;
                }
                Ok(())
            }
            Event::Halted => f.write_str("HLT"),
            Event::Shutdown => f.write_str("shutdown (triple fault)"),
            Event::Other(s) => f.write_str(s),
        }
    }
}

/// A side that runs cases: an oracle or Gantry's CPU.
pub trait Runner {
    fn name(&self) -> String;
    fn run(&mut self, case: &Case) -> Result<Final, RunError>;
}

/// A run that produced no final state (the oracle's own trouble, not a verdict).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the oracle did not finish the case within {0} s")]
    Timeout(u64),
    #[error("the oracle process failed: {0}")]
    Oracle(String),
}

/// One difference between two finals, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub what: String,
    pub oracle: String,
    pub gantry: String,
}

/// The differences between the oracle's final and Gantry's for `case`, after the masks:
/// in 16- and 32-bit code only the low halves of the eight legacy registers (the upper
/// halves are undefined across the switch back to 64-bit mode), and undefined flags per
/// [`flagmask`].
pub fn compare(case: &Case, oracle: &Final, gantry: &Final) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut add = |what: String, o: String, g: String| {
        out.push(Difference {
            what,
            oracle: o,
            gantry: g,
        })
    };
    // A run that ended other than in an exception or a shutdown failed, even if both
    // sides failed alike.
    let failed = |e: &Event| matches!(e, Event::Other(_));
    if comparable(&oracle.event) != comparable(&gantry.event)
        || failed(&oracle.event)
        || failed(&gantry.event)
    {
        add(
            "event".into(),
            oracle.event.to_string(),
            gantry.event.to_string(),
        );
    }
    let fault_rip = (!oracle.completed(case)).then_some(oracle.rip);
    let flags = COMPARED_FLAGS & !flagmask::ignored_flags(case, fault_rip);
    // After a shutdown the CPU's registers are no longer observable (only INIT or a
    // reset leaves it): memory is left to compare, and the event says the rest.
    let shutdown = oracle.event == Event::Shutdown && gantry.event == Event::Shutdown;
    if !shutdown {
        if oracle.rip != gantry.rip {
            add(
                "rip".into(),
                format!("{:#x}", oracle.rip),
                format!("{:#x}", gantry.rip),
            );
        }
        let (regs, mask) = match case.mode {
            Mode::B64 => (16, !0u64),
            _ => (8, 0xFFFF_FFFF),
        };
        for r in 0..regs {
            if (oracle.gpr[r] ^ gantry.gpr[r]) & mask != 0 {
                add(
                    report::REG_NAMES[r].into(),
                    format!("{:#018x}", oracle.gpr[r] & mask),
                    format!("{:#018x}", gantry.gpr[r] & mask),
                );
            }
        }
        for r in 0..16 {
            if oracle.xmm[r] != gantry.xmm[r] {
                add(
                    format!("xmm{r}"),
                    format!("{:#034x}", oracle.xmm[r]),
                    format!("{:#034x}", gantry.xmm[r]),
                );
            }
        }
        for (i, name) in ["fcw", "fsw", "ftw"].into_iter().enumerate() {
            if oracle.x87[i] != gantry.x87[i] {
                add(
                    name.into(),
                    format!("{:#06x}", oracle.x87[i]),
                    format!("{:#06x}", gantry.x87[i]),
                );
            }
        }
        if oracle.mxcsr != gantry.mxcsr {
            add(
                "mxcsr".into(),
                format!("{:#06x}", oracle.mxcsr),
                format!("{:#06x}", gantry.mxcsr),
            );
        }
        if (oracle.rflags ^ gantry.rflags) & flags != 0 {
            add(
                "rflags".into(),
                report::flags_string(oracle.rflags & flags),
                report::flags_string(gantry.rflags & flags),
            );
        }
    }
    let (odata, gdata) = if let Some(slot) = case.frame_on_own_stack() {
        let ignored = COMPARED_FLAGS & !flags;
        let sp = oracle.gpr[4];
        (
            mask_frame_flags(case, slot, sp, &oracle.data, ignored),
            mask_frame_flags(case, slot, sp, &gantry.data, ignored),
        )
    } else {
        (oracle.data.clone(), gantry.data.clone())
    };
    if odata != gdata {
        let diffs: Vec<usize> = (0..odata.len().min(gdata.len()))
            .filter(|&i| odata[i] != gdata[i])
            .collect();
        let first = diffs.first().copied().unwrap_or(0);
        let span = |d: &[u8]| {
            let end = (first + 8).min(d.len());
            d[first..end]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        add(
            format!(
                "data at {:#x} ({} bytes differ)",
                layout::data_va(case.mode) + first as u64,
                diffs.len()
            ),
            span(&odata),
            span(&gdata),
        );
    }
    out
}

/// When exception delivery pushes (E)FLAGS, CS and (E)IP on the snippet's own stack
/// ([`Case::frame_on_own_stack`], `slot` bytes each), in the data pages, the FLAGS slot
/// there carries the undefined flags the flag comparison masks, so they are masked in
/// the data too. `sp` is the stack pointer as of the event.
fn mask_frame_flags(case: &Case, slot: u64, sp: u64, data: &[u8], ignored: u64) -> Vec<u8> {
    let mut out = data.to_vec();
    let wrap = if case.mode.bits() == 16 {
        0xFFFF
    } else {
        0xFFFF_FFFF
    };
    let flags_at = layout::seg_base(case.mode) + (sp.wrapping_sub(slot) & wrap);
    let data_va = layout::data_va(case.mode);
    for (k, mask) in [(0u64, ignored as u8), (1, (ignored >> 8) as u8)] {
        let i = (flags_at + k).wrapping_sub(data_va) as usize;
        if let Some(b) = out.get_mut(i) {
            *b &= !mask;
        }
    }
    out
}

/// A #PF's error code says whether the page was present (P). Outside the pages both
/// sides map alike ([`layout::mirrored`]) that is the host kernel's address space on one
/// side and the sandbox guest's on the other, so there P is not compared.
fn comparable(e: &Event) -> Event {
    match *e {
        Event::Exception {
            vector: 14,
            error: Some(code),
            address: Some(a),
        } if !layout::mirrored(a) => Event::Exception {
            vector: 14,
            error: Some(code & !1),
            address: Some(a),
        },
        ref other => other.clone(),
    }
}

/// What a run of many cases found.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub cases: u64,
    pub mismatches: u64,
    /// Cases the oracle could not run (its process died or hung): not verdicts.
    pub oracle_failures: u64,
    /// Cases whose first answer from the oracle disagreed with Gantry and did not come
    /// again when the oracle ran the case once more (a software-assisted KVM's emulator
    /// has done this under load, and RDTSC always does); see [`run_cases`].
    pub oracle_unstable: u64,
    pub seconds: f64,
}

/// The kinds of difference, for telling whether a shrunk case still fails the same way.
fn signature(diffs: &[Difference]) -> Vec<String> {
    diffs
        .iter()
        .map(|d| d.what.split(' ').next().unwrap_or("").to_string())
        .collect()
}

/// Runs each case on both sides; reports the first `max_reports` mismatches in full
/// (shrunk first) and every oracle failure in one line.
pub fn run_cases(
    oracle: &mut dyn Runner,
    gantry: &mut dyn Runner,
    cases: impl Iterator<Item = (String, Case)>,
    max_reports: u64,
    out: &mut dyn std::io::Write,
) -> Summary {
    let start = std::time::Instant::now();
    let mut s = Summary::default();
    let oracle_name = oracle.name();
    for (label, case) in cases {
        s.cases += 1;
        let o = match oracle.run(&case) {
            Ok(o) => o,
            Err(e) => {
                s.oracle_failures += 1;
                let _ = writeln!(out, "{label}: not run: {e}");
                continue;
            }
        };
        let Ok(g) = gantry.run(&case) else {
            s.oracle_failures += 1;
            continue;
        };
        let mut diffs = compare(&case, &o, &g);
        if diffs.is_empty() {
            continue;
        }
        // A difference counts when the oracle gives its answer again, or when none of its
        // answers is Gantry's (RDTSC's never come again). An oracle that answers Gantry's
        // twice after one other answer (a software-assisted KVM's emulator has, under
        // load) is taken as agreeing; any other mix is no verdict.
        let o = match oracle.run(&case) {
            Ok(again) if again != o => {
                s.oracle_unstable += 1;
                let third = match oracle.run(&case) {
                    Ok(third) => third,
                    Err(e) => {
                        s.oracle_failures += 1;
                        let _ = writeln!(out, "{label}: not run: {e}");
                        continue;
                    }
                };
                if again == g && third == g {
                    continue;
                }
                if third != o && (again == g || third == g) {
                    s.oracle_failures += 1;
                    let _ = writeln!(
                        out,
                        "{label}: not run: the oracle's answers to the case differ, one is Gantry's"
                    );
                    continue;
                }
                diffs = compare(&case, &third, &g);
                third
            }
            _ => o,
        };
        if diffs.is_empty() {
            continue;
        }
        s.mismatches += 1;
        if s.mismatches > max_reports {
            continue;
        }
        let sig = signature(&diffs);
        let small = shrink::shrink(&case, |c| match (oracle.run(c), gantry.run(c)) {
            (Ok(o), Ok(g)) => signature(&compare(c, &o, &g)) == sig,
            _ => false,
        });
        let (o, g) = match (oracle.run(&small), gantry.run(&small)) {
            (Ok(o), Ok(g)) => (o, g),
            _ => (o, g),
        };
        let _ = writeln!(out, "{label}: MISMATCH");
        let _ = write!(out, "{}", report::mismatch(&small, &oracle_name, &o, &g));
        if small != case {
            let _ = writeln!(out, "  (shrunk from: {})", corpus::format_case(&case));
        }
    }
    s.seconds = start.elapsed().as_secs_f64();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit NOP case, and its final state at the end marker.
    fn a_nop_run_to_the_marker() -> (Case, Final) {
        let case =
            corpus::parse_case("64 code=90 rflags=0 data=zero gpr=0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0")
                .unwrap();
        let end = Final {
            gpr: [0; 16],
            rip: layout::end_rip(Mode::B64, 1),
            rflags: 0x202,
            xmm: [0; 16],
            mxcsr: MXCSR_START,
            x87: [gantry_frontend::state::FCW_INIT, 0, 0],
            event: Event::Exception {
                vector: 3,
                error: None,
                address: None,
            },
            data: vec![0; DATA_SIZE],
        };
        (case, end)
    }

    /// XMM registers and MXCSR are compared like the GPRs: each difference is named.
    #[test]
    fn xmm_and_mxcsr_differences_are_reported() {
        let (case, oracle) = a_nop_run_to_the_marker();
        assert!(compare(&case, &oracle, &oracle.clone()).is_empty());
        let mut gantry = oracle.clone();
        gantry.xmm[3] = 1 << 127;
        gantry.mxcsr |= 0x20;
        let what: Vec<String> = compare(&case, &oracle, &gantry)
            .into_iter()
            .map(|d| d.what)
            .collect();
        assert_eq!(what, ["xmm3", "mxcsr"]);
    }

    /// After a shutdown on both sides only memory is compared; a run that ended in
    /// neither an exception nor a shutdown is a difference even when both sides agree.
    #[test]
    fn shutdowns_compare_memory_and_failures_never_agree() {
        let case = corpus::parse_case(
            "pm32 code=0f0b rflags=0 data=zero cpl=0 gpr=0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
        )
        .unwrap();
        let oracle = Final {
            gpr: [0; 16],
            rip: 0,
            rflags: 0,
            xmm: [0; 16],
            mxcsr: 0,
            x87: [0; 3],
            event: Event::Shutdown,
            data: vec![0; DATA_SIZE],
        };
        let mut gantry = oracle.clone();
        gantry.gpr[0] = 1;
        gantry.rip = 5;
        assert!(compare(&case, &oracle, &gantry).is_empty());
        gantry.data[7] = 1;
        assert_eq!(compare(&case, &oracle, &gantry).len(), 1);
        let failed = Final {
            event: Event::Other("the sandbox guest halted at 0x1234".into()),
            ..oracle
        };
        let what: Vec<String> = compare(&case, &failed, &failed.clone())
            .into_iter()
            .map(|d| d.what)
            .collect();
        assert_eq!(what, ["event"]);
    }
    /// Answers from a script, one per run, then the last one again.
    struct Scripted(Vec<Final>);

    impl Runner for Scripted {
        fn name(&self) -> String {
            "scripted".into()
        }
        fn run(&mut self, _: &Case) -> Result<Final, RunError> {
            let f = self.0[0].clone();
            if self.0.len() > 1 {
                self.0.remove(0);
            }
            Ok(f)
        }
    }

    /// A difference counts when the oracle's answer comes again or none of its answers
    /// is Gantry's; two of Gantry's answers after another are agreement; other mixes are
    /// no verdict.
    #[test]
    fn a_difference_counts_when_the_oracle_stands_by_it() {
        let (case, right) = a_nop_run_to_the_marker();
        let wrong = |n: u64| Final {
            gpr: [n; 16],
            ..right.clone()
        };
        let run = |oracle: Vec<Final>| {
            let mut out = Vec::new();
            let cases = std::iter::once(("case".to_string(), case.clone()));
            let s = run_cases(
                &mut Scripted(oracle),
                &mut Scripted(vec![right.clone()]),
                cases,
                0,
                &mut out,
            );
            (s.mismatches, s.oracle_failures, s.oracle_unstable)
        };
        assert_eq!(run(vec![right.clone()]), (0, 0, 0));
        assert_eq!(run(vec![wrong(1), right.clone(), right.clone()]), (0, 0, 1));
        assert_eq!(run(vec![wrong(1), right.clone(), wrong(1)]), (1, 0, 1));
        assert_eq!(run(vec![wrong(1), right.clone(), wrong(2)]), (0, 1, 1));
        assert_eq!(run(vec![wrong(1), wrong(2), right.clone()]), (0, 1, 1));
        assert_eq!(run(vec![wrong(1), wrong(2), wrong(3)]), (1, 0, 1));
        assert_eq!(run(vec![wrong(1)]), (1, 0, 0));
    }
}
