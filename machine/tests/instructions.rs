//! Instruction semantics on the emulated CPU, per group, in the modes that change them.
//! Expected values are worked out from the Intel SDM's definitions (cited per test).

mod cpu_harness;

use cpu_harness::*;
use gantry_frontend::state::{AF, CF, DF, OF, PF, SF, ZF};
use gantry_machine::accel::CpuStop;
use iced_x86::code_asm::*;

const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

fn arith(d: &Done) -> u64 {
    d.flags() & ARITH
}

#[test]
fn add_sub_adc_sbb_flags() {
    // ADD: 0x7FFFFFFF + 1 = 0x80000000: OF (signed overflow), SF, AF (carry out of bit 3),
    // PF (low byte 0x00 has even parity). SDM: ADD "Flags Affected".
    let d = run64(|a| {
        a.mov(eax, 0x7FFF_FFFF)?;
        a.add(eax, 1)
    });
    assert_eq!(d.cpu.gpr[0], 0x8000_0000);
    assert_eq!(arith(&d), OF | SF | AF | PF);
    // SUB 0 - 1 in 8 bits: borrow (CF), SF, AF, PF (0xFF: 8 ones, even).
    let d = run64(|a| {
        a.mov(al, 0)?;
        a.sub(al, 1)
    });
    assert_eq!(d.cpu.gpr[0] & 0xFF, 0xFF);
    assert_eq!(arith(&d), CF | SF | AF | PF);
    // ADC with CF=1: 0xFFFF + 0 + 1 = 0 (16-bit): CF, ZF, PF, AF.
    let d = run64(|a| {
        a.stc()?;
        a.mov(ax, 0xFFFF)?;
        a.adc(ax, 0)
    });
    assert_eq!(d.cpu.gpr[0] & 0xFFFF, 0);
    assert_eq!(arith(&d), CF | ZF | PF | AF);
    // SBB with CF=1: 5 - 5 - 1 = -1 (64-bit): CF, SF, PF, AF.
    let d = run64(|a| {
        a.stc()?;
        a.mov(rax, 5u64)?;
        a.mov(rbx, 5u64)?;
        a.sbb(rax, rbx)
    });
    assert_eq!(d.cpu.gpr[0], u64::MAX);
    assert_eq!(arith(&d), CF | SF | PF | AF);
    // CMP leaves the operand; signed less-than (SF != OF): -1 < 1.
    let d = run64(|a| {
        a.mov(rcx, u64::MAX)?;
        a.cmp(rcx, 1)?;
        a.setl(dl)?;
        a.setb(bl) // unsigned: 0xFFFF... is not below 1
    });
    assert_eq!(d.cpu.gpr[1], u64::MAX);
    assert_eq!(d.cpu.gpr[2] & 0xFF, 1);
    assert_eq!(d.cpu.gpr[3] & 0xFF, 0);
}

#[test]
fn partial_register_writes() {
    // 32-bit writes zero bits 63:32; 8- and 16-bit writes keep the rest (SDM vol. 1, 3.4.1.1).
    let d = run64(|a| {
        a.mov(rax, 0x1111_2222_3333_4444u64)?;
        a.mov(rbx, rax)?;
        a.mov(rcx, rax)?;
        a.mov(rdx, rax)?;
        a.mov(eax, 0x55)?;
        a.mov(bx, 0x66)?;
        a.mov(cl, 0x77)?;
        a.mov(dh, 0x88)
    });
    assert_eq!(d.cpu.gpr[0], 0x55);
    assert_eq!(d.cpu.gpr[3], 0x1111_2222_3333_0066);
    assert_eq!(d.cpu.gpr[1], 0x1111_2222_3333_4477);
    assert_eq!(d.cpu.gpr[2], 0x1111_2222_3333_8844);
}

#[test]
fn inc_dec_neg_keep_or_set_carry() {
    // INC/DEC leave CF alone (SDM: INC "CF flag is not affected").
    let d = run64(|a| {
        a.stc()?;
        a.mov(al, 0x7F)?;
        a.inc(al)
    });
    assert_eq!(arith(&d), CF | OF | SF | AF);
    let d = run64(|a| {
        a.clc()?;
        a.mov(ecx, 1)?;
        a.dec(ecx)
    });
    assert_eq!(arith(&d), ZF | PF);
    // NEG: CF = (source != 0).
    let d = run64(|a| {
        a.mov(eax, 1)?;
        a.neg(eax)
    });
    assert_eq!(d.cpu.gpr[0], 0xFFFF_FFFF);
    assert_eq!(arith(&d) & (CF | SF | ZF), CF | SF);
}

#[test]
fn shifts_with_count_zero_one_and_width() {
    // SHL by 0 changes nothing, flags included (SDM: SAL/SAR/SHL/SHR "If the count is 0,
    // the flags are not affected").
    let d = run64(|a| {
        a.mov(eax, 1)?;
        a.cmp(eax, 2)?; // CF=1 SF=1
        a.mov(ecx, 0)?; // MOV leaves the flags
        a.shl(eax, cl)
    });
    assert_eq!(d.cpu.gpr[0], 1);
    assert_eq!(arith(&d) & (CF | SF), CF | SF);
    // SHL by 1: CF = bit shifted out, OF = CF XOR new MSB.
    let d = run64(|a| {
        a.mov(al, 0xC0)?;
        a.shl(al, 1)
    });
    assert_eq!(d.cpu.gpr[0] & 0xFF, 0x80);
    assert_eq!(arith(&d) & (CF | OF | SF), CF | SF);
    // SHR by 1: OF = MSB of the original operand.
    let d = run64(|a| {
        a.mov(al, 0x81)?;
        a.shr(al, 1)
    });
    assert_eq!(d.cpu.gpr[0] & 0xFF, 0x40);
    assert_eq!(arith(&d) & (CF | OF), CF | OF);
    // SAR keeps the sign; count masked to 5 bits for 32-bit operands (33 -> 1).
    let d = run64(|a| {
        a.mov(eax, 0x8000_0000u32)?;
        a.mov(cl, 33)?;
        a.sar(eax, cl)
    });
    assert_eq!(d.cpu.gpr[0], 0xC000_0000);
    // An 8-bit shift by 9 (count < 32, above the width): everything shifted out.
    let d = run64(|a| {
        a.mov(bl, 0xFF)?;
        a.mov(cl, 9)?;
        a.shl(bl, cl)
    });
    assert_eq!(d.cpu.gpr[3] & 0xFF, 0);
    // 64-bit counts are masked to 6 bits: shl rax, 65 = shl rax, 1.
    let d = run64(|a| {
        a.mov(rax, 3u64)?;
        a.mov(cl, 65)?;
        a.shl(rax, cl)
    });
    assert_eq!(d.cpu.gpr[0], 6);
}

#[test]
fn rotates_through_and_around_carry() {
    // ROL: CF = new LSB; OF (count 1) = MSB XOR CF.
    let d = run64(|a| {
        a.mov(al, 0x81)?;
        a.rol(al, 1)
    });
    assert_eq!(d.cpu.gpr[0] & 0xFF, 0x03);
    assert_eq!(arith(&d) & (CF | OF), CF | OF);
    // ROR: CF = new MSB.
    let d = run64(|a| {
        a.mov(eax, 1)?;
        a.ror(eax, 1)
    });
    assert_eq!(d.cpu.gpr[0], 0x8000_0000);
    assert_eq!(arith(&d) & CF, CF);
    // RCL through CF=1: 0x80 -> 0x01 with CF = 1 (the old MSB).
    let d = run64(|a| {
        a.stc()?;
        a.mov(al, 0x80)?;
        a.rcl(al, 1)
    });
    assert_eq!(d.cpu.gpr[0] & 0xFF, 0x01);
    assert_eq!(arith(&d) & CF, CF);
    // RCR of a 64-bit value by 1 with CF=1: CF enters at the top.
    let d = run64(|a| {
        a.stc()?;
        a.mov(rax, 2u64)?;
        a.rcr(rax, 1)
    });
    assert_eq!(d.cpu.gpr[0], 0x8000_0000_0000_0001);
    assert_eq!(arith(&d) & CF, 0);
    // RCL of 8 bits by 9 (mod 9 = 0): unchanged, CF unchanged.
    let d = run64(|a| {
        a.clc()?;
        a.mov(bl, 0x5A)?;
        a.mov(cl, 9)?;
        a.rcl(bl, cl)
    });
    assert_eq!(d.cpu.gpr[3] & 0xFF, 0x5A);
    assert_eq!(arith(&d) & CF, 0);
}

