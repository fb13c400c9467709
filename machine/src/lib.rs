//! The running computer: guest memory, the PC board and its devices, loaders, and the
//! accelerators that execute the guest (KVM now; the emulated CPU next).
//!
//! This crate owns everything about a PC except instruction semantics (in `frontend`) and
//! their execution (in `translator`); it never reaches into a device's internals beyond the
//! bus, IRQ and timer interfaces of `gantry-devices`.

pub mod accel;
pub mod board;
pub mod boot;
pub mod console;
pub mod cpu;
pub mod difftest;
pub mod e820;
pub mod gdb;
pub mod layout;
pub mod memory;
pub mod vm;

pub use vm::{AccelKind, BootSource, Machine, MachineConfig, MachineError, RunOutcome};
