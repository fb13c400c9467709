//! The KVM backend: one vCPU, no in-kernel irqchip, so the board's interrupt controllers
//! and timers (PIC, local APIC, I/O APIC, HPET, PIT) serve it exactly as they serve the
//! emulated CPU. Port and MMIO exits go to the board's buses (the local APIC's page among
//! them), and KVM hands the APIC's MSRs (IA32_APIC_BASE and the x2APIC range) to
//! userspace through an MSR filter; interrupts are injected with KVM_INTERRUPT when the
//! vCPU can take them (asking for an interrupt-window exit otherwise); HLT sleeps in the
//! board until the next device event; a POSIX timer signal kicks KVM_RUN out at the next
//! device deadline.
//!
//! Gantry's own APIC rather than KVM's in-kernel one: the devices then behave the same on
//! both backends (one model to test, and the emulated CPU's tests are its tests), and KVM's
//! in-kernel irqchip would take the PIC and the I/O APIC too. The price is an exit for
//! each APIC access, which KVM's would save.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicPtr, Ordering};

use std::time::Instant;

use kvm_bindings::{
    kvm_debug_exit_arch, kvm_enable_cap, kvm_fpu, kvm_guest_debug, kvm_guest_debug_arch,
    kvm_msr_entry, kvm_userspace_memory_region, CpuId, Msrs, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_INJECT_BP, KVM_GUESTDBG_INJECT_DB, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY,
    KVM_MSR_EXIT_REASON_FILTER,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuExit, VcpuFd, VmFd,
};

use gantry_devices::signals::SystemEvent;
use gantry_frontend::state::{CpuState, FxState};

use super::{kvm_state, CpuStop, ExitStats};
use crate::board::{Board, BoardEvent};
use crate::layout::{KVM_IDENTITY_MAP, KVM_TSS};
use crate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("/dev/kvm is not usable: {0}")]
    Open(String),
    #[error("KVM refused to set up the VM: {what}: {err}")]
    Setup { what: &'static str, err: String },
    #[error("KVM stopped with {reason} at RIP {rip:#x}; this host's KVM cannot run this guest (try --accel interp)")]
    Exit { reason: String, rip: u64 },
}

fn setup(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Setup {
        what,
        err: e.to_string(),
    }
}

/// `_IOW(KVMIO, 0x86, struct kvm_interrupt)`; kvm-ioctls has no wrapper for it.
const KVM_INTERRUPT: libc::c_ulong = 0x4004_AE86;
const MSR_IA32_APICBASE: u32 = 0x1B;

// CPUID.1's local APIC bits.
const CPUID1_EDX_APIC: u32 = 1 << 9;
const CPUID1_ECX_X2APIC: u32 = 1 << 21;
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// IA32_APIC_BASE of the bootstrap processor at power-up: enabled, at 0xFEE00000.
const APIC_BASE_BSP: u64 = 0xFEE0_0900;

/// Asks KVM to hand the local APIC's MSRs to userspace: IA32_APIC_BASE and the x2APIC
/// range. False where this KVM cannot (the guest then sees no x2APIC, and KVM keeps
/// IA32_APIC_BASE itself).
fn apic_msr_exits(kvm: &Kvm, vm: &VmFd) -> bool {
    if !kvm.check_extension(Cap::X86UserSpaceMsr) {
        return false;
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [KVM_MSR_EXIT_REASON_FILTER as u64, 0, 0, 0],
        ..Default::default()
    };
    if vm.enable_cap(&cap).is_err() {
        return false;
    }
    // A clear bit denies the access to the guest, which KVM then turns into an exit.
    let both = MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE;
    let denied = [0u8; 32];
    let ranges = [
        MsrFilterRange {
            flags: both,
            base: MSR_IA32_APICBASE,
            msr_count: 1,
            bitmap: &denied[..1],
        },
        MsrFilterRange {
            flags: both,
            base: gantry_devices::lapic::X2APIC_MSR_FIRST,
            msr_count: 256,
            bitmap: &denied,
        },
    ];
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
        .is_ok()
}

