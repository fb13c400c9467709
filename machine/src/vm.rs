//! A Machine: memory + board + loaded guest + accelerator, and the run loop that restarts
//! the guest on reset.

use gantry_frontend::state::CpuState;
use gantry_frontend::vendor::Vendor;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Instant;

use gantry_devices::clock::{Clock, HostClock};
use gantry_devices::rtc::CmosState;
use gantry_devices::signals::SystemEvent;

use crate::accel::vcpu::{Ended, Vcpu, VcpuError};
use crate::accel::CpuStop;
use crate::board::{Board, BoardConfig, BoardEvent, SerialSink};
use crate::boot::{self, KernelImage, LoadError};
use crate::console::HostConsole;
use crate::layout::FIRMWARE_MAX;
use crate::memory::{GuestMemory, MemoryError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelKind {
    Kvm,
    Interp,
    Jit,
}

impl AccelKind {
    pub fn name(self) -> &'static str {
        match self {
            AccelKind::Kvm => "kvm",
            AccelKind::Interp => "interp",
            AccelKind::Jit => "jit",
        }
    }
}

pub enum BootSource {
    /// A raw ROM image mapped at the top of 4 GiB; the CPU starts at F000:FFF0.
    Firmware { name: String, image: Vec<u8> },
    Kernel {
        name: String,
        image: Vec<u8>,
        initrd: Option<(String, Vec<u8>)>,
        cmdline: String,
    },
}

