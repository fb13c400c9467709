//! Protected mode's privilege and task machinery on the emulated CPU: call gates, hardware
//! task switches, virtual-8086 mode, and the limit checks on interrupt frames. Expected
//! values follow the Intel SDM vol. 3 (5.8 call gates, chapter 7 tasks, chapter 20 VM86,
//! 6.12 interrupt frames).

mod cpu_harness;

use cpu_harness::*;
use gantry_frontend::state::{CpuState, Segment, CR0_TS, CS, DS, NT, SS, VM};
use gantry_machine::accel::CpuStop;
use gantry_machine::memory::GuestMemory;
use iced_x86::code_asm::*;

/// The harness's GDT: 0x10 ring-0 flat code, 0x18 ring-0 flat data; tests add entries
/// from 0x28 on.
const GDT: u64 = 0x500;
const KERNEL_CS: u16 = 0x10;
const KERNEL_DS: u16 = 0x18;
const USER_CS: u16 = 0x28 | 3;
const USER_DS: u16 = 0x30 | 3;
/// The running task's TSS, and a second task.
const TSS_A: u16 = 0x38;
const TSS_B: u16 = 0x48;
const GATE: u16 = 0x40;
const TSS_A_AT: u64 = 0x7000;
const TSS_B_AT: u64 = 0x7100;
/// Ring 0's stack in TSS A, and task B's stack.
const ESP0: u64 = 0x1_F000;
const ESP_B: u64 = 0x1_C000;
/// Code placed apart from the test body (a gate's entry, another task's code).
const KERNEL: u64 = 0x2_1000;
const TASK_B_CODE: u64 = 0x2_2000;

/// A code or data segment descriptor; `flags` is the G/D/L/AVL nibble.
fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (base, limit) = (base as u64, limit as u64);
    (limit & 0xFFFF)
        | (base & 0xFF_FFFF) << 16
        | (access as u64) << 40
        | ((limit >> 16) & 0xF) << 48
        | (flags as u64 & 0xF) << 52
        | (base >> 24) << 56
}

/// A gate descriptor: call gate (type C, with a parameter count), task gate (type 5),
/// interrupt gate (type E).
fn gate(sel: u16, offset: u32, access: u8, params: u8) -> u64 {
    let offset = offset as u64;
    (offset & 0xFFFF)
        | (sel as u64) << 16
        | (params as u64) << 32
        | (access as u64) << 40
        | (offset >> 16) << 48
}

const FLAT: u32 = 0xF_FFFF;
const G_32: u8 = 0xC;

fn set_gdt(cpu: &mut CpuState, mem: &mut GuestMemory, sel: u16, d: u64) {
    let at = (sel & !7) as u64;
    mem.write_u64(GDT + at, d).unwrap();
    cpu.gdtr.limit = cpu.gdtr.limit.max(at as u32 + 7);
}

/// Ring-3 flat code and data, and TSS A as the current task, its ring-0 stack at ESP0.
fn rings(cpu: &mut CpuState, mem: &mut GuestMemory) {
    set_gdt(cpu, mem, USER_CS, descriptor(0, FLAT, 0xFA, G_32));
    set_gdt(cpu, mem, USER_DS, descriptor(0, FLAT, 0xF2, G_32));
    set_gdt(cpu, mem, TSS_A, descriptor(TSS_A_AT as u32, 0x67, 0x8B, 0));
    mem.write_u64(TSS_A_AT + 4, ESP0 | (KERNEL_DS as u64) << 32)
        .unwrap();
    cpu.tr = Segment {
        base: TSS_A_AT,
        limit: 0x67,
        selector: TSS_A,
        attr: 0x8B,
    };
}

