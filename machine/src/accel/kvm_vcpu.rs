//! A KVM vCPU as a [`Vcpu`]: the run loop in `kvm.rs` until the guest stops for good, or,
//! once a debugger set its state, in time slices.
//!
//! gdb on a KVM vCPU, through KVM_SET_GUEST_DEBUG: hardware breakpoints and watchpoints
//! use DR0-3; software breakpoints are INT3 bytes planted in guest RAM (as QEMU plants
//! them), hidden from gdb's memory reads; a single step is KVM's trap-flag step. While
//! gdb holds debug registers, KVM loads gdb's DR7 instead of the guest's, so the guest's
//! own hardware breakpoints are suspended (QEMU has the same limit); with none held, as
//! with software breakpoints only, they work.
//!
//! A software-assisted KVM (kvm_pvm) cannot run an intercepted INT3 in ring 0 (it stops
//! with an emulation failure), so there software breakpoints take the debug registers
//! gdb's hardware ones leave free, and INT3s only beyond four.

use std::fmt::Write as _;
use std::time::Duration;

use kvm_bindings::kvm_debug_exit_arch;

use gantry_frontend::state::CpuState;

use super::kvm::{GuestDebug, KvmCpu, KvmError, KvmStop};
use super::vcpu::{DebugRequest, Ended, Vcpu, VcpuError};
use crate::accel::emu::debug::{dr7, DebugStop, DrKind, WatchHit, WatchKind, Watchpoint};
use crate::accel::emu::paging::{self, PagingRegs};
use crate::board::Board;
use crate::memory::GuestMemory;

/// How long the vCPU runs before the stub polls its connection (gdb's Ctrl-C).
const SLICE: Duration = Duration::from_millis(10);
const INT3: u8 = 0xCC;
/// DR6.BS: the #DB came from a single step.
const DR6_BS: u64 = 1 << 14;

/// An INT3 planted for a gdb software breakpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Planted {
    linear: u64,
    phys: u64,
    original: u8,
}

/// What one of DR0-3 holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Exec(u64),
    /// One aligned piece (1, 2, 4 or 8 bytes) of a gdb watchpoint.
    Watch {
        watch: Watchpoint,
        addr: u64,
        len: u64,
    },
}

pub struct KvmVcpu {
    cpu: KvmCpu,
    /// A debugger set its state: run in slices and report its stops.
    debugging: bool,
    /// The vCPU's state as of the last stop.
    state: CpuState,
    planted: Vec<Planted>,
    slots: Vec<Slot>,
    step: bool,
    /// Resuming at this address: execute the breakpoint there instead of stopping.
    resume_from: Option<u64>,
    /// The user was told that this host's KVM may not deliver data breakpoints.
    warned: bool,
    /// The host's KVM runs ring-0 code in software (see the module's comment): software
    /// breakpoints take free debug registers before INT3s, and watchpoints may not fire.
    software_assisted: Option<&'static str>,
}

impl From<KvmError> for VcpuError {
    fn from(e: KvmError) -> Self {
        VcpuError(e.to_string())
    }
}

impl KvmVcpu {
    /// A vCPU of a VM over `mem`, starting in `state`.
    pub fn new(mem: &GuestMemory, state: &CpuState) -> Result<Self, KvmError> {
        let mut cpu = KvmCpu::new(mem)?;
        cpu.set_cpu_state(state)?;
        let state = cpu.cpu_state()?;
        Ok(Self {
            cpu,
            debugging: false,
            state,
            planted: Vec::new(),
            slots: Vec::new(),
            step: false,
            resume_from: None,
            warned: false,
            software_assisted: super::kvm::software_assisted(),
        })
    }

