//! The running computer: guest memory, the PC board and its devices, loaders, and the
//! two ways of executing the guest behind one vCPU interface (`accel`): KVM, and the
//! emulated CPU (`accel::emu`: the run loop, softmmu and system semantics around the
//! translator's interpreter and JIT).
//!
//! This crate owns everything about a PC except instruction semantics (in `frontend`) and
//! their execution (in `translator`); it never reaches into a device's internals beyond the
//! bus, IRQ and timer interfaces of `gantry-devices`.

pub mod accel;
pub mod board;
pub mod boot;
pub mod console;
pub mod drives;
pub mod e820;
pub mod layout;
pub mod memory;
pub mod vm;

pub use vm::{AccelKind, BootSource, Machine, MachineConfig, MachineError, RunOutcome};
