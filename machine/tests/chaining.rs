//! Compiled blocks go on into their successors without returning to the run loop (through
//! a chain slot when the exit's address is constant). What the run loop does between
//! blocks must still happen: here, dropping the translation of code the guest rewrote, so
//! that a successor reached through a filled slot runs its new bytes at once.

mod cpu_harness;

use cpu_harness::*;
use iced_x86::code_asm::*;

/// A subroutine on the page after the code: `mov eax, 1; ret`; the loop rewrites its
/// immediate to 2 half way.
const SUB: u64 = CODE + 0x1000;

fn write_sub(mem: &mut gantry_machine::memory::GuestMemory) {
    mem.write(SUB, &[0xB8, 0x01, 0x00, 0x00, 0x00, 0xC3])
        .unwrap();
}

#[test]
fn a_rewritten_successor_runs_its_new_code_at_once() {
    rewritten_successor(false);
}

/// The same through a computed call, which chains through the JIT's table of indirect
/// targets rather than a slot of the exit's own.
#[test]
fn a_rewritten_successor_reached_by_an_indirect_call_runs_its_new_code_at_once() {
    rewritten_successor(true);
}

fn rewritten_successor(indirect: bool) {
    for mode in [Mode::Protected32, Mode::Long64] {
        let d = run(
            mode,
            |_, mem| write_sub(mem),
            |a| {
                let mut top = a.create_label();
                let mut done = a.create_label();
                a.mov(ecx, 100)?;
                a.xor(ebx, ebx)?;
                a.set_label(&mut top)?;
                if indirect {
                    a.mov(edx, SUB as u32)?;
                    if mode == Mode::Long64 {
                        a.call(rdx)?;
                    } else {
                        a.call(edx)?;
                    }
                } else {
                    a.call(SUB)?;
                }
                a.add(ebx, eax)?;
                a.dec(ecx)?;
                a.jz(done)?;
                a.cmp(ecx, 50)?;
                a.jne(top)?;
                a.mov(byte_ptr(SUB + 1), 2)?;
                a.jmp(top)?;
                a.set_label(&mut done)?;
                a.nop()
            },
        );
        assert_eq!(d.vector(), None, "{mode:?} {indirect}");
        assert_eq!(d.cpu.gpr[3], 50 + 50 * 2, "{mode:?} {indirect}: EBX");
    }
}

/// A store into a later instruction of the block being run takes effect at that
/// instruction (the SDM's rule for self-modifying code), on both tiers: the block ends
/// after the store's instruction and the rest is translated anew.
#[test]
fn a_store_into_a_later_instruction_of_the_running_block_takes_effect_at_once() {
    for mode in [Mode::Protected32, Mode::Long64] {
        // mov byte [imm], 2: EAX 2.
        let d = run_rewriting_sub(mode, [0xC6, 0x04, 0x25], [0xC6, 0x05], 2);
        assert_eq!(d.vector(), None, "{mode:?}");
        assert_eq!(
            d.cpu.gpr[0], 2,
            "{mode:?}: EAX from the rewritten instruction"
        );
    }
}

/// Calls a subroutine at `AT`: an instruction on the byte immediate of the `mov eax, 1`
/// after it (opcode bytes `op64` or `op32`, then the absolute address, in the SIB form in
/// 64-bit code, then `imm`); the `mov eax, 1`; `ret`.
fn run_rewriting_sub(mode: Mode, op64: [u8; 3], op32: [u8; 2], imm: u8) -> Done {
    const AT: u64 = CODE + 0x2000;
    let op: &[u8] = match mode {
        Mode::Long64 => &op64,
        _ => &op32,
    };
    let target = AT + op.len() as u64 + 5 + 1;
    let mut sub = op.to_vec();
    sub.extend_from_slice(&(target as u32).to_le_bytes());
    sub.push(imm);
    sub.extend_from_slice(&[0xB8, 0x01, 0x00, 0x00, 0x00, 0xC3]);
    run(
        mode,
        |_, mem| mem.write(AT, &sub).unwrap(),
        |a| {
            a.call(AT)?;
            a.nop()
        },
    )
}

