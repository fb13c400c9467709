//! The local APIC, the I/O APIC and the HPET, seen by test kernels written for them (GNU
//! as, linked with binutils, booted by the multiboot loader) that report over COM1 and
//! leave through the debug-exit port. Each runs on the emulated CPU's interpreter and on
//! its JIT, and under KVM (the same devices serve it) where the host has /dev/kvm, except
//! `--smp` above 1, which KVM does not run yet.

mod common;

use std::time::Duration;

/// What every test kernel starts with: a multiboot header, an IDT whose 256 gates all go to
/// `unexpected` until `set_gate` replaces one, and routines to print, log and wait.
const PRELUDE: &str = r#"
.intel_syntax noprefix
.set APIC, 0xFEE00000
.set IOAPIC, 0xFEC00000
.section .text
.align 4
mb_header:
    .long 0x1BADB002, 0, -0x1BADB002
.globl _start
_start:
    mov esp, 0x90000
    xor ecx, ecx
1:  mov eax, offset unexpected
    call set_gate
    inc ecx
    cmp ecx, 256
    jb 1b
    lidt [idtr]
    jmp main

/* ECX: vector, EAX: its handler. Clobbers EAX, EDX. */
set_gate:
    lea edx, [idt + ecx * 8]
    mov word ptr [edx], ax
    mov word ptr [edx + 2], cs
    mov word ptr [edx + 4], 0x8E00
    shr eax, 16
    mov word ptr [edx + 6], ax
    ret

/* Installs HANDLER as the gate for VECTOR. Clobbers EAX, ECX, EDX. */
.macro gate vector, handler
    mov ecx, \vector
    mov eax, offset \handler
    call set_gate
.endm

/* A handler that logs CHAR and signals its EOI. */
.macro log_isr name, char
\name:
    push eax
    push edx
    mov al, \char
    call log
    mov dword ptr [APIC + 0xB0], 0
    pop edx
    pop eax
    iretd
.endm

unexpected:
    mov esi, offset unexpected_msg
    call puts
    mov eax, 0x7E
    jmp exit

/* Prints the NUL-terminated string at ESI. Clobbers EAX, EDX, ESI. */
puts:
    mov dx, 0x3F8
2:  lodsb
    test al, al
    jz 3f
    out dx, al
    jmp 2b
3:  ret

/* Prints the string at ESI, then EAX in hex and a newline. Clobbers EAX, ECX, EDX, ESI. */
report:
    push eax
    call puts
    pop eax
    mov ecx, 8
4:  rol eax, 4
    push eax
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe 5f
    add al, 'a' - '9' - 1
5:  out dx, al
    pop eax
    loop 4b
    mov al, 10
    out dx, al
    ret

/* Appends AL to the log. Clobbers EDX. */
log:
    mov edx, [log_len]
    mov [log_buf + edx], al
    inc dword ptr [log_len]
    ret

/* Prints the log and a newline. Clobbers EAX, EDX, ESI. */
print_log:
    mov esi, offset log_buf
    call puts
    mov al, 10
    out dx, al
    ret

/* Waits about 50 ms: PIT channel 2 counts 59659 ticks in mode 0 (gate on through port
   0x61), and OUT2, read in port 0x61, rises at the end. Clobbers EAX. */
pit_wait:
    in al, 0x61
    and al, 0xFC
    or al, 1
    out 0x61, al
    mov al, 0xB0
    out 0x43, al
    mov al, 0x0B
    out 0x42, al
    mov al, 0xE9
    out 0x42, al
6:  in al, 0x61
    test al, 0x20
    jz 6b
    ret

/* Waits about 100 ms. Clobbers EAX. */
pit_wait_100:
    call pit_wait
    call pit_wait
    ret

/* Sends EAX's vector to this CPU through the ICR's self shorthand. */
self_ipi:
    or eax, 0x40000
    mov [APIC + 0x300], eax
    ret

/* Masks both 8259s and software-enables the local APIC (spurious vector 0xFF). */
apic_only:
    mov al, 0xFF
    out 0x21, al
    out 0xA1, al
    mov dword ptr [APIC + 0xF0], 0x1FF
    ret