/// A rotation's CF and OF are left uncomputed when the next instruction sets both
/// without reading them and cannot fault; everywhere else they are the rotation's: after
/// a rotation by 0 or by CL (which set nothing when the count is 0), and in the frame of a
/// fault the next instruction takes.
#[test]
fn a_rotation_s_flags_are_kept_where_the_next_instruction_may_not_set_them() {
    // After XOR ECX, ECX (ZF and PF, which a rotation keeps), ROR EAX, 1 of 1: EAX
    // 0x8000_0000, CF 1 (the new MSB), OF 1 (the MSB XOR the bit below).
    let ror = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.mov(eax, 1)?;
        a.ror(eax, 1)
    };
    type Next = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    let cases: [(&str, Next, u64); 8] = [
        ("XOR after", |a| a.xor(ecx, ecx), ZF | PF),
        ("ROL by 1 after", |a| a.rol(ecx, 1), ZF | PF),
        (
            "ROL by 32 (masked to 0) after",
            |a| a.rol(ecx, 32),
            CF | OF | ZF | PF,
        ),
        ("ROL by 0 after", |a| a.rol(ecx, 0), CF | OF | ZF | PF),
        ("ROL by CL = 0 after", |a| a.rol(edx, cl), CF | OF | ZF | PF),
        ("MOV after", |a| a.mov(ecx, 5), CF | OF | ZF | PF),
        (
            "MOV, then XOR after",
            |a| {
                a.mov(edx, ecx)?;
                a.xor(ecx, 1)
            },
            0,
        ),
        (
            "MOV, then MOV after",
            |a| {
                a.mov(edx, ecx)?;
                a.mov(ecx, 1)
            },
            CF | OF | ZF | PF,
        ),
    ];
    for (what, next, want) in cases {
        let d = run64(|a| {
            a.xor(ecx, ecx)?;
            ror(a)?;
            next(a)
        });
        assert_eq!(d.cpu.gpr[0], 0x8000_0000, "{what}: EAX");
        assert_eq!(arith(&d) & (CF | OF | ZF | PF), want, "{what}: flags");
    }
    // An XOR with memory after it (past a MOV) may fault: the fault's frame has the
    // rotation's flags.
    let d = run(
        Mode::Long64,
        |cpu, mem| small_pages(cpu, mem, |i, e| if i == 0x11 { 0 } else { e }),
        |a| {
            a.mov(ebx, 0x1_1000)?;
            ror(a)?;
            a.mov(edx, ecx)?;
            a.xor(ecx, dword_ptr(rbx))
        },
    );
    assert_eq!(d.vector(), Some(14), "#PF");
    // The frame: error code, RIP, CS, RFLAGS.
    let frame_flags = d.u64_at(d.cpu.gpr[4] + 24);
    assert_eq!(frame_flags & (CF | OF), CF | OF, "RFLAGS in the frame");
}

#[test]
fn double_precision_shifts() {
    let d = run64(|a| {
        a.mov(eax, 0x1234_5678)?;
        a.mov(edx, 0x9ABC_DEF0u32)?;
        a.shld(eax, edx, 8)?;
        a.mov(ebx, 0x1234_5678)?;
        a.shrd(ebx, edx, 8)
    });
    assert_eq!(d.cpu.gpr[0], 0x3456_789A);
    assert_eq!(d.cpu.gpr[3], 0xF012_3456);
}

#[test]
fn multiply_and_divide() {
    // MUL r64: RDX:RAX; CF = OF = (RDX != 0).
    let d = run64(|a| {
        a.mov(rax, u64::MAX)?;
        a.mov(rcx, 2u64)?;
        a.mul(rcx)
    });
    assert_eq!((d.cpu.gpr[0], d.cpu.gpr[2]), (u64::MAX - 1, 1));
    assert_eq!(arith(&d) & (CF | OF), CF | OF);
    // IMUL r32, r/m32, imm: truncated, overflow flagged.
    let d = run64(|a| {
        a.mov(ecx, 0x4000_0000)?;
        a.imul_3(eax, ecx, 4)
    });
    assert_eq!(d.cpu.gpr[0], 0);
    assert_eq!(arith(&d) & (CF | OF), CF | OF);
    // IMUL r/m8: AX = AL * src (signed): -2 * 3 = -6, fits: no overflow.
    let d = run64(|a| {
        a.mov(al, 0xFE)?;
        a.mov(bl, 3)?;
        a.imul(bl)
    });
    assert_eq!(d.cpu.gpr[0] & 0xFFFF, 0xFFFA);
    assert_eq!(arith(&d) & (CF | OF), 0);
    // DIV r32: EDX:EAX / src.
    let d = run64(|a| {
        a.mov(edx, 1)?;
        a.mov(eax, 0)?;
        a.mov(ecx, 3)?;
        a.div(ecx)
    });
    assert_eq!((d.cpu.gpr[0], d.cpu.gpr[2]), (0x5555_5555, 1));
    // IDIV r8: AX / src: -7 / 2 = -3 rem -1.
    let d = run64(|a| {
        a.mov(ax, 0xFFF9u32)?;
        a.mov(bl, 2)?;
        a.idiv(bl)
    });
    assert_eq!(d.cpu.gpr[0] & 0xFFFF, 0xFFFD);
    // Division by zero and quotient overflow raise #DE (vector 0).
    let d = run64(|a| {
        a.xor(ecx, ecx)?;
        a.div(ecx)
    });
    assert_eq!(d.vector(), Some(0));
    let d = run64(|a| {
        a.mov(edx, 2)?;
        a.mov(ecx, 2)?;
        a.div(ecx)
    });
    assert_eq!(d.vector(), Some(0));
    // #DE is a fault: the pushed RIP is the DIV itself.
    let d = run64(|a| {
        a.nop()?;
        a.xor(ecx, ecx)?;
        a.div(ecx)
    });
    assert_eq!(d.u64_at(d.cpu.gpr[4]), CODE + 3);
}

#[test]
fn bit_operations() {
    // BT with a register offset into memory addresses a bit string (SDM: BT).
    let d = run(
        Mode::Long64,
        |_, mem| mem.write(DATA, &[0, 0, 0, 0, 0x02, 0, 0, 0]).unwrap(),
        |a| {
            a.mov(rbx, DATA)?;
            a.mov(ecx, 33)?;
            a.bt(dword_ptr(rbx), ecx)?;
            a.setc(al)?;
            a.mov(ecx, 35)?;
            a.bts(dword_ptr(rbx), ecx)
        },
    );
    assert_eq!(d.cpu.gpr[0] & 0xFF, 1);
    assert_eq!(d.bytes_at(DATA + 4, 1), [0x0A]);
    let d = run64(|a| {
        a.mov(eax, 0x0000_F000)?;
        a.bsf(ecx, eax)?;
        a.bsr(edx, eax)?;
        a.popcnt(ebx, eax)?;
        a.lzcnt(esi, eax)?;
        a.tzcnt(edi, eax)
    });
    assert_eq!(
        [
            d.cpu.gpr[1],
            d.cpu.gpr[2],
            d.cpu.gpr[3],
            d.cpu.gpr[6],
            d.cpu.gpr[7]
        ],
        [12, 15, 4, 16, 12]
    );
    // BSF of 0 sets ZF and leaves the destination.
    let d = run64(|a| {
        a.mov(ecx, 77)?;
        a.xor(eax, eax)?;
        a.bsf(ecx, eax)
    });
    assert_eq!(d.cpu.gpr[1], 77);
    assert_eq!(arith(&d) & ZF, ZF);
}

#[test]
fn conditional_moves_and_sets() {
    let d = run64(|a| {
        a.mov(eax, 1)?;
        a.mov(ebx, 2)?;
        a.cmp(eax, ebx)?;
        a.cmovl(ecx, ebx)?;
        a.cmovg(edx, ebx)?;
        a.setbe(sil)
    });
    assert_eq!(d.cpu.gpr[1], 2);
    assert_eq!(d.cpu.gpr[2], 0);
    assert_eq!(d.cpu.gpr[6] & 0xFF, 1);
}