pub struct KvmCpu {
    // Declared first so it is dropped first: its signal handler writes into the vCPU's
    // kvm_run mapping, which must outlive the timer.
    timer: KickTimer,
    vcpu: VcpuFd,
    vm: VmFd,
    /// How many memory slots are registered (the regions of guest memory, in order).
    slots: u32,
    readonly_ok: bool,
    _kvm: Kvm,
    pub stats: ExitStats,
    /// The vCPU executed HLT and waits for an interrupt; it is not entered again until
    /// one is injected.
    halted: bool,
    /// What the debugger asked of KVM_SET_GUEST_DEBUG (off without a debugger).
    debug: GuestDebug,
}

/// A debugger's use of the vCPU (KVM_SET_GUEST_DEBUG): single-step, INT3 breakpoints it
/// planted, and DR0-3/DR7 for its hardware breakpoints and watchpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestDebug {
    pub enabled: bool,
    pub step: bool,
    pub sw_breakpoints: bool,
    pub dr: [u64; 4],
    /// DR7; zero when no hardware slot is in use.
    pub dr7: u64,
}

/// Why [`KvmCpu::run_debug`] returned.
#[derive(Clone, Debug)]
pub enum KvmStop {
    Stopped(CpuStop),
    /// A #DB or #BP intercepted for the debugger.
    Debug(kvm_debug_exit_arch),
    /// A single step executed HLT.
    SteppedIntoHalt,
    /// The time slice ran out.
    Slice,
}

/// Can this host open /dev/kvm and make a VM? (The `auto` accelerator's test.)
pub fn probe() -> Result<(), KvmError> {
    let kvm = Kvm::new().map_err(|e| KvmError::Open(e.to_string()))?;
    kvm.create_vm()
        .map_err(|e| KvmError::Open(format!("cannot create a VM: {e}")))?;
    Ok(())
}

/// Names the kind of KVM this host has when it runs guest ring-0 code in software rather
/// than with VMX/SVM (a nested, software-assisted KVM such as kvm_pvm): such a KVM works,
/// but refuses some instructions and does not deliver every debug event (data
/// breakpoints, INT3 intercepts). None for hardware-assisted KVM.
pub fn software_assisted() -> Option<&'static str> {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return Some("kvm_pvm");
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    (!flags.is_empty() && !has("vmx") && !has("svm")).then_some("without VMX/SVM")
}

/// Registers `mem`'s regions as KVM memory slots 0.. (ROM read-only where KVM can), and
/// deletes slots `count..previous` left from an earlier map; returns the count.
fn set_memory_slots(
    vm: &VmFd,
    mem: &GuestMemory,
    previous: u32,
    readonly_ok: bool,
) -> Result<u32, KvmError> {
    let set = |slot: u32, flags: u32, gpa: u64, size: u64, host: u64| {
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps
        // alive for as long as this VM (the Machine owns both and drops the CPU first); a
        // size of 0 deletes the slot.
        unsafe { vm.set_user_memory_region(region) }.map_err(setup("KVM_SET_USER_MEMORY_REGION"))
    };
    // A slot's range cannot change in place: the old ones go first.
    for slot in 0..previous {
        set(slot, 0, 0, 0, 0)?;
    }
    for (slot, r) in mem.regions().iter().enumerate() {
        let flags = if r.is_rom() && readonly_ok {
            KVM_MEM_READONLY
        } else {
            0
        };
        set(slot as u32, flags, r.gpa, r.len, mem.host_address(r) as u64)?;
    }
    Ok(mem.regions().len() as u32)
}

impl KvmCpu {
    /// Registers guest memory again after its map changed (the BIOS area's shadow RAM).
    fn map_memory(&mut self, mem: &GuestMemory) -> Result<(), KvmError> {
        self.slots = set_memory_slots(&self.vm, mem, self.slots, self.readonly_ok)?;
        Ok(())
    }