    /// Configures KVM for gdb's request. A software breakpoint that can go nowhere (its
    /// page is not RAM-backed and DR0-DR3 are taken) is left out and named in the `Err`;
    /// everything else, stepping included, is in effect either way.
    fn configure_debug(&mut self, mem: &mut GuestMemory, req: &DebugRequest) -> Result<(), String> {
        let mut slots = plan_slots(&req.hw_breaks, &req.watches)?;
        let regs = PagingRegs::of(&self.state);
        let mut int3s = Vec::new();
        for &linear in &req.sw_breaks {
            if self.software_assisted.is_some() && slots.len() < 4 {
                slots.push(Slot::Exec(linear));
            } else {
                int3s.push(linear);
            }
        }
        let (keep, gone): (Vec<Planted>, Vec<Planted>) = std::mem::take(&mut self.planted)
            .into_iter()
            .partition(|p| int3s.contains(&p.linear));
        for p in gone {
            unplant(mem, &p);
        }
        self.planted = keep;
        let mut left_out = Vec::new();
        for linear in int3s {
            if self.planted.iter().any(|p| p.linear == linear) {
                continue;
            }
            match plant(mem, &regs, linear) {
                Some(p) => self.planted.push(p),
                // Not RAM (firmware ROM): a debug register breaks there instead.
                None if slots.len() < 4 => slots.push(Slot::Exec(linear)),
                None => left_out.push(format!("{linear:#x}")),
            }
        }
        if !req.watches.is_empty() && !self.warned {
            if let Some(kind) = self.software_assisted {
                eprintln!(
                    "gantry: note: this host's KVM is software-assisted ({kind}) and may not \
                     deliver data breakpoints; watchpoints are exact under --accel interp"
                );
                self.warned = true;
            }
        }
        self.slots = slots;
        self.step = req.step;
        self.resume_from = req.resuming.then(|| self.state.linear_rip());
        self.apply(false, None)
            .map_err(|e| format!("KVM_SET_GUEST_DEBUG: {e}"))?;
        if left_out.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no breakpoint at {}: not mapped to RAM (where an INT3 would go) and DR0-DR3 are taken",
                left_out.join(", ")
            ))
        }
    }

    /// Passes the current configuration to KVM; `step` forces a single step and `skip`
    /// leaves out the breakpoint at that address (to execute it when resuming).
    fn apply(&mut self, step: bool, skip: Option<u64>) -> Result<(), KvmError> {
        let (dr, dr7) = debug_registers(&self.slots, skip);
        self.cpu.set_guest_debug(&GuestDebug {
            enabled: true,
            step: self.step || step,
            sw_breakpoints: !self.planted.is_empty(),
            dr,
            dr7,
        })?;
        Ok(())
    }

    fn refresh(&mut self) -> Result<(), Ended> {
        self.state = self.cpu.cpu_state().map_err(|e| Ended::Failed(e.into()))?;
        Ok(())
    }

    /// One slice under a debugger: steps over a breakpoint being resumed from, then runs.
    fn run_debugging(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
    ) -> Result<DebugStop, Ended> {
        let at = self.state.linear_rip();
        if self.resume_from.take() == Some(at) && self.breakpoint_at(at) && !self.state.halted {
            // Execute the instruction under the breakpoint with the breakpoint out of the
            // way, then put it back.
            let planted = self.planted.iter().find(|p| p.linear == at).copied();
            if let Some(p) = planted {
                unplant(mem, &p);
            }
            let stepped = self
                .apply(true, Some(at))
                .map_err(|e| Ended::Failed(e.into()))
                .and_then(|()| self.run(mem, board, true));
            if let Some(p) = planted {
                let _ = mem.write(p.phys, &[INT3]);
            }
            self.apply(false, None)
                .map_err(|e| Ended::Failed(e.into()))?;
            match stepped? {
                DebugStop::Slice => {
                    // Kicked out before the instruction ran: step over it next time.
                    if self.state.linear_rip() == at {
                        self.resume_from = Some(at);
                    }
                    return Ok(DebugStop::Slice);
                }
                DebugStop::Step if !self.step => {}
                other => return Ok(other),
            }
        }
        self.run(mem, board, self.step)
    }

    fn breakpoint_at(&self, linear: u64) -> bool {
        self.planted.iter().any(|p| p.linear == linear) || self.slots.contains(&Slot::Exec(linear))
    }

    /// One KVM_RUN slice, its exit turned into what gdb needs to hear; `stepping` while
    /// KVM single-steps.
    fn run(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        stepping: bool,
    ) -> Result<DebugStop, Ended> {
        loop {
            let stop = self.cpu.run_debug(mem, board, SLICE);
            self.refresh()?;
            let exit = match stop.map_err(|e| Ended::Failed(e.into()))? {
                KvmStop::Stopped(s) => return Err(Ended::Stop(s)),
                KvmStop::Slice => return Ok(DebugStop::Slice),
                KvmStop::SteppedIntoHalt => return Ok(DebugStop::Step),
                KvmStop::Debug(exit) => exit,
            };
            if let Some(stop) = self.classify(&exit, stepping) {
                return Ok(stop);
            }
            // Not the debugger's: the guest's own INT3 or #DB, delivered to it.
            self.cpu
                .reinject(exit.exception)
                .map_err(|e| Ended::Failed(e.into()))?;
        }
    }

    fn classify(&self, exit: &kvm_debug_exit_arch, stepping: bool) -> Option<DebugStop> {
        match exit.exception {
            3 if self.planted.iter().any(|p| p.linear == exit.pc) => Some(DebugStop::Breakpoint),
            1 => {
                for (i, slot) in self.slots.iter().enumerate() {
                    if exit.dr6 & (1 << i) == 0 {
                        continue;
                    }
                    return Some(match *slot {
                        Slot::Exec(_) => DebugStop::Breakpoint,
                        Slot::Watch { watch, addr, .. } => DebugStop::Watch(WatchHit {
                            watch,
                            addr: addr.max(watch.addr),
                        }),
                    });
                }
                (exit.dr6 & DR6_BS != 0 && stepping).then_some(DebugStop::Step)
            }
            _ => None,
        }
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self, mem: &mut GuestMemory, board: &mut Board) -> Result<DebugStop, Ended> {
        if self.debugging {
            return self.run_debugging(mem, board);
        }
        let stop = self.cpu.run(mem, board);
        self.refresh()?;
        Err(stop.map_or_else(|e| Ended::Failed(e.into()), Ended::Stop))
    }

    fn state(&self) -> &CpuState {
        &self.state
    }

    fn set_state(&mut self, state: CpuState) -> Result<(), VcpuError> {
        self.cpu.set_cpu_state(&state)?;
        self.state = state;
        Ok(())
    }

    fn set_debug(&mut self, mem: &mut GuestMemory, req: &DebugRequest) -> Result<(), String> {
        self.debugging = true;
        self.configure_debug(mem, req)
    }

    /// KVM executes guest memory as it is: nothing is cached.
    fn code_written(&mut self, _mem: &GuestMemory, _phys: u64) {}

    fn hide_planted(&self, start: u64, data: &mut [u8]) {
        for p in &self.planted {
            let off = p.linear.wrapping_sub(start);
            if let Some(b) = usize::try_from(off).ok().and_then(|o| data.get_mut(o)) {
                *b = p.original;
            }
        }
    }

    fn report(&self, out: &mut String, _seconds: f64) {
        let _ = writeln!(out, "{}", self.cpu.stats);
    }
}

