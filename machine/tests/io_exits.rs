//! An OUT that ends the run (QEMU's isa-debug-exit at 0xF4) stops the CPU before the next
//! instruction, even one in the same block: both tiers end the block after an OUT and the
//! run loop looks at the board first.

mod cpu_harness;

use cpu_harness::*;
use gantry_devices::signals::SystemEvent;
use gantry_machine::accel::CpuStop;
use gantry_machine::board::BoardEvent;
use iced_x86::code_asm::*;

#[test]
fn out_to_the_debug_exit_port_ends_the_run_at_once() {
    for mode in [Mode::Real16, Mode::Protected32, Mode::Long64] {
        let d = run(
            mode,
            |_, _| {},
            |a| {
                a.mov(al, 0x10)?;
                a.out(0xF4, al)?;
                a.ud2()
            },
        );
        assert_eq!(
            d.stop,
            CpuStop::Board(BoardEvent::System(SystemEvent::DebugExit(0x10))),
            "{mode:?}"
        );
        assert_eq!(d.vector(), None, "{mode:?}: UD2 after the OUT never ran");
    }
}

#[test]
fn outs_to_the_debug_exit_port_ends_the_run_at_once() {
    let d = run(
        Mode::Long64,
        |cpu, mem| {
            mem.write(DATA, &[0x21]).unwrap();
            cpu.gpr[6] = DATA; // RSI
        },
        |a| {
            a.mov(dx, 0xF4)?;
            a.outsb()?;
            a.ud2()
        },
    );
    assert_eq!(
        d.stop,
        CpuStop::Board(BoardEvent::System(SystemEvent::DebugExit(0x21)))
    );
    assert_eq!(d.vector(), None);
}
