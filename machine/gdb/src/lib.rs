//! The GDB remote protocol (`--gdb ADDR`, `--gdb-wait`), served with the gdbstub crate.
//!
//! One guest CPU (the emulated one or a KVM vCPU, behind `gantry_machine`'s `Vcpu`), one
//! gdb at a time. Without `--gdb-wait` the guest runs at once and gdb
//! may attach whenever it likes (the guest stops when it does, as under QEMU); with it,
//! the guest waits for gdb before its first instruction. `detach` lets the guest run on
//! and another gdb attach; `kill` ends Gantry. A guest reset keeps the connection, the
//! breakpoints and the watchpoints; power-off, the debug-exit port and the other ends of
//! a run are reported to gdb as the inferior exiting with Gantry's exit status.

mod conn;
mod monitor;
pub mod regs;

use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use gdbstub::common::Signal;
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind as GdbWatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::ext::target_description_xml_override::{
    TargetDescriptionXmlOverride, TargetDescriptionXmlOverrideOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};

use gantry_devices::clock::{Clock, HostClock};

use gantry_machine::accel::emu::debug::{DebugStop, WatchKind, Watchpoint};
use gantry_machine::accel::emu::paging::{self, PagingRegs};
use gantry_machine::accel::vcpu::{DebugRequest, Ended, Vcpu};
use gantry_machine::console::HostConsole;
use gantry_machine::vm::{
    outcome_of, stats_text, Machine, MachineConfig, MachineError, RunOutcome, RunReport,
};
use regs::Layout;

/// How long a halted guest sleeps before the stub looks at its connection again.
const POLL: Duration = Duration::from_millis(20);

/// The stub's packet buffer (gdbstub's default, set explicitly because reads depend on it:
/// see [`OversizeRead`]).
const PACKET_SIZE: usize = 4096;

/// gdbstub answers an `m` longer than its packet buffer in buffer-sized chunks within one
/// reply, so an error from a later chunk would follow data already sent (a malformed
/// reply), and data after an unreadable gap would land at the wrong addresses. gdb itself
/// never asks for more than half a packet (the reply is hex), so a read longer than that
/// is such a chunk; the read that starts where it ended continues the same request.
#[derive(Clone, Copy, Debug)]
struct OversizeRead {
    next: u64,
    /// An earlier chunk came up short: the later ones add nothing (a short read).
    stopped: bool,
}

/// The machine and CPU a gdb session drives, rebuilt in place on a guest reset.
pub struct Session {
    cfg: MachineConfig,
    machine: Machine,
    cpu: Box<dyn Vcpu>,
    resets: u64,
    started: Instant,
    /// Breakpoints and watchpoints gdb set, as linear addresses.
    sw_breaks: Vec<u64>,
    hw_breaks: Vec<u64>,
    watches: Vec<Watchpoint>,
    /// The description chosen when gdb connected.
    layout: Layout,
    /// How the run ended, once it has.
    ended: Option<RunOutcome>,
    /// Set by gdb's resume/step, consumed by the event loop.
    stepping: bool,
    /// The backend failed; the session ends with this error.
    failed: Option<MachineError>,
    /// Where gdb last saw the CPU stop (linear PC): resuming there executes a breakpoint
    /// at that instruction instead of reporting it again. None after a reset, so a
    /// breakpoint at the new entry point stops the guest.
    stopped_at: Option<u64>,
    /// The `m` request being answered in chunks, if any.
    oversize_read: Option<OversizeRead>,
    /// What the connection saw of the packet being handled.
    packet_check: conn::PacketCheck,
    /// The disk images, open for the whole session (resets keep them).
    drives: Vec<gantry_machine::drives::OpenDrive>,
}

impl Drop for Session {
    /// However the session ends, what the guest wrote reaches the host's disk.
    fn drop(&mut self) {
        gantry_machine::vm::flush_drives(&self.drives);
    }
}

