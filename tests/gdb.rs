//! Stock gdb drives Gantry's gdbstub (`--gdb`, `--gdb-wait`) in batch mode: breakpoints at
//! symbols of a multiboot kernel assembled and linked here with binutils, stepping,
//! registers and memory read and written, a hardware watchpoint, Ctrl-C, monitor
//! commands, real-mode stepping through the demo guest's first instructions, and the
//! Debian kernel's 64-bit entry point with its page tables. Each runs on the emulated CPU
//! and, where /dev/kvm exists, on KVM. gdb and binutils are installed by tests/run.sh
//! where missing; a test fails (never skips) without them.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

/// A gantry process serving gdb.
struct Server {
    child: Child,
    port: u16,
    stdout: std::thread::JoinHandle<String>,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `gantry run ARGS --gdb 127.0.0.1:0 --gdb-wait` and learns its port from the
    /// line it prints.
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .arg("run")
            .args(args)
            .args(["--gdb", "127.0.0.1:0", "--gdb-wait"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gantry");
        let stdout = common::read_all(child.stdout.take().expect("stdout"));
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gantry announces its gdb server");
        let port = first
            .split("gdb server on 127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {first:?}"));
        Server {
            child,
            port,
            stdout,
            stderr: rx,
        }
    }

    /// Waits for gantry to end; returns its exit status, stdout and stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st.code();
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("gantry did not end after gdb was done");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        (status, stdout, stderr.join("\n"))
    }
}