#[test]
fn exchange_and_compare() {
    let d = run(
        Mode::Long64,
        |_, mem| mem.write_u64(DATA, 10).unwrap(),
        |a| {
            a.mov(rbx, DATA)?;
            a.mov(eax, 10)?;
            a.mov(ecx, 20)?;
            a.cmpxchg(dword_ptr(rbx), ecx)?; // equal: [rbx] = 20, ZF
            a.setz(dl)?;
            a.mov(eax, 99)?;
            a.cmpxchg(dword_ptr(rbx), ecx)?; // not equal: eax = 20
            a.mov(esi, 5)?;
            a.xadd(dword_ptr(rbx), esi) // [rbx] = 25, esi = 20
        },
    );
    assert_eq!(d.cpu.gpr[2] & 0xFF, 1);
    assert_eq!(d.cpu.gpr[0], 20);
    assert_eq!(d.cpu.gpr[6], 20);
    assert_eq!(d.u32_at(DATA), 25);
    // CMPXCHG16B needs 16-byte alignment: #GP(0) otherwise.
    let d = run64(|a| {
        a.mov(rbx, DATA + 8)?;
        a.cmpxchg16b(xmmword_ptr(rbx))
    });
    assert_eq!(d.vector(), Some(13));
}

#[test]
fn string_instructions_with_rep() {
    let d = run(
        Mode::Long64,
        |_, mem| mem.write(DATA, b"gantry-x86!").unwrap(),
        |a| {
            a.cld()?;
            a.mov(rsi, DATA)?;
            a.mov(rdi, DATA + 0x100)?;
            a.mov(ecx, 11)?;
            a.rep().movsb()?;
            // STOSD backwards (DF=1) fills two dwords ending at the destination.
            a.std()?;
            a.mov(rdi, DATA + 0x204)?;
            a.mov(eax, 0xAABB_CCDDu32)?;
            a.mov(ecx, 2)?;
            a.rep().stosd()?;
            a.cld()?;
            // REPNE SCASB finds '-' at index 6.
            a.mov(rdi, DATA)?;
            a.mov(al, b'-' as u32)?;
            a.mov(ecx, 11)?;
            a.repne().scasb()?;
            a.mov(r8, rcx)?;
            // REPE CMPSB stops at the first difference.
            a.mov(rsi, DATA)?;
            a.mov(rdi, DATA + 0x100)?;
            a.mov(byte_ptr(DATA + 0x103), b'X' as u32)?;
            a.mov(ecx, 11)?;
            a.repe().cmpsb()?;
            a.mov(r9, rcx)?;
            // A zero count touches nothing (not even a non-canonical address).
            a.xor(ecx, ecx)?;
            a.mov(rsi, 0x8000_0000_0000_0000u64)?;
            a.rep().movsb()
        },
    );
    assert_eq!(d.bytes_at(DATA + 0x100, 11), b"ganXry-x86!");
    assert_eq!(
        d.bytes_at(DATA + 0x200, 8),
        [0xDD, 0xCC, 0xBB, 0xAA, 0xDD, 0xCC, 0xBB, 0xAA]
    );
    assert_eq!(d.cpu.gpr[8], 11 - 7);
    assert_eq!(d.cpu.gpr[9], 11 - 4);
    assert_eq!(d.vector(), None);
    assert_eq!(d.cpu.rflags & DF, 0);
}

#[test]
fn stack_calls_and_frames() {
    let d = run64(|a| {
        let mut f = a.create_label();
        let mut after = a.create_label();
        a.mov(rbp, 0x1234u64)?;
        a.call(f)?;
        a.jmp(after)?;
        a.set_label(&mut f)?;
        a.enter(16, 0)?;
        a.mov(rax, rbp)?;
        a.leave()?;
        a.ret()?;
        a.set_label(&mut after)?;
        a.push(0x7F)?;
        a.pop(rcx)
    });
    assert_eq!(d.cpu.gpr[4], STACK, "balanced");
    assert_eq!(d.cpu.gpr[5], 0x1234, "LEAVE restored RBP");
    assert_eq!(d.cpu.gpr[0], STACK - 16, "ENTER's frame pointer");
    assert_eq!(d.cpu.gpr[1], 0x7F);
}

#[test]
fn sixteen_bit_real_mode_addressing_and_wraparound() {
    // [bx+si+disp] wraps at 64 KiB; DS:offset = DS*16 + offset.
    let d = run(
        Mode::Real16,
        |cpu, mem| {
            cpu.seg[3] = gantry_frontend::state::Segment::real(0x1000, false);
            mem.write(0x1_0000 + 0x0010, &[0x34, 0x12]).unwrap();
        },
        |a| {
            a.mov(bx, 0xFFF0u32)?;
            a.mov(si, 0x0010)?;
            a.mov(ax, word_ptr(bx + si + 0x10))?; // (0xFFF0+0x10+0x10) & 0xFFFF = 0x10
            a.mov(cx, 0xFFFFu32)?;
            a.inc(cx)?; // wraps to 0, ZF
            a.setz(dl)
        },
    );
    assert_eq!(d.cpu.gpr[0] & 0xFFFF, 0x1234);
    assert_eq!(d.cpu.gpr[1] & 0xFFFF, 0);
    assert_eq!(d.cpu.gpr[2] & 0xFF, 1);
}

#[test]
fn real_mode_software_interrupt_through_the_ivt() {
    // INT 3 pushes FLAGS, CS, IP and enters the handler from the IVT.
    let d = run(Mode::Real16, |_, _| {}, |a| a.int3());
    assert_eq!(d.vector(), Some(3));
    let top = d.cpu.gpr[4] & 0xFFFF;
    let ip = d.mem.read_u32(top).unwrap() & 0xFFFF;
    assert_eq!(ip, 1, "return address after the 1-byte INT3");
}

#[test]
fn thirty_two_bit_protected_mode() {
    let d = run(
        Mode::Protected32,
        |_, _| {},
        |a| {
            a.mov(eax, 0xFFFF_FFFFu32)?;
            a.add(eax, 2)?;
            a.push(eax)?;
            a.pop(ebx)?;
            a.ud2()
        },
    );
    assert_eq!(d.cpu.gpr[3], 1);
    assert_eq!(d.vector(), Some(6));
    // The #UD frame: EIP, CS, EFLAGS on the 32-bit stack.
    let top = d.cpu.gpr[4];
    assert_eq!(d.u32_at(top + 4), 0x10, "CS");
    // MOV EAX, imm32 (5 bytes), ADD EAX, imm32 (the 5-byte 05 form), PUSH, POP: UD2 at +12.
    assert_eq!(d.u32_at(top) as u64, CODE + 12, "EIP of UD2");
}

#[test]
fn page_fault_error_codes_and_cr2() {
    // Map DATA's 2 MiB region with 4 KiB pages, one not present, one read-only, then
    // touch them with CR0.WP set (SDM vol. 3, 4.7: error code P, W/R, U/S bits).
    let setup = |cpu: &mut gantry_frontend::state::CpuState,
                 mem: &mut gantry_machine::memory::GuestMemory| {
        let pt = 0x5_0000u64;
        for i in 0..512u64 {
            let mut e = (i << 12) | 0x3;
            if i == 0x10 {
                e = 0; // 0x10000 not present
            }
            if i == 0x11 {
                e = (i << 12) | 0x1; // 0x11000 read-only
            }
            mem.write_u64(pt + i * 8, e).unwrap();
        }
        // PD entry 0 (first 2 MiB) -> this page table.
        mem.write_u64(0xB000, pt | 0x3).unwrap();
        cpu.cr0 |= 1 << 16; // WP
    };
    let d = run(Mode::Long64, setup, |a| a.mov(rax, qword_ptr(0x1_0008)));
    assert_eq!(d.vector(), Some(14));
    assert_eq!(d.cpu.cr2, 0x1_0008);
    assert_eq!(d.u64_at(d.cpu.gpr[4]), 0, "not present, read, supervisor");
    let d = run(Mode::Long64, setup, |a| a.mov(dword_ptr(0x1_1004), eax));
    assert_eq!(d.vector(), Some(14));
    assert_eq!(d.cpu.cr2, 0x1_1004);
    assert_eq!(d.u64_at(d.cpu.gpr[4]), 0x3, "present, write");
    // Reads of the read-only page work and set the accessed bit.
    let d = run(Mode::Long64, setup, |a| a.mov(eax, dword_ptr(0x1_1000)));
    assert_eq!(d.vector(), None);
    assert_eq!(d.u64_at(0x5_0000 + 0x11 * 8) & 0x20, 0x20);
}