impl Session {
    fn new(cfg: MachineConfig, console: HostConsole) -> Result<Self, MachineError> {
        let drives = gantry_machine::drives::open_all(&cfg.drives, cfg.snapshot)?;
        let machine = build_machine(&cfg, console, None, &drives)?;
        let cpu = gantry_machine::vm::new_vcpu(&cfg, &machine)?;
        let mut s = Self {
            cfg,
            machine,
            cpu,
            resets: 0,
            started: Instant::now(),
            sw_breaks: Vec::new(),
            hw_breaks: Vec::new(),
            watches: Vec::new(),
            layout: Layout::X86_64,
            ended: None,
            stepping: false,
            failed: None,
            stopped_at: None,
            oversize_read: None,
            packet_check: conn::PacketCheck::default(),
            drives,
        };
        s.machine.board.set_max_wait(Some(POLL));
        s.apply_debug().map_err(MachineError::Gdb)?;
        Ok(s)
    }

    /// A guest reset (or `monitor reset`): a fresh board and CPU, CMOS kept, as the plain
    /// run loop does.
    fn reset(&mut self) -> Result<(), MachineError> {
        self.machine.board.flush();
        let cmos = self.machine.board.save_cmos();
        let console = self.machine.board.take_console();
        self.machine = build_machine(&self.cfg, console, Some(cmos), &self.drives)?;
        self.machine.board.set_max_wait(Some(POLL));
        self.cpu = gantry_machine::vm::new_vcpu(&self.cfg, &self.machine)?;
        self.stopped_at = None;
        if let Err(e) = self.apply_debug() {
            // The new guest has not mapped where a breakpoint was (yet): gdb keeps it,
            // and it is planted again when gdb next resumes.
            eprintln!("gantry: after the reset: {e}");
        }
        self.resets += 1;
        Ok(())
    }

    /// Gives the backend gdb's breakpoints, watchpoints and step request; `Err` says
    /// what it cannot do.
    fn apply_debug(&mut self) -> Result<(), String> {
        let resuming = self.stopped_at == Some(self.cpu.state().linear_rip());
        let req = DebugRequest {
            sw_breaks: self.sw_breaks.clone(),
            hw_breaks: self.hw_breaks.clone(),
            watches: self.watches.clone(),
            step: self.stepping,
            resuming,
        };
        self.cpu.set_debug(&mut self.machine.memory, &req)
    }

    /// Adds a breakpoint or watchpoint with `add`; if the backend cannot take it, takes it
    /// back and tells gdb so (gdb then says it could not insert it).
    fn try_insert(&mut self, add: impl FnOnce(&mut Self), undo: impl FnOnce(&mut Self)) -> bool {
        add(self);
        match self.apply_debug() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("gantry: gdb: {e}");
                undo(self);
                let _ = self.apply_debug();
                false
            }
        }
    }

    /// Runs one slice; `Err` once the run has ended for good.
    fn run_slice(&mut self) -> Result<DebugStop, RunOutcome> {
        let stop = match self
            .cpu
            .run(&mut self.machine.memory, &mut self.machine.board)
        {
            Ok(s) => return Ok(s),
            Err(Ended::Stop(stop)) => stop,
            Err(Ended::Failed(e)) => {
                self.failed = Some(e.into());
                return Err(RunOutcome::Quit);
            }
        };
        match outcome_of(stop) {
            RunOutcome::Reset { .. } if !self.cfg.no_reboot => match self.reset() {
                Ok(()) => Ok(DebugStop::Slice),
                Err(e) => {
                    eprintln!("gantry: {e}");
                    Err(RunOutcome::Quit)
                }
            },
            o => Err(o),
        }
    }

    fn report(&self) -> RunReport {
        let mut text = String::new();
        self.cpu
            .report(&mut text, self.started.elapsed().as_secs_f64());
        RunReport {
            text: stats_text(
                &self.cfg,
                &self.machine,
                text.trim_end(),
                self.resets,
                self.started,
            ),
        }
    }

    /// Linear -> physical through the guest's page tables, without touching them.
    fn translate(&self, linear: u64) -> Option<u64> {
        paging::phys_of(
            &self.machine.memory,
            &PagingRegs::of(self.cpu.state()),
            linear,
        )
    }
}

fn build_machine(
    cfg: &MachineConfig,
    console: HostConsole,
    cmos: Option<gantry_devices::rtc::CmosState>,
    drives: &[gantry_machine::drives::OpenDrive],
) -> Result<Machine, MachineError> {
    let clock: Rc<dyn Clock> = Rc::new(HostClock::new());
    Machine::new(cfg, clock, console, cmos, drives)
}