pub struct MachineConfig {
    pub ram_size: u64,
    /// The disk drives (`--drive`, `--hda`, `--hdb`).
    pub drives: Vec<crate::drives::DriveSpec>,
    /// `--snapshot`: the guest's disk writes are dropped at exit.
    pub snapshot: bool,
    /// `--boot`: the BIOS's boot order in QEMU's letters.
    pub boot_order: String,
    /// How many CPUs (`--smp`), each with Gantry's local APIC on both backends (see
    /// `accel/kvm.rs` for why not KVM's in-kernel one).
    pub cpus: u32,
    pub boot: BootSource,
    pub accel: AccelKind,
    pub serial: SerialSink,
    pub console_input: bool,
    pub debugcon_port: Option<u16>,
    pub no_reboot: bool,
    /// The CPU model's vendor as asked for; `None`: Intel on the emulated CPU, the host's
    /// own under KVM.
    pub vendor: Option<Vendor>,
    /// With the JIT: name compiled blocks for perf in /tmp/perf-<pid>.map.
    pub perf_map: bool,
    /// The process exits when the run ends: the emulated CPU is then left to the exit
    /// instead of freed (its translations, tens of thousands of blocks after a Linux
    /// boot, took 80 ms to free), as QEMU leaves its translation cache to the exit.
    pub exit_after: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("{0}")]
    Memory(#[from] MemoryError),
    #[error("kernel {name}: {source}")]
    Kernel { name: String, source: LoadError },
    #[error("initrd {name}: {source}")]
    Initrd { name: String, source: LoadError },
    #[error("firmware {name}: {why}")]
    Firmware { name: String, why: String },
    #[error("--accel jit: {0}; use --accel interp")]
    JitUnavailable(String),
    #[error("--smp {0}: KVM runs one vCPU in Gantry so far; use --accel jit or interp for more")]
    SmpUnderKvm(u32),
    #[error("--cpu {asked}: KVM runs the host's own CPU, which is {host}; use --cpu host or --accel interp")]
    VendorUnderKvm { asked: Vendor, host: String },
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[error("{0}")]
    Kvm(#[from] crate::accel::kvm::KvmError),
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    #[error("--accel kvm needs an x86-64 Linux host")]
    KvmUnavailable,
    #[error("{0}")]
    Vcpu(#[from] VcpuError),
    #[error("{0}")]
    Drive(#[from] crate::drives::DriveError),
    /// The debugger (the `gantry-gdb` crate) failed.
    #[error("{0}")]
    Gdb(String),
    #[error("device setup: {0}")]
    Bus(#[from] gantry_devices::bus::BusError),
    #[error("serial output: {0}")]
    Serial(std::io::Error),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    PowerOff,
    DebugExit(u32),
    Quit,
    /// The guest reset (or triple-faulted) and `--no-reboot` was given.
    Reset {
        cause: String,
    },
    HaltedForever {
        rip: u64,
    },
    /// Ended by SIGINT/SIGTERM.
    Signal(i32),
}

impl RunOutcome {
    /// The process exit status: 0 for power-off and quit, `(V << 1) | 1` for the debug-exit
    /// port (as QEMU's isa-debug-exit), 3 for a guest that stopped itself otherwise.
    pub fn exit_status(&self) -> i32 {
        match self {
            RunOutcome::PowerOff | RunOutcome::Quit => 0,
            RunOutcome::DebugExit(v) => ((v << 1) | 1) as i32 & 0xFF,
            RunOutcome::Reset { .. } | RunOutcome::HaltedForever { .. } => 3,
            RunOutcome::Signal(s) => 128 + s,
        }
    }

    /// One line for the user, where the outcome needs one.
    pub fn message(&self) -> Option<String> {
        match self {
            RunOutcome::Reset { cause } => {
                Some(format!("guest reset ({cause}) and --no-reboot is set"))
            }
            RunOutcome::HaltedForever { rip } => Some(format!(
                "guest halted with interrupts disabled and nothing to wake it (HLT at RIP {rip:#x})"
            )),
            RunOutcome::Signal(s) => Some(format!("terminating on signal {s}")),
            _ => None,
        }
    }
}

pub struct Machine {
    /// Before `memory`, so dropped first: its devices reach guest RAM through regions
    /// that do not own the mapping (`GuestMemory::dma_memory`).
    pub board: Board,
    pub memory: GuestMemory,
    /// The CPU state at the guest's first instruction.
    pub entry: CpuState,
    pub format: &'static str,
    firmware_size: u64,
}

impl Machine {
    /// Builds memory, board and loads the guest (no accelerator yet).
    pub fn new(
        cfg: &MachineConfig,
        clock: Rc<dyn Clock>,
        console: HostConsole,
        cmos: Option<CmosState>,
        drives: &[crate::drives::OpenDrive],
    ) -> Result<Self, MachineError> {
        let (memory, entry, format, firmware_size) = match &cfg.boot {
            BootSource::Firmware { name, image } => {
                check_firmware(name, image)?;
                let mem = GuestMemory::new(cfg.ram_size, Some(image))?;
                (
                    mem,
                    CpuState::reset(),
                    "firmware (reset vector)",
                    image.len() as u64,
                )
            }
            BootSource::Kernel {
                name,
                image,
                initrd,
                cmdline,
            } => {
                let mut mem = GuestMemory::new(cfg.ram_size, None)?;
                if let Some((iname, data)) = initrd {
                    if data.is_empty() {
                        return Err(MachineError::Initrd {
                            name: iname.clone(),
                            source: LoadError::Empty,
                        });
                    }
                }
                let img = KernelImage {
                    kernel: image,
                    initrd: initrd.as_ref().map(|(_, d)| d.as_slice()),
                    cmdline,
                    local_apics: cfg.cpus,
                };
                let loaded = boot::load_kernel(&mut mem, &img).map_err(|e| match (&e, initrd) {
                    (LoadError::TooBig(m), Some((iname, _)))
                        if m.starts_with("initrd") || m.starts_with("module") =>
                    {
                        MachineError::Initrd {
                            name: iname.clone(),
                            source: e,
                        }
                    }
                    _ => MachineError::Kernel {
                        name: name.clone(),
                        source: e,
                    },
                })?;
                (mem, loaded.entry, loaded.format, 0)
            }
        };
        let serial = cfg.serial.try_clone().map_err(MachineError::Serial)?;
        let virtio = crate::drives::virtio_images(drives);
        // The emulated CPU drops translations of what devices overwrite; KVM caches
        // nothing.
        let log = gantry_devices::dma::DmaLog::new(cfg.accel != AccelKind::Kvm);
        let dma = Some((Rc::new(memory.dma_memory(log.clone())?), log));
        let board = Board::new(
            BoardConfig {
                ram_size: cfg.ram_size,
                serial,
                debugcon_port: cfg.debugcon_port,
                cmos,
                ide: crate::drives::ide_images(drives),
                local_apics: cfg.cpus,
                virtio,
                dma,
                firmware: matches!(cfg.boot, BootSource::Firmware { .. }),
                boot_order: cfg.boot_order.clone(),
                empty_cdrom: true,
            },
            clock,
            console,
        )?;
        Ok(Self {
            memory,
            board,
            entry,
            format,
            firmware_size,
        })
    }

    pub fn firmware_size(&self) -> u64 {
        self.firmware_size
    }
}

fn check_firmware(name: &str, image: &[u8]) -> Result<(), MachineError> {
    let len = image.len() as u64;
    let why = if len == 0 {
        Some("is empty".to_string())
    } else if !len.is_multiple_of(0x1_0000) {
        Some(format!("size {len} is not a multiple of 64 KiB"))
    } else if len > FIRMWARE_MAX {
        Some(format!("size {len} is larger than 16 MiB"))
    } else {
        None
    };
    match why {
        Some(why) => Err(MachineError::Firmware {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Statistics of a whole run, for `--stats`.
#[derive(Default)]
pub struct RunReport {
    pub text: String,
}

/// The host side of COM1 for `cfg`, with the termination signals caught (they end the run
/// cleanly, restoring the terminal).
pub fn host_console(cfg: &MachineConfig) -> HostConsole {
    crate::console::catch_termination_signals();
    if cfg.console_input {
        HostConsole::stdio()
    } else {
        HostConsole::none()
    }
}

/// Builds the machine and runs the guest until it stops for good, restarting it on reset
/// unless `no_reboot`. Returns the outcome and a `--stats` report.
pub fn run(cfg: MachineConfig) -> Result<(RunOutcome, RunReport), MachineError> {
    let started = Instant::now();
    let mut console = host_console(&cfg);
    let mut report = RunReport::default();
    let mut resets = 0u64;
    let mut cmos = None;
    // Opened once for the whole run: a reset keeps the images and their locks.
    let drives = crate::drives::open_all(&cfg.drives, cfg.snapshot)?;
    loop {
        let clock: Rc<dyn Clock> = Rc::new(HostClock::new());
        let mut machine = Machine::new(&cfg, clock, console, cmos.take(), &drives)?;
        let run = run_accel(&cfg, &mut machine);
        machine.board.flush();
        // However the run ended (power-off, quit, a signal, an error), what the guest
        // wrote reaches the host's disk before Gantry exits.
        flush_drives(&drives);
        let (stop, accel_stats, cpu) = run?;
        let outcome = outcome_of(stop);
        report.text = stats_text(&cfg, &machine, &accel_stats, resets, started);
        report.text.push_str(&drives_text(&drives, cfg.snapshot));
        cmos = Some(machine.board.save_cmos());
        console = machine.board.into_console();
        match outcome {
            RunOutcome::Reset { .. } if !cfg.no_reboot => {
                resets += 1;
                continue;
            }
            o => {
                // Only the emulated CPU: KVM's holds a timer that signals its thread.
                let emulated = matches!(cfg.accel, AccelKind::Interp | AccelKind::Jit);
                if cfg.exit_after && emulated {
                    std::mem::forget(cpu);
                }
                return Ok((o, report));
            }
        }
    }
}

/// Flushes every image, saying (on stderr) which could not be.
pub fn flush_drives(drives: &[crate::drives::OpenDrive]) {
    for d in drives {
        if let Err(e) = d.image.borrow_mut().flush() {
            eprintln!(
                "gantry: drive {}: flushing it failed: {e}",
                d.spec.path.display()
            );
        }
    }
}

/// The drives' lines for `--stats`.
fn drives_text(drives: &[crate::drives::OpenDrive], snapshot: bool) -> String {
    let mut text = String::new();
    for d in drives {
        let _ = writeln!(
            text,
            "drive {}: {} {} position {}, {} bytes{}{}",
            d.spec.path.display(),
            d.format,
            d.spec.interface.name(),
            d.spec.index.unwrap_or_default(),
            d.image.borrow().size(),
            if d.spec.read_only { ", read-only" } else { "" },
            if snapshot {
                ", --snapshot: writes dropped"
            } else {
                ""
            }
        );
    }
    text
}

/// What a CPU stop means for the run.
pub fn outcome_of(stop: CpuStop) -> RunOutcome {
    match stop {
        CpuStop::Board(BoardEvent::Quit) => RunOutcome::Quit,
        CpuStop::Board(BoardEvent::Signal(s)) => RunOutcome::Signal(s),
        CpuStop::Board(BoardEvent::System(SystemEvent::PowerOff)) => RunOutcome::PowerOff,
        CpuStop::Board(BoardEvent::System(SystemEvent::DebugExit(v))) => RunOutcome::DebugExit(v),
        CpuStop::Board(BoardEvent::System(SystemEvent::Reset { source })) => RunOutcome::Reset {
            cause: format!("reset requested through {source}"),
        },
        CpuStop::TripleFault { rip } => RunOutcome::Reset {
            cause: format!("triple fault at RIP {rip:#x}"),
        },
        CpuStop::HaltedForever { rip } => RunOutcome::HaltedForever { rip },
    }
}

/// The `--stats` report of a run.
pub fn stats_text(
    cfg: &MachineConfig,
    machine: &Machine,
    accel_stats: &str,
    resets: u64,
    started: Instant,
) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "boot: {}", machine.format);
    let _ = writeln!(text, "accelerator: {}", cfg.accel.name());
    let _ = writeln!(text, "{accel_stats}");
    machine.board.stats(&mut text);
    let _ = writeln!(text, "guest resets: {resets}");
    let _ = writeln!(text, "run time: {:.3} s", started.elapsed().as_secs_f64());
    text
}

/// Runs the guest on a new vCPU until it stops; returns the stop, the vCPU's `--stats`
/// and the vCPU (for [`run`] to free or leave to the exit).
fn run_accel(
    cfg: &MachineConfig,
    machine: &mut Machine,
) -> Result<(CpuStop, String, Box<dyn Vcpu>), MachineError> {
    let started = Instant::now();
    let mut cpu = new_vcpu(cfg, machine)?;
    let end = cpu.run_to_end(&mut machine.memory, &mut machine.board);
    let mut text = String::new();
    cpu.report(&mut text, started.elapsed().as_secs_f64());
    match end {
        Ended::Stop(stop) => Ok((stop, text.trim_end().to_string(), cpu)),
        Ended::Failed(e) => Err(e.into()),
    }
}

/// The one place that chooses a backend: the vCPU `--accel` names, starting in the
/// machine's entry state (main has resolved `auto`).
pub fn new_vcpu(cfg: &MachineConfig, machine: &Machine) -> Result<Box<dyn Vcpu>, MachineError> {
    match cfg.accel {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        AccelKind::Kvm => {
            if cfg.cpus > 1 {
                return Err(MachineError::SmpUnderKvm(cfg.cpus));
            }
            let host = crate::accel::emu::cpuid::host().map(|(v, _)| v);
            if let Some(asked) = cfg.vendor.filter(|v| Some(*v) != host) {
                let host = host.map_or("of no vendor Gantry models".into(), |v| v.to_string());
                return Err(MachineError::VendorUnderKvm { asked, host });
            }
            Ok(Box::new(crate::accel::kvm_vcpu::KvmVcpu::new(
                &machine.memory,
                &machine.entry,
            )?))
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        AccelKind::Kvm => Err(MachineError::KvmUnavailable),
        AccelKind::Interp | AccelKind::Jit => {
            let mut cpu = crate::accel::emu::EmuCpu::new(machine.entry.clone(), cfg.ram_size);
            cpu.set_vendor(cfg.vendor.unwrap_or_default());
            if cfg.cpus > 1 {
                cpu.set_cpu_count(cfg.cpus as usize);
            }
            if cfg.accel == AccelKind::Jit {
                cpu.enable_jit(
                    gantry_translator::jit::HOT,
                    crate::accel::emu::Compiles::Background,
                )
                .map_err(MachineError::JitUnavailable)?;
                if cfg.perf_map {
                    cpu.write_perf_map().map_err(MachineError::JitUnavailable)?;
                }
            }
            Ok(Box::new(cpu))
        }
    }
}

/// Is KVM usable on this host? (`--accel auto`.)
pub fn kvm_usable() -> Result<(), String> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        crate::accel::kvm::probe().map_err(|e| e.to_string())
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        Err("KVM needs an x86-64 Linux host".into())
    }
}