/* Sets I/O APIC pin ECX's entry: EAX its low half, destination APIC 0. Clobbers EDX. */
route_pin:
    lea edx, [0x10 + ecx * 2]
    mov [IOAPIC], edx
    mov [IOAPIC + 0x10], eax
    inc edx
    mov [IOAPIC], edx
    mov dword ptr [IOAPIC + 0x10], 0
    ret

/* Ends the run with status (EAX << 1) | 1. */
exit:
    mov dx, 0xF4
    out dx, eax
    cli
    hlt

.section .data
.align 8
idt: .fill 256, 8, 0
idtr: .word 256 * 8 - 1
    .long idt
log_len: .long 0
log_buf: .fill 64, 1, 0
unexpected_msg: .asciz "unexpected interrupt\n"
"#;

/// Runs the test kernel `body` (appended to the prelude) on `accel`; returns its COM1
/// output, then Gantry's `--stats` (for failure messages), after checking it exited
/// through the debug-exit port with 0x10. `None`: a software-assisted KVM (kvm_pvm, which
/// emulates 32-bit ring-0 code and refuses IRET there) ended the run with its one-line
/// error, which is accepted on such a host only, and said.
fn run_kernel(test: &str, accel: &str, body: &str) -> Option<String> {
    run_kernel_with(test, accel, body, &[])
}

/// [`run_kernel`] with more options for `gantry run`.
fn run_kernel_with(test: &str, accel: &str, body: &str, extra: &[&str]) -> Option<String> {
    let dir = common::scratch(&format!("{test}-{accel}"));
    let src = dir.join("kernel.S");
    std::fs::write(&src, format!("{PRELUDE}\n{body}")).expect("write kernel source");
    let elf = common::link_kernel(&src);
    let path = elf.to_str().expect("scratch path is UTF-8");
    let mut args = vec!["run", "--accel", accel, "--kernel", path, "--stats"];
    args.extend_from_slice(extra);
    let r = common::gantry(&args, b"", Duration::from_secs(120));
    assert!(!r.timed_out, "{test} on {accel} hung: {}", r.stdout);
    let software_kvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if accel == "kvm"
        && software_kvm
        && r.status == Some(2)
        && r.stderr
            .contains("KVM stopped with an instruction KVM could not emulate")
    {
        eprintln!(
            "NOTE: {test}: this host's KVM (kvm_pvm) cannot run the kernel to its end: {}; \
             its output so far: {:?}",
            r.stderr.trim(),
            r.stdout
        );
        return None;
    }
    assert_eq!(
        r.status,
        Some((0x10 << 1) | 1),
        "{test} on {accel}: output {:?}, stderr {}",
        r.stdout,
        r.stderr
    );
    Some(format!("{}--- stats:\n{}", r.stdout, r.stderr))
}

/// The hex value the kernel reported after `label`.
fn value(out: &str, label: &str) -> u32 {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {out:?}"));
    u32::from_str_radix(line.trim(), 16).unwrap_or_else(|_| panic!("{line:?} is not hex"))
}

/// The emulated CPU's two tiers, and KVM where the host has /dev/kvm (else the test says
/// it skips that part).
fn accels(test: &str) -> Vec<&'static str> {
    let mut v = vec!["interp", "jit"];
    if common::kvm_available(test) {
        v.push("kvm");
    }
    v
}

