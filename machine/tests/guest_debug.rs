//! The guest's own debugging facilities on the emulated CPU (Intel SDM vol. 3, chapter 17):
//! the trap flag's single-step trap, DR0-3 instruction breakpoints (faults) and data
//! breakpoints (traps) enabled in DR7, DR6 status bits, and RF.

mod cpu_harness;

use cpu_harness::*;
use gantry_frontend::state::{RF, TF};
use iced_x86::code_asm::*;

const DR6_BS: u64 = 1 << 14;

/// The return address and RFLAGS of a 64-bit exception frame at the stack top.
fn frame64(d: &Done) -> (u64, u64) {
    let top = d.cpu.gpr[4];
    (d.u64_at(top), d.u64_at(top + 16))
}

/// Sets TF with POPF, then runs `next`.
fn set_tf_then(
    a: &mut CodeAssembler,
    next: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    a.pushfq()?;
    a.or(qword_ptr(rsp), TF as i32)?;
    a.popfq()?;
    next(a)
}

#[test]
fn trap_flag_traps_after_the_instruction_following_popf() {
    // POPF that sets TF is not itself trapped; the instruction after it is (17.3.1.4).
    let d = run64(|a| {
        set_tf_then(a, |a| {
            a.nop()?;
            a.nop()
        })
    });
    assert_eq!(d.vector(), Some(1));
    // PUSHFQ (1) + OR qword [rsp], imm32 (8) + POPFQ (1) = 10: the NOP at +10 ran, the
    // frame points at the second one.
    let (rip, rflags) = frame64(&d);
    assert_eq!(rip, CODE + 11);
    assert_ne!(
        rflags & TF,
        0,
        "the frame keeps TF; the handler runs with it clear"
    );
    assert_ne!(d.cpu.dr[6] & DR6_BS, 0, "DR6.BS");
    assert_eq!(d.cpu.dr[6] & 0xF, 0, "no breakpoint bits");
}

#[test]
fn trap_flag_in_real_mode() {
    let d = run(
        Mode::Real16,
        |_, _| {},
        |a| {
            a.pushf()?;
            a.pop(ax)?;
            a.or(ax, TF as i32)?;
            a.push(ax)?;
            a.popf()?;
            a.inc(bx)
        },
    );
    assert_eq!(d.vector(), Some(1));
    assert_eq!(d.cpu.gpr[3] & 0xFFFF, 1, "INC BX ran before the trap");
    // The IVT frame: IP, CS, FLAGS.
    let top = d.cpu.gpr[4] & 0xFFFF;
    let ip = d.bytes_at(top, 2);
    let ip = u16::from_le_bytes([ip[0], ip[1]]) as u64;
    let flags = d.bytes_at(top + 4, 2);
    assert_ne!(u16::from_le_bytes([flags[0], flags[1]]) as u64 & TF, 0);
    // The trap came right after INC BX (2 bytes in 16-bit code), which ends the code
    // before the harness's CLI; HLT.
    let cli = d.bytes_at(CODE + ip, 1)[0];
    assert_eq!(cli, 0xFA, "the frame's IP is the CLI after INC BX");
    assert_ne!(d.cpu.dr[6] & DR6_BS, 0);
}

#[test]
fn software_interrupt_cancels_the_single_step_trap() {
    // INT n clears TF as it enters the handler; no #DB follows the INT (17.3.1.4).
    let d = run64(|a| set_tf_then(a, |a| a.int(5)));
    assert_eq!(d.vector(), Some(5), "the INT's handler, not #DB");
    assert_eq!(d.cpu.dr[6] & DR6_BS, 0);
}

#[test]
fn instruction_breakpoint_faults_before_the_instruction() {
    let d = run64(|a| {
        let mut target = a.create_label();
        a.lea(rax, ptr(target))?;
        a.mov(dr0, rax)?;
        a.mov(eax, 0b01)?; // L0; R/W0 = 00 (execute), LEN0 = 00
        a.mov(dr7, rax)?;
        a.nop()?;
        a.set_label(&mut target)?;
        a.mov(ebx, 1)
    });
    assert_eq!(d.vector(), Some(1));
    let (rip, rflags) = frame64(&d);
    // LEA (7) + MOV DR0 (3) + MOV EAX (5) + MOV DR7 (3) + NOP (1) = 19.
    assert_eq!(
        rip,
        CODE + 19,
        "a fault: the frame points at the instruction"
    );
    assert_eq!(d.cpu.gpr[3], 0, "the instruction did not run");
    assert_eq!(rflags & RF, 0, "the CPU does not set RF for this #DB");
    assert_eq!(d.cpu.dr[6] & 0xF, 0b0001, "DR6.B0");
    assert_eq!(d.cpu.dr[6] & DR6_BS, 0);
}