/// Task B: an available 32-bit TSS whose task starts at TASK_B_CODE in ring 0.
fn task_b(cpu: &mut CpuState, mem: &mut GuestMemory, code: u16) {
    set_gdt(cpu, mem, TSS_B, descriptor(TSS_B_AT as u32, 0x67, 0x89, 0));
    let dword = |mem: &mut GuestMemory, off: u64, v: u64| {
        mem.write(TSS_B_AT + off, &(v as u32).to_le_bytes())
            .unwrap()
    };
    dword(mem, 0x20, TASK_B_CODE);
    dword(mem, 0x24, 0x2);
    dword(mem, 0x28, 0xB0B); // EAX
    dword(mem, 0x38, ESP_B);
    for (slot, sel) in [
        (0x48, KERNEL_DS),
        (0x4C, code),
        (0x50, KERNEL_DS),
        (0x54, KERNEL_DS),
    ] {
        dword(mem, slot, sel as u64);
    }
}

/// Assembles 32-bit (or 16-bit) code to run at `at`.
fn asm(bits: u32, at: u64, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a).unwrap();
    a.assemble(at).unwrap()
}

/// Ring-3 code placed apart from the test body.
const USER: u64 = 0x2_6000;

/// Leaves ring 0 for USER in ring 3 with IRETD (the stack at 0x1_8000).
fn to_ring3(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.push(USER_DS as u32)?;
    a.push(0x1_8000u32)?;
    a.push(0x2u32)?;
    a.push(USER_CS as u32)?;
    a.push(USER as u32)?;
    a.iretd()
}

fn tss_b_busy(d: &Done) -> bool {
    d.mem.read_u64(GDT + TSS_B as u64).unwrap() >> 41 & 1 != 0
}

#[test]
fn a_call_gate_to_ring_0_switches_stacks_copies_parameters_and_returns() {
    // CALL through a DPL-3 gate with two parameters to ring-0 code; RETF 8 goes back to
    // ring 3 and releases the parameters from the caller's stack.
    let kernel = asm(32, KERNEL, |a| {
        a.mov(ebp, esp)?;
        a.mov(edx, dword_ptr(esp + 8))?; // the last parameter pushed
                                         // The frame, copied: ring 0's stack is reused when ring 3 faults.
        a.mov(esi, esp)?;
        a.mov(ecx, 6)?;
        a.mov(edi, DATA as u32)?;
        a.cld()?;
        a.rep().movsd()?;
        a.retf_1(8)
    });
    let user = asm(32, USER, |a| {
        // IRET to ring 3 left DS and ES null (their DPL-0 selectors).
        a.mov(eax, USER_DS as u32)?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.push(0x1111)?;
        a.push(0x2222)?;
        a.call_far(GATE | 3, 0)?;
        a.mov(ebx, esp)?;
        a.hlt() // back in ring 3: #GP
    });
    let d = run(
        Mode::Protected32,
        |cpu, mem| {
            rings(cpu, mem);
            set_gdt(cpu, mem, GATE, gate(KERNEL_CS, KERNEL as u32, 0xEC, 2));
            mem.write(KERNEL, &kernel).unwrap();
            mem.write(USER, &user).unwrap();
        },
        to_ring3,
    );
    assert_eq!(
        d.vector(),
        Some(13),
        "HLT after the return faults in ring 3"
    );
    let frame = d.cpu.gpr[4];
    assert_eq!(d.u32_at(frame + 8), USER_CS as u32, "#GP came from ring 3");
    assert_eq!(
        d.cpu.gpr[5],
        ESP0 - 24,
        "ring 0's stack from the TSS, 6 dwords"
    );
    assert_eq!(d.cpu.gpr[2] as u32, 0x2222, "parameter at [ESP+8]");
    let copied: Vec<u32> = (0..6).map(|i| d.u32_at(DATA + 4 * i)).collect();
    assert_eq!(copied[1], USER_CS as u32, "CS");
    assert_eq!(
        copied[2..4],
        [0x2222, 0x1111],
        "parameters in the caller's order"
    );
    assert_eq!(copied[4], 0x1_8000 - 8, "caller's ESP");
    assert_eq!(copied[5], USER_DS as u32, "caller's SS");
    assert_eq!(d.cpu.gpr[3], 0x1_8000, "RETF 8 released the parameters");
}