/// Runs the guest with a gdb server on `addr` until the run ends (`gantry run --gdb`;
/// `wait`: `--gdb-wait`).
pub fn serve(
    cfg: MachineConfig,
    addr: &str,
    wait: bool,
) -> Result<(RunOutcome, RunReport), MachineError> {
    let console = gantry_machine::vm::host_console(&cfg);
    let listener =
        TcpListener::bind(addr).map_err(|e| MachineError::Gdb(format!("--gdb {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| MachineError::Gdb(format!("--gdb {addr}: {e}")))?;
    listener
        .set_nonblocking(!wait)
        .map_err(|e| MachineError::Gdb(format!("--gdb {addr}: {e}")))?;
    eprintln!(
        "gantry: gdb server on {local}{}",
        if wait {
            "; waiting for gdb before the first instruction"
        } else {
            ""
        }
    );
    let mut session = Session::new(cfg, console)?;
    loop {
        let ended = match accept(&listener, &mut session)? {
            Ok(stream) => debug_connection(&mut session, stream)?,
            Err(outcome) => Some(outcome),
        };
        if let Some(e) = session.failed.take() {
            return Err(e);
        }
        if let Some(outcome) = ended {
            return Ok((outcome, session.report()));
        }
        // Detached: the guest runs on and another gdb may attach.
        session.sw_breaks.clear();
        session.hw_breaks.clear();
        session.watches.clear();
        session.stepping = false;
        if let Err(e) = session.apply_debug() {
            eprintln!("gantry: gdb detach: {e}");
        }
        let _ = listener.set_nonblocking(true);
    }
}

/// Waits for gdb, running the guest meanwhile if the listener is non-blocking. The inner
/// `Err` is the run ending before anyone attached.
fn accept(
    listener: &TcpListener,
    session: &mut Session,
) -> Result<Result<TcpStream, RunOutcome>, MachineError> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return Ok(Ok(stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(MachineError::Gdb(format!("accepting gdb: {e}"))),
        }
        // Nobody yet: run a slice of guest.
        if let Err(outcome) = session.run_slice() {
            return Ok(Err(outcome));
        }
    }
}

/// Serves one gdb connection. Returns the run's outcome if it ended (or gdb killed it),
/// None if gdb detached.
fn debug_connection(
    session: &mut Session,
    stream: TcpStream,
) -> Result<Option<RunOutcome>, MachineError> {
    session.layout = Layout::for_state(session.cpu.state());
    session.stepping = false;
    session.stopped_at = Some(session.cpu.state().linear_rip());
    session.apply_debug().map_err(MachineError::Gdb)?;
    let stream = conn::CheckedStream::new(stream, session.packet_check.clone());
    let gdb = GdbStub::builder(stream)
        .packet_buffer_size(PACKET_SIZE)
        .build()
        .map_err(|e| MachineError::Gdb(format!("gdb stub: {e:?}")))?;
    match gdb.run_blocking::<EventLoop>(session) {
        Ok(DisconnectReason::Disconnect) => Ok(None),
        Ok(DisconnectReason::Kill) => Ok(Some(RunOutcome::Quit)),
        Ok(DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_)) => {
            Ok(Some(session.ended.clone().unwrap_or(RunOutcome::Quit)))
        }
        Err(e) => {
            if let Some(o) = session.ended.clone() {
                return Ok(Some(o));
            }
            // A connection that dies is a detach: the guest runs on.
            eprintln!("gantry: gdb connection ended: {e:?}");
            Ok(None)
        }
    }
}

enum EventLoop {}

impl BlockingEventLoop for EventLoop {
    type Target = Session;
    type Connection = conn::CheckedStream;
    type StopReason = SingleThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Self::Target,
        conn: &mut Self::Connection,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<(), std::io::Error>> {
        loop {
            if conn
                .peek()
                .map_err(WaitForStopReasonError::Connection)?
                .is_some()
            {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
            let stop = match target.run_slice() {
                Ok(DebugStop::Slice) => continue,
                Ok(DebugStop::Step) => SingleThreadStopReason::DoneStep,
                Ok(DebugStop::Breakpoint) => {
                    let at = target.cpu.state().linear_rip();
                    if target.sw_breaks.contains(&at) {
                        SingleThreadStopReason::SwBreak(())
                    } else {
                        SingleThreadStopReason::HwBreak(())
                    }
                }
                Ok(DebugStop::Watch(hit)) => SingleThreadStopReason::Watch {
                    tid: (),
                    kind: match hit.watch.kind {
                        WatchKind::Write => GdbWatchKind::Write,
                        WatchKind::Read => GdbWatchKind::Read,
                        WatchKind::Access => GdbWatchKind::ReadWrite,
                    },
                    addr: hit.addr,
                },
                Err(_) if target.failed.is_some() => {
                    // The backend failed: gdb sees the inferior killed; Gantry then
                    // reports the error and exits non-zero.
                    target.ended = Some(RunOutcome::Quit);
                    SingleThreadStopReason::Terminated(Signal::SIGKILL)
                }
                Err(outcome) => {
                    if let Some(m) = outcome.message() {
                        eprintln!("gantry: {m}");
                    }
                    let status = outcome.exit_status() as u8;
                    target.ended = Some(outcome);
                    SingleThreadStopReason::Exited(status)
                }
            };
            target.stopped_at = Some(target.cpu.state().linear_rip());
            let _ = conn.flush();
            return Ok(Event::TargetStopped(stop));
        }
    }

    fn on_interrupt(target: &mut Self::Target) -> Result<Option<Self::StopReason>, ()> {
        target.stopped_at = Some(target.cpu.state().linear_rip());
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

/// The gdbstub architecture: register bytes in the layout chosen at connection time.
pub enum GantryX86 {}

/// The `g` packet's bytes, already laid out (see [`regs`]), and the pc they show.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RegBytes {
    bytes: Vec<u8>,
    pc: u64,
}

impl gdbstub::arch::Registers for RegBytes {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.pc
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        for b in &self.bytes {
            write_byte(Some(*b));
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        self.bytes = bytes.to_vec();
        Ok(())
    }
}

impl gdbstub::arch::Arch for GantryX86 {
    type Usize = u64;
    type Registers = RegBytes;
    type RegId = ();
    type BreakpointKind = usize;
}

impl Target for Session {
    type Arch = GantryX86;
    type Error = ();

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    fn support_target_description_xml_override(
        &mut self,
    ) -> Option<TargetDescriptionXmlOverrideOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for Session {
    fn read_registers(&mut self, regs: &mut RegBytes) -> TargetResult<(), Self> {
        regs.bytes = regs::serialize(self.layout, self.cpu.state());
        regs.pc = regs::pc(self.layout, self.cpu.state());
        Ok(())
    }

    fn write_registers(&mut self, regs: &RegBytes) -> TargetResult<(), Self> {
        let layout = self.layout;
        let mut s = self.cpu.state().clone();
        let rip = s.rip;
        if let Err(regs::Refused(why)) = regs::deserialize(layout, &mut s, &regs.bytes) {
            eprintln!("gantry: gdb register write refused: {why}");
            return Err(TargetError::NonFatal);
        }
        // A halted CPU that gdb moves elsewhere runs from there (as QEMU's gdbstub).
        if s.rip != rip {
            s.halted = false;
        }
        if let Err(e) = self.cpu.set_state(s) {
            eprintln!("gantry: gdb register write failed: {e}");
            return Err(TargetError::NonFatal);
        }
        // Nothing to flush: cached translations are keyed by CS base, RIP, mode and CPL,
        // and register writes cannot change the mode or paging (regs.rs refuses that).
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let continuing = self.oversize_read.take().filter(|r| r.next == start);
        let stopped = continuing.is_some_and(|r| r.stopped);
        // Page by page; stop at the first unmapped one (gdb then shows the error).
        let mut done = 0usize;
        while !stopped && done < data.len() {
            let linear = start.wrapping_add(done as u64);
            let Some(phys) = self.translate(linear) else {
                break;
            };
            let n = (data.len() - done).min((0x1000 - (linear & 0xFFF)) as usize);
            if self
                .machine
                .memory
                .read(phys, &mut data[done..done + n])
                .is_err()
            {
                break;
            }
            done += n;
        }
        if data.len() > PACKET_SIZE / 2 {
            self.oversize_read = Some(OversizeRead {
                next: start.wrapping_add(data.len() as u64),
                stopped: stopped || done < data.len(),
            });
        }
        if done == 0 && !data.is_empty() && continuing.is_none() {
            return Err(TargetError::NonFatal);
        }
        self.cpu.hide_planted(start, &mut data[..done]);
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        if self.packet_check.bad_write_length() {
            return Err(TargetError::NonFatal);
        }
        let mut done = 0usize;
        while done < data.len() {
            let linear = start.wrapping_add(done as u64);
            let phys = self.translate(linear).ok_or(TargetError::NonFatal)?;
            let n = (data.len() - done).min((0x1000 - (linear & 0xFFF)) as usize);
            self.machine
                .memory
                .write(phys, &data[done..done + n])
                .map_err(|_| TargetError::NonFatal)?;
            self.cpu.code_written(&self.machine.memory, phys);
            done += n;
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Session {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), ()> {
        self.stepping = false;
        self.resume_with_debug()
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Session {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), ()> {
        self.stepping = true;
        self.resume_with_debug()
    }
}

impl Session {
    fn resume_with_debug(&mut self) -> Result<(), ()> {
        if let Err(e) = self.apply_debug() {
            // Every breakpoint was accepted when gdb inserted it; only a page the guest
            // has since unmapped lands here, and the rest of the request is in effect.
            eprintln!("gantry: gdb: {e}");
        }
        Ok(())
    }
}

impl Breakpoints for Session {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Session {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.try_insert(
            |s| s.sw_breaks.push(addr),
            |s| {
                s.sw_breaks.pop();
            },
        ))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let removed = remove_one(&mut self.sw_breaks, &addr);
        Ok(removed && self.apply_debug().is_ok())
    }
}

impl HwBreakpoint for Session {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.try_insert(
            |s| s.hw_breaks.push(addr),
            |s| {
                s.hw_breaks.pop();
            },
        ))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let removed = remove_one(&mut self.hw_breaks, &addr);
        Ok(removed && self.apply_debug().is_ok())
    }
}

fn watch_of(addr: u64, len: u64, kind: GdbWatchKind) -> Watchpoint {
    Watchpoint {
        addr,
        len: len.max(1),
        kind: match kind {
            GdbWatchKind::Write => WatchKind::Write,
            GdbWatchKind::Read => WatchKind::Read,
            GdbWatchKind::ReadWrite => WatchKind::Access,
        },
    }
}

impl HwWatchpoint for Session {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: GdbWatchKind,
    ) -> TargetResult<bool, Self> {
        let w = watch_of(addr, len, kind);
        Ok(self.try_insert(
            |s| s.watches.push(w),
            |s| {
                s.watches.pop();
            },
        ))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: GdbWatchKind,
    ) -> TargetResult<bool, Self> {
        let removed = remove_one(&mut self.watches, &watch_of(addr, len, kind));
        Ok(removed && self.apply_debug().is_ok())
    }
}

fn remove_one<T: PartialEq>(v: &mut Vec<T>, x: &T) -> bool {
    match v.iter().position(|y| y == x) {
        Some(i) => {
            v.remove(i);
            true
        }
        None => false,
    }
}

impl TargetDescriptionXmlOverride for Session {
    fn target_description_xml(
        &self,
        annex: &[u8],
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        if annex != b"target.xml" {
            return Err(TargetError::NonFatal);
        }
        let xml = regs::target_xml(self.layout);
        let bytes = xml.as_bytes();
        let start = (offset as usize).min(bytes.len());
        let n = length.min(buf.len()).min(bytes.len() - start);
        buf[..n].copy_from_slice(&bytes[start..start + n]);
        Ok(n)
    }
}

impl MonitorCmd for Session {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), ()> {
        let cmd = String::from_utf8_lossy(cmd);
        let text = monitor::run(self, cmd.trim());
        gdbstub::output!(out, "{text}");
        Ok(())
    }
}