    pub fn new(mem: &GuestMemory) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| KvmError::Open(e.to_string()))?;
        let vm = kvm.create_vm().map_err(setup("KVM_CREATE_VM"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP)
            .map_err(setup("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.set_tss_address(KVM_TSS as usize)
            .map_err(setup("KVM_SET_TSS_ADDR"))?;
        let readonly_ok = kvm.check_extension(Cap::ReadonlyMem);
        let slots = set_memory_slots(&vm, mem, 0, readonly_ok)?;
        let msr_exits = apic_msr_exits(&kvm, &vm);
        let vcpu = vm.create_vcpu(0).map_err(setup("KVM_CREATE_VCPU"))?;
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(setup("KVM_GET_SUPPORTED_CPUID"))?;
        filter_cpuid(&mut cpuid, msr_exits);
        vcpu.set_cpuid2(&cpuid).map_err(setup("KVM_SET_CPUID2"))?;
        let fpu = kvm_fpu {
            fcw: gantry_frontend::state::FCW_INIT,
            mxcsr: gantry_frontend::state::MXCSR_RESET,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu).map_err(setup("KVM_SET_FPU"))?;
        let timer = KickTimer::new().map_err(|e| KvmError::Setup {
            what: "timer signal",
            err: e.to_string(),
        })?;
        // KVM derives CPUID.1:EDX.APIC from its copy of the APIC base MSR's enable bit.
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_APICBASE,
            data: APIC_BASE_BSP,
            ..Default::default()
        }])
        .map_err(|e| KvmError::Setup {
            what: "MSR list",
            err: format!("{e:?}"),
        })?;
        vcpu.set_msrs(&msrs).map_err(setup("KVM_SET_MSRS"))?;
        vcpu.set_cpuid2(&cpuid).map_err(setup("KVM_SET_CPUID2"))?;
        Ok(Self {
            timer,
            vcpu,
            vm,
            slots,
            readonly_ok,
            _kvm: kvm,
            stats: ExitStats::default(),
            halted: false,
            debug: GuestDebug::default(),
        })
    }

    /// The vCPU's architectural state, for a debugger.
    pub fn cpu_state(&self) -> Result<CpuState, KvmError> {
        let regs = self.vcpu.get_regs().map_err(setup("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(setup("KVM_GET_SREGS"))?;
        let fpu = self.vcpu.get_fpu().map_err(setup("KVM_GET_FPU"))?;
        let dbg = self
            .vcpu
            .get_debug_regs()
            .map_err(setup("KVM_GET_DEBUGREGS"))?;
        let mut c = kvm_state::state_of(&regs, &sregs, &fpu, &dbg);
        // KVM_GET_FPU reports MXCSR as 0 on some KVMs (seen on kvm_pvm, which still runs
        // the guest with the MXCSR set); KVM_GET_XSAVE's legacy area (the FXSAVE image:
        // MXCSR is its seventh dword) has it right, so it wins where the host offers it.
        if let Ok(xsave) = self.vcpu.get_xsave() {
            c.fx.set_mxcsr(xsave.region[FxState::MXCSR / 4]);
        }
        c.halted = self.halted;
        Ok(c)
    }

    /// Writes back what a debugger changed, or a whole new state: registers, segments,
    /// control registers, x87/SSE.
    pub fn set_cpu_state(&mut self, c: &CpuState) -> Result<(), KvmError> {
        let mut regs = self.vcpu.get_regs().map_err(setup("KVM_GET_REGS"))?;
        let mut sregs = self.vcpu.get_sregs().map_err(setup("KVM_GET_SREGS"))?;
        let mut fpu = self.vcpu.get_fpu().map_err(setup("KVM_GET_FPU"))?;
        kvm_state::store(c, &mut regs, &mut sregs, &mut fpu);
        // A state that is not halted (a debugger's edit of one that was, or a new start)
        // enters the vCPU again.
        self.halted = c.halted;
        self.vcpu.set_regs(&regs).map_err(setup("KVM_SET_REGS"))?;
        self.vcpu
            .set_sregs(&sregs)
            .map_err(setup("KVM_SET_SREGS"))?;
        self.vcpu.set_fpu(&fpu).map_err(setup("KVM_SET_FPU"))?;
        self.mark_fpu_state_in_use(c)
    }

    /// KVM_SET_FPU writes the XSAVE area's legacy part but, on some KVMs (seen on kvm_pvm),
    /// leaves its header's XSTATE_BV as it was: while the x87 and SSE bits there are clear
    /// the next XRSTOR loads their init state, and the XMM registers just set read as
    /// zeros until the guest has once used SSE itself. So the legacy image goes in again
    /// through KVM_SET_XSAVE with both bits set.
    fn mark_fpu_state_in_use(&mut self, c: &CpuState) -> Result<(), KvmError> {
        const XSTATE_BV: usize = 512 / 4;
        const X87_SSE: u32 = 0b11;
        let Ok(mut xsave) = self.vcpu.get_xsave() else {
            return Ok(());
        };
        for (i, w) in xsave.region[..FxState::SIZE / 4].iter_mut().enumerate() {
            let b = &c.fx.bytes[i * 4..i * 4 + 4];
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        xsave.region[XSTATE_BV] |= X87_SSE;
        // SAFETY: the buffer came from KVM_GET_XSAVE on this vCPU and keeps its size, the
        // 4 KiB area KVM_SET_XSAVE reads (this VM enables no state that needs more).
        unsafe { self.vcpu.set_xsave(&xsave) }.map_err(setup("KVM_SET_XSAVE"))
    }

    /// Sets how the debugger uses the vCPU from the next KVM_RUN on.
    pub fn set_guest_debug(&mut self, d: &GuestDebug) -> Result<(), KvmError> {
        self.debug = *d;
        self.apply_guest_debug(0)
    }

    /// Delivers a #BP (3) or #DB (1) the debugger intercepted but did not cause (the
    /// guest's own INT3, TF or debug registers) to the guest at the next entry.
    pub fn reinject(&mut self, exception: u32) -> Result<(), KvmError> {
        let inject = if exception == 3 {
            KVM_GUESTDBG_INJECT_BP
        } else {
            KVM_GUESTDBG_INJECT_DB
        };
        self.apply_guest_debug(inject)
    }

    fn apply_guest_debug(&mut self, extra: u32) -> Result<(), KvmError> {
        let d = &self.debug;
        let mut control = 0;
        if d.enabled {
            control = KVM_GUESTDBG_ENABLE | extra;
            if d.step {
                control |= KVM_GUESTDBG_SINGLESTEP;
            }
            if d.sw_breakpoints {
                control |= KVM_GUESTDBG_USE_SW_BP;
            }
            if d.dr7 != 0 {
                control |= KVM_GUESTDBG_USE_HW_BP;
            }
        }
        let mut arch = kvm_guest_debug_arch::default();
        arch.debugreg[..4].copy_from_slice(&d.dr);
        arch.debugreg[7] = d.dr7;
        self.vcpu
            .set_guest_debug(&kvm_guest_debug {
                control,
                pad: 0,
                arch,
            })
            .map_err(setup("KVM_SET_GUEST_DEBUG"))
    }

    fn rip(&self) -> u64 {
        self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    fn exit_error(&self, reason: impl Into<String>) -> KvmError {
        KvmError::Exit {
            reason: reason.into(),
            rip: self.rip(),
        }
    }

    /// Injects a pending PIC interrupt if the vCPU can take one now, else asks KVM for an
    /// exit as soon as it can.
    fn inject_interrupts(&mut self, board: &mut Board) -> Result<(), KvmError> {
        // A debugger's single step executes one instruction: interrupts wait (as on the
        // emulated CPU and in QEMU's default step mode) unless the vCPU is halted.
        let held = self.debug.step && !self.halted;
        if !held && board.take_nmi() {
            // KVM queues it and keeps the NMI blocking until the handler's IRET.
            self.vcpu.nmi().map_err(setup("KVM_NMI"))?;
            self.stats.injected += 1;
            self.halted = false;
        }
        let pending = board.interrupt_pending() && !held;
        let run = self.vcpu.get_kvm_run();
        if pending && run.ready_for_interrupt_injection != 0 && run.if_flag != 0 {
            let vector = board.acknowledge_interrupt() as u32;
            // SAFETY: KVM_INTERRUPT reads one u32 (struct kvm_interrupt) from the pointer,
            // which is valid for the call; the fd is this VM's vCPU.
            let r = unsafe { libc::ioctl(self.vcpu.as_raw_fd(), KVM_INTERRUPT, &vector) };
            if r < 0 {
                return Err(self.exit_error(format!(
                    "KVM_INTERRUPT refused: {}",
                    std::io::Error::last_os_error()
                )));
            }
            self.stats.injected += 1;
            self.halted = false;
            let still = board.interrupt_pending();
            self.vcpu.get_kvm_run().request_interrupt_window = still as u8;
        } else {
            run.request_interrupt_window = pending as u8;
            if pending && self.halted {
                // Cannot inject yet (KVM says not ready): enter the vCPU and let the
                // interrupt-window exit bring us back, as before HLT was tracked here.
                self.halted = false;
            }
        }
        Ok(())
    }

    /// Runs until the board asks to stop, the CPU shuts down, or KVM fails.
    pub fn run(&mut self, mem: &mut GuestMemory, board: &mut Board) -> Result<CpuStop, KvmError> {
        match self.run_with_waker(mem, board, None)? {
            KvmStop::Stopped(stop) => Ok(stop),
            other => Err(self.exit_error(format!("debug exit {other:?} without a debugger"))),
        }
    }

    /// Runs for a debugger: until something it asked for happens, the run ends, or
    /// `slice` has passed (so it can poll its connection).
    pub fn run_debug(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        slice: std::time::Duration,
    ) -> Result<KvmStop, KvmError> {
        self.run_with_waker(mem, board, Some(Instant::now() + slice))
    }

    fn run_with_waker(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        until: Option<Instant>,
    ) -> Result<KvmStop, KvmError> {
        self.timer.attach(self.vcpu.get_kvm_run());
        // Console input kicks the vCPU out of KVM_RUN with the timer's signal, so that
        // Ctrl-A x works even while the guest spins without exits.
        // SAFETY: pthread_self has no preconditions.
        let this_thread = unsafe { libc::pthread_self() } as usize;
        board.set_console_waker(Some(Box::new(move || {
            // SAFETY: the main thread runs the vCPU and outlives the console thread's use of
            // this waker, which `run` clears before returning; the signal's handler is
            // async-signal-safe.
            unsafe {
                libc::pthread_kill(this_thread as libc::pthread_t, libc::SIGRTMIN());
            }
        })));
        let stop = self.run_loop(mem, board, until);
        board.set_console_waker(None);
        self.timer.arm(None);
        stop
    }

    fn run_loop(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        until: Option<Instant>,
    ) -> Result<KvmStop, KvmError> {
        loop {
            board.service();
            if let Some(ev) = board.take_event() {
                return Ok(KvmStop::Stopped(CpuStop::Board(ev)));
            }
            let left = until.map(|u| u.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(KvmStop::Slice);
            }
            if self.halted && !self.wait_in_halt(board) {
                if until.is_some() {
                    // Under a debugger (slices) the vCPU waits, as a halted CPU does: gdb
                    // can interrupt it, or move RIP (which wakes it).
                    board.wait_for_event();
                    return Ok(KvmStop::Slice);
                }
                return Ok(KvmStop::Stopped(CpuStop::HaltedForever { rip: self.rip() }));
            }
            self.inject_interrupts(board)?;
            if self.halted {
                // Still waiting for an interrupt (the wait was cut short).
                continue;
            }
            let now = board.clock().now_ns();
            let deadline = board.next_deadline().map(|d| d.saturating_sub(now).max(1));
            let slice = left.map(|l| l.as_nanos() as u64);
            self.timer.arm(match (deadline, slice) {
                (Some(d), Some(s)) => Some(d.min(s)),
                (d, s) => d.or(s),
            });
            // The exit's access width: a string instruction's exit (REP INSW, as IDE
            // drivers read sectors) hands over count accesses at once, which the devices
            // must see one by one.
            let run: *const kvm_bindings::kvm_run = self.vcpu.get_kvm_run();
            // SAFETY: `run` points at the vCPU's kvm_run mapping, alive as long as the vCPU;
            // it is read only for an I/O exit, when `io` is the union member KVM filled,
            // and the fields read lie apart from the data area the exit's slice covers.
            let io_size = || usize::from(unsafe { (*run).__bindgen_anon_1.io.size }).max(1);
            let next = match self.vcpu.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.stats.io += 1;
                    for access in data.chunks_mut(io_size()) {
                        board.pio_read(port, access);
                    }
                    Next::Continue
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.stats.io += 1;
                    for access in data.chunks(io_size()) {
                        board.pio_write(port, access);
                    }
                    if let Some(pam) = board.take_pam_change() {
                        if mem.set_pam(pam) {
                            self.map_memory(mem)?;
                        }
                    }
                    Next::Continue
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.stats.mmio += 1;
                    board.mmio_read(addr, data);
                    Next::Continue
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.stats.mmio += 1;
                    board.mmio_write(addr, data);
                    Next::Continue
                }
                Ok(VcpuExit::X86Rdmsr(exit)) => {
                    self.stats.msr += 1;
                    match read_apic_msr(board, exit.index) {
                        Some(v) => *exit.data = v,
                        None => *exit.error = 1,
                    }
                    Next::Continue
                }
                Ok(VcpuExit::X86Wrmsr(exit)) => {
                    self.stats.msr += 1;
                    if write_apic_msr(board, exit.index, exit.data).is_none() {
                        *exit.error = 1;
                    }
                    Next::Continue
                }
                Ok(VcpuExit::Hlt) => Next::Halt,
                Ok(VcpuExit::IrqWindowOpen) => {
                    self.stats.irq_window += 1;
                    Next::Continue
                }
                Ok(VcpuExit::Intr) => {
                    self.stats.interrupted += 1;
                    Next::Continue
                }
                Ok(VcpuExit::Debug(arch)) => Next::Debug(arch),
                Ok(VcpuExit::Shutdown) => Next::Shutdown,
                Ok(VcpuExit::SystemEvent(kind, _)) => Next::SystemEvent(kind),
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    Next::Fail(format!("entry failure (hardware reason {reason:#x})"))
                }
                Ok(VcpuExit::InternalError) => Next::InternalError,
                Ok(other) => {
                    self.stats.other += 1;
                    Next::Fail(format!("unexpected exit {other:?}"))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.stats.interrupted += 1;
                    Next::Continue
                }
                Err(e) => Next::Fail(format!("KVM_RUN failed: {e}")),
            };
            self.vcpu.set_kvm_immediate_exit(0);
            match next {
                Next::Continue => {}
                Next::Halt => {
                    self.stats.hlt += 1;
                    self.halted = true;
                    if self.debug.step {
                        return Ok(KvmStop::SteppedIntoHalt);
                    }
                }
                Next::Debug(arch) => return Ok(KvmStop::Debug(arch)),
                Next::Shutdown => {
                    return Ok(KvmStop::Stopped(CpuStop::TripleFault { rip: self.rip() }))
                }
                Next::SystemEvent(kind) => {
                    let event = if kind == kvm_bindings::KVM_SYSTEM_EVENT_RESET {
                        SystemEvent::Reset { source: "KVM" }
                    } else {
                        SystemEvent::PowerOff
                    };
                    return Ok(KvmStop::Stopped(CpuStop::Board(BoardEvent::System(event))));
                }
                Next::InternalError => {
                    // SAFETY: `internal` is the union member KVM fills for
                    // KVM_EXIT_INTERNAL_ERROR, the exit being handled.
                    let suberror =
                        unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    let what = match suberror {
                        1 => "an instruction KVM could not emulate",
                        2 => "a simultaneous exception",
                        3 => "an unexpected exit during event delivery",
                        _ => "an internal error",
                    };
                    return Err(self.exit_error(format!(
                        "{what} (KVM_EXIT_INTERNAL_ERROR, suberror {suberror})"
                    )));
                }
                Next::Fail(reason) => return Err(self.exit_error(reason)),
            }
        }
    }

    /// HLT: sleeps in the board until something could wake the CPU (the caller injects
    /// the interrupt, which ends the halt). Returns false if nothing ever can: IF is clear
    /// and no NMI waits (only one would wake it, and with one vCPU nothing sends one
    /// later), or no timer, input or request is left. Bochs stops there too.
    fn wait_in_halt(&mut self, board: &mut Board) -> bool {
        if board.event_pending() || board.nmi_pending() {
            return true;
        }
        if self.vcpu.get_kvm_run().if_flag == 0 {
            return false;
        }
        if board.interrupt_pending() {
            return true;
        }
        self.timer.arm(None);
        board.wait_for_event()
    }
}