fn plant(mem: &mut GuestMemory, regs: &PagingRegs, linear: u64) -> Option<Planted> {
    let phys = paging::phys_of(mem, regs, linear)?;
    let mut original = [0u8];
    mem.read(phys, &mut original).ok()?;
    mem.write(phys, &[INT3]).ok()?;
    Some(Planted {
        linear,
        phys,
        original: original[0],
    })
}

fn unplant(mem: &mut GuestMemory, p: &Planted) {
    let mut now = [0u8];
    // If the guest has since overwritten the INT3, its bytes are the truth.
    if mem.read(p.phys, &mut now).is_ok() && now[0] == INT3 {
        let _ = mem.write(p.phys, &[p.original]);
    }
}

/// Spreads hardware breakpoints and watchpoints over DR0-3. A watchpoint is split into
/// naturally aligned pieces of 1, 2, 4 or 8 bytes, as the debug registers require.
fn plan_slots(execs: &[u64], watches: &[Watchpoint]) -> Result<Vec<Slot>, String> {
    let mut slots: Vec<Slot> = execs.iter().map(|&a| Slot::Exec(a)).collect();
    for w in watches {
        if w.kind == WatchKind::Read {
            return Err(
                "x86 debug registers have no read-only watchpoints (use awatch, or --accel interp)"
                    .into(),
            );
        }
        let (mut addr, end) = (w.addr, w.addr.wrapping_add(w.len));
        while addr < end {
            let len = [8u64, 4, 2, 1]
                .into_iter()
                .find(|&n| addr % n == 0 && addr + n <= end)
                .unwrap_or(1);
            slots.push(Slot::Watch {
                watch: *w,
                addr,
                len,
            });
            addr += len;
        }
    }
    if slots.len() > 4 {
        return Err(format!(
            "{} hardware breakpoint/watchpoint slots needed; x86 has 4 (DR0-DR3)",
            slots.len()
        ));
    }
    Ok(slots)
}