#[test]
fn general_protection_and_invalid_opcode() {
    // Loading a selector beyond the GDT limit: #GP(selector).
    let d = run64(|a| {
        a.mov(ax, 0x80)?;
        a.mov(ds, ax)
    });
    assert_eq!(d.vector(), Some(13));
    assert_eq!(d.u64_at(d.cpu.gpr[4]), 0x80);
    // An unknown MSR: #GP(0).
    let d = run64(|a| {
        a.mov(ecx, 0x1234_5678)?;
        a.rdmsr()
    });
    assert_eq!(d.vector(), Some(13));
    assert_eq!(d.u64_at(d.cpu.gpr[4]), 0);
}

#[test]
fn non_canonical_addresses_fault_with_general_protection() {
    // SDM vol. 1, 3.3.7.1: a non-canonical data address raises #GP(0) rather than
    // reaching the page tables (which would alias it to the canonical address below).
    let d = run64(|a| {
        a.mov(rax, 0x8000_0000_0001_0000u64)?;
        a.mov(rbx, qword_ptr(rax))
    });
    assert_eq!(d.vector(), Some(13));
    assert_eq!(d.u64_at(d.cpu.gpr[4]), 0, "error code 0");
    // The canonical high half is fine (and unmapped in the harness's tables: #PF).
    let d = run64(|a| {
        a.mov(rax, 0xFFFF_8000_0001_0000u64)?;
        a.mov(rbx, qword_ptr(rax))
    });
    assert_eq!(d.vector(), Some(14));
}

#[test]
fn non_canonical_stack_accesses_fault_with_stack_fault() {
    // SDM vol. 3, "Interrupt 12": a non-canonical address through SS raises #SS(0):
    // RBP-based operands, an SS: override, and the implicit stack access of LEAVE.
    for (what, body) in [("[rbp]", 0), ("ss:[rbx]", 1), ("leave", 2)] {
        let d = run64(|a| {
            a.mov(rbp, 0x8000_0000_0001_0000u64)?;
            a.mov(rbx, 0x8000_0000_0001_0000u64)?;
            match body {
                0 => a.mov(rcx, qword_ptr(rbp)),
                1 => a.mov(rcx, qword_ptr(rbx).ss()),
                _ => a.leave(),
            }
        });
        assert_eq!(d.vector(), Some(12), "{what}");
        assert_eq!(d.u64_at(d.cpu.gpr[4]), 0, "{what}: error code 0");
    }
    // The same address through DS stays #GP(0).
    let d = run64(|a| {
        a.mov(rbx, 0x8000_0000_0001_0000u64)?;
        a.mov(rcx, qword_ptr(rbx))
    });
    assert_eq!(d.vector(), Some(13));
}

/// A 32-bit protected-mode segment cache: base 0, `limit` in bytes, access rights `attr`
/// (type, S, DPL, P, D/B, G as in `state::attr`).
fn seg32(selector: u16, limit: u32, attr: u16) -> gantry_frontend::state::Segment {
    gantry_frontend::state::Segment {
        base: 0,
        limit,
        selector,
        attr,
    }
}

#[test]
fn segment_limits_and_types_in_protected_mode() {
    use gantry_frontend::state::{CS, ES, SS};
    // SDM vol. 3, 5.3-5.4: offsets past an expand-up limit, at or below an expand-down
    // one, writes to read-only data or code, reads of execute-only code and any access
    // through a null selector raise #GP(0); through SS, #SS(0).
    const RW: u16 = 0xC093; // P, S, read/write data, D/B, G
    const RO: u16 = 0xC091;
    const RW_DOWN: u16 = 0xC097;
    const EXEC_ONLY: u16 = 0xC099;
    type Setup = fn(&mut gantry_frontend::state::CpuState);
    type Body = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    // DS and SS stay flat where a case does not need them: the exception stubs write
    // through DS and the exception frame goes onto SS.
    let cases: [(&str, Setup, Body, Option<u8>); 11] = [
        (
            "last bytes of an expand-up limit",
            |c| c.seg[ES] = seg32(0x18, 0x1_0003, RW),
            |a| a.mov(eax, dword_ptr(0x1_0000).es()),
            None,
        ),
        (
            "one byte past it",
            |c| c.seg[ES] = seg32(0x18, 0x1_0003, RW),
            |a| a.mov(eax, dword_ptr(0x1_0001).es()),
            Some(13),
        ),
        (
            "expand-down: above the limit",
            |c| c.seg[ES] = seg32(0x18, 0xFFFF, RW_DOWN),
            |a| a.mov(eax, dword_ptr(0x1_0000).es()),
            None,
        ),
        (
            "expand-down: reaching the limit",
            |c| c.seg[ES] = seg32(0x18, 0xFFFF, RW_DOWN),
            |a| a.mov(eax, dword_ptr(0xFFFE).es()),
            Some(13),
        ),
        (
            "read-only data: read",
            |c| c.seg[ES] = seg32(0x18, 0xFFFF_FFFF, RO),
            |a| a.mov(eax, dword_ptr(DATA).es()),
            None,
        ),
        (
            "read-only data: write",
            |c| c.seg[ES] = seg32(0x18, 0xFFFF_FFFF, RO),
            |a| a.mov(dword_ptr(DATA).es(), eax),
            Some(13),
        ),
        (
            "write through CS",
            |_| {},
            |a| a.mov(dword_ptr(DATA).cs(), eax),
            Some(13),
        ),
        (
            "read through execute-only CS",
            |c| c.seg[CS].attr = EXEC_ONLY,
            |a| a.mov(eax, dword_ptr(DATA).cs()),
            Some(13),
        ),
        (
            "null ES",
            |c| c.seg[ES] = seg32(0, 0, 0),
            |a| a.stosb(),
            Some(13),
        ),
        (
            "EBP-based past the SS limit",
            |c| c.seg[SS] = seg32(0x10, 0x1_FFFF, RW),
            |a| {
                a.mov(ebp, 0x2_0000)?;
                a.mov(eax, dword_ptr(ebp))
            },
            Some(12),
        ),
        (
            "EBP-based at an expand-down stack's limit",
            |c| c.seg[SS] = seg32(0x10, 0x0FFF, RW_DOWN),
            |a| {
                a.mov(ebp, 0x0FFEu32)?;
                a.mov(ax, word_ptr(ebp))
            },
            Some(12),
        ),
    ];
    for (what, setup, body, want) in cases {
        let d = run(Mode::Protected32, |c, _| setup(c), body);
        assert_eq!(d.vector(), want, "{what}");
        if want.is_some() {
            assert_eq!(d.u32_at(d.cpu.gpr[4]), 0, "{what}: error code 0");
        }
    }
}

#[test]
fn real_mode_limits_follow_the_descriptor_cache() {
    use gantry_frontend::state::DS;
    // A word at offset FFFFh runs past the 64 KiB limit: #GP (the 8086 wrapped instead).
    let d = run(Mode::Real16, |_, _| {}, |a| a.mov(ax, word_ptr(0xFFFF)));
    assert_eq!(d.vector(), Some(13));
    // A 4 GiB limit left in the cache by protected mode ("unreal mode") reaches past 1 MiB.
    let d = run(
        Mode::Real16,
        |c, m| {
            c.seg[DS].limit = 0xFFFF_FFFF;
            m.write(0x20_0000, &0x1234_5678u32.to_le_bytes()).unwrap();
        },
        |a| {
            a.mov(ebx, 0x20_0000u32)?;
            a.mov(eax, dword_ptr(ebx))
        },
    );
    assert_eq!(d.vector(), None);
    assert_eq!(d.cpu.gpr[0] as u32, 0x1234_5678);
}