/// An instruction whose store would write the running block's own later code runs again
/// alone, from the state before it (compiled code stops before it): a read-modify-write
/// of a later immediate adds once, and a PUSH over a later instruction moves the stack
/// pointer once; the later instructions run as rewritten.
#[test]
fn an_instruction_that_rewrites_its_own_block_runs_once() {
    const AT: u64 = CODE + 0x2000;
    for mode in [Mode::Protected32, Mode::Long64] {
        // add byte [imm], 5: EAX 6.
        let d = run_rewriting_sub(mode, [0x80, 0x04, 0x25], [0x80, 0x05], 5);
        assert_eq!(d.vector(), None, "{mode:?}");
        assert_eq!(
            d.cpu.gpr[0], 6,
            "{mode:?}: EAX, the immediate added to once"
        );

        // mov edx, esp; mov esp, ebx; push eax (over what follows); mov esi, esp;
        // mov esp, edx; then `mov ecx, 1` (64-bit) or `mov cl, 1` (32-bit) and NOPs the
        // push rewrites to load 7; ret.
        let (sub, pushed, width): (Vec<u8>, u64, u64) = match mode {
            Mode::Long64 => (
                [
                    &[0x48, 0x89, 0xE2, 0x48, 0x89, 0xDC, 0x50][..],
                    &[0x48, 0x89, 0xE6, 0x48, 0x89, 0xD4],
                    &[0xB9, 0x01, 0x00, 0x00, 0x00, 0x90, 0x90, 0x90, 0xC3],
                ]
                .concat(),
                u64::from_le_bytes([0xB9, 0x07, 0x00, 0x00, 0x00, 0x90, 0x90, 0x90]),
                8,
            ),
            _ => (
                [
                    &[0x89, 0xE2, 0x89, 0xDC, 0x50][..],
                    &[0x89, 0xE6, 0x89, 0xD4],
                    &[0xB1, 0x01, 0x90, 0x90, 0xC3],
                ]
                .concat(),
                u64::from(u32::from_le_bytes([0xB1, 0x07, 0x90, 0x90])),
                4,
            ),
        };
        // The stack's top: just past the instruction and NOPs the push overwrites.
        let top = AT + sub.len() as u64 - 1;
        let d = run(
            mode,
            |cpu, mem| {
                mem.write(AT, &sub).unwrap();
                cpu.gpr[0] = pushed;
                cpu.gpr[1] = 0;
                cpu.gpr[3] = top;
            },
            |a| {
                a.call(AT)?;
                a.nop()
            },
        );
        assert_eq!(d.vector(), None, "{mode:?}");
        assert_eq!(d.cpu.gpr[1], 7, "{mode:?}: ECX from the pushed instruction");
        assert_eq!(d.cpu.gpr[6], top - width, "{mode:?}: ESP after one push");
    }
}

/// Data on a page with code, between blocks: a loop's stores to it go on in compiled
/// code (they touch no block), and a store over a later instruction of the loop's own
/// block, on the last lap, still takes effect at that instruction.
#[test]
fn stores_between_blocks_on_a_code_page_run_on_and_a_store_into_a_block_still_counts() {
    let d = run64(|a| {
        let mut top = a.create_label();
        let mut data = a.create_label();
        let mut patched = a.create_label();
        a.mov(ecx, 100)?;
        a.xor(ebx, ebx)?;
        a.lea(rsi, ptr(data))?;
        a.lea(rdi, ptr(patched))?;
        a.set_label(&mut top)?;
        a.add(qword_ptr(rsi), rcx)?;
        a.cmp(ecx, 1)?;
        a.jne(patched)?;
        // On the last lap: `mov eax, 1` below becomes `mov eax, 7`.
        a.mov(dword_ptr(rdi + 1), 7)?;
        a.set_label(&mut patched)?;
        a.mov(eax, 1)?;
        a.add(ebx, eax)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        let mut out = a.create_label();
        a.jmp(out)?;
        a.set_label(&mut data)?;
        a.dq(&[0])?;
        a.set_label(&mut out)?;
        a.mov(r8, qword_ptr(rsi))
    });
    assert_eq!(d.vector(), None);
    assert_eq!(d.cpu.gpr[8], (1..=100).sum::<u64>(), "R8: the data word");
    // Laps 100..=2 run `mov eax, 1`, the last one the patched `mov eax, 7`.
    assert_eq!(d.cpu.gpr[3], 99 + 7, "EBX");
}

