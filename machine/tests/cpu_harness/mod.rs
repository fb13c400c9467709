//! Runs small guest programs on the emulated CPU: assembled with iced-x86's code_asm,
//! started in 16-bit real, 32-bit protected or 64-bit long mode, stopped by HLT with
//! interrupts off. Exceptions go to stubs that record the vector at [`VECTOR_AT`] and halt,
//! so a test can check both the exception and the frame it pushed.

#![allow(dead_code)]

use std::rc::Rc;

use gantry_devices::clock::{Clock, ManualClock};
use gantry_frontend::state::CpuState;
use gantry_machine::accel::emu::cpuid::Vendor;
use gantry_machine::accel::emu::{Compiles, EmuCpu};
use gantry_machine::accel::vcpu::{Ended, Vcpu};
use gantry_machine::accel::CpuStop;
use gantry_machine::board::{Board, BoardConfig};
use gantry_machine::boot::entry;
use gantry_machine::boot::tables::{write_gdt, write_identity_paging};
use gantry_machine::console::HostConsole;
use gantry_machine::memory::GuestMemory;
use iced_x86::code_asm::*;

pub const CODE: u64 = 0x2_0000;
pub const IDT: u64 = 0x3000;
pub const STUBS: u64 = 0x4000;
/// The vector of the last exception, +1 (0 = none).
pub const VECTOR_AT: u64 = 0x6000;
pub const STACK: u64 = 0x8000;
pub const DATA: u64 = 0x1_0000;
const RAM: u64 = 32 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Real16,
    Protected32,
    Long64,
}

pub struct Done {
    pub cpu: CpuState,
    pub mem: GuestMemory,
    pub stop: CpuStop,
    /// Guest instructions the CPU completed.
    pub insns: u64,
}

impl Done {
    /// The exception vector taken, if any.
    pub fn vector(&self) -> Option<u8> {
        match self.mem.read_u32(VECTOR_AT).unwrap() {
            0 => None,
            v => Some((v - 1) as u8),
        }
    }
    pub fn u64_at(&self, a: u64) -> u64 {
        self.mem.read_u64(a).unwrap()
    }
    pub fn u32_at(&self, a: u64) -> u32 {
        self.mem.read_u32(a).unwrap()
    }
    pub fn bytes_at(&self, a: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.mem.read(a, &mut v).unwrap();
        v
    }
    pub fn flags(&self) -> u64 {
        gantry_frontend::flags::rflags(&self.cpu)
    }
}

fn bits(mode: Mode) -> u32 {
    match mode {
        Mode::Real16 => 16,
        Mode::Protected32 => 32,
        Mode::Long64 => 64,
    }
}

/// Exception stubs: stub v at STUBS + 16*v stores v+1 at VECTOR_AT and halts.
fn stubs(mode: Mode) -> Vec<u8> {
    let mut out = Vec::new();
    for v in 0..32u32 {
        let mut a = CodeAssembler::new(bits(mode)).unwrap();
        a.mov(eax, v + 1).unwrap();
        a.mov(dword_ptr(VECTOR_AT), eax).unwrap();
        a.cli().unwrap();
        a.hlt().unwrap();
        let mut code = a.assemble(STUBS + v as u64 * 16).unwrap();
        assert!(code.len() <= 16, "stub too long: {}", code.len());
        code.resize(16, 0x90);
        out.extend(code);
    }
    out
}

