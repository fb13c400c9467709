//! The host CPU as oracle: snippets run natively, at CPL 3, in a sandboxed child process.
//!
//! The child maps the code page and the data pages at the [`layout`](super::layout)
//! addresses. A trampoline (assembled at start-up with iced-x86) saves the child's
//! callee-saved registers and stack pointer, loads the x87/SSE state with FXRSTOR (the
//! case's XMM registers, MXCSR at reset), then RFLAGS and all sixteen GPRs from its
//! slots, and far-jumps to the snippet through Linux's user code segments (0x33 for 64-bit
//! code, 0x23 for 32-bit compatibility mode) or, for 16-bit code, through a 16-bit code
//! segment the child installs in its LDT (with a 16-bit data segment it also loads into
//! DS, ES and SS). The snippet ends in INT3, or faults first;
//! either way the kernel delivers a signal, and the handler (on an alternate stack, since
//! RSP is the snippet's) copies the interrupted context — GPRs, RIP, RFLAGS, the FXSAVE
//! image of the x87/SSE state, and the exception vector, error code and CR2 that Linux
//! reports in the sigcontext — and edits
//! that context to return to the trampoline's epilogue in 64-bit mode on the saved stack.
//!
//! Why a child process: a snippet writes wherever its registers point, so it runs where
//! nothing of value lives. The child is forked with everything it needs already mapped,
//! and its loop makes system calls only (no allocation, no locks), so forking from a
//! multi-threaded parent (the test harness) is sound. A child that dies or hangs is
//! killed and replaced; the case is reported as the oracle's failure, not a verdict.
//!
//! The parent and the child share one page-aligned block ([`Shared`]) for requests and
//! replies, and two pipes carry one byte each way per case.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use iced_x86::{BlockEncoderOptions, IcedError};

use super::layout::{
    code_ip, seg_base, CODE_SIZE, CODE_VA, DATA_SIZE, DATA_VA, END_MARKER, SEG16_LIMIT,
};
use super::{has_error_code, Case, Event, Final, Mode, RunError, Runner, COMPARED_FLAGS};
use gantry_frontend::state::{FxState, FCW_INIT, MXCSR_RESET};

/// Linux x86-64's user code and data selectors (arch/x86/include/asm/segment.h:
/// __USER_CS, __USER32_CS, __USER_DS): part of the kernel's ABI.
const USER_CS64: u16 = 0x33;
const USER_CS32: u16 = 0x23;
const USER_DS: u16 = 0x2B;
/// The child's LDT entries 0 and 1 (TI = 1, RPL 3): 16-bit code and 16-bit data.
const LDT_CS16: u16 = 0x07;
const LDT_DS16: u16 = 0x0F;

/// The child's exit statuses when it cannot set itself up, and what they mean.
const EXIT_ALTSTACK: i32 = 20;
const EXIT_SIGACTION: i32 = 21;
const EXIT_MAP: i32 = 22;
const EXIT_CODE_WRITABLE: i32 = 23;
const EXIT_CODE_EXECUTABLE: i32 = 24;
const CHILD_EXITS: &[(i32, &str)] = &[
    (EXIT_ALTSTACK, "sigaltstack failed"),
    (EXIT_SIGACTION, "sigaction failed"),
    (
        EXIT_MAP,
        "the sandbox pages could not be mapped at their fixed addresses",
    ),
    (EXIT_CODE_WRITABLE, "making the code page writable failed"),
    (
        EXIT_CODE_EXECUTABLE,
        "making the code page executable failed",
    ),
];

/// Why 16-bit cases cannot run when the child could not install its LDT segments.
const NO_LDT: &str = "modify_ldt failed: 16-bit code needs LDT segments, which this kernel \
                      does not offer (CONFIG_MODIFY_LDT_SYSCALL)";

/// How long a case may take before the child is deemed hung.
const TIMEOUT_SECS: u64 = 5;