/// Runs gdb in batch mode on `script` (after `target remote`); with `interrupt_after`,
/// sends gdb SIGINT then, as a user's Ctrl-C would. Returns everything gdb printed.
fn gdb(
    server: &Server,
    dir: &Path,
    elf: Option<&Path>,
    script: &str,
    interrupt_after: Option<Duration>,
) -> String {
    let _ = dir;
    let text = format!(
        "set pagination off\nset confirm off\ntarget remote 127.0.0.1:{}\n{script}",
        server.port
    );
    // One -ex per line rather than a script file: gdb stops a script at its first error,
    // and some tests check the errors.
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch"]);
    for line in text.lines() {
        cmd.arg("-ex").arg(line);
    }
    if let Some(elf) = elf {
        cmd.arg(elf);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb is installed (tests/run.sh installs it)");
    let out_t = common::read_all(child.stdout.take().expect("stdout"));
    let err_t = common::read_all(child.stderr.take().expect("stderr"));
    let start = Instant::now();
    let mut interrupted = false;
    loop {
        if child.try_wait().expect("wait gdb").is_some() {
            break;
        }
        if let Some(after) = interrupt_after {
            if !interrupted && start.elapsed() > after {
                // SAFETY: a plain kill(2) of our own child process.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                interrupted = true;
            }
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("gdb did not finish its script");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = out_t.join().unwrap_or_default() + &err_t.join().unwrap_or_default();
    eprintln!("--- gdb said:\n{text}---");
    text
}

/// What a debugging session showed: gdb's output and how gantry ended.
struct Debugged {
    gdb: String,
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `gantry run ARGS` waiting for gdb, `script` in gdb (with `elf`'s symbols), and
/// waits for gantry to end.
fn debug_session(
    dir: &Path,
    args: &[&str],
    elf: Option<&Path>,
    script: &str,
    interrupt_after: Option<Duration>,
) -> Debugged {
    let server = Server::start(args);
    let gdb = gdb(&server, dir, elf, script, interrupt_after);
    let (status, stdout, stderr) = server.finish();
    Debugged {
        gdb,
        status,
        stdout,
        stderr,
    }
}

/// The backend a test debugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cpu {
    Interp,
    /// The emulated CPU with its Cranelift tier: under a debugger it runs blocks one at a
    /// time from the run loop (no chaining), compiling them once hot.
    Jit,
    Kvm,
}

impl Cpu {
    fn accel(self) -> &'static str {
        match self {
            Cpu::Interp => "interp",
            Cpu::Jit => "jit",
            Cpu::Kvm => "kvm",
        }
    }

    /// Whether the test can run on this backend here (KVM skips, saying so, only where
    /// the host has no /dev/kvm).
    fn available(self, test: &str) -> bool {
        self != Cpu::Kvm || common::kvm_available(test)
    }
}

/// [`debug_session`] on the test kernel (see [`kernel`]).
fn debug_kernel(
    test: &str,
    cpu: Cpu,
    start: Option<&str>,
    script: &str,
    interrupt_after: Option<Duration>,
) -> Debugged {
    let dir = common::scratch(&format!("{test}-{}", cpu.accel()));
    let elf = kernel(&dir, start);
    let path = elf.to_str().expect("scratch path is UTF-8");
    debug_session(
        &dir,
        &["--accel", cpu.accel(), "--kernel", path],
        Some(&elf),
        script,
        interrupt_after,
    )
}

/// The test kernel: counts three calls of `work`, prints `message`, and leaves through
/// the debug-exit port with EAX from `compute` (exit status (EAX << 1) | 1). `start`
/// replaces that with a jump: to `spin` (forever), `halt_test` (HLT with interrupts off,
/// at `halt_here`), `fault_test` (#UD through an IDT) or
/// `dr_test` (the kernel's own instruction breakpoint on `work`, DR0, counted by its #DB
/// handler, which returns with RF set).
const KERNEL: &str = r#"
.intel_syntax noprefix
.section .text
.align 4
mb_header:
    .long 0x1BADB002, 0, -0x1BADB002
.globl _start
_start:
    mov esp, 0x90000
    SPIN
main:
    mov ecx, 3
1:  call work
    loop 1b
    call print_message
    call compute
result_ready:
    mov dx, 0xF4
    out dx, eax
    cli
    hlt
work:
    inc dword ptr [counter]
    ret
compute:
    mov eax, 5
    ret
print_message:
    mov esi, offset message
    mov dx, 0x3F8
2:  lodsb
    test al, al
    jz 3f
    out dx, al
    jmp 2b
3:  ret
spin:
    jmp spin
halt_test:
    cli
halt_here:
    hlt
    jmp main
fault_test:
    mov eax, offset ud_handler
    mov word ptr [idt + 6 * 8], ax
    mov word ptr [idt + 6 * 8 + 2], cs
    mov word ptr [idt + 6 * 8 + 4], 0x8E00
    shr eax, 16
    mov word ptr [idt + 6 * 8 + 6], ax
    lidt [idtr]
faulting:
    ud2
ud_handler:
    mov eax, 7
    mov dx, 0xF4
    out dx, eax
    cli
    hlt
dr_test:
    mov eax, offset db_handler
    mov word ptr [idt + 1 * 8], ax
    mov word ptr [idt + 1 * 8 + 2], cs
    mov word ptr [idt + 1 * 8 + 4], 0x8E00
    shr eax, 16
    mov word ptr [idt + 1 * 8 + 6], ax
    lidt [idtr]
    mov eax, offset work
    mov dr0, eax
    mov eax, 1
    mov dr7, eax
    jmp main
db_handler:
    inc dword ptr [db_count]
    or dword ptr [esp + 8], 0x10000
    iretd
.section .data
.align 8
idt: .fill 32, 8, 0
idtr: .word 32 * 8 - 1
    .long idt
counter: .long 0
db_count: .long 0
message: .asciz "Hello from the test kernel\n"
"#;

/// Assembles and links the test kernel with binutils; returns the ELF (with symbols).
fn kernel(dir: &Path, start: Option<&str>) -> PathBuf {
    let src = dir.join("kernel.S");
    std::fs::write(
        &src,
        KERNEL.replace(
            "SPIN",
            &start.map(|l| format!("jmp {l}")).unwrap_or_default(),
        ),
    )
    .expect("write kernel source");
    common::link_kernel(&src)
}

/// The tests of a scenario: on the emulated CPU's interpreter and JIT, and on KVM (which
/// says SKIP only where the host has no /dev/kvm).
macro_rules! on_every_cpu {
    ($scenario:ident: $interp:ident, $jit:ident, $kvm:ident) => {
        #[test]
        fn $interp() {
            $scenario(Cpu::Interp);
        }

        #[test]
        fn $jit() {
            $scenario(Cpu::Jit);
        }

        #[test]
        fn $kvm() {
            if Cpu::Kvm.available(stringify!($kvm)) {
                $scenario(Cpu::Kvm);
            }
        }
    };
}

fn breaks_steps_and_changes_a_multiboot_kernel(cpu: Cpu) {
    let Debugged {
        gdb: out,
        status,
        stdout,
        stderr,
    } = debug_kernel(
        "gdb-multiboot",
        cpu,
        None,
        "\
info registers eip
break work
continue
print *(int*)&counter
stepi
x/i $pc
delete
stepi
x/i $pc
hbreak print_message
continue
set var *(char*)&message = 0x4a
break result_ready
continue
print $eax
set $eax = 21
continue
",
        None,
    );
    // Stopped at the multiboot entry point before the first instruction (--gdb-wait).
    assert!(out.contains("eip            0x10000c"), "{out}");
    assert!(out.contains("Breakpoint 1, 0x"), "{out}");
    assert!(out.contains(" in work ()\n$1 = 0"), "{out}");
    // One step executes the 6-byte `inc`; the `ret` after it is next.
    assert!(out.contains("<work+6>:\tret"), "{out}");
    // The next step executes the `ret`: back in the main loop, at the `loop` after the call.
    assert!(out.contains("<main+"), "{out}");
    assert!(out.contains(":\tloop "), "{out}");
    assert!(out.contains("Hardware assisted breakpoint 2 at"), "{out}");
    assert!(out.contains("in print_message ()"), "{out}");
    assert!(out.contains("in result_ready ()"), "{out}");
    assert!(out.contains("$2 = 5"), "{out}");
    // EAX changed by gdb reaches the debug-exit port: (21 << 1) | 1 = 43 = 053.
    assert!(out.contains("exited with code 053"), "{out}");
    assert_eq!(status, Some(43), "{stderr}");
    // Memory written by gdb is what the guest printed.
    assert!(stdout.contains("Jello from the test kernel"), "{stdout}");
}

on_every_cpu!(breaks_steps_and_changes_a_multiboot_kernel: gdb_breaks_steps_and_changes_a_multiboot_kernel, gdb_breaks_steps_and_changes_a_multiboot_kernel_on_the_jit, gdb_breaks_steps_and_changes_a_multiboot_kernel_on_kvm);

const WATCH_SCRIPT: &str = "\
watch *(int*)&counter
continue
x/i $pc
continue
delete
continue
";

/// The watchpoint hits: after the instruction that wrote (`inc` is 6 bytes, the `ret`
/// after it is next), twice, then the run ends.
fn assert_watchpoint_hits(out: &str, status: Option<i32>, stderr: &str) {
    assert!(
        out.contains("Hardware watchpoint 1: *(int*)&counter"),
        "{out}"
    );
    assert!(out.contains("Old value = 0\nNew value = 1"), "{out}");
    assert!(out.contains("<work+6>:\tret"), "{out}");
    assert!(out.contains("Old value = 1\nNew value = 2"), "{out}");
    assert!(out.contains("exited with code 013"), "{out}");
    assert_eq!(status, Some(11), "{stderr}");
}

#[test]
fn gdb_watchpoint_hits() {
    let d = debug_kernel("gdb-watch", Cpu::Interp, None, WATCH_SCRIPT, None);
    assert_watchpoint_hits(&d.gdb, d.status, &d.stderr);
}

/// On the JIT, where the watched page's accesses would otherwise be inline TLB hits in
/// generated code.
#[test]
fn gdb_watchpoint_hits_on_the_jit() {
    let d = debug_kernel("gdb-watch", Cpu::Jit, None, WATCH_SCRIPT, None);
    assert_watchpoint_hits(&d.gdb, d.status, &d.stderr);
}

#[test]
fn gdb_watchpoint_hits_on_kvm() {
    let test = "gdb_watchpoint_hits_on_kvm";
    if !Cpu::Kvm.available(test) {
        return;
    }
    // x86 debug registers cannot watch reads alone: gdb hears that at insertion.
    let script = format!("rwatch *(int*)&counter\ncontinue\ndelete\n{WATCH_SCRIPT}");
    let d = debug_kernel("gdb-watch", Cpu::Kvm, None, &script, None);
    assert!(
        d.gdb.contains("Could not insert hardware watchpoint 1"),
        "{}",
        d.gdb
    );
    assert!(
        d.stderr.contains("no read-only watchpoints"),
        "{}",
        d.stderr
    );
    if let Some(kind) = gantry_machine::accel::kvm_software_assisted() {
        // Such a KVM runs ring-0 code in its own emulator, which does not raise data
        // breakpoints: Gantry says so, and the run still ends normally.
        eprintln!(
            "SKIP {test} (hit checks only): this host's KVM is software-assisted ({kind}) \
             and delivers no data breakpoints"
        );
        assert!(
            d.stderr.contains("may not deliver data breakpoints"),
            "{}",
            d.stderr
        );
        assert!(d.gdb.contains("exited with code 013"), "{}", d.gdb);
        assert_eq!(d.status, Some(11), "{}", d.stderr);
        return;
    }
    let out = d
        .gdb
        .replace("Hardware watchpoint 2", "Hardware watchpoint 1");
    assert_watchpoint_hits(&out, d.status, &d.stderr);
}

fn interrupts_a_spinning_guest_and_reads_the_machine(cpu: Cpu) {
    let Debugged {
        gdb: out,
        status,
        stdout: _,
        stderr,
    } = debug_kernel(
        "gdb-interrupt",
        cpu,
        Some("spin"),
        "\
continue
info registers eip
x/i $pc
monitor info registers
monitor info tlb 0x100000
monitor xp 0x100000 16
monitor stats
monitor bogus
kill
",
        Some(Duration::from_secs(2)),
    );
    assert!(out.contains("Program received signal SIGINT"), "{out}");
    assert!(out.contains("in spin ()"), "{out}");
    assert!(out.contains("<spin>:\tjmp "), "{out}");
    assert!(out.contains("mode protected, 32-bit code, CPL 0"), "{out}");
    assert!(out.contains("paging is off"), "{out}");
    assert!(out.contains("0x100000 -> physical 0x100000"), "{out}");
    // The multiboot magic at the start of the image.
    assert!(out.contains("0000000000100000: 02 b0 ad 1b"), "{out}");
    // Each backend's own statistics.
    let stats = match cpu {
        Cpu::Interp | Cpu::Jit => "guest instructions:",
        Cpu::Kvm => "exits: io",
    };
    assert!(out.contains(stats), "{out}");
    assert!(out.contains("unknown monitor command"), "{out}");
    // `kill` ends Gantry (exit status 0, as a quit).
    assert_eq!(status, Some(0), "{stderr}");
}

on_every_cpu!(interrupts_a_spinning_guest_and_reads_the_machine: gdb_interrupts_a_spinning_guest_and_reads_the_machine, gdb_interrupts_a_spinning_guest_and_reads_the_machine_on_the_jit, gdb_interrupts_a_spinning_guest_and_reads_the_machine_on_kvm);

fn steps_real_mode_code_at_cs_ip(cpu: Cpu) {
    let Debugged {
        gdb: out,
        status,
        stderr,
        ..
    } = debug_session(
        &common::scratch(&format!("gdb-real-mode-{}", cpu.accel())),
        &["--accel", cpu.accel(), "--serial", "none"],
        None,
        "\
show architecture
info registers eip cs
x/i $pc
stepi
info registers eip cs
x/2i $pc
stepi
stepi
monitor info registers
break *0xfffffff0
monitor reset
continue
kill
",
        None,
    );
    // After a reset, a breakpoint at the reset vector stops the guest before its first
    // instruction again.
    assert!(out.contains("machine reset"), "{out}");
    assert!(out.contains("Breakpoint 1, 0xfffffff0"), "{out}");
    // The 16-bit description: gdb disassembles 16-bit code, and $pc is CS.base + IP.
    assert!(out.contains("(currently \"i8086\")"), "{out}");
    assert!(out.contains("eip            0xfffffff0"), "{out}");
    assert!(out.contains("=> 0xfffffff0:\tjmp    0xffff1000"), "{out}");
    assert!(out.contains("eip            0xffff1000"), "{out}");
    assert!(out.contains("cs             0xf000"), "{out}");
    assert!(out.contains("=> 0xffff1000:\tcli"), "{out}");
    assert!(out.contains("cs:ip f000:1002"), "{out}");
    assert!(out.contains("mode real, 16-bit code"), "{out}");
    assert_eq!(status, Some(0), "{stderr}");
}

on_every_cpu!(steps_real_mode_code_at_cs_ip: gdb_steps_real_mode_code_at_cs_ip, gdb_steps_real_mode_code_at_cs_ip_on_the_jit, gdb_steps_real_mode_code_at_cs_ip_on_kvm);

#[test]
fn gdb_steps_the_debian_kernel_entry_and_walks_its_page_tables() {
    let Some((kernel, initrd)) =
        common::debian_guest("gdb_steps_the_debian_kernel_entry_and_walks_its_page_tables")
    else {
        return;
    };
    let Debugged {
        gdb: out,
        status,
        stderr,
        ..
    } = debug_session(
        &common::scratch("gdb-debian"),
        &[
            "--accel",
            "interp",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0",
            "--serial",
            "none",
        ],
        None,
        "\
show architecture
info registers rip cs
x/3i $pc
stepi
stepi
stepi
info registers rip
print/x $cr3
monitor info tlb 0x1000000
kill
",
        None,
    );
    // The 64-bit boot protocol's entry: startup_64 at the load address + 0x200.
    assert!(out.contains("(currently \"i386:x86-64\")"), "{out}");
    assert!(out.contains("rip            0x100200"), "{out}");
    assert!(out.contains("=> 0x100200:\tcld"), "{out}");
    assert!(out.contains("rip            0x100204"), "{out}");
    // Gantry's identity map (PML4 at 0x9000) with 2 MiB pages.
    assert!(out.contains("$1 = 0x9000"), "{out}");
    assert!(out.contains("PML4E  at 0x0000009000"), "{out}");
    assert!(
        out.contains("0x1000000 -> physical 0x1000000 (2048 KiB page"),
        "{out}"
    );
    assert_eq!(status, Some(0), "{stderr}");
}

fn addresses_outside_memory_give_errors_not_crashes(cpu: Cpu) {
    let Debugged {
        gdb: out,
        status,
        stdout: _,
        stderr,
    } = debug_kernel(
        "gdb-bad-addresses",
        cpu,
        None,
        "\
x/4xb 0xd0000000
set var *(int*)0xd0000000 = 1
set $cr0 = 0
monitor xp 0xd0000000 16
info registers eip
continue
",
        None,
    );
    assert!(
        out.contains("Cannot access memory at address 0xd0000000"),
        "{out}"
    );
    assert!(out.contains("not RAM or ROM"), "{out}");
    // Still serving after the errors: the guest runs to its end.
    assert!(out.contains("eip            0x10000c"), "{out}");
    assert!(out.contains("exited with code 013"), "{out}");
    assert_eq!(status, Some(11), "{stderr}");
}

on_every_cpu!(addresses_outside_memory_give_errors_not_crashes: gdb_addresses_outside_memory_give_errors_not_crashes, gdb_addresses_outside_memory_give_errors_not_crashes_on_the_jit, gdb_addresses_outside_memory_give_errors_not_crashes_on_kvm);

/// A CPU halted with interrupts off waits under gdb instead of ending the run: gdb's
/// Ctrl-C stops it, and moving its PC wakes it there.
fn a_halted_cpu_waits_for_gdb(cpu: Cpu) {
    let Debugged {
        gdb: out,
        status,
        stdout,
        stderr,
    } = debug_kernel(
        "gdb-halt",
        cpu,
        Some("halt_test"),
        "\
break halt_here
continue
stepi
continue
set $pc = main
stepi
info registers eip
continue
",
        Some(Duration::from_secs(3)),
    );
    assert!(out.contains("Breakpoint 1, 0x"), "{out}");
    // The step over HLT ends after it; the continue then waits until Ctrl-C.
    assert!(out.contains("Program received signal SIGINT"), "{out}");
    assert!(!out.contains("W03") && !stderr.contains("halted with interrupts disabled"));
    // From main the kernel runs to its end: the step executed `mov ecx, 3`.
    assert!(out.contains("main+5"), "{out}");
    assert!(out.contains("exited with code 013"), "{out}");
    assert!(stdout.contains("Hello from the test kernel"), "{stdout}");
    assert_eq!(status, Some(11), "{stderr}");
}

#[test]
fn gdb_a_halted_cpu_waits_for_gdb() {
    a_halted_cpu_waits_for_gdb(Cpu::Interp);
}

#[test]
fn gdb_a_halted_cpu_waits_for_gdb_on_the_jit() {
    a_halted_cpu_waits_for_gdb(Cpu::Jit);
}

#[test]
fn gdb_a_halted_cpu_waits_for_gdb_on_kvm() {
    let test = "gdb_a_halted_cpu_waits_for_gdb_on_kvm";
    if !Cpu::Kvm.available(test) {
        return;
    }
    if let Some(kind) = gantry_machine::accel::kvm_software_assisted() {
        eprintln!(
            "SKIP {test}: this host's KVM is software-assisted ({kind}); it ends a single \
             step over HLT with a debug trap and no HLT exit, so the vCPU is not known to \
             be halted and the next continue runs on"
        );
        return;
    }
    a_halted_cpu_waits_for_gdb(Cpu::Kvm);
}

fn step_of_a_faulting_instruction_ends_in_the_handler(cpu: Cpu) {
    let Debugged {
        gdb: out,
        status,
        stdout: _,
        stderr,
    } = debug_kernel(
        "gdb-fault-step",
        cpu,
        Some("fault_test"),
        "\
break faulting
continue
x/i $pc
stepi
x/i $pc
continue
",
        None,
    );
    assert!(out.contains("<faulting>:\tud2"), "{out}");
    // One step: UD2 raises #UD, delivered through the IDT; the step ends in the handler:
    // the emulated CPU stops before its first instruction, as QEMU's TCG does; KVM's
    // trap-flag step reports where the CPU's #DB comes, which may be after it.
    assert!(out.contains("in ud_handler ()"), "{out}");
    if cpu != Cpu::Kvm {
        assert!(out.contains("<ud_handler>:\tmov    $0x7,%eax"), "{out}");
    }
    assert!(out.contains("exited with code 017"), "{out}");
    assert_eq!(status, Some(15), "{stderr}");
}

on_every_cpu!(step_of_a_faulting_instruction_ends_in_the_handler: gdb_step_of_a_faulting_instruction_ends_in_the_handler, gdb_step_of_a_faulting_instruction_ends_in_the_handler_on_the_jit, gdb_step_of_a_faulting_instruction_ends_in_the_handler_on_kvm);

#[test]
fn gdb_breakpoints_and_the_guests_own_debug_registers_coexist() {
    // gdb breaks at `work`, where the guest has its own DR0 instruction breakpoint: each
    // stops once for gdb, then raises the guest's #DB, whose handler counts it.
    let Debugged {
        gdb: out,
        status,
        stdout: _,
        stderr,
    } = debug_kernel(
        "gdb-guest-dr",
        Cpu::Interp,
        Some("dr_test"),
        "\
break work
continue
continue
continue
info breakpoints
delete
break result_ready
continue
print *(int*)&db_count
print *(int*)&counter
monitor info registers
continue
",
        None,
    );
    assert!(out.contains("breakpoint already hit 3 times"), "{out}");
    assert!(out.contains("in result_ready ()"), "{out}");
    // Three guest #DBs, and `work` ran three times.
    assert!(out.contains("$1 = 3\n$2 = 3"), "{out}");
    // The guest's DR0 (on `work`), DR6.B0 and DR7.L0, as the guest set them.
    assert!(out.contains("dr0 100030"), "{out}");
    assert!(out.contains("dr6 ffff0ff1  dr7 1\n"), "{out}");
    assert!(out.contains("exited with code 013"), "{out}");
    assert_eq!(status, Some(11), "{stderr}");
}

/// The test kernel (16 MiB of RAM) under `--gdb-wait`, and a raw protocol connection.
fn raw_session(test: &str) -> (Server, std::net::TcpStream) {
    let dir = common::scratch(test);
    let elf = kernel(&dir, None);
    let path = elf.to_str().expect("scratch path is UTF-8");
    let server = Server::start(&["--accel", "interp", "--kernel", path, "--mem", "16M"]);
    let s = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    (server, s)
}

/// Sends one packet and returns the reply's body, checking its framing and checksum, with
/// its run-length encoding undone.
fn exchange(s: &mut std::net::TcpStream, body: &str) -> String {
    use std::io::{Read, Write};
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    write!(s, "${body}#{sum:02x}").expect("send");
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    // Acks, then `$`, the body, `#` and two checksum digits.
    loop {
        s.read_exact(&mut byte).expect("reply");
        if byte[0] == b'$' {
            break;
        }
        assert_eq!(byte[0], b'+', "before the reply: {:?}", byte[0] as char);
    }
    loop {
        s.read_exact(&mut byte).expect("reply");
        if byte[0] == b'#' {
            break;
        }
        reply.push(byte[0]);
    }
    let mut cs = [0u8; 2];
    s.read_exact(&mut cs).expect("checksum");
    let want = reply.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    assert_eq!(std::str::from_utf8(&cs).unwrap(), format!("{want:02x}"));
    s.write_all(b"+").expect("ack");
    // Run-length encoding: `X*n` is X and then (n - 29) more of it.
    let mut out = String::new();
    let mut it = reply.iter().copied();
    while let Some(b) = it.next() {
        if b == b'*' {
            let last = out.chars().last().expect("a run follows a character");
            let n = it.next().expect("run length") as usize - 29;
            out.extend(std::iter::repeat_n(last, n));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// An `m` longer than the packet buffer (gdb never sends one; a raw client may) is still
/// answered with one well-formed reply: the bytes up to the first unreadable one, or an
/// error alone when there are none.
#[test]
fn gdb_an_oversize_memory_read_gets_a_well_formed_reply() {
    let (server, mut s) = raw_session("gdb-oversize-m");
    // 6 KiB of RAM below 16 MiB, then 6 KiB past its end: a short read.
    let reply = exchange(&mut s, "mffe800,3000");
    assert!(reply.bytes().all(|b| b.is_ascii_hexdigit()), "{reply}");
    assert_eq!(reply.len(), 2 * 0x1800);
    // Nothing readable: an error and nothing else.
    let reply = exchange(&mut s, "md0000000,3000");
    assert!(reply.starts_with('E') && reply.len() == 3, "{reply}");
    // An ordinary read still works.
    assert_eq!(exchange(&mut s, "m100000,4"), "02b0ad1b");
    // `k` has no reply: the stub ends the run.
    std::io::Write::write_all(&mut s, b"$k#6b").expect("send k");
    let (status, _, stderr) = server.finish();
    assert_eq!(status, Some(0), "{stderr}");
}

/// An `M` whose length does not match its data is refused; a matching one is written.
#[test]
fn gdb_a_memory_write_of_the_wrong_length_is_refused() {
    let (server, mut s) = raw_session("gdb-bad-M");
    for (packet, want) in [
        ("M200000,4:abcd", "E"),
        ("M200000,1:abcd", "E"),
        ("M200000,2:abcd", "OK"),
    ] {
        let reply = exchange(&mut s, packet);
        assert!(reply.starts_with(want), "{packet}: {reply}");
    }
    // Only the matching write landed.
    assert_eq!(exchange(&mut s, "m200000,4"), "abcd0000");
    std::io::Write::write_all(&mut s, b"$k#6b").expect("send k");
    let (status, _, stderr) = server.finish();
    assert_eq!(status, Some(0), "{stderr}");
}