/// A block that jumps to its own start goes round inside its compiled function. A lap
/// that rewrites the block's own code must end the loop there: the next lap runs the new
/// bytes. Here each lap stores CL over the immediate of the loop's first instruction.
#[test]
fn a_loop_that_rewrites_its_own_code_runs_the_new_bytes_on_the_next_lap() {
    for mode in [Mode::Protected32, Mode::Long64] {
        let d = run(
            mode,
            |_, _| {},
            |a| {
                let mut top = a.create_label();
                // B9 imm32; 31 DB; then `add ebx, imm8` (83 C3 ib) at CODE + 7.
                a.mov(ecx, 10)?;
                a.xor(ebx, ebx)?;
                a.set_label(&mut top)?;
                a.add(ebx, 1)?;
                a.mov(byte_ptr(CODE + 9), cl)?;
                a.dec(ecx)?;
                a.jnz(top)
            },
        );
        assert_eq!(d.vector(), None, "{mode:?}");
        assert_eq!(
            d.bytes_at(CODE + 7, 3),
            [0x83, 0xC3, 1],
            "{mode:?}: the loop"
        );
        // Lap 1 adds 1; lap k adds the ECX lap k - 1 stored: 10, 9, ..., 2.
        assert_eq!(d.cpu.gpr[3], 1 + (2..=10).sum::<u64>(), "{mode:?}: EBX");
    }
}

/// A block goes on past its first conditional branch into the not-taken side, the taken
/// side a side exit: taken, the code there sees the flags and registers as of the
/// branch; not taken, the instructions after the branch run in the same block, and an
/// exception among them finds those before it done.
#[test]
fn a_block_leaves_by_its_side_exit_or_goes_on_past_it() {
    for mode in [Mode::Protected32, Mode::Long64] {
        let d = run(
            mode,
            |_, _| {},
            |a| {
                let mut top = a.create_label();
                let mut low = a.create_label();
                let mut next = a.create_label();
                let mut out = a.create_label();
                a.mov(ecx, 10)?;
                a.xor(ebx, ebx)?;
                a.xor(edx, edx)?;
                a.xor(esi, esi)?;
                a.set_label(&mut top)?;
                a.add(ebx, 3)?;
                a.cmp(ecx, 4)?;
                // Taken for ECX 3, 2 and 1.
                a.jb(low)?;
                a.add(edx, ebx)?;
                a.adc(edx, 0)?;
                a.set_label(&mut next)?;
                a.dec(ecx)?;
                a.jnz(top)?;
                a.jmp(out)?;
                a.set_label(&mut low)?;
                // CF of the CMP before the side exit.
                a.setb(al)?;
                a.movzx(eax, al)?;
                a.add(esi, eax)?;
                a.jmp(next)?;
                a.set_label(&mut out)?;
                a.mov(edi, 7)?;
                a.cmp(edi, 8)?;
                a.ja(top)?;
                a.mov(ebp, 9)?;
                a.ud2()
            },
        );
        assert_eq!(d.vector(), Some(6), "{mode:?}: #UD");
        assert_eq!(d.cpu.gpr[3] as u32, 30, "{mode:?}: EBX, ten laps");
        assert_eq!(
            d.cpu.gpr[2] as u32, 84,
            "{mode:?}: EDX, the seven laps not taken"
        );
        assert_eq!(
            d.cpu.gpr[6] as u32, 3,
            "{mode:?}: ESI, CF at the three taken"
        );
        assert_eq!(d.cpu.gpr[7] as u32, 7, "{mode:?}: EDI");
        assert_eq!(
            d.cpu.gpr[5] as u32, 9,
            "{mode:?}: EBP, past the branch not taken"
        );
    }
}

/// A loop that runs longer than a run's budget of blocks goes back to the run loop at the
/// end of the budget, and on where it was: the count of instructions and the registers
/// are the interpreter's (the harness compares them), as is the lazy-flag state a helper
/// later reads. The loop reads a register it never writes, and one a helper (CPUID)
/// writes inside it.
#[test]
fn a_long_loop_in_compiled_code_counts_and_keeps_every_lap() {
    for mode in [Mode::Protected32, Mode::Long64] {
        let d = run(
            mode,
            |_, _| {},
            |a| {
                let mut top = a.create_label();
                a.mov(edi, 3)?;
                a.mov(esi, 100_000)?;
                a.xor(ebp, ebp)?;
                a.set_label(&mut top)?;
                a.add(ebp, edi)?;
                a.dec(esi)?;
                a.jnz(top)?;
                a.mov(esi, 300)?;
                let mut again = a.create_label();
                a.set_label(&mut again)?;
                a.xor(eax, eax)?;
                a.cpuid()?;
                a.add(edi, eax)?;
                a.add(edi, ebx)?;
                a.dec(esi)?;
                a.jnz(again)?;
                a.pushfd_or_q(mode)
            },
        );
        assert_eq!(d.vector(), None, "{mode:?}");
        assert_eq!(d.cpu.gpr[5], 300_000, "{mode:?}: EBP");
        assert!(d.insns > 300_000, "{mode:?}: {} instructions", d.insns);
    }
}

