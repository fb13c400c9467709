//! `gantry difftest` in the suite: fixed-seed runs against the host CPU and KVM, the regression
//! corpus of every mismatch found so far, and checks that the comparison itself can fail.
//! The host oracle needs an x86-64 Linux host, the KVM oracle /dev/kvm; elsewhere these
//! say SKIP.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(600);

fn host_oracle(test: &str) -> bool {
    let ok = cfg!(all(target_arch = "x86_64", target_os = "linux"));
    if !ok {
        eprintln!("SKIP {test}: the host CPU oracle needs an x86-64 Linux host");
    }
    ok
}

/// Runs difftest; returns stdout after checking the summary line's counts.
fn difftest(args: &[&str], cases: u64) -> String {
    let mut all = vec!["difftest"];
    all.extend_from_slice(args);
    let r = gantry(&all, b"", T);
    assert!(!r.timed_out, "{all:?} hung");
    let summary = r.stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        summary.starts_with(&format!("difftest: {cases} cases, 0 mismatches, 0 not run")),
        "{all:?}:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.status, Some(0), "{all:?}: {}", r.stderr);
    r.stdout
}

/// The fixed-seed run the suite makes per mode and oracle: 20,000 cases, seed 1, all must
/// agree. Returns the report's header line.
fn twenty_thousand(mode: &str, oracle: &str) -> String {
    twenty_thousand_on(mode, oracle, "interp")
}

fn twenty_thousand_on(mode: &str, oracle: &str, backend: &str) -> String {
    run_set("integer", 20000, mode, oracle, backend)
}

/// A fixed-seed run of `count` cases of `set`; returns the report's header line.
fn run_set(set: &str, count: u64, mode: &str, oracle: &str, backend: &str) -> String {
    run_at_cpl(set, count, mode, "3", oracle, backend)
}

fn run_at_cpl(set: &str, count: u64, mode: &str, cpl: &str, oracle: &str, backend: &str) -> String {
    let count_arg = count.to_string();
    let args = [
        "--cpl",
        cpl,
        "--seed",
        "1",
        "--count",
        &count_arg,
        "--set",
        set,
        "--mode",
        mode,
        "--oracle",
        oracle,
        "--backend",
        backend,
    ];
    let out = difftest(&args, count);
    println!("{}", out.lines().last().unwrap_or_default());
    let header = out.lines().next().unwrap_or_default().to_string();
    // The model is the host's vendor's, and the header says whether undefined flags are
    // compared on this host (they are not where the vendor's rules were not measured).
    assert!(
        header.contains(" model)") && header.contains("undefined flags"),
        "{header}"
    );
    if header.contains("undefined flags not compared") {
        eprintln!("NOTE: {header}");
    }
    header
}

#[test]
fn twenty_thousand_64_bit_cases_agree_with_the_host_cpu() {
    if host_oracle("twenty_thousand_64_bit_cases_agree_with_the_host_cpu") {
        twenty_thousand("64", "host");
    }
}

/// Compatibility mode: the same instructions with 32-bit operands and addresses, segment
/// limits (a flat 4 GiB segment still faults past its end) and the legacy-only forms.
#[test]
fn twenty_thousand_32_bit_cases_agree_with_the_host_cpu() {
    if host_oracle("twenty_thousand_32_bit_cases_agree_with_the_host_cpu") {
        twenty_thousand("32", "host");
    }
}

/// 16-bit code: a 16-bit code segment with 16-bit data and stack segments (64 KiB limits),
/// 16-bit addressing that wraps at 64 KiB, and 32-bit operands and addresses by prefix.
#[test]
fn twenty_thousand_16_bit_cases_agree_with_the_host_cpu() {
    if host_oracle("twenty_thousand_16_bit_cases_agree_with_the_host_cpu") {
        twenty_thousand("16", "host");
    }
}

