//! `gantry`: parse the command line, build a machine, run it. Everything else lives in the
//! workspace crates; errors become one line on stderr and exit status 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod difftest_cmd;

use clap::{Parser, Subcommand, ValueEnum};
use gantry_machine::accel::emu::cpuid::{self, Vendor};
use gantry_machine::board::SerialSink;
use gantry_machine::drives::DriveSpec;
use gantry_machine::vm::{self, AccelKind, BootSource, MachineConfig};

#[derive(Parser)]
#[command(name = "gantry", version, about = "A full-system x86 PC emulator")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// `gantry` with no subcommand: `run` with its defaults (the embedded demo guest).
#[derive(Parser)]
struct RunOnly {
    #[command(flatten)]
    args: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest: a kernel (bzImage, multiboot, ELF with PVH note) or a firmware ROM.
    /// With neither, the embedded demo guest.
    Run(Box<RunArgs>),
    /// Compare the emulated CPU with the host CPU on random instruction streams.
    Difftest(difftest_cmd::DifftestArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Accel {
    /// KVM when /dev/kvm is usable, else the emulated CPU (interpreter).
    Auto,
    Kvm,
    Jit,
    Interp,
}

/// `--cpu`, for `run` and `difftest`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum CpuArg {
    Intel,
    Amd,
    Host,
}

/// The vendor `--cpu` names.
fn choose_vendor(c: CpuArg) -> Result<Vendor, String> {
    match c {
        CpuArg::Intel => Ok(Vendor::Intel),
        CpuArg::Amd => Ok(Vendor::Amd),
        CpuArg::Host => cpuid::host()
            .map(|(v, _)| v)
            .ok_or_else(|| "--cpu host: the host CPU is not an Intel or AMD x86-64".into()),
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel image: Linux bzImage, multiboot kernel, or ELF vmlinux with a PVH note.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (Linux initrd, PVH module, or multiboot module 0).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "", requires = "kernel")]
    append: String,
    /// Guest RAM, with an optional K, M or G suffix (bytes without one).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    mem: u64,
    /// A disk, in QEMU's words: file=PATH[,if=ide|virtio][,format=raw|qcow2][,readonly=on]
    /// [,cache=writeback|none|unsafe][,index=N] (repeatable).
    #[arg(long, value_name = "SPEC", value_parser = parse_drive)]
    drive: Vec<DriveSpec>,
    /// The guest's disk writes go to a temporary overlay, dropped at exit (the images are
    /// only read).
    #[arg(long)]
    snapshot: bool,
    /// The primary IDE master's image (--drive file=PATH,index=0).
    #[arg(long, value_name = "FILE")]
    hda: Option<PathBuf>,
    /// The primary IDE slave's image (--drive file=PATH,index=1).
    #[arg(long, value_name = "FILE")]
    hdb: Option<PathBuf>,
    /// How many CPUs (1 to 64). On the emulated CPU they take turns on one host thread.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    smp: u32,
    /// Raw firmware ROM mapped below 4 GiB and at 0xE0000 (the CPU starts at F000:FFF0).
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    bios: Option<PathBuf>,
    /// The BIOS's boot order, QEMU's letters: c the first hard disk, a floppy, d CD-ROM,
    /// n network.
    #[arg(long, value_name = "ORDER", default_value = gantry_machine::board::DEFAULT_BOOT_ORDER,
          value_parser = parse_boot_order)]
    boot: String,
    /// Which CPU runs the guest.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// The CPU model: its vendor decides CPUID's identity and the flags the manuals leave
    /// undefined (host: the vendor of the CPU Gantry runs on). Default: intel on the
    /// emulated CPU; KVM runs the host's CPU, so there only its vendor can be asked for.
    #[arg(long, value_enum)]
    cpu: Option<CpuArg>,
    /// Where COM1 goes: stdio, file:PATH, or none.
    #[arg(long, value_name = "stdio|file:PATH|none", default_value = "stdio", value_parser = parse_serial)]
    serial: SerialArg,
    /// Send bytes written to this I/O port to stderr (like QEMU's isa-debugcon; 0xE9 is usual).
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    debugcon: Option<u16>,
    /// On a guest reset or triple fault, stop (exit status 3) instead of rebooting.
    #[arg(long)]
    no_reboot: bool,
    /// Serve the GDB remote protocol on this TCP address (PORT, :PORT or HOST:PORT; the
    /// host defaults to 127.0.0.1). The guest runs until gdb attaches.
    #[arg(long, value_name = "ADDR", value_parser = parse_gdb_addr)]
    gdb: Option<String>,
    /// With --gdb: wait for gdb before the guest's first instruction (as QEMU's -S).
    #[arg(long, requires = "gdb")]
    gdb_wait: bool,
    /// Print counters (exits, interrupts, POST codes, unassigned ports) when the run ends.
    #[arg(long)]
    stats: bool,
    /// With --accel jit: write /tmp/perf-<pid>.map, naming each compiled block by its
    /// guest address, so that `perf report` shows where in the guest the time goes (as
    /// QEMU's -perfmap).
    #[arg(long)]
    perf_map: bool,
}