/// Runs `code` in `mode`; `setup` may adjust registers and memory first. The program runs
/// on the interpreter and again on the JIT (every block compiled at its first run), and
/// the two must end in the same state and memory.
pub fn run(
    mode: Mode,
    setup: impl Fn(&mut CpuState, &mut GuestMemory),
    code: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Done {
    run_as(Vendor::default(), mode, setup, code)
}

/// [`run`] on a model of `vendor`.
pub fn run_as(
    vendor: Vendor,
    mode: Mode,
    setup: impl Fn(&mut CpuState, &mut GuestMemory),
    code: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Done {
    let interp = run_on(vendor, mode, &setup, &code, false);
    let jit = run_on(vendor, mode, &setup, &code, true);
    assert_eq!(interp.cpu, jit.cpu, "the JIT ends in another state");
    assert_eq!(interp.insns, jit.insns, "the JIT counts other instructions");
    assert_eq!(
        format!("{:?}", interp.stop),
        format!("{:?}", jit.stop),
        "the JIT stops otherwise"
    );
    let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
    for page in 0..RAM >> 12 {
        // Pages without RAM behind them (the legacy hole) read as errors on both.
        if interp.mem.read(page << 12, &mut a).is_ok() {
            jit.mem.read(page << 12, &mut b).unwrap();
            assert!(a == b, "the JIT leaves other memory at {:#x}", page << 12);
        }
    }
    interp
}

fn run_on(
    vendor: Vendor,
    mode: Mode,
    setup: &impl Fn(&mut CpuState, &mut GuestMemory),
    code: &impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
    jit: bool,
) -> Done {
    let mut mem = GuestMemory::new(RAM, None).unwrap();
    let start = match mode {
        Mode::Real16 => {
            let mut e = CpuState::reset();
            e.seg[gantry_frontend::state::CS] =
                gantry_frontend::state::Segment::real((CODE >> 4) as u16, true);
            e.rip = 0;
            e.gpr[4] = STACK;
            e.gdtr.limit = 0xFFFF;
            e
        }
        Mode::Protected32 => {
            let mut e = entry::protected_flat(CODE as u32);
            e.gpr[4] = STACK;
            e
        }
        Mode::Long64 => {
            let mut e = entry::long_mode(CODE);
            e.gpr[4] = STACK;
            write_identity_paging(&mut mem).unwrap();
            e
        }
    };
    if mode != Mode::Real16 {
        write_gdt(&mut mem, &start).unwrap();
    }
    mem.write(STUBS, &stubs(mode)).unwrap();
    // The interrupt table: IVT, 32-bit or 64-bit interrupt gates to the stubs.
    for v in 0..32u64 {
        let stub = STUBS + v * 16;
        match mode {
            Mode::Real16 => {
                // Real-mode handlers run with CS = 0: the stubs are below 64 KiB.
                mem.write(v * 4, &((stub as u32) & 0xFFFF).to_le_bytes())
                    .unwrap();
            }
            Mode::Protected32 => {
                let g = (stub & 0xFFFF) | 0x10 << 16 | 0x8E00u64 << 32 | (stub >> 16) << 48;
                mem.write_u64(IDT + v * 8, g).unwrap();
            }
            Mode::Long64 => {
                let g =
                    (stub & 0xFFFF) | 0x10 << 16 | 0x8E00u64 << 32 | ((stub >> 16) & 0xFFFF) << 48;
                mem.write_u64(IDT + v * 16, g).unwrap();
                mem.write_u64(IDT + v * 16 + 8, stub >> 32).unwrap();
            }
        }
    }
    let mut a = CodeAssembler::new(bits(mode)).unwrap();
    code(&mut a).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    let ip = if mode == Mode::Real16 { 0 } else { CODE };
    mem.write(CODE, &a.assemble(ip).unwrap()).unwrap();

    let clock = Rc::new(ManualClock::new(0));
    let dyn_clock: Rc<dyn Clock> = clock;
    let mut board = Board::new(BoardConfig::bare(RAM), dyn_clock, HostConsole::none()).unwrap();
    let mut cpu = EmuCpu::new(start.clone(), RAM);
    cpu.set_vendor(vendor);
    if jit {
        cpu.enable_jit(1, Compiles::Inline).unwrap();
    }
    match mode {
        Mode::Real16 => cpu.state.idtr.limit = 0x3FF,
        Mode::Protected32 => {
            cpu.state.idtr.base = IDT;
            cpu.state.idtr.limit = 32 * 8 - 1;
        }
        Mode::Long64 => {
            cpu.state.idtr.base = IDT;
            cpu.state.idtr.limit = 32 * 16 - 1;
        }
    }
    setup(&mut cpu.state, &mut mem);
    let stop = match cpu.run_to_end(&mut mem, &mut board) {
        Ended::Stop(stop) => stop,
        Ended::Failed(e) => panic!("the emulated CPU failed: {e}"),
    };
    Done {
        insns: cpu.instructions(),
        cpu: cpu.state,
        mem,
        stop,
    }
}

/// Runs in 64-bit mode with no setup.
pub fn run64(code: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>) -> Done {
    run(Mode::Long64, |_, _| {}, code)
}