/// SDM, PUSH in real-address mode: with SP = 1 the push runs past the stack's 64 KiB limit
/// (#SS), the #SS's own delivery faults the same way (#DF), and so does the #DF's: the CPU
/// shuts down. Interrupt delivery pushes through the same check (found by difftest).
#[test]
fn a_real_mode_interrupt_pushed_past_the_stack_limit_shuts_down() {
    let d = run(
        Mode::Real16,
        |_, _| {},
        |a| {
            a.mov(sp, 1u32)?;
            a.int3()
        },
    );
    assert!(
        matches!(d.stop, CpuStop::TripleFault { .. }),
        "{:?}",
        d.stop
    );
    // SP = 0 wraps to FFFEh: within the limit.
    let d = run(
        Mode::Real16,
        |_, _| {},
        |a| {
            a.mov(sp, 0u32)?;
            a.int3()
        },
    );
    assert_eq!(d.vector(), Some(3));
}

#[test]
fn triple_fault_without_an_idt() {
    let d = run(Mode::Long64, |cpu, _| cpu.idtr.limit = 0, |a| a.int3());
    assert!(
        matches!(d.stop, CpuStop::TripleFault { .. }),
        "{:?}",
        d.stop
    );
}

#[test]
fn cpuid_reports_the_model() {
    let d = run64(|a| {
        a.xor(eax, eax)?;
        a.cpuid()
    });
    let vendor: Vec<u8> = [d.cpu.gpr[3], d.cpu.gpr[2], d.cpu.gpr[1]]
        .iter()
        .flat_map(|r| (*r as u32).to_le_bytes())
        .collect();
    assert_eq!(vendor, b"GenuineIntel");
    let d = run64(|a| {
        a.mov(eax, 0x8000_0001u32)?;
        a.cpuid()
    });
    assert_ne!(d.cpu.gpr[2] & (1 << 29), 0, "long mode");
    // IA32_ARCH_CAPABILITIES, enumerated in leaf 7, says RDCL_NO: Linux then does not
    // isolate its page tables against Meltdown.
    let d = run64(|a| {
        a.mov(eax, 7)?;
        a.xor(ecx, ecx)?;
        a.cpuid()?;
        a.mov(r8d, edx)?;
        a.mov(ecx, 0x10A)?;
        a.rdmsr()
    });
    assert_ne!(d.cpu.gpr[8] & (1 << 29), 0, "ARCH_CAPABILITIES enumerated");
    assert_eq!(d.cpu.gpr[0] & 1, 1, "RDCL_NO");
    assert_eq!(d.cpu.gpr[2], 0);
}

#[test]
fn self_modifying_code_is_seen() {
    // Write over an instruction that has already been translated and run it again.
    let d = run64(|a| {
        let mut target = a.create_label();
        a.xor(ebx, ebx)?;
        a.set_label(&mut target)?;
        a.mov(eax, 1)?; // B8 01 00 00 00
        a.inc(ebx)?;
        a.cmp(ebx, 2)?;
        let mut done = a.create_label();
        a.je(done)?;
        // Patch the immediate of `mov eax, 1` to 7, then jump back.
        a.lea(rdx, ptr(target))?;
        a.mov(byte_ptr(rdx + 1), 7)?;
        a.jmp(target)?;
        a.set_label(&mut done)?;
        a.nop()
    });
    assert_eq!(d.cpu.gpr[0], 7);
}

#[test]
fn iretq_to_ring3_and_back_through_the_tss() {
    // GDT entries 4 and 5: user data (0x20) and 64-bit user code (0x28); a 64-bit TSS whose
    // RSP0 is where the #GP frame from ring 3 must land.
    const TSS: u64 = 0x7000;
    const RSP0: u64 = 0x1_F800;
    let setup = |cpu: &mut gantry_frontend::state::CpuState,
                 mem: &mut gantry_machine::memory::GuestMemory| {
        // Ring 3 may use the first 2 MiB: U/S at every level of the identity map.
        for table in [0x9000u64, 0xA000, 0xB000] {
            let e = mem.read_u64(table).unwrap();
            mem.write_u64(table, e | 4).unwrap();
        }
        mem.write_u64(0x520, 0x00CF_F300_0000_FFFF).unwrap();
        mem.write_u64(0x528, 0x00AF_FB00_0000_FFFF).unwrap();
        cpu.gdtr.limit = 6 * 8 - 1;
        mem.write_u64(TSS + 4, RSP0).unwrap();
        cpu.tr = gantry_frontend::state::Segment {
            base: TSS,
            limit: 0x67,
            selector: 0x30,
            attr: 0x80 | 0xB,
        };
    };
    let d = run(Mode::Long64, setup, |a| {
        let mut user = a.create_label();
        a.lea(rax, ptr(user))?;
        a.push(0x23)?; // SS
        a.push(0x6000)?; // RSP
        a.push(0x2)?; // RFLAGS
        a.push(0x2B)?; // CS
        a.push(rax)?; // RIP
        a.iretq()?;
        a.set_label(&mut user)?;
        a.hlt() // privileged: #GP(0) from CPL 3
    });
    assert_eq!(d.vector(), Some(13));
    let frame = RSP0 - 48;
    assert_eq!(
        d.cpu.gpr[4], frame,
        "RSP0 from the TSS, 16-byte aligned, six slots"
    );
    assert_eq!(d.u64_at(frame), 0, "error code");
    assert_eq!(d.u64_at(frame + 16), 0x2B, "ring-3 CS");
    assert_eq!(d.u64_at(frame + 32), 0x6000, "ring-3 RSP");
    assert_eq!(d.u64_at(frame + 40), 0x23, "ring-3 SS");
    assert_eq!(d.cpu.cpl, 0, "back in ring 0");
}

#[test]
fn sysenter_and_sysexit_round_trip() {
    // SYSENTER_CS = 0x10: ring 0 at 0x10/0x18; SYSEXIT (64-bit) to 0x30|3 / 0x38|3.
    let d = run(
        Mode::Long64,
        |_, _| {},
        |a| {
            let mut kernel = a.create_label();
            a.mov(ecx, 0x174)?;
            a.mov(eax, 0x10)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
            a.mov(ecx, 0x176)?;
            a.lea(rax, ptr(kernel))?;
            a.mov(rdx, rax)?;
            a.shr(rdx, 32)?;
            a.wrmsr()?;
            a.mov(ecx, 0x175)?;
            a.mov(eax, 0x7000)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
            a.sysenter()?;
            a.set_label(&mut kernel)?;
            a.mov(rbx, rsp)?;
            a.mov(r8, 0x1234u64)?;
            a.nop()
        },
    );
    assert_eq!(d.vector(), None);
    assert_eq!(d.cpu.gpr[3], 0x7000, "RSP from IA32_SYSENTER_ESP");
    assert_eq!(d.cpu.seg[1].selector, 0x10);
    assert_eq!(d.cpu.seg[2].selector, 0x18);
    assert_eq!(d.cpu.gpr[8], 0x1234);
}

/// 4 KiB page tables for the first 2 MiB, with `edit` applied to the PTEs.
fn small_pages(
    cpu: &mut gantry_frontend::state::CpuState,
    mem: &mut gantry_machine::memory::GuestMemory,
    edit: impl Fn(u64, u64) -> u64,
) {
    let pt = 0x5_0000u64;
    for i in 0..512u64 {
        mem.write_u64(pt + i * 8, edit(i, (i << 12) | 0x3)).unwrap();
    }
    mem.write_u64(0xB000, pt | 0x3).unwrap();
    cpu.cr0 |= 1 << 16;
}