#[derive(Clone, Debug)]
enum SerialArg {
    Stdio,
    File(PathBuf),
    None,
}

const MIN_MEM: u64 = 2 << 20;
const MAX_MEM: u64 = 1 << 40;

fn parse_boot_order(s: &str) -> Result<String, String> {
    gantry_machine::board::check_boot_order(s).map(|()| s.to_string())
}

fn parse_drive(s: &str) -> Result<DriveSpec, String> {
    DriveSpec::parse(s)
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let not_a_size = || format!("'{s}' is not a size (examples: 256M, 1G, 65536)");
    if digits.is_empty() {
        return Err(not_a_size());
    }
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "'{s}': unknown size suffix '{suffix}' (use K, M or G)"
            ))
        }
    };
    let n: u64 = digits.parse().map_err(|_| not_a_size())?;
    let bytes = n
        .checked_mul(1 << shift)
        .filter(|b| *b <= MAX_MEM)
        .ok_or_else(|| format!("'{s}' is more than 1 TiB"))?;
    if bytes < MIN_MEM {
        return Err(format!("'{s}' is too small: at least 2M"));
    }
    if bytes % 4096 != 0 {
        return Err(format!("'{s}' is not a multiple of 4 KiB"));
    }
    Ok(bytes)
}

fn parse_gdb_addr(s: &str) -> Result<String, String> {
    let (host, port) = match s.rsplit_once(':') {
        Some(("", p)) => ("127.0.0.1", p),
        Some((h, p)) => (h, p),
        None => ("127.0.0.1", s),
    };
    match port.parse::<u16>() {
        Ok(p) => Ok(format!("{host}:{p}")),
        Err(_) => Err(format!("'{s}' is not PORT, :PORT or HOST:PORT")),
    }
}

fn parse_serial(s: &str) -> Result<SerialArg, String> {
    match s {
        "stdio" => Ok(SerialArg::Stdio),
        "none" => Ok(SerialArg::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialArg::File(PathBuf::from(p))),
            _ => Err(format!("'{s}' is not stdio, file:PATH or none")),
        },
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse::<u32>(),
    };
    match v {
        Ok(p) if p <= 0xFFFF => Ok(p as u16),
        _ => Err(format!("'{s}' is not an I/O port (0 to 0xffff)")),
    }
}

/// Reads a regular file of at most `limit` bytes: a FIFO or a device would block or never
/// end, so they are refused before they are opened.
fn read_file(role: &str, path: &Path, limit: u64, limit_name: &str) -> Result<Vec<u8>, String> {
    let fail = |why: String| format!("{role} {}: {why}", path.display());
    let io_why = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(io_why(e)))?;
    if meta.is_dir() {
        return Err(fail("is a directory".into()));
    }
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > limit {
        return Err(fail(format!(
            "{} bytes, larger than {limit_name}",
            meta.len()
        )));
    }
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut data))
        .map_err(|e| fail(io_why(e)))?;
    if data.len() as u64 > limit {
        return Err(fail(format!("grew past {limit_name} while being read")));
    }
    Ok(data)
}