/// The timer in its three modes over intervals the PIT measures: periodic at 10 ms (ten
/// million ticks of the 1 GHz APIC bus, divided by 1) gives about 10 interrupts in 100 ms
/// (one fewer where the host kept the process off its CPU for a period: the APIC's one IRR
/// bit holds one interrupt, as on hardware);
/// one-shot gives one, after which the current count reads 0; a TSC deadline 5 ms ahead
/// (the TSC runs at 1 GHz) gives one, after which IA32_TSC_DEADLINE reads 0.
#[test]
fn the_apic_timer_counts_in_each_mode() {
    const TEST: &str = "the_apic_timer_counts_in_each_mode";
    let body = r#"
main:
    mov dword ptr [APIC + 0xF0], 0x1FF
    gate 0x40, timer_isr
    mov dword ptr [APIC + 0x3E0], 0xB
    mov dword ptr [APIC + 0x320], 0x20040
    sti
    mov dword ptr [APIC + 0x380], 10000000
    call pit_wait_100
    mov dword ptr [APIC + 0x380], 0
    cli
    mov eax, [count]
    mov esi, offset periodic_msg
    call report
    mov dword ptr [count], 0
    mov dword ptr [APIC + 0x320], 0x40
    sti
    mov dword ptr [APIC + 0x380], 5000000
    call pit_wait
    cli
    mov eax, [count]
    mov esi, offset oneshot_msg
    call report
    mov eax, [APIC + 0x390]
    mov esi, offset current_msg
    call report
    mov eax, 1
    cpuid
    shr ecx, 24
    and ecx, 1
    mov eax, ecx
    mov esi, offset cpuid_msg
    push eax
    call report
    pop eax
    test eax, eax
    jz 7f
    mov dword ptr [count], 0
    mov dword ptr [APIC + 0x320], 0x40040
    rdtsc
    add eax, 5000000
    adc edx, 0
    mov ecx, 0x6E0
    wrmsr
    sti
    call pit_wait
    cli
    mov eax, [count]
    mov esi, offset deadline_msg
    call report
    mov ecx, 0x6E0
    rdmsr
    mov esi, offset deadline_after_msg
    call report
7:  mov eax, 0x10
    jmp exit
timer_isr:
    inc dword ptr [count]
    mov dword ptr [APIC + 0xB0], 0
    iretd
.section .data
count: .long 0
periodic_msg: .asciz "periodic "
oneshot_msg: .asciz "one-shot "
current_msg: .asciz "current count "
cpuid_msg: .asciz "tsc-deadline in cpuid "
deadline_msg: .asciz "deadline "
deadline_after_msg: .asciz "deadline msr after "
"#;
    for accel in accels(TEST) {
        let Some(out) = run_kernel("apic-timer", accel, body) else {
            continue;
        };
        let periodic = value(&out, "periodic ");
        assert!(
            (9..=11).contains(&periodic),
            "{accel}: {periodic} periodic interrupts in 100 ms; output {out:?}"
        );
        assert_eq!(value(&out, "one-shot "), 1, "{accel}: {out:?}");
        assert_eq!(value(&out, "current count "), 0, "{accel}: {out:?}");
        // Under KVM the guest's TSC is KVM's, and CPUID offers no TSC-deadline mode.
        let deadline = value(&out, "tsc-deadline in cpuid ");
        assert_eq!(deadline, (accel != "kvm") as u32, "{accel}: {out:?}");
        if deadline == 1 {
            assert_eq!(value(&out, "deadline "), 1, "{accel}: {out:?}");
            assert_eq!(value(&out, "deadline msr after "), 0, "{accel}: {out:?}");
        }
    }
}