#[test]
fn call_gate_checks() {
    // SDM: CALL/JMP. Each case: gate access byte, parameter count, how it is used, and
    // the exception and error code expected (None: it reaches the ring-0 entry).
    type Body = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    /// An exception vector and its error code.
    type Fault = Option<(u8, u32)>;
    let cases: [(&str, u8, Body, Fault); 5] = [
        (
            "same-level CALL pushes CS:EIP only",
            0xEC,
            |a| a.call_far(GATE, 0),
            None,
        ),
        ("JMP through a gate", 0xEC, |a| a.jmp_far(GATE, 0), None),
        (
            "gate DPL below RPL",
            0x8C,
            |a| a.call_far(GATE | 3, 0),
            Some((13, GATE as u32)),
        ),
        (
            "gate not present",
            0x6C,
            |a| a.call_far(GATE, 0),
            Some((11, GATE as u32)),
        ),
        ("a 16-bit gate", 0xE4, |a| a.call_far(GATE, 0), None),
    ];
    // The entry records ESP in EBX and halts. It lies below 64 KiB, where a 16-bit gate
    // can reach it.
    const ENTRY: u64 = 0x5000;
    let kernel = asm(32, ENTRY, |a| {
        a.mov(ebx, esp)?;
        a.mov(eax, 0x600Du32)?;
        a.hlt()
    });
    for (what, access, body, want) in cases {
        let d = run(
            Mode::Protected32,
            |cpu, mem| {
                rings(cpu, mem);
                set_gdt(cpu, mem, GATE, gate(KERNEL_CS, ENTRY as u32, access, 0));
                mem.write(ENTRY, &kernel).unwrap();
            },
            body,
        );
        match want {
            None => {
                assert_eq!(d.vector(), None, "{what}");
                assert_eq!(d.cpu.gpr[0], 0x600D, "{what}: reached the entry");
                let pushed = match (access, what.starts_with("JMP")) {
                    (_, true) => 0,
                    (0xE4, _) => 4,
                    _ => 8,
                };
                assert_eq!(d.cpu.gpr[3], STACK - pushed, "{what}: ESP at the entry");
                if pushed == 4 {
                    assert_eq!(d.mem.read_u32(STACK - 4).unwrap() >> 16, 0x10, "{what}: CS");
                }
            }
            Some((vector, code)) => {
                assert_eq!(d.vector(), Some(vector), "{what}");
                assert_eq!(d.u32_at(d.cpu.gpr[4]), code, "{what}: error code");
            }
        }
    }
}

#[test]
fn call_to_a_task_and_iret_back() {
    // CALL to TSS B: task A's state goes into its TSS, B runs with NT set and a link to
    // A; its IRET returns to A after the CALL, with A's registers back.
    let b = asm(32, TASK_B_CODE, |a| {
        a.mov(dword_ptr(DATA), eax)?;
        a.str(ax)?;
        a.mov(word_ptr(DATA + 4), ax)?;
        a.pushfd()?;
        a.pop(eax)?;
        a.mov(dword_ptr(DATA + 8), eax)?;
        a.mov(dword_ptr(DATA + 12), esp)?;
        a.iretd()
    });
    let d = run(
        Mode::Protected32,
        |cpu, mem| {
            rings(cpu, mem);
            task_b(cpu, mem, KERNEL_CS);
            mem.write(TASK_B_CODE, &b).unwrap();
        },
        |a| {
            a.mov(eax, 0xAAAAu32)?;
            a.call_far(TSS_B, 0)?;
            a.mov(edi, 0x600Du32)
        },
    );
    assert_eq!(d.vector(), None);
    assert_eq!(d.u32_at(DATA), 0xB0B, "B's EAX from its TSS");
    assert_eq!(d.u32_at(DATA + 4) & 0xFFFF, TSS_B as u32, "TR in task B");
    assert_ne!(d.u32_at(DATA + 8) as u64 & NT, 0, "B runs nested");
    assert_eq!(d.u32_at(DATA + 12) as u64, ESP_B, "B's stack");
    assert_eq!(d.u32_at(TSS_B_AT) & 0xFFFF, TSS_A as u32, "B's link to A");
    assert_eq!(d.cpu.gpr[0], 0xAAAA, "A's EAX restored");
    assert_eq!(d.cpu.gpr[7], 0x600D, "A resumed after the CALL");
    assert_eq!(d.cpu.tr.selector, TSS_A);
    assert_eq!(d.flags() & NT, 0);
    assert_ne!(d.cpu.cr0 & CR0_TS, 0, "a task switch sets CR0.TS");
    assert!(!tss_b_busy(&d), "IRET frees B");
    // B's state was saved by its IRET: EIP past the IRETD.
    assert_eq!(
        d.u32_at(TSS_B_AT + 0x20) as u64,
        TASK_B_CODE + b.len() as u64
    );
}

