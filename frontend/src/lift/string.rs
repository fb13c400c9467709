//! String instructions (MOVS, STOS, LODS, CMPS, SCAS, INS, OUTS) with REP/REPE/REPNE.
//!
//! A REP instruction does one element per execution of its block and jumps back to itself
//! while the count lasts, so it is interruptible and restartable at every element, as on
//! hardware. (Doing runs of elements at once is a later optimisation.)

use iced_x86::{Mnemonic as M, OpKind, Register};

use super::operands::seg_index;
use super::{Flow, Lift};
use crate::flags::{CcKind, CcOp};
use crate::ir::*;
use crate::state::{DF, ES};
use crate::vendor::{CmpsOrder, RepCompareFlags};

fn addr_regs(bits: u32) -> (Register, Register, Register) {
    match bits {
        16 => (Register::SI, Register::DI, Register::CX),
        32 => (Register::ESI, Register::EDI, Register::ECX),
        _ => (Register::RSI, Register::RDI, Register::RCX),
    }
}

impl Lift<'_> {
    pub(super) fn string(&mut self) -> Option<Flow> {
        let i = self.ins;
        let kinds = [
            i.op0_kind(),
            if i.op_count() > 1 {
                i.op1_kind()
            } else {
                OpKind::Register
            },
        ];
        let bits = kinds.iter().find_map(|k| match k {
            OpKind::MemorySegSI | OpKind::MemoryESDI => Some(16),
            OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(32),
            OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(64),
            _ => None,
        })?;
        let m = i.mnemonic();
        let kind = match m {
            M::Movsb | M::Movsw | M::Movsd | M::Movsq => M::Movsb,
            M::Stosb | M::Stosw | M::Stosd | M::Stosq => M::Stosb,
            M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => M::Lodsb,
            M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => M::Cmpsb,
            M::Scasb | M::Scasw | M::Scasd | M::Scasq => M::Scasb,
            M::Insb | M::Insw | M::Insd => M::Insb,
            M::Outsb | M::Outsw | M::Outsd => M::Outsb,
            _ => return None,
        };
        let ety = Ty::from_bytes(i.memory_size().size() as u32);
        let aty = Ty::from_bytes(bits / 8);
        let (rsi, rdi, rcx) = addr_regs(bits);
        let rep = i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix();
        let this = i.ip();
        let next = self.next_ip();

        let mut count = None;
        if rep {
            let c = self.read_gpr(rcx);
            let zero = self.b.cmp_imm(CmpOp::Eq, c, 0);
            self.b.push(Inst::ExitIf { cond: zero, next });
            count = Some(c);
        }

        // DF is never lazy: RFLAGS holds it.
        let f = self.b.get(Loc::Rflags);
        let df = self.b.bin_imm(BinOp::And, f, DF);
        let down = self.b.cmp_imm(CmpOp::Ne, df, 0);
        let plus = self.b.konst(aty, ety.bytes() as u64);
        let minus = self.b.konst(aty, (ety.bytes() as u64).wrapping_neg());
        let step = self.b.select(down, minus, plus);
        let src_seg = seg_index(i.memory_segment());
        let acc = match ety {
            Ty::I8 => Register::AL,
            Ty::I16 => Register::AX,
            Ty::I32 => Register::EAX,
            Ty::I64 => Register::RAX,
        };

        let (si, di) = (self.read_gpr(rsi), self.read_gpr(rdi));
        let src = self.linear(src_seg, si);
        let dst = self.linear(ES, di);
        let (mut adv_si, mut adv_di) = (false, false);
        let mut compare: Option<(Val, Val)> = None;
        match kind {
            M::Movsb => {
                let v = self.load_mem(src_seg, ety, src);
                self.store_mem(ES, dst, v);
                adv_si = true;
                adv_di = true;
            }
            M::Stosb => {
                let v = self.read_gpr(acc);
                self.store_mem(ES, dst, v);
                adv_di = true;
            }
            M::Lodsb => {
                let v = self.load_mem(src_seg, ety, src);
                self.write_gpr(acc, v);
                adv_si = true;
            }
            M::Cmpsb => {
                let (a, c) = match self.mode.vendor.cmps_order() {
                    CmpsOrder::DestinationFirst => {
                        let c = self.load_mem(ES, ety, dst);
                        (self.load_mem(src_seg, ety, src), c)
                    }
                    CmpsOrder::SourceFirst => {
                        let a = self.load_mem(src_seg, ety, src);
                        (a, self.load_mem(ES, ety, dst))
                    }
                };
                compare = Some((a, c));
                adv_si = true;
                adv_di = true;
            }
            M::Scasb => {
                let a = self.read_gpr(acc);
                let c = self.load_mem(ES, ety, dst);
                compare = Some((a, c));
                adv_di = true;
            }
            M::Insb => {
                let dx = self.read_gpr(Register::DX);
                let port = self.b.zext(Ty::I64, dx);
                let size = self.b.konst(Ty::I64, ety.bytes() as u64);
                self.b.call(Helper::IoPermission, &[port, size]);
                // A dummy store first, as QEMU does: a fault on the destination, or compiled
                // code's stop before a store to translated code (which runs the instruction
                // again on the interpreter), then comes before the port is read, so the
                // read happens once. (Reading twice lost a word of every IDE sector read
                // into a page holding translated code.)
                let zero = self.b.konst(ety, 0);
                self.store_mem(ES, dst, zero);
                let v = self.b.call_value(Helper::In(ety.bytes()), &[port], Ty::I64);
                let v = self.b.trunc(ety, v);
                self.store_mem(ES, dst, v);
                adv_di = true;
            }
            _ => {
                let dx = self.read_gpr(Register::DX);
                let port = self.b.zext(Ty::I64, dx);
                let size = self.b.konst(Ty::I64, ety.bytes() as u64);
                self.b.call(Helper::IoPermission, &[port, size]);
                let v = self.load_mem(src_seg, ety, src);
                let v = self.b.zext(Ty::I64, v);
                self.b.call(Helper::Out(ety.bytes()), &[port, v]);
                adv_si = true;
            }
        }
        if adv_si {
            let n = self.b.bin(BinOp::Add, si, step);
            self.write_gpr(rsi, n);
        }
        if adv_di {
            let n = self.b.bin(BinOp::Add, di, step);
            self.write_gpr(rdi, n);
        }
        let Some(c) = count else {
            if let Some((a, c)) = compare {
                self.compare_flags(a, c);
            }
            // OUTS, like OUT, has the run loop look before the next instruction.
            if matches!(i.mnemonic(), M::Outsb | M::Outsw | M::Outsd) {
                return Some(self.exit_sync());
            }
            return Some(Flow::Next);
        };
        let c = self.b.bin_imm(BinOp::Sub, c, 1);
        self.write_gpr(rcx, c);
        let mut more = self.b.cmp_imm(CmpOp::Ne, c, 0);
        let Some((a, c)) = compare else {
            self.b.push(Inst::Branch {
                cond: more,
                taken: this,
                not_taken: next,
            });
            return Some(Flow::End);
        };
        // REPE/REPNE: the next element runs while the count lasts and the elements compare
        // as the prefix asks. The vendor says whether each element writes the flags or
        // only the last: then a fault in a later element finds them as they were before
        // the instruction.
        let while_ = if i.has_repne_prefix() {
            CmpOp::Ne
        } else {
            CmpOp::Eq
        };
        let holds = self.b.cmp(while_, a, c);
        more = self.b.bin(BinOp::And, more, holds);
        let at_completion = self.mode.vendor.rep_compare_flags() == RepCompareFlags::AtCompletion;
        if !at_completion {
            self.compare_flags(a, c);
        }
        self.b.push(Inst::ExitIf {
            cond: more,
            next: this,
        });
        if at_completion {
            self.compare_flags(a, c);
        }
        self.b.push(Inst::Exit {
            next,
            why: ExitWhy::Continue,
        });
        Some(Flow::End)
    }

    /// The flags of CMPS and SCAS: those of `a - c`.
    fn compare_flags(&mut self, a: Val, c: Val) {
        let ty = self.b.ty(a);
        let r = self.b.bin(BinOp::Sub, a, c);
        let z = self.b.konst(ty, 0);
        self.b
            .set_flags(CcOp::new(CcKind::Sub, ty.bytes()), r, c, z);
    }
}