/// Legacy protected mode (a 32-bit kernel with 32-bit paging, its TSS and IDT), 32- and
/// 16-bit code at CPL 3. The host runs these cases in compatibility mode, whose user-level
/// semantics are legacy protected mode's; the sandbox reports exceptions in the same terms
/// whichever kernel delivered them.
#[test]
fn twenty_thousand_legacy_protected_mode_cases_per_mode_agree_with_the_host_cpu() {
    let test = "twenty_thousand_legacy_protected_mode_cases_per_mode_agree_with_the_host_cpu";
    if host_oracle(test) {
        for mode in ["pm32", "pm16"] {
            let header = run_set("all", 20000, mode, "host", "interp");
            assert!(
                header.contains("legacy protected mode")
                    && header.contains("(in compatibility mode)"),
                "{header}"
            );
        }
    }
}

/// The Cranelift tier against the host CPU: every block compiled the first time it runs.
#[test]
fn twenty_thousand_cases_per_mode_agree_with_the_host_cpu_on_the_jit() {
    if host_oracle("twenty_thousand_cases_per_mode_agree_with_the_host_cpu_on_the_jit") {
        for mode in ["64", "32", "16"] {
            let header = twenty_thousand_on(mode, "host", "jit");
            assert!(
                header.contains("backend gantry (Cranelift JIT, "),
                "{header}"
            );
        }
    }
}

/// The SSE set: XMM registers and MXCSR compared after SSE2 integer, logic, move,
/// shuffle and scalar double-precision instructions (exception flags included), from
/// edge values (signed zeros, infinities, quiet and signalling NaNs, denormals, the
/// integer conversion limits), with aligned and misaligned 16-byte memory operands.
#[test]
fn twenty_thousand_sse_cases_per_mode_agree_with_the_host_cpu() {
    if host_oracle("twenty_thousand_sse_cases_per_mode_agree_with_the_host_cpu") {
        for mode in ["64", "32", "16"] {
            let header = run_set("sse", 20000, mode, "host", "interp");
            assert!(header.contains("SSE set"), "{header}");
        }
    }
}

/// The x87 set: the control and status instructions Gantry implements (FNINIT, FLDCW,
/// FNSTCW, FNSTSW and their WAIT forms), with the x87 control, status and tag words
/// compared. The header counts the arithmetic forms, not implemented yet.
#[test]
fn twenty_thousand_x87_cases_per_mode_agree_with_the_host_cpu() {
    if host_oracle("twenty_thousand_x87_cases_per_mode_agree_with_the_host_cpu") {
        for mode in ["64", "32", "16"] {
            let header = run_set("x87", 20000, mode, "host", "interp");
            assert!(
                header.contains("x87 set") && header.contains("x87 forms not implemented"),
                "{header}"
            );
        }
    }
}

/// Integer, SSE and x87 instructions mixed in one snippet, on the Cranelift tier.
#[test]
fn mixed_integer_and_sse_cases_agree_with_the_host_cpu_on_the_jit() {
    if host_oracle("mixed_integer_and_sse_cases_agree_with_the_host_cpu_on_the_jit") {
        for mode in ["64", "32", "16"] {
            let header = run_set("all", 5000, mode, "host", "jit");
            assert!(header.contains("integer, SSE and x87 set"), "{header}");
        }
    }
}

/// The SSE set under KVM: XMM registers and MXCSR go into the vCPU and come back. The
/// first cases are register-only ones a fresh vCPU runs first (a KVM that kept the
/// x87/SSE state marked unused would load zeros for them) and that set MXCSR's flags.
/// A software-assisted KVM (kvm_pvm) handles a misaligned SSE operand's #GP in its
/// instruction emulator, which cannot emulate SSE and injects #UD: there the generated
/// run is skipped and the host CPU is the oracle for SSE.
#[test]
fn sse_cases_agree_with_kvm() {
    let test = "sse_cases_agree_with_kvm";
    if !kvm_available(test) {
        return;
    }
    let dir = scratch("difftest-sse-kvm");
    let zeros = "gpr=0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0";
    let xmm = "xmm=3ff00000000000003fb999999999999a,3fd5555555555555c004000000000000,\
               0,0,0,0,0,0,0,0,0,0,0,0,0,ffffffffffffffff0000000000000001";
    let cases = [
        // ADDSD xmm0, xmm1 (inexact: PE), MOVLHPS xmm2, xmm15, PXOR xmm1, xmm15.
        format!("64 code=f20f58c1 rflags=0 data=zero {zeros} {xmm}"),
        format!("64 code=410f16d7 rflags=0 data=zero {zeros} {xmm}"),
        format!("64 code=66410fefcf rflags=0 data=zero {zeros} {xmm}"),
    ];
    let path = write_file(&dir, "sse.txt", (cases.join("\n") + "\n").as_bytes());
    let out = difftest(&["--corpus", &path, "--oracle", "kvm"], cases.len() as u64);
    println!("{}", out.lines().last().unwrap_or_default());
    if let Some(kind) = gantry_machine::accel::kvm_software_assisted() {
        eprintln!(
            "SKIP {test} (generated cases): this host's KVM is software-assisted ({kind}); \
             it answers #UD for a misaligned SSE operand, where the CPU raises #GP(0)"
        );
        return;
    }
    run_set("sse", 20000, "64", "kvm", "interp");
}