/// Priorities: with TPR at class 5 a class-4 self IPI waits in IRR until TPR drops; in a
/// class-5 handler (interrupts enabled) a class-7 IPI nests at once and a class-4 one waits
/// for the EOI. The handlers log `6`, `5`, `7`, `4`, the main line `T` and `t`, the class-5
/// handler `/` before its EOI.
#[test]
fn task_priority_and_nested_eoi_order() {
    const TEST: &str = "task_priority_and_nested_eoi_order";
    let body = r#"
main:
    mov dword ptr [APIC + 0xF0], 0x1FF
    gate 0x46, isr46
    gate 0x45, isr45
    gate 0x50, isr50
    gate 0x70, isr70
    mov dword ptr [APIC + 0x80], 0x50
    sti
    mov eax, 0x46
    call self_ipi
    mov ecx, 20000
1:  loop 1b
    mov al, 'T'
    call log
    mov eax, [APIC + 0x220]
    mov esi, offset irr_msg
    call report
    mov eax, [APIC + 0xA0]
    mov esi, offset ppr_msg
    call report
    mov dword ptr [APIC + 0x80], 0
    mov ecx, 20000
2:  loop 2b
    mov al, 't'
    call log
    mov eax, 0x50
    call self_ipi
    mov ecx, 1000000
3:  cmp dword ptr [log_len], 7
    jae 4f
    loop 3b
4:  cli
    call print_log
    mov eax, 0x10
    jmp exit
    log_isr isr46, '6'
    log_isr isr45, '4'
    log_isr isr70, '7'
isr50:
    push eax
    push ecx
    push edx
    mov al, '5'
    call log
    sti
    mov eax, 0x45
    call self_ipi
    mov eax, 0x70
    call self_ipi
    mov ecx, 20000
5:  loop 5b
    mov al, '/'
    call log
    cli
    mov dword ptr [APIC + 0xB0], 0
    pop edx
    pop ecx
    pop eax
    iretd
.section .data
irr_msg: .asciz "irr 0x40-0x5f "
ppr_msg: .asciz "ppr "
"#;
    for accel in accels(TEST) {
        let Some(out) = run_kernel("apic-priority", accel, body) else {
            continue;
        };
        assert_eq!(
            value(&out, "irr 0x40-0x5f "),
            1 << 6,
            "{accel}: 0x46 held in IRR; {out:?}"
        );
        assert_eq!(value(&out, "ppr "), 0x50, "{accel}: {out:?}");
        assert!(out.contains("\nT6t57/4\n"), "{accel}: {out:?}");
    }
}

/// x2APIC: its MSRs raise #GP in xAPIC mode; after IA32_APIC_BASE.EXTD they hold the ID,
/// the version and the SVR, a self IPI through MSR 0x83F arrives and its EOI is an MSR
/// write; the read-only LDR and a return to xAPIC mode other than through disabled raise #GP.
#[test]
fn x2apic_msrs_and_their_faults() {
    const TEST: &str = "x2apic_msrs_and_their_faults";
    let body = r#"
main:
    gate 13, gp_isr
    gate 0x66, isr66
    mov ecx, 0x802
    rdmsr
    mov eax, [gp_count]
    mov esi, offset gp_xapic_msg
    call report
    mov eax, 1
    cpuid
    mov eax, ecx
    shr eax, 21
    and eax, 1
    mov esi, offset cpuid_msg
    call report
    mov ecx, 0x1B
    rdmsr
    or eax, 0x400
    wrmsr
    mov ecx, 0x802
    rdmsr
    mov esi, offset id_msg
    call report
    mov ecx, 0x803
    rdmsr
    mov esi, offset version_msg
    call report
    mov ecx, 0x80F
    mov eax, 0x1FF
    xor edx, edx
    wrmsr
    sti
    mov ecx, 0x83F
    mov eax, 0x66
    xor edx, edx
    wrmsr
    mov ecx, 20000
1:  loop 1b
    cli
    mov ecx, 0x80D
    xor eax, eax
    xor edx, edx
    wrmsr
    mov ecx, 0x1B
    rdmsr
    and eax, ~0x400
    wrmsr
    mov eax, [count66]
    mov esi, offset self_ipi_msg
    call report
    mov eax, [gp_count]
    mov esi, offset gp_msg
    call report
    mov eax, 0x10
    jmp exit
gp_isr:
    inc dword ptr [gp_count]
    add esp, 4
    add dword ptr [esp], 2
    iretd
isr66:
    push eax
    push ecx
    push edx
    inc dword ptr [count66]
    mov ecx, 0x80B
    xor eax, eax
    xor edx, edx
    wrmsr
    pop edx
    pop ecx
    pop eax
    iretd
.section .data
gp_count: .long 0
count66: .long 0
gp_xapic_msg: .asciz "gp in xAPIC mode "
cpuid_msg: .asciz "x2apic in cpuid "
id_msg: .asciz "id "
version_msg: .asciz "version "
self_ipi_msg: .asciz "self ipis "
gp_msg: .asciz "gp in all "
"#;
    for accel in accels(TEST) {
        let Some(out) = run_kernel("x2apic", accel, body) else {
            continue;
        };
        for (label, want) in [
            ("gp in xAPIC mode ", 1),
            ("x2apic in cpuid ", 1),
            ("id ", 0),
            ("version ", 0x0005_0014),
            ("self ipis ", 1),
            ("gp in all ", 3),
        ] {
            assert_eq!(value(&out, label), want, "{accel} {label}: {out:?}");
        }
    }
}