/// DR0-3 and DR7 for the slots (global enables, as QEMU sets them), with the breakpoint
/// at `skip` left disabled in its slot (slot numbers are what DR6 reports).
fn debug_registers(slots: &[Slot], skip: Option<u64>) -> ([u64; 4], u64) {
    let mut dr = [0u64; 4];
    let mut dr7 = 0u64;
    for (i, s) in slots.iter().enumerate().take(4) {
        if skip.is_some_and(|a| *s == Slot::Exec(a)) {
            continue;
        }
        let (addr, kind, len) = match *s {
            Slot::Exec(a) => (a, DrKind::Exec, 1),
            Slot::Watch { watch, addr, len } => (addr, DrKind::Data(watch.kind), len),
        };
        dr[i] = addr;
        dr7 |= dr7::enable(i, kind, len);
    }
    (dr, dr7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(addr: u64, len: u64, kind: WatchKind) -> Watchpoint {
        Watchpoint { addr, len, kind }
    }

    #[test]
    fn watchpoints_split_into_aligned_pieces() {
        let slots = plan_slots(&[], &[watch(0x1003, 6, WatchKind::Write)]).unwrap();
        let pieces: Vec<(u64, u64)> = slots
            .iter()
            .map(|s| match *s {
                Slot::Watch { addr, len, .. } => (addr, len),
                Slot::Exec(_) => panic!("no breakpoints asked for"),
            })
            .collect();
        assert_eq!(pieces, vec![(0x1003, 1), (0x1004, 4), (0x1008, 1)]);
    }

    #[test]
    fn four_slots_at_most_and_no_read_watch() {
        assert!(plan_slots(&[1, 2, 3, 4], &[]).is_ok());
        let e = plan_slots(&[1, 2, 3], &[watch(0x2000, 16, WatchKind::Access)]).unwrap_err();
        assert!(e.contains("5 hardware"), "{e}");
        let e = plan_slots(&[], &[watch(0x2000, 4, WatchKind::Read)]).unwrap_err();
        assert!(e.contains("read-only"), "{e}");
    }

    #[test]
    fn dr7_encoding() {
        let slots = plan_slots(
            &[0x10_0000],
            &[
                watch(0x2000, 4, WatchKind::Write),
                watch(0x3000, 8, WatchKind::Access),
            ],
        )
        .unwrap();
        let (dr, dr7) = debug_registers(&slots, None);
        assert_eq!(dr, [0x10_0000, 0x2000, 0x3000, 0]);
        // G0, G1, G2; slot 0 execute (RW 00, LEN 00); slot 1 write, 4 bytes (RW 01,
        // LEN 11); slot 2 read/write, 8 bytes (RW 11, LEN 10).
        let expected =
            0b10 | 0b10 << 2 | 0b10 << 4 | (0b01 | 0b11 << 2) << 20 | (0b11 | 0b10 << 2) << 24;
        assert_eq!(dr7, expected, "{dr7:#x} vs {expected:#x}");
        // Skipping the breakpoint keeps the watchpoints in their slots.
        let (_, dr7) = debug_registers(&slots, Some(0x10_0000));
        assert_eq!(dr7, expected & !0b11 & !(0b1111 << 16));
    }
}