/// Ring 0 under KVM: the sandbox's kernel segments, its read-only kernel pages (CR0.WP),
/// delivery through IST1, and the HLT that ends a ring-0 snippet. The inline cases are
/// ones KVM's instruction emulator can run too, so that a software-assisted KVM checks
/// them: kernel pages read and written from 64-, 32- and 16-bit code, #DE, and PUSH/POP.
/// The generated runs (long mode at CPL 0; legacy protected mode at CPL 3 and 0) need
/// KVM on the silicon: a software-assisted KVM (kvm_pvm) runs ring-0 code in its
/// emulator, which executes LZCNT as BSR, computes AAM's flags and CMPXCHG's write-back
/// otherwise, mis-sizes ENTER with an operand-size prefix, writes the first part of a
/// store that faults on its second page, and cannot emulate some instructions at all
/// (every one of those cases, run at CPL 3 on the host CPU, agrees with Gantry); and it
/// triple-faults at the first instruction of legacy protected mode.
#[test]
fn ring0_and_legacy_protected_mode_cases_agree_with_kvm() {
    let test = "ring0_and_legacy_protected_mode_cases_agree_with_kvm";
    if !kvm_available(test) {
        return;
    }
    let dir = scratch("difftest-ring0-kvm");
    let gpr = |rax: &str, rsp: &str| format!("gpr={rax},0,0,0,{rsp},0,0,0,0,0,0,0,0,0,0,0");
    let (sp64, sp16) = ("10002100", "2100");
    let cases = [
        // MOV EAX, [8000h] and MOV [8000h], EAX: the kernel's read-only stub page.
        format!("64 code=8b042500800000 {}", gpr("0", sp64)),
        format!("64 code=89042500800000 {}", gpr("0", sp64)),
        format!("32 code=8b0500800000 {}", gpr("0", sp64)),
        format!("32 code=890500800000 {}", gpr("0", sp64)),
        // DIV RBX by zero; PUSH RAX, POP RCX.
        format!("64 code=48f7f3 {}", gpr("1", sp64)),
        format!("64 code=5059 {}", gpr("1234567890abcdef", sp64)),
        format!("32 code=5059 {}", gpr("12345678", sp64)),
        format!("16 code=5059 {}", gpr("1234", sp16)),
        format!("16 code=f7f3 {}", gpr("1", sp16)),
    ]
    .map(|c| c.replacen(" gpr=", " rflags=0 data=zero cpl=0 gpr=", 1));
    let path = write_file(&dir, "ring0.txt", (cases.join("\n") + "\n").as_bytes());
    let out = difftest(&["--corpus", &path, "--oracle", "kvm"], cases.len() as u64);
    println!("{}", out.lines().last().unwrap_or_default());
    if let Some(kind) = gantry_machine::accel::kvm_software_assisted() {
        eprintln!(
            "SKIP {test} (generated cases): this host's KVM is software-assisted ({kind}); \
             its ring-0 answers are its instruction emulator's, and it cannot run legacy \
             protected mode"
        );
        return;
    }
    for mode in ["64", "32", "16", "pm32", "pm16"] {
        run_at_cpl("integer", 20000, mode, "0", "kvm", "interp");
    }
    for mode in ["pm32", "pm16"] {
        run_set("integer", 20000, mode, "kvm", "interp");
    }
}