/// The I/O APIC with the 8259s masked: the PIT's IRQ0 through pin 2 at 100 Hz gives about
/// 10 interrupts in 100 ms; COM1's THR-empty interrupt through pin 4, level-triggered,
/// comes again after an EOI while the UART still asserts it (remote IRR set in between)
/// and stops once the handler has cleared it: exactly two deliveries.
#[test]
fn the_ioapic_routes_the_pit_and_a_level_triggered_uart() {
    const TEST: &str = "the_ioapic_routes_the_pit_and_a_level_triggered_uart";
    let body = r#"
main:
    call apic_only
    gate 0x30, isr30
    gate 0x34, isr34
    mov ecx, 2
    mov eax, 0x30
    call route_pin
    mov al, 0x34
    out 0x43, al
    mov al, 0x9C
    out 0x40, al
    mov al, 0x2E
    out 0x40, al
    sti
    call pit_wait_100
    cli
    mov dword ptr [IOAPIC], 0x14
    mov dword ptr [IOAPIC + 0x10], 0x10030
    mov eax, [count30]
    mov esi, offset pit_msg
    call report
    mov ecx, 4
    mov eax, 0x8034
    call route_pin
    sti
    mov dx, 0x3F9
    mov al, 2
    out dx, al
    mov ecx, 20000
1:  loop 1b
    cli
    mov eax, [count34]
    mov esi, offset uart_msg
    call report
    mov eax, [remote_irr]
    mov esi, offset remote_irr_msg
    call report
    mov eax, 0x10
    jmp exit
isr30:
    inc dword ptr [count30]
    mov dword ptr [APIC + 0xB0], 0
    iretd
isr34:
    push eax
    push edx
    inc dword ptr [count34]
    mov dword ptr [IOAPIC], 0x18
    mov eax, [IOAPIC + 0x10]
    shr eax, 14
    and eax, 1
    or [remote_irr], eax
    cmp dword ptr [count34], 2
    jb 2f
    mov dx, 0x3FA
    in al, dx
    mov dx, 0x3F9
    xor al, al
    out dx, al
2:  mov dword ptr [APIC + 0xB0], 0
    pop edx
    pop eax
    iretd
.section .data
count30: .long 0
count34: .long 0
remote_irr: .long 0
pit_msg: .asciz "pit through pin 2 "
uart_msg: .asciz "uart through pin 4 "
remote_irr_msg: .asciz "remote irr in handler "
"#;
    for accel in accels(TEST) {
        let Some(out) = run_kernel("ioapic", accel, body) else {
            continue;
        };
        let pit = value(&out, "pit through pin 2 ");
        assert!(
            (9..=11).contains(&pit),
            "{accel}: {pit} PIT interrupts in 100 ms; {out:?}"
        );
        assert_eq!(value(&out, "uart through pin 4 "), 2, "{accel}: {out:?}");
        assert_eq!(value(&out, "remote irr in handler "), 1, "{accel}: {out:?}");
    }
}

