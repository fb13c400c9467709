//! The x86 architecture for Gantry: the CPU state layout ([`state`]), lazy flags
//! ([`flags`]), the IR ([`ir`]) and the lifter that turns x86 (decoded by iced-x86) into it
//! ([`lift`]). This crate is the one place where x86 instruction semantics are written; it
//! never calls into the machine.

pub mod arith;
pub mod bcd;
pub mod flags;
pub mod ir;
pub mod ir_text;
pub mod lift;
pub mod sse;
pub mod sse_fp;
pub mod sse_op;
pub mod state;
pub mod vendor;
pub mod x87;

pub use iced_x86;