#[test]
fn rep_string_faults_midway_and_can_resume() {
    // REP STOSB from 0x10FF0 runs into the not-present page at 0x11000 after 16 bytes:
    // the #PF leaves RCX/RDI at the element that faulted and RIP at the REP instruction.
    let d = run(
        Mode::Long64,
        |cpu, mem| small_pages(cpu, mem, |i, e| if i == 0x11 { 0 } else { e }),
        |a| {
            a.mov(rdi, 0x1_0FF0u64)?;
            a.mov(ecx, 64)?;
            a.mov(al, 0xAB)?;
            a.cld()?;
            a.rep().stosb()
        },
    );
    assert_eq!(d.vector(), Some(14));
    assert_eq!(d.cpu.cr2, 0x1_1000);
    assert_eq!(d.cpu.gpr[1], 64 - 16, "RCX counts the elements left");
    assert_eq!(d.cpu.gpr[7], 0x1_1000, "RDI at the faulting element");
    assert_eq!(d.bytes_at(0x1_0FF0, 16), vec![0xAB; 16]);
    // Pushed RIP: the REP STOSB (after MOV RDI imm64 10, MOV ECX 5, MOV AL 2, CLD 1).
    assert_eq!(d.u64_at(d.cpu.gpr[4] + 8), CODE + 18);
}

#[test]
fn no_execute_page_faults_on_fetch() {
    // With EFER.NXE, fetching from a page whose PTE has bit 63 set is a #PF with the
    // I/D bit (error code 0x11: present, instruction fetch).
    let d = run(
        Mode::Long64,
        |cpu, mem| {
            small_pages(cpu, mem, |i, e| if i == 0x12 { e | 1 << 63 } else { e });
            cpu.efer |= 1 << 11;
            mem.write(0x1_2000, &[0x90, 0xF4]).unwrap();
        },
        |a| {
            a.mov(eax, 0x1_2000)?;
            a.jmp(rax)
        },
    );
    assert_eq!(d.vector(), Some(14));
    assert_eq!(d.cpu.cr2, 0x1_2000);
    assert_eq!(d.u64_at(d.cpu.gpr[4]), 0x11);
}

fn with_sse(cpu: &mut gantry_frontend::state::CpuState) {
    cpu.cr4 |= 1 << 9; // OSFXSR
}

#[test]
fn sse2_string_idioms() {
    // strlen's core: compare 16 bytes with zero, take the byte mask, find the first bit.
    let d = run(
        Mode::Long64,
        |cpu, mem| {
            with_sse(cpu);
            mem.write(DATA + 3, b"gantry!\0tail....").unwrap();
        },
        |a| {
            a.mov(rsi, DATA + 3)?;
            a.pxor(xmm0, xmm0)?;
            a.movdqu(xmm1, xmmword_ptr(rsi))?;
            a.pcmpeqb(xmm1, xmm0)?;
            a.pmovmskb(eax, xmm1)?;
            a.bsf(eax, eax)?;
            // memset's core: broadcast a byte, store 16 aligned bytes.
            a.mov(ecx, 0x5A)?;
            a.movd(xmm2, ecx)?;
            a.punpcklbw(xmm2, xmm2)?;
            a.punpcklwd(xmm2, xmm2)?;
            a.pshufd(xmm2, xmm2, 0)?;
            a.mov(rdi, DATA + 0x40)?;
            a.movdqa(xmmword_ptr(rdi), xmm2)?;
            a.movq(rdx, xmm2)
        },
    );
    assert_eq!(d.vector(), None);
    assert_eq!(d.cpu.gpr[0], 7, "index of the NUL");
    assert_eq!(d.bytes_at(DATA + 0x40, 16), vec![0x5A; 16]);
    assert_eq!(d.cpu.gpr[2], 0x5A5A_5A5A_5A5A_5A5A);
}

#[test]
fn sse_alignment_and_availability() {
    // MOVDQA to a misaligned address: #GP(0).
    let d = run(
        Mode::Long64,
        |cpu, _| with_sse(cpu),
        |a| {
            a.mov(rdi, DATA + 8)?;
            a.movdqa(xmmword_ptr(rdi), xmm0)
        },
    );
    assert_eq!(d.vector(), Some(13));
    // Without CR4.OSFXSR, SSE instructions are #UD.
    let d = run64(|a| a.pxor(xmm0, xmm0));
    assert_eq!(d.vector(), Some(6));
    // With CR0.TS, #NM.
    let d = run(
        Mode::Long64,
        |cpu, _| {
            with_sse(cpu);
            cpu.cr0 |= 1 << 3;
        },
        |a| a.pxor(xmm0, xmm0),
    );
    assert_eq!(d.vector(), Some(7));
}

#[test]
fn scalar_double_arithmetic_and_compare() {
    let d = run(
        Mode::Long64,
        |cpu, _| with_sse(cpu),
        |a| {
            a.mov(eax, 7)?;
            a.mov(ecx, 2)?;
            a.cvtsi2sd(xmm0, eax)?;
            a.cvtsi2sd(xmm1, ecx)?;
            a.divsd(xmm0, xmm1)?; // 3.5
            a.cvttsd2si(edx, xmm0)?; // 3
            a.comisd(xmm0, xmm1)?; // 3.5 > 2: ZF=PF=CF=0
            a.seta(bl)
        },
    );
    assert_eq!(d.vector(), None);
    assert_eq!(d.cpu.gpr[2], 3);
    assert_eq!(d.cpu.gpr[3] & 0xFF, 1);
}

#[test]
fn decimal_adjust_in_32_bit_mode() {
    // 0x79 + 0x35, DAA: packed BCD 114 -> AL 0x14, CF.
    let d = run(
        Mode::Protected32,
        |_, _| {},
        |a| {
            a.mov(al, 0x79)?;
            a.add(al, 0x35)?;
            a.daa()?;
            a.setc(bl)?;
            a.mov(cl, 63)?;
            a.mov(al, cl)?;
            a.aam(10)?;
            a.mov(edx, eax)
        },
    );
    assert_eq!(d.cpu.gpr[3] & 0xFF, 1);
    assert_eq!(d.cpu.gpr[2] & 0xFFFF, 0x0603);
    // AAM 0 is #DE.
    let d = run(Mode::Protected32, |_, _| {}, |a| a.aam(0));
    assert_eq!(d.vector(), Some(0));
}

#[test]
fn page_fault_with_a_missing_handler_becomes_a_double_fault() {
    // The #PF gate is not present: delivering #PF raises #NP, and a contributory fault
    // during #PF delivery is a double fault (SDM vol. 3, table 6-5), error code 0.
    let d = run(
        Mode::Long64,
        |_, mem| {
            let g = mem.read_u64(IDT + 14 * 16).unwrap();
            mem.write_u64(IDT + 14 * 16, g & !(1 << 47)).unwrap();
        },
        |a| a.mov(rax, qword_ptr(0x1_0000_0000u64)), // above the 4 GiB identity map
    );
    assert_eq!(d.vector(), Some(8));
    assert_eq!(d.u64_at(d.cpu.gpr[4]), 0, "#DF error code");
}

#[test]
fn trap_gates_keep_if_and_interrupt_gates_clear_it() {
    // Handler at 0x4F00: PUSHFQ; POP RBX; HLT. Vector 3 through a trap gate (type F) or an
    // interrupt gate (type E).
    for (gate_type, if_in_handler) in [(0xFu64, true), (0xE, false)] {
        let d = run(
            Mode::Long64,
            |_, mem| {
                mem.write(0x4F00, &[0x9C, 0x5B, 0xF4]).unwrap();
                let g = 0x4F00 | 0x10 << 16 | (0x80 | gate_type) << 40;
                mem.write_u64(IDT + 3 * 16, g).unwrap();
                mem.write_u64(IDT + 3 * 16 + 8, 0).unwrap();
            },
            |a| {
                a.sti()?;
                a.int3()
            },
        );
        assert_eq!(
            d.cpu.gpr[3] & (1 << 9) != 0,
            if_in_handler,
            "gate type {gate_type:#x}"
        );
    }
}