/// The KVM oracle: the sandbox guest Gantry runs, run by a KVM vCPU instead (exception
/// delivery, page tables and descriptor tables included).
#[test]
fn twenty_thousand_64_bit_cases_agree_with_kvm() {
    if !kvm_available("twenty_thousand_64_bit_cases_agree_with_kvm") {
        return;
    }
    let header = twenty_thousand("64", "kvm");
    assert!(header.contains("oracle KVM"), "{header}");
    if let Some(kind) = gantry_machine::accel::kvm_software_assisted() {
        assert!(
            header.contains("software-assisted") && header.contains(kind),
            "a software-assisted KVM must be labelled: {header}"
        );
    }
}

/// 32- and 16-bit code under KVM (compatibility mode). A software-assisted KVM (kvm_pvm)
/// does not run compatibility-mode code faithfully (#UD for the INT3 that ends every
/// 32-bit snippet; 16-bit code fetched as if CS's base were 0), so there the host CPU
/// stays the only oracle.
fn compatibility_mode_under_kvm(test: &str, mode: &str) {
    if !kvm_available(test) {
        return;
    }
    if let Some(kind) = gantry_machine::accel::kvm_software_assisted() {
        eprintln!(
            "SKIP {test}: this host's KVM is software-assisted ({kind}) and does not run \
             compatibility-mode code faithfully; the host-CPU test covers {mode}-bit code"
        );
        return;
    }
    twenty_thousand(mode, "kvm");
}

#[test]
fn twenty_thousand_32_bit_cases_agree_with_kvm() {
    compatibility_mode_under_kvm("twenty_thousand_32_bit_cases_agree_with_kvm", "32");
}

#[test]
fn twenty_thousand_16_bit_cases_agree_with_kvm() {
    compatibility_mode_under_kvm("twenty_thousand_16_bit_cases_agree_with_kvm", "16");
}

/// Real mode, which only KVM can run: the IVT, the real-mode frame on the snippet's own
/// stack, segment wrap and limits with no paging. A software-assisted KVM runs real-mode
/// code in KVM's instruction emulator, which is not the silicon: kvm_pvm executes LZCNT as
/// BSR, clears ESP's upper half when it injects an exception, delivers #SS where the CPU
/// shuts down, and cannot emulate some instructions at all. There the suite skips.
#[test]
fn twenty_thousand_real_mode_cases_agree_with_kvm() {
    let test = "twenty_thousand_real_mode_cases_agree_with_kvm";
    if !kvm_available(test) {
        return;
    }
    if let Some(kind) = gantry_machine::accel::kvm_software_assisted() {
        eprintln!(
            "SKIP {test}: this host's KVM is software-assisted ({kind}); it runs real-mode \
             code in KVM's instruction emulator, which differs from the CPU"
        );
        return;
    }
    twenty_thousand("real", "kvm");
}

#[test]
fn the_regression_corpus_agrees_with_the_host_cpu() {
    if !host_oracle("the_regression_corpus_agrees_with_the_host_cpu") {
        return;
    }
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/difftest/corpus.txt");
    let text = std::fs::read_to_string(corpus).unwrap();
    let cases = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count() as u64;
    assert!(cases >= 35, "the corpus lost cases: {cases}");
    // Cases marked with the vendor (and family) they were found on run only there; the
    // others say SKIP with the reason.
    let first = gantry(
        &["difftest", "--corpus", corpus, "--max-reports", "0"],
        b"",
        T,
    );
    let skipped = first
        .stdout
        .lines()
        .filter(|l| l.starts_with("SKIP "))
        .count() as u64;
    for l in first.stdout.lines().filter(|l| l.starts_with("SKIP ")) {
        eprintln!("{l}");
        assert!(
            l.contains("its answer is") && l.contains("this host is"),
            "{l}"
        );
    }
    let out = difftest(&["--corpus", corpus], cases - skipped);
    assert!(
        out.contains(&format!("({skipped} skipped)")),
        "the header counts the skipped cases:\n{out}"
    );
}