trait PushFlags {
    fn pushfd_or_q(&mut self, mode: Mode) -> Result<(), IcedError>;
}

impl PushFlags for CodeAssembler {
    fn pushfd_or_q(&mut self, mode: Mode) -> Result<(), IcedError> {
        match mode {
            Mode::Long64 => self.pushfq(),
            _ => self.pushfd(),
        }
    }
}

/// Linear 6 MiB (`V`), the fourth 2 MiB page of the identity map, is given a page table
/// (at `PT`): its first 4 KiB map the page holding `mov eax, 1; ret` (`ONE`), until a test
/// points the entry at the one holding `mov eax, 2; ret` (`TWO`).
const V: u64 = 0x60_0000;
const PT: u64 = 0x50_0000;
const ONE: u64 = 0x30_0000;
const TWO: u64 = 0x30_1000;

/// Sets up `V` to map `ONE`, with `pte_flags` (such as G) in its page-table entry.
fn map_code_page(mem: &mut gantry_machine::memory::GuestMemory, pte_flags: u64) {
    use gantry_machine::layout::BOOT_PD;
    mem.write(ONE, &[0xB8, 0x01, 0x00, 0x00, 0x00, 0xC3])
        .unwrap();
    mem.write(TWO, &[0xB8, 0x02, 0x00, 0x00, 0x00, 0xC3])
        .unwrap();
    mem.zero(PT, 0x1000).unwrap();
    mem.write_u64(PT, ONE | pte_flags | 3).unwrap();
    mem.write_u64(BOOT_PD + 3 * 8, PT | 3).unwrap();
}

/// Calls `V` and records what it returned at the ECXth of the results.
fn call_code_page(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(rax, V)?;
    a.call(rax)?;
    a.mov(qword_ptr(rcx * 8 + DATA + 0x100), rax)
}

/// The first five results.
fn results(d: &Done) -> Vec<u64> {
    (0..5).map(|i| d.u64_at(DATA + 0x100 + i * 8)).collect()
}

/// A linear code page is moved to other physical memory by a page-table write and INVLPG:
/// the next call there runs the code now mapped, though the calling block's chain slot
/// and the jump cache held the old page's block. An INVLPG of a data page (which leaves
/// the jump cache and chains alone) changes nothing.
#[test]
fn invlpg_of_a_code_page_drops_what_ran_there_and_of_a_data_page_keeps_it() {
    let d = run(
        Mode::Long64,
        |_, mem| map_code_page(mem, 0),
        |a| {
            let mut top = a.create_label();
            let mut other = a.create_label();
            let mut next = a.create_label();
            a.xor(ecx, ecx)?;
            a.set_label(&mut top)?;
            call_code_page(a)?;
            a.cmp(ecx, 1)?;
            a.jne(other)?;
            // After the second call: the page now maps TWO.
            a.mov(rdx, TWO | 3)?;
            a.mov(qword_ptr(PT), rdx)?;
            a.invlpg(byte_ptr(V))?;
            a.jmp(next)?;
            a.set_label(&mut other)?;
            a.invlpg(byte_ptr(DATA))?;
            a.set_label(&mut next)?;
            a.inc(ecx)?;
            a.cmp(ecx, 5)?;
            a.jne(top)
        },
    );
    assert_eq!(d.vector(), None);
    assert_eq!(results(&d), [1, 1, 2, 2, 2]);
}

/// A MOV CR3 drops the translations of pages that are not global, and with them the
/// blocks looked up there (the jump cache and the chains keep a global page's): a code
/// page's page-table entry rewritten, then CR3 reloaded, runs the code now mapped; the
/// same with the entry global (and CR4.PGE on) keeps running the old page's code until
/// an INVLPG, as a CPU that keeps global TLB entries across MOV CR3 does.
#[test]
fn mov_cr3_drops_code_on_pages_that_are_not_global_and_keeps_global_ones() {
    assert_eq!(remapped_by_mov_cr3(false), [1, 1, 2, 2, 2]);
    assert_eq!(remapped_by_mov_cr3(true), [1, 1, 1, 1, 2]);
}