/// The local APIC is the board's: CPUID says there is one, in x2APIC mode too where its
/// MSRs reach Gantry (`msr_exits`), without the TSC-deadline timer (the guest's TSC is
/// KVM's, which the board's clock does not know). The brand string, which KVM leaves to
/// userspace, is the host's (the guest runs on the host's CPU).
fn filter_cpuid(cpuid: &mut CpuId, msr_exits: bool) {
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.edx |= CPUID1_EDX_APIC;
            e.ecx &= !CPUID1_ECX_TSC_DEADLINE;
            if !msr_exits {
                e.ecx &= !CPUID1_ECX_X2APIC;
            }
        }
    }
    for leaf in 0x8000_0002..=0x8000_0004u32 {
        let host = std::arch::x86_64::__cpuid(leaf);
        let regs = |e: &mut kvm_bindings::kvm_cpuid_entry2| {
            (e.eax, e.ebx, e.ecx, e.edx) = (host.eax, host.ebx, host.ecx, host.edx);
        };
        match cpuid.as_mut_slice().iter_mut().find(|e| e.function == leaf) {
            Some(e) => regs(e),
            None => {
                let mut e = kvm_bindings::kvm_cpuid_entry2 {
                    function: leaf,
                    ..Default::default()
                };
                regs(&mut e);
                // A full table keeps its entries; the brand is then left empty.
                let _ = cpuid.push(e);
            }
        }
    }
}

