//! Gantry's benchmarks live in `benches/` (criterion): `cargo bench -p gantry-bench`.
//!
//! - `io_dispatch`: the device side of a port I/O exit (bus lookup, device access, the
//!   board's per-exit service), which every KVM I/O exit and every emulated IN/OUT pays.