#[test]
fn jmp_to_a_task_and_to_a_busy_one() {
    // JMP to TSS B marks A free and B busy and leaves no link; JMP to a busy TSS (A
    // itself) is #GP(selector).
    let b = asm(32, TASK_B_CODE, |a| {
        a.mov(ebx, 0xB0Bu32)?;
        a.pushfd()?;
        a.pop(esi)?;
        a.jmp_far(TSS_B, 0) // B is busy now
    });
    let d = run(
        Mode::Protected32,
        |cpu, mem| {
            rings(cpu, mem);
            task_b(cpu, mem, KERNEL_CS);
            mem.write(TASK_B_CODE, &b).unwrap();
        },
        |a| a.jmp_far(TSS_B, 0),
    );
    assert_eq!(d.vector(), Some(13));
    assert_eq!(d.u32_at(d.cpu.gpr[4]), TSS_B as u32, "#GP(busy TSS)");
    assert_eq!(d.cpu.gpr[3], 0xB0B, "task B ran");
    assert_eq!(d.cpu.gpr[6] & NT, 0, "JMP does not nest");
    assert_eq!(d.u32_at(TSS_B_AT), 0, "no link");
    assert_eq!(d.cpu.tr.selector, TSS_B);
    assert!(tss_b_busy(&d));
    let a_access = d.mem.read_u64(GDT + TSS_A as u64).unwrap() >> 40 & 0xFF;
    assert_eq!(a_access, 0x89, "A is available again");
}

#[test]
fn a_stack_overflow_in_delivery_double_faults_into_a_task() {
    // Linux/i386's pattern: #DF goes through a task gate to a task with a stack of its
    // own. INT3's frame does not fit under ESP = 4 in a 64 KiB stack segment: #SS(0); its
    // delivery cannot fit either: #DF, through the task gate.
    let b = asm(32, TASK_B_CODE, |a| {
        a.pop(eax)?; // the #DF error code
        a.mov(dword_ptr(DATA), eax)?;
        a.mov(dword_ptr(DATA + 4), 0x600Du32)
    });
    let setup = |cpu: &mut CpuState, mem: &mut GuestMemory| {
        rings(cpu, mem);
        task_b(cpu, mem, KERNEL_CS);
        mem.write(TASK_B_CODE, &b).unwrap();
        mem.write(TASK_B_CODE + b.len() as u64, &[0xFA, 0xF4])
            .unwrap(); // CLI; HLT
        mem.write_u64(IDT + 8 * 8, gate(TSS_B, 0, 0x85, 0)).unwrap();
        cpu.seg[SS].limit = 0xFFFF;
    };
    let d = run(Mode::Protected32, setup, |a| {
        a.mov(esp, 4u32)?;
        a.int3()
    });
    assert_eq!(d.u32_at(DATA + 4), 0x600D, "the #DF task ran");
    assert_eq!(
        d.u32_at(DATA),
        0,
        "#DF's error code, on the new task's stack"
    );
    assert_eq!(d.cpu.tr.selector, TSS_B);
    assert_eq!(d.cpu.gpr[4], ESP_B, "B popped its error code");
    assert_eq!(d.u32_at(TSS_A_AT + 0x38), 4, "A's ESP as the INT3 found it");
    // Room for the frame: INT3 is delivered.
    let d = run(Mode::Protected32, setup, |a| {
        a.mov(esp, 12u32)?;
        a.int3()
    });
    assert_eq!(d.vector(), Some(3));
    // Without a task gate the double fault's own frame does not fit: shutdown.
    let d = run(
        Mode::Protected32,
        |cpu, _| cpu.seg[SS].limit = 0xFFFF,
        |a| {
            a.mov(esp, 4u32)?;
            a.int3()
        },
    );
    assert!(
        matches!(d.stop, CpuStop::TripleFault { .. }),
        "{:?}",
        d.stop
    );
}