fn remapped_by_mov_cr3(global: bool) -> Vec<u64> {
    const PGE: u32 = 1 << 7;
    let g = if global { 0x100 } else { 0 };
    let d = run(
        Mode::Long64,
        |_, mem| map_code_page(mem, g),
        |a| {
            let mut top = a.create_label();
            let mut reload = a.create_label();
            let mut next = a.create_label();
            a.mov(rax, cr4)?;
            a.or(eax, PGE)?;
            a.mov(cr4, rax)?;
            a.xor(ecx, ecx)?;
            a.set_label(&mut top)?;
            call_code_page(a)?;
            a.cmp(ecx, 1)?;
            a.jne(reload)?;
            // After the second call: the entry now maps TWO.
            a.mov(rdx, TWO | g | 3)?;
            a.mov(qword_ptr(PT), rdx)?;
            a.set_label(&mut reload)?;
            a.cmp(ecx, 3)?;
            a.jne(next)?;
            // Before the fifth: drop the page, global or not.
            a.invlpg(byte_ptr(V))?;
            a.set_label(&mut next)?;
            a.mov(rax, cr3)?;
            a.mov(cr3, rax)?;
            a.inc(ecx)?;
            a.cmp(ecx, 5)?;
            a.jne(top)
        },
    );
    assert_eq!(d.vector(), None);
    results(&d)
}

/// A register a loop's lap writes before it reads it goes round in the CPU, stored at the
/// loop's back edge: a fault early in a lap (a #GP from a load at a non-canonical address
/// the count leads to), before the lap's write, finds the value the lap before wrote. The
/// loop is one block that jumps to its own start and calls no helper, which the JIT
/// compiles as a loop that goes round without leaving its code.
#[test]
fn a_register_a_loop_writes_before_reading_is_the_last_lap_s_at_a_fault() {
    let d = run64(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 1000)?;
        a.xor(r8d, r8d)?;
        a.xor(r9d, r9d)?;
        a.mov(rdx, 0x8000_0000_0000u64)?;
        a.set_label(&mut top)?;
        a.mov(edi, DATA as u32)?;
        a.cmp(ecx, 500)?;
        a.cmove(rdi, rdx)?;
        a.mov(rax, qword_ptr(rdi))?;
        a.mov(r8, rcx)?;
        a.add(r8, rax)?;
        a.test(cl, 1)?;
        a.cmovz(r9, rcx)?;
        a.dec(rcx)?;
        a.jnz(top)
    });
    assert_eq!(d.vector(), Some(13), "#GP");
    assert_eq!(d.cpu.gpr[1], 500, "RCX");
    assert_eq!(d.cpu.gpr[8], 501 + d.u64_at(DATA), "R8: the lap before's");
    assert_eq!(d.cpu.gpr[9], 502, "R9: the last even RCX");
}

/// A block whose last instruction continues on the next page is cached under its first
/// page: when the next page is remapped (its PTE rewritten and INVLPG'd), the block is
/// lifted again rather than run with the old page's bytes. Here `mov eax, imm32` starts 4
/// bytes before `V + 0x1000`, its last immediate byte and a `ret` on the page after.
#[test]
fn a_block_across_a_page_boundary_sees_its_second_page_remapped() {
    const P1: u64 = 0x30_2000;
    const A: u64 = 0x30_3000;
    const B: u64 = 0x30_4000;
    let d = run(
        Mode::Long64,
        |_, mem| {
            map_code_page(mem, 0);
            mem.write(P1 + 0xFFC, &[0xB8, 0x01, 0x02, 0x03]).unwrap();
            mem.write(A, &[0x04, 0xC3]).unwrap();
            mem.write(B, &[0x05, 0xC3]).unwrap();
            mem.write_u64(PT, P1 | 3).unwrap();
            mem.write_u64(PT + 8, A | 3).unwrap();
        },
        |a| {
            let mut top = a.create_label();
            let mut next = a.create_label();
            a.xor(ecx, ecx)?;
            a.set_label(&mut top)?;
            a.mov(rax, V + 0xFFC)?;
            a.call(rax)?;
            a.mov(qword_ptr(rcx * 8 + DATA + 0x100), rax)?;
            a.cmp(ecx, 1)?;
            a.jne(next)?;
            // After the second call: the page after maps B.
            a.mov(rdx, B | 3)?;
            a.mov(qword_ptr(PT + 8), rdx)?;
            a.invlpg(byte_ptr(V + 0x1000))?;
            a.set_label(&mut next)?;
            a.inc(ecx)?;
            a.cmp(ecx, 5)?;
            a.jne(top)
        },
    );
    assert_eq!(d.vector(), None);
    let old = 0x0403_0201;
    let new = 0x0503_0201;
    assert_eq!(results(&d), [old, old, new, new, new]);
}