/// RDMSR of an APIC MSR KVM handed over; `None` raises #GP.
fn read_apic_msr(board: &mut Board, msr: u32) -> Option<u64> {
    board
        .with_lapic(|l| match msr {
            MSR_IA32_APICBASE => Some(l.base_msr()),
            _ => l.read_msr(msr),
        })
        .flatten()
}

/// WRMSR of an APIC MSR KVM handed over; `None` raises #GP.
fn write_apic_msr(board: &mut Board, msr: u32, v: u64) -> Option<()> {
    board
        .with_lapic(|l| match msr {
            MSR_IA32_APICBASE => l.set_base_msr(v).ok(),
            _ => l.write_msr(msr, v).ok(),
        })
        .flatten()
}

/// What to do after an exit, once the exit's borrow of the vCPU has ended.
enum Next {
    Continue,
    Halt,
    Debug(kvm_debug_exit_arch),
    Shutdown,
    SystemEvent(u32),
    InternalError,
    Fail(String),
}

/// The `immediate_exit` byte of the running vCPU, for the signal handler.
static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn kick_handler(_: libc::c_int) {
    let p = IMMEDIATE_EXIT.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: `p` points into the vCPU's kvm_run mapping, which stays mapped while the
        // KickTimer that published it is alive; a volatile byte store is signal-safe. It
        // closes the race where the signal lands just before KVM_RUN is entered.
        unsafe { p.write_volatile(1) };
    }
}

