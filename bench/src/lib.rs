//! Gantry's benchmarks live in `benches/` (criterion): `cargo bench -p gantry-bench`.
//!
//! - `io_dispatch`: the device side of a port I/O exit (bus lookup, device access, the
//!   board's per-exit service), which every KVM I/O exit and every emulated IN/OUT pays.

use std::rc::Rc;

use gantry_devices::clock::{Clock, HostClock};
use gantry_machine::board::{Board, BoardConfig};
use gantry_machine::console::HostConsole;

/// A PC board with no console and serial output discarded, as the benchmarks use it.
pub fn quiet_board(ram_size: u64) -> Board {
    let clock: Rc<dyn Clock> = Rc::new(HostClock::new());
    Board::new(BoardConfig::bare(ram_size), clock, HostConsole::none()).expect("board")
}