/// Requests and replies.
#[repr(C)]
struct Shared {
    /// The x87/SSE state the snippet starts with (FXRSTOR wants it 16-byte aligned, which
    /// the type is).
    fx: FxState,
    out_fx: FxState,
    selector: u64,
    data_selector: u64,
    entry_ip: u64,
    code_len: u64,
    gpr: [u64; 16],
    rflags: u64,
    code: [u8; CODE_SIZE],
    data: [u8; DATA_SIZE],
    out_gpr: [u64; 16],
    out_rip: u64,
    out_rflags: u64,
    out_trapno: u64,
    out_err: u64,
    out_cr2: u64,
    out_signal: u64,
    /// Set by the child when a 16-bit case came but it has no LDT segments.
    out_no_ldt: u64,
    out_data: [u8; DATA_SIZE],
}

/// Where the trampoline's pieces are.
#[derive(Clone, Copy)]
struct Trampoline {
    entry: u64,
    resume: u64,
    host_rsp: u64,
    rflags: u64,
    gpr: [u64; 16],
    data_selector: u64,
    far_offset: u64,
    far_selector: u64,
}

// The signal handler's view of the child (set in the child after fork, read in the
// handler; the parent never installs the handler).
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(ptr::null_mut());
static RESUME: AtomicU64 = AtomicU64::new(0);
static HOST_RSP: AtomicU64 = AtomicU64::new(0);
static RUNNING: AtomicBool = AtomicBool::new(false);

struct Worker {
    pid: libc::pid_t,
    request: OwnedFd,
    reply: OwnedFd,
}

/// The host CPU as a [`Runner`]. Linux on x86-64 only.
pub struct HostOracle {
    shared: *mut Shared,
    trampoline: Trampoline,
    altstack: *mut u8,
    worker: Option<Worker>,
    cpu: String,
}

const ALTSTACK: usize = 64 * 1024;

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Anonymous memory for the parent and the child to share (`shared`) or inherit.
fn map(len: usize, prot: i32, shared: bool) -> Result<*mut u8, String> {
    let flags = libc::MAP_ANONYMOUS
        | if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    // SAFETY: a fresh anonymous mapping at an address the kernel picks; nothing aliases it.
    let p = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", errno()));
    }
    Ok(p.cast())
}