/// The HPET with the 8259s masked: timer 0 periodic (in 32-bit mode, as Linux sets it,
/// with the comparator and then the period written after Tn_VAL_SET_CNF) at 10 ms (a million counts of its
/// 100 MHz counter) in legacy replacement mode reaches the CPU as IRQ0 through I/O APIC
/// pin 2, about 10 times in 100 ms; timer 2, one-shot and level-triggered on GSI 20, once,
/// with its status bit set in the handler until cleared.
#[test]
fn hpet_timers_in_legacy_replacement_and_on_a_gsi() {
    const TEST: &str = "hpet_timers_in_legacy_replacement_and_on_a_gsi";
    let body = r#"
.set HPET, 0xFED00000
main:
    call apic_only
    gate 0x30, isr30
    gate 0x38, isr38
    mov ecx, 2
    mov eax, 0x30
    call route_pin
    mov ecx, 20
    mov eax, 0x8038
    call route_pin
    mov eax, [HPET]
    mov esi, offset id_msg
    call report
    mov dword ptr [HPET + 0x100], 0x14C
    mov dword ptr [HPET + 0x108], 1000000
    mov dword ptr [HPET + 0x108], 1000000
    mov dword ptr [HPET + 0x10], 3
    sti
    call pit_wait_100
    cli
    mov dword ptr [HPET + 0x100], 0
    mov eax, [count30]
    mov esi, offset periodic_msg
    call report
    mov dword ptr [HPET + 0x10], 1
    mov eax, [HPET + 0xF0]
    add eax, 500000
    mov [HPET + 0x148], eax
    mov dword ptr [HPET + 0x14C], 0
    mov dword ptr [HPET + 0x140], 0x2806
    sti
    call pit_wait
    cli
    mov eax, [count38]
    mov esi, offset oneshot_msg
    call report
    mov eax, [status]
    mov esi, offset status_msg
    call report
    mov eax, 0x10
    jmp exit
isr30:
    inc dword ptr [count30]
    mov dword ptr [APIC + 0xB0], 0
    iretd
isr38:
    push eax
    inc dword ptr [count38]
    mov eax, [HPET + 0x20]
    mov [status], eax
    mov dword ptr [HPET + 0x20], 4
    mov dword ptr [APIC + 0xB0], 0
    pop eax
    iretd
.section .data
count30: .long 0
count38: .long 0
status: .long 0
id_msg: .asciz "capabilities "
periodic_msg: .asciz "timer 0 periodic "
oneshot_msg: .asciz "timer 2 one-shot "
status_msg: .asciz "status in handler "
"#;
    for accel in accels(TEST) {
        let Some(out) = run_kernel("hpet", accel, body) else {
            continue;
        };
        assert_eq!(
            value(&out, "capabilities "),
            0x8086_A201,
            "{accel}: {out:?}"
        );
        let periodic = value(&out, "timer 0 periodic ");
        assert!(
            (9..=11).contains(&periodic),
            "{accel}: {periodic} HPET interrupts in 100 ms; {out:?}"
        );
        assert_eq!(value(&out, "timer 2 one-shot "), 1, "{accel}: {out:?}");
        assert_eq!(value(&out, "status in handler "), 4, "{accel}: {out:?}");
    }
}

