//! #SS(0) rather than #GP(0) for a non-canonical stack access in 64-bit mode (SDM vol. 3,
//! "Interrupt 12—Stack Fault Exception").
//!
//! The softmmu sees linear addresses, not segments, so its canonical check raises #GP(0)
//! and records the address. When that fault ends a block, this cold path decodes the
//! faulting instruction again and asks iced-x86 which of its memory accesses go through
//! SS — explicit operands based on RSP or RBP, and the implicit ones of PUSH, POP, CALL,
//! RET, ENTER, LEAVE — and computes their addresses from the registers as of the
//! instruction. If the faulting address is one of them, the fault is #SS(0). Every access's
//! fast path stays one TLB compare; only a non-canonical fault pays for a decode.

use gantry_frontend::lift::CodeSource;
use gantry_frontend::state::CpuState;
use gantry_translator::Exception;
use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, Register};

use super::access::Ctx;
use super::Fetcher;

/// The fault an instruction's non-canonical access at `linear` raises: `e` (#GP(0)) or
/// #SS(0).
pub fn classify(cpu: &mut CpuState, ctx: &mut Ctx, e: Exception, linear: u64) -> Exception {
    if !cpu.mode64() {
        return e;
    }
    let rip = cpu.rip;
    let mut bytes = [0u8; 15];
    let mut got = 0;
    {
        let mut f = Fetcher {
            ctx,
            cpu,
            pages: Vec::new(),
        };
        while got < bytes.len() {
            match f.fetch(rip.wrapping_add(got as u64), &mut bytes[got..]) {
                Ok(n) if n > 0 => got += n,
                _ => break,
            }
        }
    }
    let mut d = Decoder::with_ip(64, &bytes[..got], rip, DecoderOptions::NONE);
    let ins = d.decode();
    if ins.is_invalid() {
        return e;
    }
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&ins);
    let gpr = cpu.gpr;
    let value = |r: Register, _: usize, _: usize| -> Option<u64> {
        let full = r.full_register();
        if r == Register::None {
            return Some(0);
        }
        if !full.is_gpr64() {
            // Segment bases (all zero for SS, DS, ES, CS in 64-bit mode).
            return Some(0);
        }
        let v = gpr[full as usize - Register::RAX as usize];
        Some(match r.size() {
            4 => v & 0xFFFF_FFFF,
            2 => v & 0xFFFF,
            _ => v,
        })
    };
    let (ss, other): (Vec<_>, Vec<_>) = info
        .used_memory()
        .iter()
        .partition(|m| m.segment() == Register::SS);
    // With only stack accesses, the fault was one of them (whatever address iced would
    // compute: BT's bit offset moves it); with both kinds, the address tells.
    let stack = !ss.is_empty()
        && (other.is_empty()
            || ss.iter().any(|m: &&iced_x86::UsedMemory| {
                m.virtual_address(0, value).is_some_and(|va| {
                    let size = m.memory_size().size().max(1) as u64;
                    linear.wrapping_sub(va) < size
                })
            }));
    if stack {
        Exception::with_code(12, 0)
    } else {
        e
    }
}