impl HostOracle {
    pub fn new() -> Result<Self, String> {
        let shared = map(
            std::mem::size_of::<Shared>(),
            libc::PROT_READ | libc::PROT_WRITE,
            true,
        )?
        .cast::<Shared>();
        let code = map(
            0x1000,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            false,
        )?;
        // SAFETY: a field address in our own mapping; nothing is read or written here.
        let fx_in = unsafe { ptr::addr_of!((*shared).fx) } as u64;
        let (bytes, trampoline) =
            assemble_trampoline(code as u64, fx_in).map_err(|e| format!("trampoline: {e}"))?;
        // SAFETY: `code` is a fresh 4 KiB mapping and the trampoline is smaller.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), code, bytes.len().min(0x1000)) };
        let altstack = map(ALTSTACK, libc::PROT_READ | libc::PROT_WRITE, false)?;
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|n| n.trim().to_string())
            })
            .unwrap_or_else(|| "unknown x86-64 CPU".into());
        Ok(Self {
            shared,
            trampoline,
            altstack,
            worker: None,
            cpu,
        })
    }

    fn spawn(&mut self) -> Result<(), String> {
        let (req_r, req_w) = pipe()?;
        let (rep_r, rep_w) = pipe()?;
        // SAFETY: the child runs only `child_main`, which makes system calls and touches
        // memory mapped before the fork; it never returns into Rust code of the parent.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", errno()));
        }
        if pid == 0 {
            // SAFETY: in the child; see child_main.
            unsafe {
                child_main(
                    self.shared,
                    self.trampoline,
                    self.altstack,
                    req_r.as_raw_fd(),
                    rep_w.as_raw_fd(),
                )
            }
        }
        drop((req_r, rep_w));
        self.worker = Some(Worker {
            pid,
            request: req_w,
            reply: rep_r,
        });
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(w) = self.worker.take() {
            // SAFETY: plain system calls on our own child.
            unsafe {
                libc::kill(w.pid, libc::SIGKILL);
                libc::waitpid(w.pid, ptr::null_mut(), 0);
            }
        }
    }

    /// Why the child died, if it did.
    fn reap(&mut self) -> String {
        let Some(w) = self.worker.take() else {
            return "no worker".into();
        };
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(w.pid, &mut status, 0) };
        if libc::WIFSIGNALED(status) {
            format!("the worker died of signal {}", libc::WTERMSIG(status))
        } else {
            let code = libc::WEXITSTATUS(status);
            match CHILD_EXITS.iter().find(|(c, _)| *c == code) {
                Some((_, why)) => format!("the worker stopped: {why}"),
                None => format!("the worker exited with status {code}"),
            }
        }
    }

    fn execute(&mut self, case: &Case) -> Result<Final, RunError> {
        if self.worker.is_none() {
            self.spawn().map_err(RunError::Oracle)?;
        }
        if let Some(why) = super::host_cannot_run(case.mode, case.cpl) {
            return Err(RunError::Oracle(why));
        }
        let data = case.data.bytes();
        // SAFETY: `shared` is our mapping; the child reads it only between our request
        // byte and its reply byte, and we write it only outside that window.
        let sh = unsafe { &mut *self.shared };
        // Legacy protected mode's cases run in compatibility mode: for user code the two
        // differ only in exception delivery, which the sandbox reports in the same terms,
        // and in paging (below).
        let (cs, ds) = match case.mode {
            Mode::B64 => (USER_CS64, USER_DS),
            Mode::B32 | Mode::Pm32 => (USER_CS32, USER_DS),
            Mode::B16 | Mode::Pm16 => (LDT_CS16, LDT_DS16),
            // Refused above, by host_cannot_run().
            Mode::Real => {
                return Err(RunError::Oracle(format!(
                    "{} needs KVM",
                    case.mode.describe()
                )))
            }
        };
        sh.selector = cs as u64;
        sh.data_selector = ds as u64;
        sh.entry_ip = code_ip(case.mode);
        let n = case.code.len().min(CODE_SIZE - 1);
        sh.code[..n].copy_from_slice(&case.code[..n]);
        sh.code_len = n as u64;
        sh.gpr = case.gpr;
        sh.rflags = 0x202 | (case.rflags & COMPARED_FLAGS);
        sh.fx = super::fx_image(&case.xmm);
        // Cleared, so that a signal frame without an FPU area reads as a mismatch, not
        // as the last case's state.
        sh.out_fx = FxState { bytes: [0; 512] };
        sh.data.copy_from_slice(&data);
        sh.out_signal = 0;
        sh.out_no_ldt = 0;

        let w = self
            .worker
            .as_ref()
            .ok_or(RunError::Oracle("no worker".into()))?;
        // SAFETY: one byte to a pipe we own.
        let wrote = unsafe { libc::write(w.request.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        if wrote != 1 {
            return Err(RunError::Oracle(self.reap()));
        }
        let mut pfd = libc::pollfd {
            fd: w.reply.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one descriptor we own.
        let ready = unsafe { libc::poll(&mut pfd, 1, (TIMEOUT_SECS * 1000) as i32) };
        if ready <= 0 {
            self.kill();
            return Err(RunError::Timeout(TIMEOUT_SECS));
        }
        let mut b = 0u8;
        // SAFETY: one byte from a pipe we own.
        let got = unsafe { libc::read(w.reply.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
        if got != 1 {
            return Err(RunError::Oracle(self.reap()));
        }
        if sh.out_no_ldt != 0 {
            return Err(RunError::Oracle(NO_LDT.into()));
        }
        let rip = sh.out_rip;
        let start = code_ip(case.mode);
        if !(start..start + CODE_SIZE as u64).contains(&rip) {
            return Err(RunError::Oracle(format!(
                "the snippet did not start (signal {} at {rip:#x}){}",
                sh.out_signal,
                match case.mode {
                    Mode::B32 | Mode::Pm32 =>
                        ": does this kernel run 32-bit code (ia32_emulation)?",
                    Mode::B16 | Mode::Pm16 => ": does this kernel run 16-bit code segments?",
                    _ => "",
                }
            )));
        }
        let vector = sh.out_trapno as u8;
        let mut error = sh.out_err as u32;
        if vector == 14 && case.mode.legacy() {
            // A #PF's I/D bit (an instruction fetch) exists with PAE or 4-level paging and
            // EFER.NXE; legacy protected mode's sandbox has 32-bit paging, which reports 0
            // there (SDM vol. 3, 4.7).
            error &= !0x10;
        }
        Ok(Final {
            gpr: sh.out_gpr,
            rip,
            rflags: sh.out_rflags,
            xmm: super::xmm_of(&sh.out_fx),
            mxcsr: sh.out_fx.mxcsr(),
            x87: super::x87_of(&sh.out_fx),
            event: Event::Exception {
                vector,
                error: has_error_code(vector).then_some(error),
                address: (vector == 14).then_some(sh.out_cr2),
            },
            data: sh.out_data.to_vec(),
        })
    }
}

impl Runner for HostOracle {
    fn name(&self) -> String {
        format!("host CPU ({})", self.cpu)
    }
    fn run(&mut self, case: &Case) -> Result<Final, RunError> {
        self.execute(case)
    }
}

impl Drop for HostOracle {
    fn drop(&mut self) {
        self.kill();
        // SAFETY: unmapping what new() mapped; the child (if any) is gone.
        unsafe {
            libc::munmap(self.shared.cast(), std::mem::size_of::<Shared>());
            libc::munmap(self.altstack.cast(), ALTSTACK);
            libc::munmap(self.trampoline.entry as *mut libc::c_void, 0x1000);
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", errno()));
    }
    // SAFETY: both are fresh descriptors owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The GPR order of [`Case::gpr`] as indices into Linux's `gregs`.
const GREG: [i32; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

/// The trampoline at `at`, loading the x87/SSE state from the FXSAVE image at `fx`.
fn assemble_trampoline(at: u64, fx: u64) -> Result<(Vec<u8>, Trampoline), IcedError> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64)?;
    let mut host_rsp = a.create_label();
    let mut rflags = a.create_label();
    let mut far = a.create_label();
    let mut data_selector = a.create_label();
    let mut resume = a.create_label();
    let mut slots: Vec<CodeLabel> = (0..16).map(|_| a.create_label()).collect();
    let regs = [
        rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
    ];
    for r in [rbx, rbp, r12, r13, r14, r15] {
        a.push(r)?;
    }
    a.mov(qword_ptr(host_rsp), rsp)?;
    // A 64-bit process runs with null DS and ES, which 32-bit code cannot use: load
    // __USER_DS (0x2B) as a 32-bit process has them, or the LDT's 16-bit data segment
    // for 16-bit code (into SS too: its stack is 16-bit). 64-bit code ignores all three.
    a.mov(eax, dword_ptr(data_selector))?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(rax, fx)?;
    a.fxrstor64(ptr(rax))?;
    a.push(qword_ptr(rflags))?;
    a.popfq()?;
    // Plain MOVs from here on: they leave the flags just loaded alone.
    for (r, slot) in regs.iter().zip(&slots) {
        a.mov(*r, qword_ptr(*slot))?;
    }
    a.jmp(fword_ptr(far))?;
    a.set_label(&mut resume)?;
    for r in [r15, r14, r13, r12, rbp, rbx] {
        a.pop(r)?;
    }
    a.ret()?;
    a.int3()?;
    for (label, value) in [
        (&mut host_rsp, 0u64),
        (&mut rflags, 0),
        (&mut data_selector, USER_DS as u64),
    ] {
        a.set_label(label)?;
        a.dq(&[value])?;
    }
    for slot in slots.iter_mut() {
        a.set_label(slot)?;
        a.dq(&[0])?;
    }
    a.set_label(&mut far)?;
    a.dd(&[CODE_VA as u32])?;
    a.dw(&[USER_CS64])?;
    let out = a.assemble_options(at, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let mut gpr = [0u64; 16];
    for (g, slot) in gpr.iter_mut().zip(&slots) {
        *g = out.label_ip(slot)?;
    }
    let t = Trampoline {
        entry: at,
        resume: out.label_ip(&resume)?,
        host_rsp: out.label_ip(&host_rsp)?,
        rflags: out.label_ip(&rflags)?,
        gpr,
        data_selector: out.label_ip(&data_selector)?,
        far_offset: out.label_ip(&far)?,
        far_selector: out.label_ip(&far)? + 4,
    };
    Ok((out.inner.code_buffer, t))
}

/// The child: map the sandbox pages, then run one case per request byte.
///
/// # Safety
/// Called once, in a freshly forked child, with the parent's mappings. Never returns.
unsafe fn child_main(
    shared: *mut Shared,
    t: Trampoline,
    altstack: *mut u8,
    request: RawFd,
    reply: RawFd,
) -> ! {
    let die = |code: i32| -> ! { libc::_exit(code) };
    SHARED.store(shared, Ordering::SeqCst);
    RESUME.store(t.resume, Ordering::SeqCst);
    HOST_RSP.store(t.host_rsp, Ordering::SeqCst);

    let ss = libc::stack_t {
        ss_sp: altstack.cast(),
        ss_flags: 0,
        ss_size: ALTSTACK,
    };
    if libc::sigaltstack(&ss, ptr::null_mut()) != 0 {
        die(EXIT_ALTSTACK);
    }
    let mut sa: libc::sigaction = std::mem::zeroed();
    sa.sa_sigaction = on_signal as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
    ] {
        if libc::sigaction(sig, &sa, ptr::null_mut()) != 0 {
            die(EXIT_SIGACTION);
        }
    }
    let fixed = |addr: u64, len: usize| {
        let p = libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        p as u64 == addr
    };
    if !fixed(CODE_VA, CODE_SIZE) || !fixed(DATA_VA, DATA_SIZE) {
        die(EXIT_MAP);
    }
    // Only 16-bit cases need the LDT: without it the others still run.
    let have_ldt = install_ldt();
    let code = CODE_VA as *mut u8;
    let data = DATA_VA as *mut u8;
    // The trampoline's data slots sit between its instructions, unaligned.
    let set_slot = |a: u64, v: u64| ptr::write_unaligned(a as *mut u64, v);
    loop {
        let mut b = 0u8;
        if libc::read(request, (&mut b as *mut u8).cast(), 1) != 1 {
            die(0);
        }
        let sh = &mut *shared;
        let n = sh.code_len as usize;
        if libc::mprotect(code.cast(), CODE_SIZE, libc::PROT_READ | libc::PROT_WRITE) != 0 {
            die(EXIT_CODE_WRITABLE);
        }
        ptr::write_bytes(code, 0, CODE_SIZE);
        ptr::copy_nonoverlapping(sh.code.as_ptr(), code, n);
        *code.add(n) = END_MARKER;
        if libc::mprotect(code.cast(), CODE_SIZE, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            die(EXIT_CODE_EXECUTABLE);
        }
        ptr::copy_nonoverlapping(sh.data.as_ptr(), data, DATA_SIZE);
        for (i, g) in sh.gpr.iter().enumerate() {
            set_slot(t.gpr[i], *g);
        }
        set_slot(t.rflags, sh.rflags);
        set_slot(t.data_selector, sh.data_selector);
        ptr::write_unaligned(t.far_offset as *mut u32, sh.entry_ip as u32);
        ptr::write_unaligned(t.far_selector as *mut u16, sh.selector as u16);

        if sh.selector as u16 == LDT_CS16 && !have_ldt {
            sh.out_no_ldt = 1;
        } else {
            RUNNING.store(true, Ordering::SeqCst);
            let enter: extern "C" fn() = std::mem::transmute(t.entry as usize);
            enter();
        }
        ptr::copy_nonoverlapping(data, sh.out_data.as_mut_ptr(), DATA_SIZE);
        if libc::write(reply, (&b as *const u8).cast(), 1) != 1 {
            die(0);
        }
    }
}

/// Linux's `struct user_desc` (asm/ldt.h): the flags word packs seg_32bit, contents (2
/// mode), read_exec_only, limit_in_pages, seg_not_present, useable and lm.
#[repr(C)]
struct UserDesc {
    entry_number: u32,
    base_addr: u32,
    limit: u32,
    flags: u32,
}

/// Installs the 16-bit code and data segments (LDT entries 0 and 1) based at the code
/// page with a 64 KiB limit, as [`seg_base`] lays them out: a readable code segment and
/// a writable data segment, both 16-bit (D/B = 0), byte-granular, present.
///
/// # Safety
/// A system call on the calling process's own LDT; call it in the child only.
unsafe fn install_ldt() -> bool {
    const CONTENTS_CODE: u32 = 2 << 1;
    let base = seg_base(Mode::B16) as u32;
    [(0, CONTENTS_CODE), (1, 0)]
        .iter()
        .all(|&(entry, contents)| {
            let desc = UserDesc {
                entry_number: entry,
                base_addr: base,
                limit: SEG16_LIMIT,
                flags: contents | 1 << 6, // useable
            };
            // func 0x11: write an entry, "new mode" (the AVL/useable bit as given).
            libc::syscall(
                libc::SYS_modify_ldt,
                0x11,
                &desc as *const UserDesc,
                std::mem::size_of::<UserDesc>(),
            ) == 0
        })
}

/// Records the interrupted snippet's context and sends it back to the trampoline.
extern "C" fn on_signal(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if !RUNNING.swap(false, Ordering::SeqCst) {
        // A fault in the child's own code: let the default action end it.
        // SAFETY: resetting a handler is async-signal-safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
        return;
    }
    // SAFETY: the kernel passes a valid ucontext for SA_SIGINFO handlers; SHARED was set
    // before any snippet ran and points at the shared block.
    unsafe {
        let uc = &mut *ctx.cast::<libc::ucontext_t>();
        let g = &mut uc.uc_mcontext.gregs;
        let sh = &mut *SHARED.load(Ordering::SeqCst);
        for (i, r) in GREG.iter().enumerate() {
            sh.out_gpr[i] = g[*r as usize] as u64;
        }
        sh.out_rip = g[libc::REG_RIP as usize] as u64;
        sh.out_rflags = g[libc::REG_EFL as usize] as u64;
        sh.out_trapno = g[libc::REG_TRAPNO as usize] as u64;
        sh.out_err = g[libc::REG_ERR as usize] as u64;
        sh.out_cr2 = g[libc::REG_CR2 as usize] as u64;
        sh.out_signal = sig as u64;
        // The x87/SSE state as of the event, in FXSAVE form (the first 512 bytes of the
        // signal frame's FPU area, whatever extended state follows). The child's own code
        // then resumes with MXCSR and the x87 control word at their defaults.
        let fp = uc.uc_mcontext.fpregs.cast::<FxState>();
        if !fp.is_null() {
            sh.out_fx = ptr::read_unaligned(fp);
            let mut clean = sh.out_fx;
            clean.set_mxcsr(MXCSR_RESET);
            clean.set_fcw(FCW_INIT);
            ptr::write_unaligned(fp, clean);
        }
        // Back to the trampoline's epilogue, in 64-bit mode, on the child's stack (with
        // __USER_DS in SS: sigreturn restores the saved SS, which may be 16-bit data).
        g[libc::REG_RIP as usize] = RESUME.load(Ordering::SeqCst) as i64;
        g[libc::REG_RSP as usize] =
            ptr::read_unaligned(HOST_RSP.load(Ordering::SeqCst) as *const i64);
        g[libc::REG_EFL as usize] = 0x202;
        let csgsfs = g[libc::REG_CSGSFS as usize] as u64;
        // CS, GS, FS, SS: 16 bits each.
        let csgsfs = (csgsfs & 0x0000_FFFF_FFFF_0000) | USER_CS64 as u64 | (USER_DS as u64) << 48;
        g[libc::REG_CSGSFS as usize] = csgsfs as i64;
    }
}