/// The vendor-specific cases can fail: on the host generation they were found on, the
/// other vendor's model (`--cpu`) must mismatch every one of them, which shows that the
/// undefined flags are compared there and that each case pins down a vendor rule.
#[test]
fn the_other_vendors_model_mismatches_the_vendor_specific_cases() {
    let test = "the_other_vendors_model_mismatches_the_vendor_specific_cases";
    if !host_oracle(test) {
        return;
    }
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/difftest/corpus.txt");
    let text = std::fs::read_to_string(corpus).unwrap();
    for (vendor, other) in [("amd", "intel"), ("intel", "amd")] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!(" vendor={vendor}")))
            .collect();
        if lines.is_empty() {
            eprintln!("SKIP {test}: the corpus has no case found on {vendor} yet");
            continue;
        }
        let dir = scratch("difftest-vendor-cases");
        let path = dir.join(format!("{vendor}.txt"));
        std::fs::write(&path, lines.join("\n")).unwrap();
        let path = path.display().to_string();
        let r = gantry(
            &[
                "difftest",
                "--corpus",
                &path,
                "--cpu",
                other,
                "--max-reports",
                "0",
            ],
            b"",
            T,
        );
        if let Some(skip) = r.stdout.lines().find(|l| l.starts_with("SKIP ")) {
            eprintln!("SKIP {test}: the {vendor} cases need their host ({skip})");
            continue;
        }
        let summary = r.stdout.lines().last().unwrap_or_default();
        let n = lines.len();
        assert!(
            summary.starts_with(&format!("difftest: {n} cases, {n} mismatches")),
            "--cpu {other} on the {vendor} cases:\n{}",
            r.stdout
        );
        assert_eq!(r.status, Some(1));
    }
}

/// The comparison can fail: RDTSC reads the host's TSC on one side and the emulated CPU's
/// on the other (which is why the generators leave it out), so the case must come back as
/// a mismatch, with the report and exit status 1.
#[test]
fn a_differing_case_is_reported_as_a_mismatch() {
    if !host_oracle("a_differing_case_is_reported_as_a_mismatch") {
        return;
    }
    let dir = scratch("difftest-mismatch");
    // RDTSC: EDX:EAX from the host's TSC against the emulated CPU's.
    let path = write_file(
        &dir,
        "rdtsc.txt",
        b"64 code=0f31 rflags=0 data=zero gpr=0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n",
    );
    let mut oracles = vec!["host"];
    if kvm_available("a_differing_case_is_reported_as_a_mismatch (KVM oracle)") {
        oracles.push("kvm");
    }
    for oracle in oracles {
        let r = gantry(&["difftest", "--corpus", &path, "--oracle", oracle], b"", T);
        assert_eq!(r.status, Some(1), "{oracle}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("MISMATCH"), "{oracle}: {}", r.stdout);
        assert!(r.stdout.contains("rdtsc"), "no disassembly: {}", r.stdout);
        assert!(r.stdout.contains("rax"), "no register table: {}", r.stdout);
        assert!(
            r.stdout.contains("1 cases, 1 mismatches"),
            "{oracle}: {}",
            r.stdout.lines().last().unwrap_or_default()
        );
    }
}

#[test]
fn bad_difftest_arguments_are_one_line_errors() {
    for (args, needle) in [
        (vec!["difftest", "--mode", "real"], "--oracle kvm"),
        (vec!["difftest", "--cpl", "0"], "--oracle kvm"),
        (vec!["difftest", "--cpl", "1"], "--cpl"),
        (vec!["difftest", "--set", "avx"], "--set"),
        (
            vec!["difftest", "--corpus", "/nonexistent/corpus"],
            "corpus",
        ),
        (vec!["difftest", "--cpu", "via"], "--cpu"),
    ] {
        let r = gantry(&args, b"", Duration::from_secs(30));
        let lines = r.stderr_lines();
        assert_eq!(r.status, Some(2), "{args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].contains(needle), "{args:?}: {lines:?}");
        // The message names the flags given, and only those.
        if !args.contains(&"--cpl") {
            assert!(!lines[0].contains("--cpl"), "{args:?}: {lines:?}");
        }
    }
    let dir = scratch("difftest-bad-corpus");
    let path = write_file(&dir, "bad.txt", b"64 code=zz rflags=0 data=zero gpr=0\n");
    let r = gantry(
        &["difftest", "--corpus", &path],
        b"",
        Duration::from_secs(30),
    );
    let lines = r.stderr_lines();
    assert_eq!(r.status, Some(2), "{lines:?}");
    assert!(lines[0].contains("line 1"), "{lines:?}");
}
