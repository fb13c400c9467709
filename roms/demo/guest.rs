//! The demo guest, written for Gantry in iced-x86's code assembler.
//!
//! A 64 KiB ROM mapped at 0xFFFF0000 (and mirrored at 0xF0000):
//!
//! | ROM offset | contents                                        |
//! |------------|-------------------------------------------------|
//! | 0x0000     | GDT (null, code32, data, code64) and its pointer |
//! | 0x1000     | 16-bit real-mode code                           |
//! | 0x2000     | 32-bit protected-mode code                      |
//! | 0x4000     | 64-bit long-mode code, handlers and strings     |
//! | 0xFFF0     | reset vector: JMP to 0x1000                      |
//!
//! RAM use: stack below 0x7000 (real and protected mode) and 0x80000 (long mode), IDT at
//! 0x8000, scratch at 0x9000, the tick counter at 0x9100, page tables at 0x10000-0x15FFF.

use iced_x86::code_asm::*;
use iced_x86::IcedError;

const ROM_BASE: u64 = 0xFFFF_0000;
const ROM_SIZE: usize = 0x1_0000;
const GDT_PTR: u64 = 0x40;
/// Strings for the 16- and 32-bit parts, whose code cannot address labels (code_asm
/// resolves label operands RIP-relative, which only 64-bit code has).
const MSG_REAL: u64 = 0x100;
const MSG_PROTECTED: u64 = 0x180;
const CODE16: u64 = 0x1000;
const CODE32: u64 = 0x2000;
const CODE64: u64 = 0x4000;
const RESET: u64 = 0xFFF0;

const SEL_CODE32: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_CODE64: u16 = 0x18;

const COM1: u16 = 0x3F8;
const IDT: u64 = 0x8000;
const IDTR: u64 = 0x8FF0;
const SCRATCH: u64 = 0x9000;
const TICKS: u64 = 0x9100;
const PML4: u32 = 0x1_0000;
const TICKS_WANTED: i32 = 10;
/// 1193182 Hz / 11932 = 100 Hz.
const PIT_DIVISOR: u16 = 11932;
/// Must match `gantry_roms::DEMO_LAST_LINE`.
const LAST_LINE: &[u8] = b"demo: all checks done, powering off\r\n";

pub fn build() -> Result<Vec<u8>, String> {
    let mut rom = vec![0xFFu8; ROM_SIZE];
    let gdt: [u64; 4] = [
        0,
        0x00CF_9B00_0000_FFFF, // 0x08: 32-bit code, flat
        0x00CF_9300_0000_FFFF, // 0x10: data, flat
        0x00AF_9B00_0000_FFFF, // 0x18: 64-bit code
    ];
    for (i, d) in gdt.iter().enumerate() {
        rom[i * 8..i * 8 + 8].copy_from_slice(&d.to_le_bytes());
    }
    let p = GDT_PTR as usize;
    rom[p..p + 2].copy_from_slice(&((gdt.len() * 8 - 1) as u16).to_le_bytes());
    rom[p + 2..p + 6].copy_from_slice(&(ROM_BASE as u32).to_le_bytes());

    place(
        &mut rom,
        MSG_REAL,
        MSG_PROTECTED,
        b"demo: real mode, reset vector F000:FFF0 reached\r\n\0",
    )?;
    place(
        &mut rom,
        MSG_PROTECTED,
        CODE16,
        b"demo: protected mode, flat 32-bit segments\r\n\0",
    )?;
    place(&mut rom, CODE16, CODE32, &real_mode().map_err(e)?)?;
    place(&mut rom, CODE32, CODE64, &protected_mode().map_err(e)?)?;
    place(&mut rom, CODE64, RESET, &long_mode().map_err(e)?)?;
    place(
        &mut rom,
        RESET,
        ROM_SIZE as u64,
        &reset_vector().map_err(e)?,
    )?;
    Ok(rom)
}

fn e(err: IcedError) -> String {
    err.to_string()
}

fn place(rom: &mut [u8], at: u64, limit: u64, code: &[u8]) -> Result<(), String> {
    let end = at as usize + code.len();
    if end > limit as usize {
        return Err(format!(
            "code at {at:#x} is {} bytes, past {limit:#x}",
            code.len()
        ));
    }
    rom[at as usize..end].copy_from_slice(code);
    Ok(())
}

fn reset_vector() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    a.jmp(CODE16)?;
    a.assemble(RESET)
}