#[test]
fn rf_from_iret_passes_an_instruction_breakpoint_once() {
    // IRETQ to the breakpoint with RF set in the frame: the instruction runs, the UD2 after
    // it is what faults. Without RF, the breakpoint fires.
    let run_with_rf = |rf: bool| {
        run64(move |a| {
            let mut target = a.create_label();
            a.lea(rax, ptr(target))?;
            a.mov(dr0, rax)?;
            a.mov(eax, 0b10)?; // G0, execute
            a.mov(dr7, rax)?;
            a.mov(rcx, rsp)?;
            a.xor(eax, eax)?;
            a.mov(ax, ss)?;
            a.push(rax)?;
            a.push(rcx)?;
            a.push(if rf { 0x1_0002 } else { 0x2 })?;
            a.mov(ax, cs)?;
            a.push(rax)?;
            a.lea(rax, ptr(target))?;
            a.push(rax)?;
            a.iretq()?;
            a.set_label(&mut target)?;
            a.mov(ebx, 1)?;
            a.ud2()
        })
    };
    let d = run_with_rf(false);
    assert_eq!(d.vector(), Some(1));
    assert_eq!(d.cpu.gpr[3], 0);
    let d = run_with_rf(true);
    assert_eq!(d.vector(), Some(6), "past the breakpoint to the UD2");
    assert_eq!(d.cpu.gpr[3], 1);
    // Faults push RF = 1 (17.3.1.1), so a breakpoint on a restarted instruction holds off.
    let (_, rflags) = frame64(&d);
    assert_ne!(rflags & RF, 0, "RF in the #UD frame");
}

#[test]
fn data_breakpoint_traps_after_the_write_it_watches() {
    let d = run64(|a| {
        a.mov(rax, DATA)?;
        a.mov(dr1, rax)?;
        // G1; R/W1 = 01 (writes), LEN1 = 11 (4 bytes).
        a.mov(eax, 0b1000 | 0b01 << 20 | 0b11 << 22)?;
        a.mov(dr7, rax)?;
        a.mov(eax, dword_ptr(DATA))?; // a read: not watched
        a.mov(eax, 0x1234_5678)?;
        a.mov(dword_ptr(DATA + 2), eax)?; // overlaps the watched 4 bytes
        a.mov(ebx, 1)
    });
    assert_eq!(d.vector(), Some(1));
    assert_eq!(d.u32_at(DATA + 2), 0x1234_5678, "the write completed");
    assert_eq!(d.cpu.gpr[3], 0, "the trap came before the next instruction");
    assert_eq!(d.cpu.dr[6] & 0xF, 0b0010, "DR6.B1");
    let (rip, _) = frame64(&d);
    assert_eq!(d.bytes_at(rip, 1)[0], 0xBB, "the frame points at MOV EBX");
}

#[test]
fn read_write_data_breakpoint_sees_reads_and_misses_outside_its_range() {
    let d = run64(|a| {
        a.mov(rax, DATA + 8)?;
        a.mov(dr3, rax)?;
        // L3; R/W3 = 11 (reads and writes), LEN3 = 10 (8 bytes).
        a.mov(eax, 0b0100_0000 | 0b11 << 28 | 0b10 << 30)?;
        a.mov(dr7, rax)?;
        a.mov(dword_ptr(DATA + 4), eax)?; // just below: no hit
        a.mov(eax, dword_ptr(DATA + 12))?;
        a.mov(ebx, 1)
    });
    assert_eq!(d.vector(), Some(1));
    assert_eq!(d.cpu.gpr[3], 0);
    assert_eq!(d.cpu.dr[6] & 0xF, 0b1000, "DR6.B3");
    let (rip, _) = frame64(&d);
    assert_eq!(d.bytes_at(rip, 1)[0], 0xBB, "after the read");
}
