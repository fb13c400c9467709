//! The device side of port I/O: what each KVM I/O exit (and each emulated IN/OUT) costs
//! once it reaches the board.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gantry_machine::board::Board;

fn board() -> Board {
    gantry_bench::quiet_board(256 << 20)
}

fn io(c: &mut Criterion) {
    let mut b = board();
    c.bench_function("uart_lsr_read", |bench| {
        bench.iter(|| {
            let mut d = [0u8];
            b.pio_read(black_box(0x3FD), &mut d);
            d[0]
        })
    });
    c.bench_function("uart_thr_write", |bench| {
        bench.iter(|| b.pio_write(black_box(0x3F8), b"x"))
    });
    // Program PIT channel 0 as Linux does, then time latch + two reads.
    b.pio_write(0x43, &[0x34]);
    b.pio_write(0x40, &[0x9C]);
    b.pio_write(0x40, &[0x2E]);
    c.bench_function("pit_latch_and_read", |bench| {
        bench.iter(|| {
            let mut d = [0u8];
            b.pio_write(0x43, &[0x00]);
            b.pio_read(0x40, &mut d);
            b.pio_read(0x40, &mut d);
            d[0]
        })
    });
    c.bench_function("unassigned_port_read", |bench| {
        bench.iter(|| {
            let mut d = [0u8; 4];
            b.pio_read(black_box(0x2F0), &mut d);
            d[0]
        })
    });
    c.bench_function("board_service_per_exit", |bench| {
        bench.iter(|| {
            b.service();
            b.interrupt_pending()
        })
    });
}

criterion_group!(benches, io);
criterion_main!(benches);