/// Real mode: CS base is 0xFFFF0000 after reset; DS = 0xF000 reaches the ROM through its
/// mirror below 1 MiB, so labels (ROM offsets) address the strings.
fn real_mode() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    let mut puts = a.create_label();
    a.cli()?;
    a.cld()?;
    a.mov(ax, 0xF000)?;
    a.mov(ds, ax)?;
    a.xor(ax, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x7000)?;
    // COM1: 115200 baud, 8N1, FIFOs on, DTR/RTS/OUT2.
    for (port, val) in [
        (1u16, 0x00u8),
        (3, 0x80),
        (0, 0x01),
        (1, 0x00),
        (3, 0x03),
        (2, 0xC7),
        (4, 0x0B),
    ] {
        a.mov(dx, (COM1 + port) as u32)?;
        a.mov(al, val as u32)?;
        a.out(dx, al)?;
    }
    a.mov(si, MSG_REAL as u32)?;
    a.call(puts)?;
    // o32 lgdt [GDT_PTR]: a 32-bit base, which the 16-bit form would cut to 24 bits.
    a.db(&[0x66, 0x0F, 0x01, 0x16, GDT_PTR as u8, (GDT_PTR >> 8) as u8])?;
    a.mov(eax, cr0)?;
    a.or(al, 1)?;
    a.mov(cr0, eax)?;
    // jmp dword SEL_CODE32:(ROM_BASE + CODE32)
    let target = (ROM_BASE + CODE32) as u32;
    let mut far = vec![0x66, 0xEA];
    far.extend_from_slice(&target.to_le_bytes());
    far.extend_from_slice(&SEL_CODE32.to_le_bytes());
    a.db(&far)?;

    emit_puts(&mut a, &mut puts)?;
    a.assemble(CODE16)
}

fn protected_mode() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let mut puts = a.create_label();
    a.mov(ax, SEL_DATA as u32)?;
    for s in [ds, es, ss, fs, gs] {
        a.mov(s, ax)?;
    }
    a.mov(esp, 0x7000)?;
    a.mov(esi, (ROM_BASE + MSG_PROTECTED) as u32)?;
    a.call(puts)?;

    // Identity-map 4 GiB with 2 MiB pages: PML4, PDPT, four PDs.
    a.mov(edi, PML4)?;
    a.mov(ecx, 0x6000 / 4)?;
    a.xor(eax, eax)?;
    a.rep().stosd()?;
    a.mov(dword_ptr(PML4), PML4 + 0x1000 + 3)?;
    for i in 0..4u32 {
        a.mov(
            dword_ptr(PML4 + 0x1000 + i * 8),
            PML4 + 0x2000 + i * 0x1000 + 3,
        )?;
    }
    a.mov(edi, PML4 + 0x2000)?;
    a.mov(eax, 0x83)?;
    a.mov(ecx, 2048)?;
    let mut fill = a.create_label();
    a.set_label(&mut fill)?;
    a.mov(dword_ptr(edi), eax)?;
    a.mov(dword_ptr(edi + 4), 0)?;
    a.add(eax, 0x20_0000)?;
    a.add(edi, 8)?;
    a.dec(ecx)?;
    a.jnz(fill)?;

    a.mov(eax, cr4)?;
    a.or(eax, 0x20)?; // PAE
    a.mov(cr4, eax)?;
    a.mov(eax, PML4)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, 0xC000_0080u32)?; // EFER
    a.rdmsr()?;
    a.or(eax, 0x100)?; // LME
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    a.or(eax, 0x8000_0000u32 as i32)?; // PG
    a.mov(cr0, eax)?;
    let target = (ROM_BASE + CODE64) as u32;
    let mut far = vec![0xEA];
    far.extend_from_slice(&target.to_le_bytes());
    far.extend_from_slice(&SEL_CODE64.to_le_bytes());
    a.db(&far)?;

    emit_puts(&mut a, &mut puts)?;
    a.assemble(ROM_BASE + CODE32)
}

struct Labels {
    puts: CodeLabel,
    print_dec: CodeLabel,
    print_dec2: CodeLabel,
    cmos_read: CodeLabel,
}

fn print(a: &mut CodeAssembler, l: &Labels, text: &[u8]) -> Result<(), IcedError> {
    // The string sits inline after a jump over it.
    let mut s = a.create_label();
    let mut after = a.create_label();
    a.jmp(after)?;
    a.set_label(&mut s)?;
    let mut bytes = text.to_vec();
    bytes.push(0);
    a.db(&bytes)?;
    a.set_label(&mut after)?;
    a.lea(rsi, ptr(s))?;
    a.call(l.puts)
}