/// `--smp 4`: the bootstrap processor starts the three others with INIT and a start-up
/// IPI to all but itself (vector 0x08: a real-mode trampoline it copied to 0x8000, which
/// enters protected mode through the BSP's own GDT); each prints its APIC ID under a
/// spinlock taken with XCHG and counts itself with LOCK INC. Then an IPI from CPU 0 to
/// CPU 1, whose handler answers with one to CPU 0.
#[test]
fn application_processors_start_and_exchange_ipis() {
    let body = r#"
main:
    mov dword ptr [APIC + 0xF0], 0x1FF
    gate 0x51, isr51
    gate 0x52, isr52
    mov ax, ds
    mov [tramp_ds], ax
    mov ax, cs
    mov [tramp_cs], ax
    sgdt [tramp_gdtr]
    mov esi, offset tramp_start
    mov edi, 0x8000
    mov ecx, offset tramp_end
    sub ecx, esi
    rep movsb
    mov dword ptr [APIC + 0x310], 0
    mov dword ptr [APIC + 0x300], 0xC4500
    mov dword ptr [APIC + 0x300], 0xC4608
    mov ecx, 100000000
1:  cmp dword ptr [aps_up], 3
    jae 2f
    pause
    loop 1b
2:  call lock_take
    mov eax, [aps_up]
    mov esi, offset aps_msg
    call report
    call lock_give
    sti
    mov dword ptr [APIC + 0x310], 0x01000000
    mov dword ptr [APIC + 0x300], 0x51
    mov ecx, 100000000
3:  cmp dword ptr [pongs], 1
    jae 4f
    pause
    loop 3b
4:  cli
    call lock_take
    mov eax, [pongs]
    mov esi, offset pong_msg
    call report
    mov eax, 0x10
    jmp exit

/* The spinlock around COM1. Clobbers EAX. */
lock_take:
    mov eax, 1
    xchg eax, [uart_lock]
    test eax, eax
    jz 5f
    pause
    jmp lock_take
5:  ret
lock_give:
    mov dword ptr [uart_lock], 0
    ret

ap_main:
    mov ds, bx
    mov es, bx
    mov ss, bx
    mov eax, [APIC + 0x20]
    shr eax, 24
    mov ebp, eax
    shl eax, 12
    add eax, 0x70000
    mov esp, eax
    lidt [idtr]
    mov dword ptr [APIC + 0xF0], 0x1FF
    call lock_take
    mov eax, ebp
    mov esi, offset ap_msg
    call report
    call lock_give
    lock inc dword ptr [aps_up]
    sti
6:  hlt
    jmp 6b

isr51:
    push eax
    mov dword ptr [APIC + 0x310], 0
    mov dword ptr [APIC + 0x300], 0x52
    mov dword ptr [APIC + 0xB0], 0
    pop eax
    iretd
isr52:
    lock inc dword ptr [pongs]
    mov dword ptr [APIC + 0xB0], 0
    iretd

/* Copied to 0x8000: real mode at 0800:0000, with CS:IP's offsets from tramp_start. */
.code16
tramp_start:
    cli
    xor ax, ax
    mov ds, ax
    .byte 0x66
    lgdt [0x8000 + tramp_gdtr - tramp_start]
    mov bx, [0x8000 + tramp_ds - tramp_start]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xEA
    .long ap_main
tramp_cs: .word 0
tramp_ds: .word 0
tramp_gdtr: .word 0
    .long 0
tramp_end:
.code32

.section .data
uart_lock: .long 0
aps_up: .long 0
pongs: .long 0
ap_msg: .asciz "ap up, apic id "
aps_msg: .asciz "aps up "
pong_msg: .asciz "ipi round trips "
"#;
    for accel in ["interp", "jit"] {
        let Some(out) = run_kernel_with("smp", accel, body, &["--smp", "4"]) else {
            continue;
        };
        let mut ids: Vec<u32> = out
            .lines()
            .filter_map(|l| l.strip_prefix("ap up, apic id "))
            .map(|v| u32::from_str_radix(v, 16).unwrap_or(u32::MAX))
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3], "{accel}: {out}");
        assert_eq!(value(&out, "aps up "), 3, "{accel}: {out}");
        assert_eq!(value(&out, "ipi round trips "), 1, "{accel}: {out}");
    }
}

/// NMIs: a self IPI with NMI delivery reaches the CPU with interrupts disabled; a second
/// one sent from the handler waits for its IRET and then runs at once. The handler logs
/// `<` and `>`, the main line `M` after both.
#[test]
fn nmis_ignore_if_and_wait_for_iret() {
    const TEST: &str = "nmis_ignore_if_and_wait_for_iret";
    let body = r#"
main:
    mov dword ptr [APIC + 0xF0], 0x1FF
    gate 2, nmi_isr
    cli
    mov eax, 0x400
    call self_ipi
    mov ecx, 20000
1:  loop 1b
    mov al, 'M'
    call log
    call print_log
    mov eax, [nmis]
    mov esi, offset nmis_msg
    call report
    mov eax, 0x10
    jmp exit
nmi_isr:
    push eax
    push ecx
    push edx
    inc dword ptr [nmis]
    mov al, '<'
    call log
    cmp dword ptr [nmis], 1
    jne 2f
    mov eax, 0x400
    call self_ipi
    mov ecx, 20000
3:  loop 3b
2:  mov al, '>'
    call log
    pop edx
    pop ecx
    pop eax
    iretd
.section .data
nmis: .long 0
nmis_msg: .asciz "nmis "
"#;
    for accel in accels(TEST) {
        let Some(out) = run_kernel("nmi", accel, body) else {
            continue;
        };
        assert!(out.starts_with("<><>M\n"), "{accel}: {out}");
        assert_eq!(value(&out, "nmis "), 2, "{accel}: {out}");
    }
}