/// A POSIX timer that signals this thread at the next device deadline, so KVM_RUN returns
/// (EINTR) and the board can raise the interrupt.
struct KickTimer {
    id: libc::timer_t,
}

impl KickTimer {
    fn new() -> std::io::Result<Self> {
        let sig = libc::SIGRTMIN();
        // SAFETY: installs a handler that only does an atomic load and a volatile store;
        // SA_RESTART is left out so KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = kick_handler as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: sigevent is plain data; the timer targets this thread (SIGEV_THREAD_ID),
        // the one that runs the vCPU.
        let id = unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = sig;
            sev.sigev_notify_thread_id = libc::gettid();
            let mut id: libc::timer_t = std::mem::zeroed();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            id
        };
        Ok(Self { id })
    }

    fn attach(&self, run: &mut kvm_bindings::kvm_run) {
        IMMEDIATE_EXIT.store(&mut run.immediate_exit, Ordering::Release);
    }

    /// Fires once after `delay_ns` (None disarms).
    fn arm(&self, delay_ns: Option<u64>) {
        let ns = delay_ns.unwrap_or(0);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `id` is a timer we created; `spec` lives for the call.
        unsafe {
            libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut());
        }
    }
}

impl Drop for KickTimer {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.store(std::ptr::null_mut(), Ordering::Release);
        // SAFETY: deletes the timer this struct created, once.
        unsafe {
            libc::timer_delete(self.id);
        }
    }
}