fn long_mode() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut l = Labels {
        puts: a.create_label(),
        print_dec: a.create_label(),
        print_dec2: a.create_label(),
        cmos_read: a.create_label(),
    };
    let mut irq0 = a.create_label();
    let mut fault = a.create_label();
    let mut other_irq = a.create_label();

    a.mov(ax, SEL_DATA as u32)?;
    for s in [ds, es, ss] {
        a.mov(s, ax)?;
    }
    a.mov(rsp, 0x8_0000u64)?;
    print(
        &mut a,
        &l,
        b"demo: long mode, 64-bit code with identity paging\r\n",
    )?;

    // CPUID vendor string.
    a.xor(eax, eax)?;
    a.cpuid()?;
    a.mov(dword_ptr(SCRATCH), ebx)?;
    a.mov(dword_ptr(SCRATCH + 4), edx)?;
    a.mov(dword_ptr(SCRATCH + 8), ecx)?;
    a.mov(byte_ptr(SCRATCH + 12), 0)?;
    print(&mut a, &l, b"cpu: vendor ")?;
    a.mov(rsi, SCRATCH)?;
    a.call(l.puts)?;

    // Family, model, stepping (with the extended fields, as the SDM's CPUID.1 EAX).
    a.mov(eax, 1)?;
    a.cpuid()?;
    a.mov(r12d, edx)?;
    a.mov(r13d, ecx)?;
    a.mov(r14d, eax)?;
    print(&mut a, &l, b", family ")?;
    a.mov(eax, r14d)?;
    a.shr(eax, 8)?;
    a.and(eax, 0xF)?;
    a.mov(ebx, eax)?;
    let mut no_ext_family = a.create_label();
    a.cmp(eax, 0xF)?;
    a.jne(no_ext_family)?;
    a.mov(ecx, r14d)?;
    a.shr(ecx, 20)?;
    a.and(ecx, 0xFF)?;
    a.add(eax, ecx)?;
    a.set_label(&mut no_ext_family)?;
    a.call(l.print_dec)?;
    print(&mut a, &l, b" model ")?;
    a.mov(eax, r14d)?;
    a.shr(eax, 4)?;
    a.and(eax, 0xF)?;
    let mut no_ext_model = a.create_label();
    a.cmp(ebx, 6)?;
    let mut ext_model = a.create_label();
    a.je(ext_model)?;
    a.cmp(ebx, 0xF)?;
    a.jne(no_ext_model)?;
    a.set_label(&mut ext_model)?;
    a.mov(ecx, r14d)?;
    a.shr(ecx, 12)?;
    a.and(ecx, 0xF0)?;
    a.or(eax, ecx)?;
    a.set_label(&mut no_ext_model)?;
    a.call(l.print_dec)?;
    print(&mut a, &l, b" stepping ")?;
    a.mov(eax, r14d)?;
    a.and(eax, 0xF)?;
    a.call(l.print_dec)?;

    // The brand string, CPUID 80000002h-80000004h (every x86-64 CPU has these leaves).
    print(&mut a, &l, b"\r\ncpu: brand ")?;
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let at = SCRATCH + 16 * i as u64;
        a.mov(eax, leaf)?;
        a.cpuid()?;
        a.mov(dword_ptr(at), eax)?;
        a.mov(dword_ptr(at + 4), ebx)?;
        a.mov(dword_ptr(at + 8), ecx)?;
        a.mov(dword_ptr(at + 12), edx)?;
    }
    a.mov(byte_ptr(SCRATCH + 48), 0)?;
    a.mov(rsi, SCRATCH)?;
    a.call(l.puts)?;
    print(&mut a, &l, b"\r\ncpu: features")?;
    let leaf1: &[(AsmRegister32, u32, &[u8])] = &[
        (r12d, 0, b" fpu"),
        (r12d, 4, b" tsc"),
        (r12d, 5, b" msr"),
        (r12d, 6, b" pae"),
        (r12d, 8, b" cx8"),
        (r12d, 9, b" apic"),
        (r12d, 15, b" cmov"),
        (r12d, 23, b" mmx"),
        (r12d, 24, b" fxsr"),
        (r12d, 25, b" sse"),
        (r12d, 26, b" sse2"),
        (r13d, 0, b" sse3"),
        (r13d, 9, b" ssse3"),
        (r13d, 13, b" cx16"),
        (r13d, 19, b" sse4.1"),
        (r13d, 20, b" sse4.2"),
        (r13d, 21, b" x2apic"),
        (r13d, 23, b" popcnt"),
        (r13d, 26, b" xsave"),
        (r13d, 28, b" avx"),
        (r13d, 31, b" hypervisor"),
    ];
    for (reg, bit, name) in leaf1 {
        let mut skip = a.create_label();
        a.bt(*reg, *bit)?;
        a.jnc(skip)?;
        print(&mut a, &l, name)?;
        a.set_label(&mut skip)?;
    }
    let mut no_ext = a.create_label();
    a.mov(eax, 0x8000_0000u32)?;
    a.cpuid()?;
    a.cmp(eax, 0x8000_0001u32 as i32)?;
    a.jb(no_ext)?;
    a.mov(eax, 0x8000_0001u32)?;
    a.cpuid()?;
    a.mov(r12d, edx)?;
    a.mov(r13d, ecx)?;
    let ext: &[(AsmRegister32, u32, &[u8])] = &[
        (r12d, 11, b" syscall"),
        (r12d, 20, b" nx"),
        (r12d, 26, b" pdpe1gb"),
        (r12d, 27, b" rdtscp"),
        (r12d, 29, b" lm"),
        (r13d, 0, b" lahf_lm"),
        (r13d, 5, b" abm"),
    ];
    for (reg, bit, name) in ext {
        let mut skip = a.create_label();
        a.bt(*reg, *bit)?;
        a.jnc(skip)?;
        print(&mut a, &l, name)?;
        a.set_label(&mut skip)?;
    }
    a.nop()?; // the last feature's skip label and no_ext need separate instructions
    a.set_label(&mut no_ext)?;
    print(&mut a, &l, b"\r\n")?;

    // Memory size from CMOS: 64 KiB blocks above 16 MiB (0x34/0x35), or KiB above 1 MiB
    // (0x30/0x31) for small machines, plus 64 KiB blocks above 4 GiB (0x5B-0x5D).
    a.mov(al, 0x35)?;
    a.call(l.cmos_read)?;
    a.movzx(ebx, al)?;
    a.shl(ebx, 8)?;
    a.mov(al, 0x34)?;
    a.call(l.cmos_read)?;
    a.mov(bl, al)?;
    let mut small = a.create_label();
    let mut have_mb = a.create_label();
    a.test(ebx, ebx)?;
    a.jz(small)?;
    a.shr(ebx, 4)?; // 64 KiB blocks -> MiB
    a.add(ebx, 16)?;
    a.jmp(have_mb)?;
    a.set_label(&mut small)?;
    a.mov(al, 0x31)?;
    a.call(l.cmos_read)?;
    a.movzx(ebx, al)?;
    a.shl(ebx, 8)?;
    a.mov(al, 0x30)?;
    a.call(l.cmos_read)?;
    a.mov(bl, al)?;
    a.shr(ebx, 10)?;
    a.add(ebx, 1)?;
    a.set_label(&mut have_mb)?;
    a.mov(al, 0x5D)?;
    a.call(l.cmos_read)?;
    a.movzx(ecx, al)?;
    a.shl(ecx, 8)?;
    a.mov(al, 0x5C)?;
    a.call(l.cmos_read)?;
    a.mov(cl, al)?;
    a.shl(ecx, 8)?;
    a.mov(al, 0x5B)?;
    a.call(l.cmos_read)?;
    a.mov(cl, al)?;
    a.shr(ecx, 4)?;
    a.add(ebx, ecx)?;
    print(&mut a, &l, b"memory: ")?;
    a.mov(eax, ebx)?;
    a.call(l.print_dec)?;
    print(&mut a, &l, b" MiB (from CMOS)\r\n")?;

    // RTC: wait for the end of an update cycle, then read; BCD unless register B says
    // binary.
    let mut uip = a.create_label();
    a.set_label(&mut uip)?;
    a.mov(al, 0x0A)?;
    a.call(l.cmos_read)?;
    a.test(al, 0x80)?;
    a.jnz(uip)?;
    a.mov(al, 0x0B)?;
    a.call(l.cmos_read)?;
    a.mov(r15b, al)?;
    for (i, reg) in [0x32u32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00]
        .iter()
        .enumerate()
    {
        a.mov(al, *reg)?;
        a.call(l.cmos_read)?;
        let mut binary = a.create_label();
        a.test(r15b, 0x04)?;
        a.jnz(binary)?;
        // BCD -> binary: (al >> 4) * 10 + (al & 15)
        a.movzx(ecx, al)?;
        a.shr(ecx, 4)?;
        a.imul_3(ecx, ecx, 10)?;
        a.and(eax, 0xF)?;
        a.add(eax, ecx)?;
        a.set_label(&mut binary)?;
        a.mov(byte_ptr(SCRATCH + 0x20 + i as u64), al)?;
    }
    print(&mut a, &l, b"rtc: ")?;
    for (i, sep) in [
        (0u64, &b""[..]),
        (1, b""),
        (2, b"-"),
        (3, b"-"),
        (4, b" "),
        (5, b":"),
        (6, b":"),
    ] {
        if !sep.is_empty() {
            print(&mut a, &l, sep)?;
        }
        a.movzx(eax, byte_ptr(SCRATCH + 0x20 + i))?;
        a.call(l.print_dec2)?;
    }
    print(&mut a, &l, b" UTC\r\n")?;

    // IDT: exceptions to `fault`, IRQ0 (vector 0x20) to `irq0`, other IRQs to `other_irq`.
    a.mov(rdi, IDT)?;
    a.xor(ecx, ecx)?;
    let mut gate = a.create_label();
    let mut pick_irq0 = a.create_label();
    let mut pick_other = a.create_label();
    let mut write_gate = a.create_label();
    a.set_label(&mut gate)?;
    a.lea(rax, ptr(fault))?;
    a.cmp(ecx, 0x20)?;
    a.je(pick_irq0)?;
    a.ja(pick_other)?;
    a.jmp(write_gate)?;
    a.set_label(&mut pick_irq0)?;
    a.lea(rax, ptr(irq0))?;
    a.jmp(write_gate)?;
    a.set_label(&mut pick_other)?;
    a.lea(rax, ptr(other_irq))?;
    a.set_label(&mut write_gate)?;
    a.mov(word_ptr(rdi), ax)?; // offset 15:0
    a.mov(word_ptr(rdi + 2), SEL_CODE64 as u32)?;
    a.mov(word_ptr(rdi + 4), 0x8E00)?; // present, DPL 0, 64-bit interrupt gate
    a.shr(rax, 16)?;
    a.mov(word_ptr(rdi + 6), ax)?; // offset 31:16
    a.shr(rax, 16)?;
    a.mov(dword_ptr(rdi + 8), eax)?; // offset 63:32
    a.mov(dword_ptr(rdi + 12), 0)?;
    a.add(rdi, 16)?;
    a.inc(ecx)?;
    a.cmp(ecx, 0x30)?;
    a.jb(gate)?;
    a.mov(word_ptr(IDTR), (0x30 * 16 - 1) as u32)?;
    a.mov(rax, IDT)?;
    a.mov(qword_ptr(IDTR + 2), rax)?;
    a.lidt(ptr(IDTR))?;

    // 8259A: vectors 0x20/0x28, cascade on IR2, only IRQ0 unmasked.
    for (port, val) in [
        (0x20u16, 0x11u8),
        (0xA0, 0x11),
        (0x21, 0x20),
        (0xA1, 0x28),
        (0x21, 0x04),
        (0xA1, 0x02),
        (0x21, 0x01),
        (0xA1, 0x01),
        (0x21, 0xFE),
        (0xA1, 0xFF),
    ] {
        a.mov(al, val as u32)?;
        a.out(port as u32, al)?;
    }
    // 8254 channel 0: rate generator at 100 Hz.
    a.mov(qword_ptr(TICKS), 0)?;
    a.mov(al, 0x34)?;
    a.out(0x43, al)?;
    a.mov(al, (PIT_DIVISOR & 0xFF) as u32)?;
    a.out(0x40, al)?;
    a.mov(al, (PIT_DIVISOR >> 8) as u32)?;
    a.out(0x40, al)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(r14, rax)?;
    a.sti()?;
    let mut sleep = a.create_label();
    a.set_label(&mut sleep)?;
    a.hlt()?;
    a.cmp(qword_ptr(TICKS), TICKS_WANTED)?;
    a.jb(sleep)?;
    a.cli()?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.sub(rax, r14)?;
    a.mov(r14, rax)?;
    print(&mut a, &l, b"timer: ")?;
    a.mov(rax, qword_ptr(TICKS))?;
    a.call(l.print_dec)?;
    print(
        &mut a,
        &l,
        b" PIT interrupts at 100 Hz (IRQ0 via the 8259A, vector 0x20) while halted; TSC ~",
    )?;
    // TSC cycles over 10 ticks (100 ms) / 100000 = MHz.
    a.mov(rax, r14)?;
    a.xor(edx, edx)?;
    a.mov(rcx, 100_000u64)?;
    a.div(rcx)?;
    a.call(l.print_dec)?;
    print(&mut a, &l, b" MHz\r\n")?;
    print(&mut a, &l, LAST_LINE)?;
    // ACPI S5 through PM1a_CNT: SLP_TYP 0, SLP_EN.
    a.mov(dx, 0x604)?;
    a.mov(ax, 0x2000)?;
    a.out(dx, ax)?;
    let mut stop = a.create_label();
    a.set_label(&mut stop)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(stop)?;

    // irq0: count the tick, EOI.
    a.set_label(&mut irq0)?;
    a.push(rax)?;
    a.inc(qword_ptr(TICKS))?;
    a.mov(al, 0x20)?;
    a.out(0x20, al)?;
    a.pop(rax)?;
    a.iretq()?;
    // other_irq: EOI both PICs.
    a.set_label(&mut other_irq)?;
    a.push(rax)?;
    a.mov(al, 0x20)?;
    a.out(0xA0, al)?;
    a.out(0x20, al)?;
    a.pop(rax)?;
    a.iretq()?;
    // fault: report and leave through the debug-exit port (exit status 255).
    a.set_label(&mut fault)?;
    print(&mut a, &l, b"demo: unexpected exception\r\n")?;
    a.mov(al, 0x7F)?;
    a.out(0xF4, al)?;
    a.cli()?;
    a.hlt()?;

    // puts: RSI -> COM1.
    emit_puts(&mut a, &mut l.puts)?;

    // print_dec: unsigned RAX in decimal. Clobbers rax, rcx, rdx, rsi, rdi.
    a.set_label(&mut l.print_dec)?;
    a.mov(rdi, SCRATCH + 0x7F)?;
    a.mov(byte_ptr(rdi), 0)?;
    a.mov(rcx, 10u64)?;
    let mut digit = a.create_label();
    a.set_label(&mut digit)?;
    a.xor(edx, edx)?;
    a.div(rcx)?;
    a.add(dl, b'0' as u32)?;
    a.dec(rdi)?;
    a.mov(byte_ptr(rdi), dl)?;
    a.test(rax, rax)?;
    a.jnz(digit)?;
    a.mov(rsi, rdi)?;
    a.jmp(l.puts)?;

    // print_dec2: EAX (0-99) as two digits.
    a.set_label(&mut l.print_dec2)?;
    a.xor(edx, edx)?;
    a.mov(ecx, 10)?;
    a.div(ecx)?;
    a.add(al, b'0' as u32)?;
    a.add(dl, b'0' as u32)?;
    a.mov(byte_ptr(SCRATCH + 0x40), al)?;
    a.mov(byte_ptr(SCRATCH + 0x41), dl)?;
    a.mov(byte_ptr(SCRATCH + 0x42), 0)?;
    a.mov(rsi, SCRATCH + 0x40)?;
    a.jmp(l.puts)?;

    // cmos_read: AL = index (NMI stays enabled) -> AL = value.
    a.set_label(&mut l.cmos_read)?;
    a.out(0x70, al)?;
    a.in_(al, 0x71)?;
    a.ret()?;

    a.assemble(ROM_BASE + CODE64)
}

/// puts: the NUL-terminated string at (E/R)SI to COM1, polling LSR.THRE; the same bytes
/// serve every mode (LODSB's source register follows the address size). Clobbers AX, DX.
fn emit_puts(a: &mut CodeAssembler, entry: &mut CodeLabel) -> Result<(), IcedError> {
    let next = entry;
    let mut wait = a.create_label();
    let mut done = a.create_label();
    a.set_label(next)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(done)?;
    a.mov(ah, al)?;
    a.mov(dx, (COM1 + 5) as u32)?;
    a.set_label(&mut wait)?;
    a.in_(al, dx)?;
    a.test(al, 0x20)?;
    a.jz(wait)?;
    a.mov(al, ah)?;
    a.mov(dx, COM1 as u32)?;
    a.out(dx, al)?;
    a.jmp(*next)?;
    a.set_label(&mut done)?;
    a.ret()
}
