//! `gantry difftest`: Gantry's CPU against the host CPU or KVM on generated instruction
//! streams (or the cases of a corpus file). Exit status 0 when every case agrees, 1 on any
//! mismatch or case the oracle could not run, 2 on bad usage.

use std::io::Write;
use std::path::PathBuf;

use clap::ValueEnum;
use gantry_difftest::{self as difftest, corpus, emu::EmuRunner, flagmask, gen, Mode, Runner};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum ModeArg {
    #[value(name = "real")]
    Real,
    #[value(name = "16")]
    M16,
    #[value(name = "32")]
    M32,
    #[value(name = "64")]
    M64,
    #[value(name = "pm16")]
    Pm16,
    #[value(name = "pm32")]
    Pm32,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum CplArg {
    #[value(name = "0")]
    Ring0,
    #[value(name = "3")]
    Ring3,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum SetArg {
    Integer,
    X87,
    Sse,
    All,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum OracleArg {
    Host,
    Kvm,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum BackendArg {
    Interp,
    Jit,
}

#[derive(clap::Args)]
pub struct DifftestArgs {
    /// Seed of the generated cases (the same seed makes the same cases).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many cases to generate.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// The snippets' mode: 64-bit, 32-bit (compatibility mode), 16-bit (a 16-bit code
    /// segment in compatibility mode, with 16-bit data and stack segments); or, with the
    /// KVM oracle only, real mode and 16- or 32-bit code in legacy protected mode.
    #[arg(long, value_enum, default_value_t = ModeArg::M64)]
    mode: ModeArg,
    /// The privilege level the snippets run at (0: KVM oracle only; real-mode code is
    /// always at 0).
    #[arg(long, value_enum, default_value_t = CplArg::Ring3)]
    cpl: CplArg,
    /// Instructions to draw from (all = every set implemented so far).
    #[arg(long, value_enum, default_value_t = SetArg::Integer)]
    set: SetArg,
    /// What gives the expected answers: the host CPU running the snippet in a child
    /// process, or KVM running Gantry's sandbox guest (labelled when the host's KVM is
    /// software-assisted, whose ring-0 behaviour is its emulator's).
    #[arg(long, value_enum, default_value_t = OracleArg::Host)]
    oracle: OracleArg,
    /// Which of Gantry's CPU tiers is tested.
    #[arg(long, value_enum, default_value_t = BackendArg::Interp)]
    backend: BackendArg,
    /// Run the cases of this corpus file instead of generated ones.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["seed", "count", "mode", "set", "cpl"])]
    corpus: Option<PathBuf>,
    /// The CPU model tested: host (the vendor of this machine's CPU, so that its silicon
    /// is the oracle for undefined flags too), or another vendor's, to see where the two
    /// differ.
    #[arg(long, value_enum, default_value_t = crate::CpuArg::Host)]
    cpu: crate::CpuArg,
    /// Print at most this many mismatches in full (all are counted).
    #[arg(long, default_value_t = 10)]
    max_reports: u64,
}

pub fn difftest(args: DifftestArgs) -> Result<i32, String> {
    let mode = match args.mode {
        ModeArg::M64 => Mode::B64,
        ModeArg::M32 => Mode::B32,
        ModeArg::M16 => Mode::B16,
        ModeArg::Real => Mode::Real,
        ModeArg::Pm16 => Mode::Pm16,
        ModeArg::Pm32 => Mode::Pm32,
    };
    let cpl = if mode == Mode::Real || args.cpl == CplArg::Ring0 {
        0
    } else {
        3
    };
    if args.oracle == OracleArg::Host && args.corpus.is_none() {
        if let Some(why) = difftest::host_cannot_run(mode, cpl) {
            let cpl_flag = if args.cpl == CplArg::Ring0 {
                " --cpl 0"
            } else {
                ""
            };
            return Err(format!("--mode {}{cpl_flag}: {why}", mode.name()));
        }
    }
    let set = match args.set {
        SetArg::Integer => gen::Set::Integer,
        SetArg::Sse => gen::Set::Sse,
        SetArg::All => gen::Set::All,
        SetArg::X87 => gen::Set::X87,
    };
    let mut oracle = match args.oracle {
        OracleArg::Host => host_oracle()?,
        OracleArg::Kvm => kvm_oracle()?,
    };
    let oracle_name = if args.oracle == OracleArg::Host && mode.legacy() {
        format!("{} (in compatibility mode)", oracle.name())
    } else {
        oracle.name()
    };
    // The model of the host's vendor, so that its silicon is the oracle for the flags
    // the manuals leave undefined too.
    let policy = flagmask::policy();
    let vendor = crate::choose_vendor(args.cpu)?;
    let mut gantry = EmuRunner::new(args.backend == BackendArg::Jit, vendor)
        .map_err(|e| format!("the sandbox guest: {e}"))?;
    let mut out = std::io::stdout().lock();

    let summary = if let Some(path) = &args.corpus {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("corpus {}: {e}", path.display()))?;
        let entries =
            corpus::parse(&text).map_err(|e| format!("corpus {}: {e}", path.display()))?;
        let name = path.display().to_string();
        // A case whose answer is another vendor's (or generation's) silicon says so and
        // is left out.
        let (cases, other): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| e.found_on.is_none_or(|f| f.holds_on(policy.host)));
        let host = policy
            .host
            .map_or("of no vendor Gantry models".into(), |(v, f)| {
                format!("{v} family {f:#x}")
            });
        for e in &other {
            if let Some(f) = e.found_on {
                let _ = writeln!(
                    out,
                    "SKIP {name}:{}: its answer is {f}'s, and this host is {host}",
                    e.line
                );
            }
        }
        let _ = writeln!(
            out,
            "difftest: {} cases from {} ({} skipped), oracle {}, backend {}; {}",
            cases.len(),
            path.display(),
            other.len(),
            oracle.name(),
            gantry.name(),
            policy.describe()
        );
        difftest::run_cases(
            &mut *oracle,
            &mut gantry,
            cases
                .into_iter()
                .map(|e| (format!("{name}:{}", e.line), e.case)),
            args.max_reports,
            &mut out,
        )
    } else {
        let mut g = gen::Generator::new(mode, set, args.seed);
        if cpl == 0 {
            g = g.at_cpl0();
        }
        let at_cpl = if cpl != mode.default_cpl() {
            format!(" at CPL {cpl}")
        } else {
            String::new()
        };
        let left_out = gen::unimplemented_forms(mode, set)
            .map(|n| format!("; {n} forms not implemented yet, not generated"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "difftest: {}{at_cpl}, {} set ({} instruction forms{left_out}), seed {}, {} \
             cases, oracle {}, backend {}; {}",
            mode.describe(),
            set.name(),
            g.form_count(),
            args.seed,
            args.count,
            oracle_name,
            gantry.name(),
            policy.describe()
        );
        difftest::run_cases(
            &mut *oracle,
            &mut gantry,
            (0..args.count).map(|i| (format!("case {i} (seed {})", args.seed), g.case(i))),
            args.max_reports,
            &mut out,
        )
    };
    let unstable = match summary.oracle_unstable {
        0 => String::new(),
        n => format!(" ({n} answered otherwise when run again)"),
    };
    let _ = writeln!(
        out,
        "difftest: {} cases, {} mismatches, {} not run{unstable}, {:.1} s ({:.0} cases/s)",
        summary.cases,
        summary.mismatches,
        summary.oracle_failures,
        summary.seconds,
        summary.cases as f64 / summary.seconds.max(1e-9)
    );
    Ok(if summary.mismatches == 0 && summary.oracle_failures == 0 {
        0
    } else {
        1
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn host_oracle() -> Result<Box<dyn Runner>, String> {
    difftest::host::HostOracle::new()
        .map(|o| Box::new(o) as Box<dyn Runner>)
        .map_err(|e| format!("the host CPU oracle: {e}"))
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn host_oracle() -> Result<Box<dyn Runner>, String> {
    Err("the host CPU oracle needs an x86-64 Linux host".into())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn kvm_oracle() -> Result<Box<dyn Runner>, String> {
    difftest::kvm::KvmOracle::new()
        .map(|o| Box::new(o) as Box<dyn Runner>)
        .map_err(|e| format!("the KVM oracle: {e}"))
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn kvm_oracle() -> Result<Box<dyn Runner>, String> {
    Err("the KVM oracle needs an x86-64 Linux host with /dev/kvm".into())
}