#[test]
fn a_fault_after_the_commit_point_belongs_to_the_new_task() {
    // Task B's CS names a data segment: the switch completes (TR is B) and #TS(CS) is
    // delivered in B's context, on B's stack, at B's first instruction.
    let d = run(
        Mode::Protected32,
        |cpu, mem| {
            rings(cpu, mem);
            task_b(cpu, mem, KERNEL_DS);
        },
        |a| a.call_far(TSS_B, 0),
    );
    assert_eq!(d.vector(), Some(10));
    let frame = d.cpu.gpr[4];
    assert_eq!(
        frame,
        ESP_B - 16,
        "on B's stack: error code, EIP, CS, EFLAGS"
    );
    assert_eq!(d.u32_at(frame), KERNEL_DS as u32, "#TS(CS selector)");
    assert_eq!(d.u32_at(frame + 4) as u64, TASK_B_CODE, "B's EIP");
    assert_eq!(d.cpu.tr.selector, TSS_B);
    assert_eq!(
        d.u32_at(TSS_B_AT) & 0xFFFF,
        TSS_A as u32,
        "linked: the CALL completed"
    );
}

#[test]
fn virtual_8086_mode_entered_by_iret_and_left_by_faults() {
    // IRETD with VM set in the image enters VM86 at 2300:0000. CLI with IOPL 0 is #GP(0):
    // the handler sees the VM86 frame, skips the CLI and IRETs back; HLT faults again.
    const HANDLER: u64 = 0x2_8000;
    const COUNT: u64 = 0x6100;
    let v86 = asm(16, 0, |a| {
        a.mov(ax, 0x1234)?;
        a.mov(word_ptr(0x10), ax)?; // DS = 2400h: linear 24010h
        a.mov(dx, 0x2500)?;
        a.mov(es, dx)?;
        a.mov(word_ptr(0).es(), ax)?; // linear 25000h
        a.cli()?;
        a.mov(si, 0x5678)?;
        a.mov(word_ptr(0x12), si)?;
        a.hlt()
    });
    let handler = asm(32, HANDLER, |a| {
        // DS-ES-FS-GS are null in the handler: SS-relative only.
        let mut done = a.create_label();
        a.inc(dword_ptr(COUNT).ss())?;
        a.cmp(dword_ptr(COUNT).ss(), 2)?;
        a.je(done)?;
        a.add(dword_ptr(esp + 4), 1)?; // past the CLI
        a.add(esp, 4)?; // the error code
        a.iretd()?;
        a.set_label(&mut done)?;
        a.mov(ebx, esp)?;
        a.cli()?;
        a.hlt()
    });
    let d = run(
        Mode::Protected32,
        |cpu, mem| {
            rings(cpu, mem);
            mem.write(0x2_3000, &v86).unwrap();
            mem.write(HANDLER, &handler).unwrap();
            let g = gate(KERNEL_CS, HANDLER as u32, 0x8E, 0); // interrupt gate, DPL 0
            mem.write_u64(IDT + 13 * 8, g).unwrap();
        },
        |a| {
            for v in [
                0u32,
                0,
                0x2400,
                0x2400,
                0x2400,
                0xFFF0,
                (VM | 2) as u32,
                0x2300,
                0,
            ] {
                a.push(v)?; // GS FS DS ES SS ESP EFLAGS CS EIP
            }
            a.iretd()
        },
    );
    assert_eq!(d.u32_at(COUNT), 2, "two #GPs from VM86");
    assert_eq!(d.mem.read_u32(0x2_4010).unwrap() & 0xFFFF, 0x1234);
    assert_eq!(
        d.mem.read_u32(0x2_5000).unwrap() & 0xFFFF,
        0x1234,
        "ES loaded as in real mode"
    );
    assert_eq!(
        d.mem.read_u32(0x2_4012).unwrap() & 0xFFFF,
        0x5678,
        "back in VM86 after IRETD"
    );
    let f = d.cpu.gpr[3];
    assert_eq!(
        f,
        ESP0 - 40,
        "error code and a 9-dword VM86 frame on ring 0's stack"
    );
    let frame: Vec<u32> = (0..10).map(|i| d.u32_at(f + 4 * i)).collect();
    assert_eq!(frame[0], 0, "#GP(0)");
    assert_eq!(frame[1] as usize, v86.len() - 1, "EIP of the HLT");
    assert_eq!(frame[2], 0x2300, "CS");
    assert_ne!(frame[3] as u64 & VM, 0, "EFLAGS.VM");
    assert_eq!(
        frame[4..10],
        [0xFFF0, 0x2400, 0x2500, 0x2400, 0, 0],
        "ESP SS ES DS FS GS"
    );
    assert_eq!(d.cpu.seg[CS].selector, KERNEL_CS);
    assert_eq!(
        d.cpu.seg[DS].selector, 0,
        "data segments nulled on leaving VM86"
    );
}

