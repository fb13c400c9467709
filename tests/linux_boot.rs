//! Debian's stock x86-64 kernel with the busybox initramfs (roms/fetch-debian-guest.sh) on
//! Gantry's emulated CPU, all the way: kernel boot, `Run /init`, busybox init running a
//! command from the kernel command line, and ACPI power-off with exit status 0. About five
//! minutes on the interpreter, under one on the JIT. Skipped (with a line saying so) when the guest is not
//! fetched, except in CI, where the test command fetches it first.

mod common;

use std::time::Duration;

use common::gantry;

/// The kernel's own command line (no `nolapic noapic`): it finds the local APIC and the
/// I/O APIC in the MADT and runs on them.
const DEFAULTS: &str = "console=ttyS0";
/// The 8259s only, as before the board had APICs.
const PIC_ONLY: &str = "console=ttyS0 nolapic noapic";

#[test]
fn debian_boots_to_user_space_on_the_interpreter() {
    boots_to_user_space(
        "debian_boots_to_user_space_on_the_interpreter",
        "interp",
        DEFAULTS,
        &[],
    );
}

#[test]
fn debian_boots_to_user_space_on_the_jit() {
    boots_to_user_space(
        "debian_boots_to_user_space_on_the_jit",
        "jit",
        DEFAULTS,
        &[],
    );
}

/// Four CPUs taking turns on the JIT's thread: the kernel starts the three application
/// processors with INIT and start-up IPIs, and runs with IPIs (rescheduling, function
/// calls, TLB shootdowns) between them.
#[test]
fn debian_boots_with_4_cpus_on_the_jit() {
    boots_to_user_space(
        "debian_boots_with_4_cpus_on_the_jit",
        "jit",
        DEFAULTS,
        &["--smp", "4"],
    );
}

/// The AMD model, with two CPUs: its own CPUID, MSRs (HWCR says the TSC counts at P0)
/// and the kernel's AMD paths (the FXSAVE-leak workaround's EMMS and FILD at every FPU
/// restore). Linux has no CPUID leaf for an AMD CPU's TSC frequency, so it measures it.
#[test]
fn debian_boots_as_the_amd_model_with_2_cpus_on_the_jit() {
    boots_to_user_space(
        "debian_boots_as_the_amd_model_with_2_cpus_on_the_jit",
        "jit",
        DEFAULTS,
        &["--cpu", "amd", "--smp", "2"],
    );
}

/// With 4 and 8 GiB the RAM above the 4 GiB line holds kernel code the kernel patches at
/// boot: its writes must drop stale translations there too (they once did not, and the
/// kernel died executing a page it had made non-executable).
#[test]
fn debian_boots_with_4_and_8_gib_on_the_jit() {
    for mem in ["4G", "8G"] {
        boots_to_user_space(
            "debian_boots_with_4_and_8_gib_on_the_jit",
            "jit",
            PIC_ONLY,
            &["--mem", mem],
        );
    }
}

/// The command the guest runs, and what it prints: the machine, the CPU count, how many
/// `/proc/interrupts` lines are the I/O APIC's, whether the local APIC timer ticked, and
/// the clocksource in use.
const COMMAND: &str = "uname -m; grep -c processor /proc/cpuinfo; \
    grep -c IO-APIC /proc/interrupts; grep -q 'LOC: *[1-9]' /proc/interrupts && echo ticks; \
    cat /sys/devices/system/clocksource/clocksource0/current_clocksource";