#[test]
fn user_access_to_a_supervisor_page_faults() {
    const TSS: u64 = 0x7000;
    let d = run(
        Mode::Long64,
        |cpu, mem| {
            // 4 KiB pages, all user-accessible except 0x12000; ring-3 segments and a TSS.
            small_pages(cpu, mem, |i, e| if i == 0x12 { e } else { e | 4 });
            for table in [0x9000u64, 0xA000, 0xB000] {
                let e = mem.read_u64(table).unwrap();
                mem.write_u64(table, e | 4).unwrap();
            }
            mem.write_u64(0x520, 0x00CF_F300_0000_FFFF).unwrap();
            mem.write_u64(0x528, 0x00AF_FB00_0000_FFFF).unwrap();
            cpu.gdtr.limit = 6 * 8 - 1;
            mem.write_u64(TSS + 4, 0x1_F800).unwrap();
            cpu.tr = gantry_frontend::state::Segment {
                base: TSS,
                limit: 0x67,
                selector: 0x30,
                attr: 0x80 | 0xB,
            };
        },
        |a| {
            let mut user = a.create_label();
            a.lea(rax, ptr(user))?;
            a.push(0x23)?;
            a.push(0x6000)?;
            a.push(0x2)?;
            a.push(0x2B)?;
            a.push(rax)?;
            a.iretq()?;
            a.set_label(&mut user)?;
            a.mov(eax, dword_ptr(0x1_2000))
        },
    );
    assert_eq!(d.vector(), Some(14));
    assert_eq!(d.cpu.cr2, 0x1_2000);
    assert_eq!(d.u64_at(d.cpu.gpr[4]), 0x5, "present, read, user");
}

#[test]
fn mode_switches_real_protected_long_compat_and_back() {
    // Pieces of code in each mode, joined by far jumps and far returns:
    // A real (CODE) -> B protected 32 -> C long 64 -> D compatibility 32 -> E long 64
    // -> F compatibility 32, paging and LME off -> G 16-bit protected -> H real mode.
    const GDT: u64 = 0x600;
    const B: u64 = 0x2_1000;
    const C: u64 = 0x2_2000;
    const D: u64 = 0x2_3000;
    const E: u64 = 0x2_4000;
    const F: u64 = 0x2_5000;
    const G: u64 = 0xF000;
    const H: u64 = 0xF100;
    let far32 = |a: &mut CodeAssembler, sel: u16, target: u64| -> Result<(), IcedError> {
        let mut b = vec![0xEA];
        b.extend_from_slice(&(target as u32).to_le_bytes());
        b.extend_from_slice(&sel.to_le_bytes());
        a.db(&b)
    };
    let piece = |bits: u32, at: u64, f: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>| {
        let mut a = CodeAssembler::new(bits).unwrap();
        f(&mut a).unwrap();
        a.assemble(at).unwrap()
    };
    let b = piece(32, B, &|a| {
        a.mov(ax, 0x10)?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.mov(ss, ax)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x20)?;
        a.mov(cr4, eax)?;
        a.mov(eax, 0x9000)?;
        a.mov(cr3, eax)?;
        a.mov(ecx, 0xC000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, 0x100)?;
        a.wrmsr()?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32 as i32)?;
        a.mov(cr0, eax)?;
        far32(a, 0x18, C)
    });
    // From 64-bit code to a 32-bit segment: a far return with CS = 0x08.
    let to_compat = |a: &mut CodeAssembler, target: u64| -> Result<(), IcedError> {
        a.push(0x08)?;
        a.mov(rax, target)?;
        a.push(rax)?;
        a.db(&[0x48, 0xCB]) // RETFQ: 64-bit pops of RIP and CS
    };
    let c = piece(64, C, &|a| {
        a.mov(r8, 0x64u64)?;
        to_compat(a, D)
    });
    let d = piece(32, D, &|a| {
        a.mov(esi, 0x32)?;
        far32(a, 0x18, E)
    });
    let e = piece(64, E, &|a| {
        a.mov(r9, 0x64u64)?;
        to_compat(a, F)
    });
    let f = piece(32, F, &|a| {
        a.mov(eax, cr0)?;
        a.and(eax, 0x7FFF_FFFF)?;
        a.mov(cr0, eax)?; // paging off: long mode deactivated
        a.mov(ecx, 0xC000_0080u32)?;
        a.rdmsr()?;
        a.and(eax, !0x100)?;
        a.wrmsr()?;
        a.mov(edi, 0x3232)?;
        far32(a, 0x20, G)
    });
    let g = piece(16, G, &|a| {
        a.mov(ax, 0x28)?;
        a.mov(ds, ax)?;
        a.mov(ss, ax)?;
        a.mov(eax, cr0)?;
        a.and(al, 0xFE)?;
        a.mov(cr0, eax)?;
        a.db(&[0xEA, (H & 0xFF) as u8, (H >> 8) as u8, 0, 0]) // jmp 0000:H
    });
    let h = piece(16, H, &|a| {
        a.xor(ax, ax)?;
        a.mov(ds, ax)?;
        a.mov(ss, ax)?;
        a.mov(bx, 0x1616)?;
        a.mov(byte_ptr(0x6100), 0x99)?;
        a.cli()?;
        a.hlt()
    });
    let d2 = run(
        Mode::Real16,
        |_, mem| {
            // null, 0x08 code32, 0x10 data32, 0x18 code64, 0x20 code16, 0x28 data16
            let descs: [u64; 6] = [
                0,
                0x00CF_9B00_0000_FFFF,
                0x00CF_9300_0000_FFFF,
                0x00AF_9B00_0000_FFFF,
                0x0000_9B00_0000_FFFF,
                0x0000_9300_0000_FFFF,
            ];
            for (i, dsc) in descs.iter().enumerate() {
                mem.write_u64(GDT + 8 * i as u64, *dsc).unwrap();
            }
            mem.write(0x5F0, &((6 * 8 - 1) as u16).to_le_bytes())
                .unwrap();
            mem.write(0x5F2, &(GDT as u32).to_le_bytes()).unwrap();
            gantry_machine::boot::tables::write_identity_paging(mem).unwrap();
            for (at, code) in [
                (B, &b),
                (C, &c),
                (D, &d),
                (E, &e),
                (F, &f),
                (G, &g),
                (H, &h),
            ] {
                mem.write(at, code).unwrap();
            }
        },
        |a| {
            // Piece A, real mode at CODE (CS base 0x20000): o32 lgdt [0x5F0] with DS = 0.
            a.xor(ax, ax)?;
            a.mov(ds, ax)?;
            a.db(&[0x66, 0x0F, 0x01, 0x16, 0xF0, 0x05])?;
            a.mov(eax, cr0)?;
            a.or(al, 1)?;
            a.mov(cr0, eax)?;
            let mut jmp = vec![0x66, 0xEA];
            jmp.extend_from_slice(&(B as u32).to_le_bytes());
            jmp.extend_from_slice(&0x08u16.to_le_bytes());
            a.db(&jmp)
        },
    );
    assert_eq!(d2.vector(), None, "no exception on the way");
    assert_eq!(
        d2.cpu.gpr[8], 0x64,
        "R8 set in 64-bit mode survives compatibility mode"
    );
    assert_eq!(d2.cpu.gpr[6], 0x32, "ESI set in compatibility mode");
    assert_eq!(d2.cpu.gpr[9], 0x64);
    assert_eq!(d2.cpu.gpr[7], 0x3232);
    assert_eq!(d2.cpu.gpr[3] & 0xFFFF, 0x1616, "back in real mode");
    assert_eq!(d2.bytes_at(0x6100, 1), [0x99]);
    assert_eq!(d2.cpu.cr0 & 0x8000_0001, 0, "paging and protection off");
    assert_eq!(d2.cpu.efer & 0x500, 0, "LME and LMA clear");
    assert_eq!(d2.cpu.code_bits(), 16);
}

#[test]
fn byte_swaps() {
    // BSWAP reverses the bytes of a 32- or 64-bit register; of a 16-bit one the SDM
    // leaves it undefined, and the CPU clears the word (checked on this project's AMD
    // host: 66 0F CA on EDX = AABBCCDDh leaves AABB0000h).
    let d = run64(|a| {
        a.mov(rax, 0x0102_0304_0506_0708u64)?;
        a.bswap(rax)?;
        a.mov(ecx, 0x1122_3344u32)?;
        a.bswap(ecx)?;
        a.mov(edx, 0xAABB_CCDDu32)?;
        a.bswap(dx)
    });
    assert_eq!(d.cpu.gpr[0], 0x0807_0605_0403_0201);
    assert_eq!(d.cpu.gpr[1], 0x4433_2211);
    assert_eq!(d.cpu.gpr[2], 0xAABB_0000);
}