#[test]
fn a_16_bit_tss_loads_16_bit_registers() {
    // SDM 7.6: a 16-bit TSS holds IP, FLAGS, the eight 16-bit registers and ES, CS, SS,
    // DS, LDT. The upper register halves become FFFFh (measured on hardware, as Bochs
    // records); FS and GS become null.
    const TSS16: u16 = 0x50;
    const TSS16_AT: u64 = 0x7200;
    const ENTRY: u64 = 0x5000;
    let code = asm(32, ENTRY, |a| {
        a.mov(ebx, eax)?;
        a.mov(ecx, esp)?;
        a.mov(dx, fs)?;
        a.cli()?;
        a.hlt()
    });
    let d = run(
        Mode::Protected32,
        |cpu, mem| {
            rings(cpu, mem);
            set_gdt(cpu, mem, TSS16, descriptor(TSS16_AT as u32, 0x2B, 0x81, 0));
            let word = |mem: &mut GuestMemory, off: u64, v: u16| {
                mem.write(TSS16_AT + off, &v.to_le_bytes()).unwrap()
            };
            word(mem, 0x0E, ENTRY as u16);
            word(mem, 0x10, 0x2);
            word(mem, 0x12, 0x1234); // AX
            word(mem, 0x1A, 0x7000); // SP
            for (slot, sel) in [
                (0x22, KERNEL_DS),
                (0x24, KERNEL_CS),
                (0x26, KERNEL_DS),
                (0x28, KERNEL_DS),
            ] {
                word(mem, slot, sel);
            }
            mem.write(ENTRY, &code).unwrap();
        },
        |a| {
            a.mov(edx, KERNEL_DS as u32)?;
            a.mov(fs, dx)?; // a usable FS: the new task's must come back null
            a.jmp_far(TSS16, 0)
        },
    );
    assert_eq!(d.vector(), None);
    assert_eq!(d.cpu.gpr[3], 0xFFFF_1234, "EAX");
    assert_eq!(d.cpu.gpr[1], 0xFFFF_7000, "ESP");
    assert_eq!(d.cpu.gpr[2] & 0xFFFF, 0, "FS");
    assert_eq!(d.cpu.tr.selector, TSS16);
    // Task A was saved into its 32-bit TSS.
    assert_eq!(d.u32_at(TSS_A_AT + 0x30), KERNEL_DS as u32, "A's EDX");
    assert_eq!(d.u32_at(TSS_A_AT + 0x58), KERNEL_DS as u32, "A's FS");
}
