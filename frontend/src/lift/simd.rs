//! SSE/SSE2 instructions: the typed operation and its operand forms are described to the
//! `Sse` helper (which moves values between XMM registers, general registers and memory);
//! what they do is [`crate::sse_op`]'s.

use iced_x86::{Mnemonic, OpKind};

use super::operands::gpr_index;
use super::{Flow, Lift};
use crate::ir::*;
use crate::sse_op::{needs_alignment, SseOp, SseOperand};

impl Lift<'_> {
    pub(super) fn simd(&mut self) -> Option<Flow> {
        let i = self.ins;
        // The conversions to an integer name no XMM register in their memory forms
        // (CVTSD2SI r32, m64). Tested by mnemonic, not through iced's op-code tables, whose
        // first use costs milliseconds.
        let touches_xmm = (0..i.op_count())
            .any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n).is_xmm())
            || matches!(
                i.mnemonic(),
                Mnemonic::Cvtsd2si | Mnemonic::Cvttsd2si | Mnemonic::Cvtss2si | Mnemonic::Cvttss2si
            );
        if !touches_xmm {
            return None;
        }
        let m = i.mnemonic();
        let Some(op) = SseOp::of(m) else {
            return Some(self.unimplemented());
        };
        let mut value = self.b.konst(Ty::I64, 0);
        let mut imm = 0u64;
        let mut ops = [SseOperand::None; 2];
        for n in 0..i.op_count().min(3) {
            let op = match i.op_kind(n) {
                OpKind::Register if i.op_register(n).is_xmm() => SseOperand::Xmm(
                    (i.op_register(n) as u32 - iced_x86::Register::XMM0 as u32) as u8,
                ),
                OpKind::Register => {
                    let r = i.op_register(n);
                    let (idx, _) = gpr_index(r)?;
                    if n > 0 {
                        let v = self.read_gpr(r);
                        value = self.b.zext(Ty::I64, v);
                    }
                    SseOperand::Gpr(idx, r.size() as u8)
                }
                OpKind::Memory => {
                    value = self.mem_address();
                    let bytes = i.memory_size().size() as u32;
                    // Misalignment is checked before the segment's limit (as the host
                    // CPU does it: a misaligned operand past SS's limit is #GP(0), not
                    // #SS(0)).
                    if needs_alignment(m, bytes) {
                        let low = self.b.bin_imm(BinOp::And, value, 15);
                        let zero = self.b.konst(Ty::I64, 0);
                        let misaligned = self.b.cmp(CmpOp::Ne, low, zero);
                        self.b.trap_if(misaligned, 13, Some(0));
                    }
                    // The helper reads a source operand and writes a destination one.
                    self.check_operand(value, bytes, n == 0);
                    SseOperand::Memory
                }
                _ => {
                    imm = i.immediate(n) & 0xFF;
                    SseOperand::None
                }
            };
            if (n as usize) < 2 {
                ops[n as usize] = op;
            }
        }
        let mem_bytes = i.memory_size().size() as u64;
        let args = [
            self.b.konst(Ty::I64, op.encode()),
            self.b.konst(Ty::I64, ops[0].encode()),
            self.b.konst(Ty::I64, ops[1].encode()),
            value,
            self.b.konst(Ty::I64, imm),
            self.b.konst(Ty::I64, mem_bytes),
        ];
        self.b.call(Helper::Sse, &args);
        Some(Flow::Next)
    }
}
