//! Interpreter speed in guest MIPS on three loops (the CPU issue's goals: at least 150 MIPS
//! on the integer loop), and decode+lift cost per guest instruction (goal: at most 150 ns).
//!
//! Each loop runs as a flat 32-bit multiboot-style guest on a real board, ending through
//! the debug-exit port; criterion's throughput is in guest instructions.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gantry_frontend::lift::{self, CodeBytes, Mode};
use gantry_machine::accel::emu::{Compiles, EmuCpu};
use gantry_machine::accel::vcpu::Vcpu;
use gantry_machine::board::Board;
use gantry_machine::boot::entry;
use gantry_machine::memory::GuestMemory;
use iced_x86::code_asm::*;

const ENTRY: u64 = 0x10_0000;
const ITER: u32 = 200_000;

fn board() -> Board {
    gantry_bench::quiet_board(64 << 20)
}

/// Assembles `body` (32-bit) followed by an exit through port 0xF4.
fn program(body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).expect("asm");
    body(&mut a).expect("asm");
    a.mov(dx, 0xF4u32).expect("asm");
    a.out(dx, eax).expect("asm");
    a.hlt().expect("asm");
    a.assemble(ENTRY).expect("asm")
}

fn integer_loop(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.mov(ecx, ITER)?;
    a.xor(eax, eax)?;
    a.set_label(&mut top)?;
    a.add(eax, ecx)?;
    a.xor(ebx, eax)?;
    a.shl(ebx, 3)?;
    a.sub(eax, ebx)?;
    a.dec(ecx)?;
    a.jnz(top)
}

fn memcpy_loop(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.mov(ecx, ITER)?;
    a.mov(esi, 0x20_0000)?;
    a.mov(edi, 0x30_0000)?;
    a.set_label(&mut top)?;
    a.mov(eax, dword_ptr(esi))?;
    a.mov(dword_ptr(edi), eax)?;
    a.add(esi, 4)?;
    a.add(edi, 4)?;
    a.and(esi, 0x20_FFFF)?;
    a.and(edi, 0x30_FFFF)?;
    a.dec(ecx)?;
    a.jnz(top)
}

fn call_loop(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut func = a.create_label();
    let mut done = a.create_label();
    a.mov(esp, 0x8_0000)?;
    a.mov(ecx, ITER)?;
    a.set_label(&mut top)?;
    a.call(func)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.jmp(done)?;
    a.set_label(&mut func)?;
    a.push(ebp)?;
    a.mov(ebp, esp)?;
    a.inc(eax)?;
    a.pop(ebp)?;
    a.ret()?;
    a.set_label(&mut done)?;
    a.nop()
}

fn run_program(code: &[u8], jit: bool) -> u64 {
    let mut mem = GuestMemory::new(64 << 20, None).expect("memory");
    mem.write(ENTRY, code).expect("load");
    mem.write(
        0x500,
        &entry::gdt_image(&entry::protected_flat(0))
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .expect("gdt");
    let mut b = board();
    let mut cpu = EmuCpu::new(entry::protected_flat(ENTRY as u32), 64 << 20);
    if jit {
        // Compiled at once, so that what the loops measure is the generated code.
        cpu.enable_jit(gantry_translator::jit::HOT, Compiles::Inline)
            .expect("jit");
    }
    black_box(cpu.run_to_end(&mut mem, &mut b));
    cpu.instructions()
}

/// The three loops on the interpreter (group `interp`) and on the JIT (group `jit`: the
/// whole run, compile time included, with the machine's hotness threshold).
fn loops(c: &mut Criterion) {
    for (group, jit) in [("interp", false), ("jit", true)] {
        let mut g = c.benchmark_group(group);
        g.sample_size(10);
        for (name, body) in [
            (
                "integer_loop",
                integer_loop as fn(&mut CodeAssembler) -> Result<(), IcedError>,
            ),
            ("memcpy_loop", memcpy_loop),
            ("call_loop", call_loop),
        ] {
            let code = program(body);
            let insns = run_program(&code, jit);
            g.throughput(Throughput::Elements(insns));
            g.bench_function(name, |b| b.iter(|| run_program(&code, jit)));
        }
        g.finish();
    }
}

fn decode_lift(c: &mut Criterion) {
    // A block of typical integer code: the integer loop's body, repeated.
    let mut a = CodeAssembler::new(64).expect("asm");
    for _ in 0..8 {
        a.add(rax, rcx).expect("asm");
        a.mov(rbx, qword_ptr(rsp + 8)).expect("asm");
        a.lea(rdx, qword_ptr(rbx + rcx * 4 + 16)).expect("asm");
        a.cmp(rdx, rax).expect("asm");
        a.mov(qword_ptr(rdi), rdx).expect("asm");
    }
    a.ret().expect("asm");
    let code = a.assemble(0x1000).expect("asm");
    let mode = Mode::long64(gantry_frontend::vendor::Vendor::Intel);
    let lift = || {
        let mut src = CodeBytes {
            at: 0x1000,
            bytes: &code,
        };
        lift::translate(&mut src, 0x1000, 0, mode).expect("lift")
    };
    let n = lift().guest_insns;
    let mut g = c.benchmark_group("lifter");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("decode_and_lift_block", |b| b.iter(lift));
    g.finish();
}

criterion_group!(benches, loops, decode_lift);
criterion_main!(benches);