/// A user page at `V` whose code jumps to a supervisor page after it, with the ring-3
/// segments and a 64-bit TSS (ring 0's stack at `RSP0`) an exception from ring 3 needs.
const RSP0: u64 = 0x1_F000;
const TSS64: u64 = 0x7000;
const USER_CS: u64 = 0x28 | 3;
const USER_SS: u64 = 0x30 | 3;

fn user_page_jumping_to_a_supervisor_page(
    cpu: &mut gantry_frontend::state::CpuState,
    mem: &mut gantry_machine::memory::GuestMemory,
) {
    use gantry_machine::layout::{BOOT_GDT, BOOT_PD, BOOT_PDPT, BOOT_PML4};
    let assemble = |at: u64, f: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>| {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        a.assemble(at).unwrap()
    };
    let user = assemble(V, &|a| {
        a.mov(eax, 1)?;
        a.jmp(V + 0x1000)
    });
    let kernel = assemble(V + 0x1000, &|a| {
        a.add(eax, 1)?;
        a.ret()
    });
    mem.write(ONE, &user).unwrap();
    mem.write(TWO, &kernel).unwrap();
    mem.zero(PT, 0x1000).unwrap();
    mem.write_u64(PT, ONE | 7).unwrap();
    mem.write_u64(PT + 8, TWO | 3).unwrap();
    mem.write_u64(BOOT_PD + 3 * 8, PT | 7).unwrap();
    // User access needs the U bit at every level above the page too.
    for table in [BOOT_PML4, BOOT_PDPT] {
        let e = mem.read_u64(table).unwrap();
        mem.write_u64(table, e | 4).unwrap();
    }
    // Ring-3 64-bit code and data, and an available 64-bit TSS.
    mem.write_u64(BOOT_GDT + 0x28, 0x00AF_FB00_0000_FFFF)
        .unwrap();
    mem.write_u64(BOOT_GDT + 0x30, 0x00CF_F300_0000_FFFF)
        .unwrap();
    let tss = 0x67 | (TSS64 & 0xFF_FFFF) << 16 | 0x89u64 << 40;
    mem.write_u64(BOOT_GDT + 0x38, tss).unwrap();
    mem.write_u64(BOOT_GDT + 0x40, 0).unwrap();
    cpu.gdtr.limit = 0x47;
    mem.zero(TSS64, 0x68).unwrap();
    mem.write_u64(TSS64 + 4, RSP0).unwrap();
    cpu.tr = gantry_frontend::state::Segment {
        base: TSS64,
        limit: 0x67,
        selector: 0x38,
        attr: 0x8B,
    };
}

/// A block run in ring 0 and then in ring 3 at the same address: its direct exit into a
/// supervisor page, chained in ring 0, raises #PF in ring 3 rather than going on into
/// the ring-0 code through the link ring 0 made.
#[test]
fn a_link_made_in_ring_0_is_not_followed_in_ring_3() {
    let d = run(Mode::Long64, user_page_jumping_to_a_supervisor_page, |a| {
        let mut top = a.create_label();
        a.xor(ecx, ecx)?;
        a.set_label(&mut top)?;
        call_code_page(a)?;
        a.inc(ecx)?;
        a.cmp(ecx, 3)?;
        a.jne(top)?;
        a.push(USER_SS as i32)?;
        a.push(0x1_8000i32)?;
        a.push(2i32)?;
        a.push(USER_CS as i32)?;
        a.mov(rax, V)?;
        a.push(rax)?;
        a.iretq()
    });
    assert_eq!(results(&d)[..3], [2, 2, 2], "ring 0's calls");
    assert_eq!(d.vector(), Some(14), "#PF");
    assert_eq!(d.cpu.cr2, V + 0x1000, "at the supervisor page");
}