/// RFLAGS read whole (by a rotate, which keeps the flags it does not set) right after an
/// ALU operation or a shift in the same block: the JIT computes it inline for those
/// kinds; both tiers must give `flags::compute`'s answer, for every size.
#[test]
fn rflags_read_whole_after_an_alu_operation() {
    const OPS: u64 = 17;
    let values: [u64; 6] = [0, 1, 0x7F, 0x80, 0xFFFF_FFFF, 0x8000_0000_0000_0001];
    let d = run64(|a| {
        let mut at = DATA;
        for &x in &values {
            for &y in &values {
                for op in 0..OPS {
                    a.mov(rax, x)?;
                    a.mov(rbx, y)?;
                    match op {
                        0 => a.add(rax, rbx)?,
                        1 => a.sub(eax, ebx)?,
                        2 => a.and(ax, bx)?,
                        3 => a.cmp(al, bl)?,
                        4 => a.xor(eax, ebx)?,
                        5 => a.inc(eax)?,
                        6 => a.dec(ax)?,
                        // Shifts by CL and by an immediate lift differently (a count of
                        // 0 keeps the flags).
                        7..=11 => {
                            a.mov(ecx, [1, 5, 1, 7, 1][op as usize - 7])?;
                            match op {
                                7 => a.shl(eax, cl)?,
                                8 => a.shl(rax, cl)?,
                                9 => a.shr(al, cl)?,
                                10 => a.shr(rax, cl)?,
                                _ => a.sar(ax, cl)?,
                            }
                        }
                        12 => a.shl(bl, 1)?,
                        13 => a.shl(rax, 5)?,
                        14 => a.shr(al, 1)?,
                        15 => a.shr(rax, 7)?,
                        _ => a.sar(ax, 1)?,
                    }
                    // A rotate by CL = 0 keeps every flag as the operation left them:
                    // its lifting reads RFLAGS whole (PUSHF is a helper's).
                    a.mov(ecx, 0)?;
                    a.rol(rdx, cl)?;
                    // Conditions on the flags the rotate left in RFLAGS (before PUSHF, a helper).
                    a.seto(byte_ptr(at + 16))?;
                    a.setb(byte_ptr(at + 17))?;
                    a.sete(byte_ptr(at + 18))?;
                    a.seta(byte_ptr(at + 19))?;
                    a.sets(byte_ptr(at + 20))?;
                    a.setnp(byte_ptr(at + 21))?;
                    a.setl(byte_ptr(at + 22))?;
                    a.setg(byte_ptr(at + 23))?;
                    a.pushfq()?;
                    a.pop(rcx)?;
                    a.mov(qword_ptr(at), rcx)?;
                    a.mov(qword_ptr(at + 8), rax)?;
                    at += 32;
                }
            }
        }
        Ok(())
    });
    assert_eq!(d.vector(), None);
    // 0 + 0: ZF and PF.
    assert_eq!(d.u64_at(DATA) & (ZF | PF | CF | SF | OF), ZF | PF);
    // 0 - 1 (32-bit; x = 0, y = 1, the second operation): CF, SF, AF, and PF (the low
    // byte 0xFF has eight ones).
    let at = DATA + (OPS + 1) * 32;
    assert_eq!(
        d.u64_at(at) & (ZF | PF | CF | SF | OF | AF),
        CF | SF | AF | PF
    );
    // There: O, B, E, A, S, NP, L, G.
    assert_eq!(d.bytes_at(at + 16, 8), [0, 1, 0, 0, 1, 0, 1, 0]);
}

/// LDS/LES/LFS/LGS/LSS load a far pointer: the offset into the register, the selector
/// after it into the segment register (checked as MOV Sreg checks it, and first: a faulting
/// load leaves the register as it was).
#[test]
fn far_pointer_loads() {
    let d = run(
        Mode::Real16,
        |_, mem| {
            // DS is 0 in the harness's real mode: the pointer 1234:5678 at 0x100.
            mem.write(0x100, &[0x78, 0x56, 0x34, 0x12]).unwrap();
        },
        |a| {
            a.les(di, ptr(0x100))?;
            a.hlt()
        },
    );
    assert_eq!(d.cpu.gpr[7] & 0xFFFF, 0x5678);
    assert_eq!(d.cpu.seg[0].selector, 0x1234);
    assert_eq!(d.cpu.seg[0].base, 0x12340);

    let d = run(
        Mode::Protected32,
        |_, mem| {
            // 0x18:DATA+0x800, 0x0000:0xABCD, 0x0000:0x1111.
            let mut far = Vec::new();
            far.extend_from_slice(&(DATA as u32 + 0x800).to_le_bytes());
            far.extend_from_slice(&0x18u16.to_le_bytes());
            far.extend_from_slice(&0xABCDu32.to_le_bytes());
            far.extend_from_slice(&0u16.to_le_bytes());
            far.extend_from_slice(&0x1111u32.to_le_bytes());
            far.extend_from_slice(&0u16.to_le_bytes());
            mem.write(DATA, &far).unwrap();
        },
        |a| {
            a.lss(esp, ptr(DATA))?;
            a.lfs(edx, ptr(DATA + 6))?;
            a.mov(ebx, 0x7777)?;
            a.lss(ebx, ptr(DATA + 12))?;
            a.hlt()
        },
    );
    assert_eq!(d.cpu.seg[2].selector, 0x18);
    assert_eq!(d.cpu.seg[4].selector, 0, "a null selector is fine for FS");
    assert_eq!(d.cpu.gpr[2], 0xABCD);
    assert_eq!(d.vector(), Some(13), "a null SS is #GP(0)");
    assert_eq!(d.cpu.gpr[3], 0x7777, "the faulting load left EBX alone");
}

/// REP INSW with a 32-bit address size in real mode (ES:EDI, ECX), ES loaded before each
/// run, into a new buffer each time, as SeaBIOS's ATA driver reads sectors: both tiers
/// must fill every buffer (an unassigned port reads all ones) and nothing past it.
#[test]
fn a32_rep_insw_in_real_mode_follows_es() {
    let d = run(
        Mode::Real16,
        |_, _| {},
        |a| {
            let mut next = a.create_label();
            a.mov(si, 20)?;
            a.mov(ax, 0x8000)?;
            a.set_label(&mut next)?;
            a.mov(es, ax)?;
            a.xor(edi, edi)?;
            a.mov(ecx, 4)?;
            a.mov(dx, 0x2F0)?;
            a.db(&[0x67, 0xF3, 0x6D])?; // a32 rep insw
            a.add(ax, 0x10)?;
            a.dec(si)?;
            a.jnz(next)?;
            a.hlt()
        },
    );
    for k in 0..20u64 {
        let at = 0x8_0000 + k * 0x100;
        assert_eq!(d.bytes_at(at, 8), vec![0xFF; 8], "buffer {k}");
        assert_eq!(d.bytes_at(at + 8, 8), vec![0; 8], "past buffer {k}");
    }
}

/// INSB over bytes the CPU has run, from a port whose read has an effect (the i8042's
/// output buffer, which a read empties): the store writes translated code, and compiled
/// code, which stops before such a store and leaves the instruction to the interpreter,
/// must not have read the port already (it read it twice, and the byte was lost: a word
/// of every IDE sector the syslinux MBR read over its own first copy at 0x7C00).
#[test]
fn ins_over_code_it_ran_reads_the_port_once() {
    let d = run(
        Mode::Real16,
        |_, _| {},
        |a| {
            let mut routine = a.create_label();
            let mut over = a.create_label();
            a.jmp(over)?;
            a.set_label(&mut routine)?;
            a.ret()?;
            a.db(&[0x90; 13])?;
            a.set_label(&mut over)?;
            a.call(routine)?;
            // The i8042's "write keyboard output buffer": 0xA5 waits at port 0x60.
            a.mov(al, 0xD2)?;
            a.out(0x64, al)?;
            a.mov(al, 0xA5)?;
            a.out(0x60, al)?;
            a.mov(ax, cs)?;
            a.mov(es, ax)?;
            a.xor(di, di)?;
            a.mov(dx, 0x60)?;
            a.insb()?; // over the JMP at 0
            a.mov(bx, 0x1234)?;
            a.hlt()
        },
    );
    assert_eq!(
        d.bytes_at(d.cpu.seg[1].base, 1),
        vec![0xA5],
        "the byte the port held"
    );
    assert_eq!(d.cpu.gpr[3] & 0xFFFF, 0x1234);
}