/// The largest firmware image (`--bios`): what fits below 4 GiB's top 16 MiB.
const MAX_ROM: u64 = 16 << 20;

/// The backend `--accel` names; `auto` means KVM when usable and able to be the model
/// asked for (KVM is the host's own vendor).
fn choose_accel(a: Accel, vendor: Option<Vendor>) -> AccelKind {
    match a {
        Accel::Kvm => AccelKind::Kvm,
        Accel::Jit => AccelKind::Jit,
        Accel::Interp => AccelKind::Interp,
        Accel::Auto => {
            let host = cpuid::host().map(|(v, _)| v);
            let kvm_is_it = vendor.is_none() || vendor == host;
            if kvm_is_it && vm::kvm_usable().is_ok() {
                AccelKind::Kvm
            } else {
                AccelKind::Interp
            }
        }
    }
}

fn run(args: RunArgs) -> Result<i32, String> {
    let vendor = args.cpu.map(choose_vendor).transpose()?;
    let boot = if let Some(k) = &args.kernel {
        let mem = format!("--mem ({} bytes)", args.mem);
        let image = read_file("kernel", k, args.mem, &mem)?;
        let initrd = match &args.initrd {
            Some(p) => Some((
                p.display().to_string(),
                read_file("initrd", p, args.mem, &mem)?,
            )),
            None => None,
        };
        BootSource::Kernel {
            name: k.display().to_string(),
            image,
            initrd,
            cmdline: args.append.clone(),
        }
    } else if let Some(b) = &args.bios {
        BootSource::Firmware {
            name: b.display().to_string(),
            image: read_file("firmware", b, MAX_ROM, "16 MiB")?,
        }
    } else {
        BootSource::Firmware {
            name: "embedded demo guest".into(),
            image: gantry_roms::DEMO.to_vec(),
        }
    };
    let serial = match &args.serial {
        SerialArg::Stdio => SerialSink::Stdout,
        SerialArg::None => SerialSink::None,
        SerialArg::File(p) => SerialSink::File(
            std::fs::File::create(p).map_err(|e| format!("--serial file:{}: {e}", p.display()))?,
        ),
    };
    let console_input = matches!(args.serial, SerialArg::Stdio);
    let accel = choose_accel(args.accel, vendor);
    if args.gdb.is_some() && args.smp > 1 {
        return Err(format!(
            "--gdb with --smp {}: the gdbstub shows one CPU so far; use --smp 1",
            args.smp
        ));
    }
    if args.perf_map && accel != AccelKind::Jit {
        return Err("--perf-map names the JIT's code: it needs --accel jit".into());
    }
    let mut drives = args.drive.clone();
    for (path, index) in [(&args.hda, 0), (&args.hdb, 1)] {
        if let Some(p) = path {
            drives.push(DriveSpec::ide(p.clone(), Some(index)));
        }
    }
    let cfg = MachineConfig {
        ram_size: args.mem,
        drives,
        snapshot: args.snapshot,
        boot_order: args.boot.clone(),
        cpus: args.smp,
        boot,
        accel,
        serial,
        console_input,
        debugcon_port: args.debugcon,
        no_reboot: args.no_reboot,
        vendor,
        perf_map: args.perf_map,
        exit_after: true,
    };
    let (outcome, report) = match &args.gdb {
        Some(addr) => gantry_gdb::serve(cfg, addr, args.gdb_wait),
        None => vm::run(cfg),
    }
    .map_err(|e| e.to_string())?;
    if let Some(m) = outcome.message() {
        eprintln!("gantry: {m}");
    }
    if args.stats {
        eprint!("{}", report.text);
    }
    Ok(outcome.exit_status())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's own message, folded to one line (the usage block is left out).
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            eprintln!("gantry: {}", line.join(" ").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Run(a)) => run(*a),
        Some(Command::Difftest(a)) => difftest_cmd::difftest(a),
        None => run(RunOnly::parse_from(["gantry"]).args),
    };
    match result {
        Ok(status) => ExitCode::from(status as u8),
        Err(msg) => {
            eprintln!("gantry: {msg}");
            ExitCode::from(2)
        }
    }
}