fn boots_to_user_space(test: &str, accel: &str, cmdline: &str, extra: &[&str]) {
    let Some((kernel, initrd)) = common::debian_guest(test) else {
        return;
    };
    let started = std::time::Instant::now();
    let append = format!("{cmdline} gantry_cmd=\"{COMMAND}\"");
    let mut args = vec![
        "run", "--accel", accel, "--kernel", &kernel, "--initrd", &initrd, "--append", &append,
        "--stats",
    ];
    args.extend_from_slice(extra);
    let r = gantry(&args, b"", Duration::from_secs(25 * 60));
    eprintln!(
        "Debian on --accel {accel} {extra:?}: {:.0} s; stats:\n{}",
        started.elapsed().as_secs_f64(),
        r.stderr
    );
    // The guest's tty writes CR LF.
    let out = r.stdout.replace("\r\n", "\n");
    let tail: Vec<&str> = out.lines().rev().take(20).collect();
    assert!(
        !r.timed_out,
        "no power-off within the limit; last lines: {tail:#?}"
    );
    // With the APICs: IRQ 0 (timer), 1 and 12 (i8042), 4 (ttyS0), 8 (rtc0) and 9 (acpi)
    // on the I/O APIC, and the local timer ticking. Without: none, and no LOC line.
    // The TSC: its frequency from CPUID (no calibration to fail), kept as the clocksource.
    let cpus = match extra.iter().position(|a| *a == "--smp") {
        Some(i) => extra[i + 1],
        None => "1",
    };
    let apic_lines = if cmdline.contains("noapic") {
        format!("x86_64\n{cpus}\n0\ntsc\n")
    } else {
        format!("x86_64\n{cpus}\n6\nticks\ntsc\n")
    };
    let brought_up = format!("smp: Brought up 1 node, {cpus} CPU");
    // The Intel model states its TSC's frequency in CPUID; Linux measures an AMD CPU's
    // (against the PIT, which an emulator's uneven pace can fail, then the HPET).
    let amd = extra.contains(&"amd");
    let tsc_line = if amd {
        "tsc: Refined TSC clocksource calibration"
    } else {
        "tsc: Detected 1000.000 MHz processor"
    };
    for want in [
        "Linux version 6.",
        "ACPI: RSDP 0x00000000000E0000",
        "Run /init as init process",
        "GANTRY-GUEST: init started",
        "GANTRY-GUEST: running: uname -m; grep -c processor /proc/cpuinfo",
        &format!("{apic_lines}GANTRY-GUEST: command exit status 0"),
        "GANTRY-GUEST: powering off",
        "reboot: Power down",
        tsc_line,
        &brought_up,
    ] {
        assert!(
            out.contains(want),
            "missing {want:?}; last lines: {tail:#?}"
        );
    }
    for bad in [
        "Unable to calibrate",
        "calibration failed",
        "Marking TSC unstable",
        "IO-APIC + timer doesn't work",
        "unchecked MSR access",
        "Firmware Bug",
    ] {
        if amd && bad.contains("calibrat") {
            continue;
        }
        assert!(!out.contains(bad), "the guest says {bad:?}");
    }
    assert!(
        r.stderr.contains("unimplemented instructions (#UD): 0 []"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.status,
        Some(0),
        "ACPI power-off ends the run with status 0"
    );
}

/// Without ACPI (`acpi=off`) the kernel finds the CPUs and the I/O APIC in the
/// MultiProcessor Specification's tables instead. It cannot power off without ACPI: it
/// halts every CPU with interrupts off, which ends the run (status 3).
#[test]
fn debian_finds_two_cpus_in_the_mp_table_without_acpi() {
    let test = "debian_finds_two_cpus_in_the_mp_table_without_acpi";
    let Some((kernel, initrd)) = common::debian_guest(test) else {
        return;
    };
    let r = gantry(
        &[
            "run",
            "--accel",
            "jit",
            "--smp",
            "2",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 acpi=off gantry_cmd=\"nproc; grep -c IO-APIC /proc/interrupts\"",
        ],
        b"",
        Duration::from_secs(10 * 60),
    );
    let out = r.stdout.replace("\r\n", "\n");
    let tail: Vec<&str> = out.lines().rev().take(20).collect();
    for want in [
        "found SMP MP-table at [mem 0x000f0000-0x000f000f]",
        "Intel MultiProcessor Specification v1.4",
        "Processor #1",
        "IOAPIC[0]: apic_id 2, version 17, address 0xfec00000, GSI 0-23",
        // Two CPUs; the ISA interrupts Linux requested on the I/O APIC (timer, i8042
        // twice, ttyS0, rtc0): no ACPI SCI this time.
        "2\n5\nGANTRY-GUEST: command exit status 0",
        "reboot: System halted",
    ] {
        assert!(
            out.contains(want),
            "missing {want:?}; last lines: {tail:#?}"
        );
    }
    assert_eq!(r.status, Some(3), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains("guest halted with interrupts disabled"),
        "{}",
        r.stderr
    );
}
