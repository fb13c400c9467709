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
