//! Control flow and the stack: jumps, calls, returns, loops, PUSH/POP and their variants,
//! software interrupts, and the far transfers (through helpers, which load descriptors).

use iced_x86::{MemorySize, Mnemonic as M, OpKind, Register};

use super::alu::cond_of;
use super::operands::seg_index;
use super::{Flow, Lift};
use crate::ir::*;
use crate::state::{RBP, SS};
use crate::vendor::PopaFault;

impl Lift<'_> {
    /// The form's operand size in bytes (iced's operand data: 16, 32 or 64 bits), which
    /// sizes the offset of a far transfer and the stack slots of RETF, LEAVE, PUSHF, ...
    fn operand_bytes(&self) -> u32 {
        match self.ins.code().op_code().operand_size() {
            64 => 8,
            32 => 4,
            _ => 2,
        }
    }

    /// JMP/CALL m16:16, m16:32 or m16:64: a far pointer in memory.
    fn far_pointer_operand(&self) -> bool {
        matches!(
            self.ins.memory_size(),
            MemorySize::SegPtr16 | MemorySize::SegPtr32 | MemorySize::SegPtr64
        )
    }

    fn far_bytes(&self) -> u64 {
        self.operand_bytes() as u64
    }

    fn suffix_bytes(&self) -> u32 {
        self.operand_bytes()
    }

    fn jump_to(&mut self, target: Val) -> Flow {
        let t = self.b.zext(Ty::I64, target);
        self.b.push(Inst::Jump { target: t });
        Flow::End
    }

    fn jump_const(&mut self, target: u64) -> Flow {
        let t = self.b.konst(Ty::I64, target);
        self.jump_to(t)
    }

    /// After a helper that set CS:RIP itself.
    fn jump_to_state_rip(&mut self) -> Flow {
        let t = self.b.get(Loc::Rip);
        self.jump_to(t)
    }

    pub(super) fn control(&mut self) -> Option<Flow> {
        let m = self.ins.mnemonic();
        let next = self.next_ip();
        Some(match m {
            M::Jmp => match self.ins.op0_kind() {
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                    self.jump_const(self.ins.near_branch_target())
                }
                OpKind::FarBranch16 | OpKind::FarBranch32 => self.far_transfer_imm(Helper::FarJmp),
                _ if self.far_pointer_operand() => self.far_transfer_mem(Helper::FarJmp),
                _ => {
                    let ty = self.op_ty(0);
                    let t = self.read_op(0, ty);
                    self.jump_to(t)
                }
            },
            M::Jo
            | M::Jno
            | M::Jb
            | M::Jae
            | M::Je
            | M::Jne
            | M::Jbe
            | M::Ja
            | M::Js
            | M::Jns
            | M::Jp
            | M::Jnp
            | M::Jl
            | M::Jge
            | M::Jle
            | M::Jg => {
                let c = self.b.test(cond_of(self.ins.condition_code()));
                self.b.push(Inst::Branch {
                    cond: c,
                    taken: self.ins.near_branch_target(),
                    not_taken: next,
                });
                Flow::End
            }
            M::Call => match self.ins.op0_kind() {
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                    let bytes = (-self.ins.stack_pointer_increment()) as u32;
                    let ret = self.b.konst(Ty::I64, next);
                    self.push(ret, bytes);
                    self.jump_const(self.ins.near_branch_target())
                }
                OpKind::FarBranch16 | OpKind::FarBranch32 => self.far_transfer_imm(Helper::FarCall),
                _ if self.far_pointer_operand() => self.far_transfer_mem(Helper::FarCall),
                _ => {
                    let bytes = (-self.ins.stack_pointer_increment()) as u32;
                    let ty = self.op_ty(0);
                    let t = self.read_op(0, ty);
                    let ret = self.b.konst(Ty::I64, next);
                    self.push(ret, bytes);
                    self.jump_to(t)
                }
            },
            M::Ret => {
                let imm = if self.ins.op_count() > 0 {
                    self.ins.immediate16() as i32
                } else {
                    0
                };
                let bytes = (self.ins.stack_pointer_increment() - imm) as u32;
                let (v, nsp) = self.peek_pop(bytes, 0);
                let nsp = if imm != 0 {
                    self.b.bin_imm(BinOp::Add, nsp, imm as u64)
                } else {
                    nsp
                };
                self.write_sp(nsp);
                self.jump_to(v)
            }
            M::Retf => {
                let imm = if self.ins.op_count() > 0 {
                    self.ins.immediate16() as u64
                } else {
                    0
                };
                let bytes = self.suffix_bytes() as u64;
                self.b.call_k(Helper::FarRet, &[bytes, imm]);
                self.jump_to_state_rip()
            }
            M::Iret | M::Iretd | M::Iretq => {
                let bytes = match m {
                    M::Iret => 2,
                    M::Iretd => 4,
                    _ => 8,
                };
                self.b.call_k(Helper::Iret, &[bytes, next]);
                self.jump_to_state_rip()
            }
            M::Loop | M::Loope | M::Loopne => {
                // The counter is the address size's: CX, ECX or RCX.
                let reg = match self.ins.code().op_code().address_size() {
                    64 => Register::RCX,
                    32 => Register::ECX,
                    _ => Register::CX,
                };
                let c = self.read_gpr(reg);
                let c = self.b.bin_imm(BinOp::Sub, c, 1);
                self.write_gpr(reg, c);
                let mut go = self.b.cmp_imm(CmpOp::Ne, c, 0);
                if m != M::Loop {
                    let z = self.b.test(if m == M::Loope {
                        crate::flags::Cond::E
                    } else {
                        crate::flags::Cond::Ne
                    });
                    go = self.b.bin(BinOp::And, go, z);
                }
                self.b.push(Inst::Branch {
                    cond: go,
                    taken: self.ins.near_branch_target(),
                    not_taken: next,
                });
                Flow::End
            }
            M::Jcxz | M::Jecxz | M::Jrcxz => {
                let reg = match m {
                    M::Jcxz => Register::CX,
                    M::Jecxz => Register::ECX,
                    _ => Register::RCX,
                };
                let c = self.read_gpr(reg);
                let z = self.b.cmp_imm(CmpOp::Eq, c, 0);
                self.b.push(Inst::Branch {
                    cond: z,
                    taken: self.ins.near_branch_target(),
                    not_taken: next,
                });
                Flow::End
            }
            M::Push => {
                let bytes = (-self.ins.stack_pointer_increment()) as u32;
                let ty = Ty::from_bytes(bytes);
                let v = if self.ins.op0_kind() == OpKind::Register
                    && self.ins.op0_register().is_segment_register()
                {
                    let s = self
                        .b
                        .get(Loc::SegSelector(seg_index(self.ins.op0_register()) as u8));
                    self.b.zext(ty, s)
                } else {
                    self.read_op(0, ty)
                };
                self.push(v, bytes);
                Flow::Next
            }
            M::Pop => {
                let bytes = self.ins.stack_pointer_increment() as u32;
                let (v, nsp) = self.peek_pop(bytes, 0);
                if self.ins.op0_kind() == OpKind::Register
                    && self.ins.op0_register().is_segment_register()
                {
                    let seg = seg_index(self.ins.op0_register()) as u8;
                    let v64 = self.b.zext(Ty::I64, v);
                    self.b.call(Helper::LoadSeg(seg), &[v64]);
                    self.write_sp(nsp);
                    // POP SS inhibits interrupts for one instruction; any segment load may
                    // change what the next block's translation assumes.
                    return Some(self.exit_sync());
                }
                match self.ins.op0_kind() {
                    OpKind::Register => {
                        self.write_sp(nsp);
                        self.write_gpr(self.ins.op0_register(), v);
                    }
                    _ => {
                        // With the stack pointer in the address, the address is computed
                        // after the pop's increment (SDM, POP): compute it with the new
                        // SP in place, then put the old one back until the store is done,
                        // so that a faulting store leaves SP as it was. Found by difftest.
                        let uses_sp = [self.ins.memory_base(), self.ins.memory_index()]
                            .iter()
                            .any(|r| r.full_register() == Register::RSP);
                        let a = if uses_sp {
                            let old = self.b.get(Loc::Gpr(4));
                            self.write_sp(nsp);
                            let a = self.mem_address();
                            self.b.put(Loc::Gpr(4), old);
                            a
                        } else {
                            self.mem_address()
                        };
                        self.store_operand(a, v);
                        self.write_sp(nsp);
                    }
                }
                Flow::Next
            }
            M::Pusha | M::Pushad => {
                let bytes = if m == M::Pusha { 2 } else { 4 };
                let ty = Ty::from_bytes(bytes);
                let sp0 = self.read_sp();
                // ESP is pushed as the register holds it at the operand size, whatever the
                // stack's width: PUSHAD on a 16-bit stack pushes ESP's upper half too
                // (found by difftest).
                let vals: Vec<Val> = (0..8u8)
                    .map(|r| {
                        let g = self.b.get(Loc::Gpr(r));
                        self.b.trunc(ty, g)
                    })
                    .collect();
                let mut sp = sp0;
                for v in vals {
                    sp = self.b.bin_imm(BinOp::Sub, sp, bytes as u64);
                    let a = self.linear(SS, sp);
                    self.store_mem(SS, a, v);
                }
                self.write_sp(sp);
                Flow::Next
            }
            M::Popa | M::Popad => {
                let bytes = if m == M::Popa { 2u32 } else { 4 };
                let regs: [Register; 8] = if bytes == 2 {
                    [
                        Register::DI,
                        Register::SI,
                        Register::BP,
                        Register::None,
                        Register::BX,
                        Register::DX,
                        Register::CX,
                        Register::AX,
                    ]
                } else {
                    [
                        Register::EDI,
                        Register::ESI,
                        Register::EBP,
                        Register::None,
                        Register::EBX,
                        Register::EDX,
                        Register::ECX,
                        Register::EAX,
                    ]
                };
                let sp = self.read_sp();
                // A register written before a later read faults keeps its new value.
                let at_once = self.mode.vendor.popa_fault() == PopaFault::KeepsPopped;
                let mut loaded = Vec::new();
                for (i, r) in regs.iter().enumerate() {
                    let at = self.b.bin_imm(BinOp::Add, sp, i as u64 * bytes as u64);
                    let a = self.linear(SS, at);
                    let v = self.load_mem(SS, Ty::from_bytes(bytes), a);
                    if at_once {
                        if *r != Register::None {
                            self.write_gpr(*r, v);
                        }
                    } else {
                        loaded.push((*r, v));
                    }
                }
                for (r, v) in loaded {
                    if r != Register::None {
                        self.write_gpr(r, v);
                    }
                }
                let nsp = self.b.bin_imm(BinOp::Add, sp, 8 * bytes as u64);
                self.write_sp(nsp);
                Flow::Next
            }
            M::Pushf | M::Pushfd | M::Pushfq => {
                let bytes = self.suffix_bytes();
                let f = self.b.call_k_value(Helper::Pushf, &[bytes as u64], Ty::I64);
                self.push(f, bytes);
                Flow::Next
            }
            M::Popf | M::Popfd | M::Popfq => {
                let bytes = self.suffix_bytes();
                let (v, nsp) = self.peek_pop(bytes, 0);
                let v = self.b.zext(Ty::I64, v);
                let n = self.b.konst(Ty::I64, bytes as u64);
                self.b.call(Helper::Popf, &[v, n]);
                self.write_sp(nsp);
                self.exit_sync()
            }
            M::Leave => {
                let bytes = self.suffix_bytes();
                let bp = self.b.get(Loc::Gpr(RBP as u8));
                let sty = Ty::from_bytes(self.mode.stack_bits / 8);
                let bp = self.b.trunc(sty, bp);
                let a = self.linear(SS, bp);
                let v = self.load_mem(SS, Ty::from_bytes(bytes), a);
                let nsp = self.b.bin_imm(BinOp::Add, bp, bytes as u64);
                self.write_sp(nsp);
                let reg = match bytes {
                    8 => Register::RBP,
                    4 => Register::EBP,
                    _ => Register::BP,
                };
                self.write_gpr(reg, v);
                Flow::Next
            }
            M::Enter => {
                let bytes = self.suffix_bytes();
                let size = self.ins.immediate16() as u64;
                let level = (self.ins.immediate8_2nd() % 32) as u64;
                let ty = Ty::from_bytes(bytes);
                let sty = Ty::from_bytes(self.mode.stack_bits / 8);
                let bp_reg = match bytes {
                    8 => Register::RBP,
                    4 => Register::EBP,
                    _ => Register::BP,
                };
                let bp = self.read_gpr(bp_reg);
                let mut sp = self.read_sp();
                sp = self.b.bin_imm(BinOp::Sub, sp, bytes as u64);
                let a = self.linear(SS, sp);
                self.store_mem(SS, a, bp);
                // FrameTemp is the stack pointer at the operand size: with a 32-bit operand
                // on a 16-bit stack, ESP with its upper half, which the push left alone
                // (SDM, ENTER; found by difftest).
                let frame = if bytes * 8 > self.mode.stack_bits {
                    let full = self.read_gpr(Register::ESP);
                    let hi = self.b.bin_imm(BinOp::And, full, !0xFFFF);
                    let lo = self.b.zext(Ty::I32, sp);
                    self.b.bin(BinOp::Or, hi, lo)
                } else {
                    sp
                };
                // The frame pointers are copied from addresses in the stack's address
                // size: RBP in 64-bit mode even with a 16-bit operand (found by difftest).
                let walk_reg = match sty {
                    Ty::I64 => Register::RBP,
                    Ty::I32 => Register::EBP,
                    _ => Register::BP,
                };
                let mut walk = self.read_gpr(walk_reg);
                for _ in 1..level {
                    walk = self.b.bin_imm(BinOp::Sub, walk, bytes as u64);
                    let src = self.linear(SS, walk);
                    let v = self.load_mem(SS, ty, src);
                    sp = self.b.bin_imm(BinOp::Sub, sp, bytes as u64);
                    let dst = self.linear(SS, sp);
                    self.store_mem(SS, dst, v);
                }
                if level > 0 {
                    sp = self.b.bin_imm(BinOp::Sub, sp, bytes as u64);
                    let dst = self.linear(SS, sp);
                    let fv = self.b.resize(frame, ty);
                    self.store_mem(SS, dst, fv);
                }
                let nsp = self.b.bin_imm(BinOp::Sub, sp, size);
                // ENTER ends with a write check of the new stack top: the CPU faults there
                // before changing RSP and RBP (as Bochs models it; seen on hardware by
                // difftest), and the fault is a write's. A read-modify-write of the same
                // value is that check.
                let top = self.linear(SS, nsp);
                let v = self.load_mem_rmw(SS, ty, top);
                self.store_mem(SS, top, v);
                self.write_gpr(bp_reg, frame);
                self.write_sp(nsp);
                Flow::Next
            }
            M::Int | M::Int3 | M::Int1 => {
                let vector = match m {
                    M::Int3 => 3,
                    M::Int1 => 1,
                    _ => self.ins.immediate8() as u64,
                };
                self.b.call_k(Helper::SoftInt, &[vector, next]);
                self.jump_to_state_rip()
            }
            M::Into => {
                self.b.call_k(Helper::Into, &[next]);
                self.jump_to_state_rip()
            }
            _ => return None,
        })
    }

    /// JMP/CALL ptr16:16/32.
    fn far_transfer_imm(&mut self, h: Helper) -> Flow {
        let sel = self.ins.far_branch_selector() as u64;
        let (off, bytes) = if self.ins.op0_kind() == OpKind::FarBranch32 {
            (self.ins.far_branch32() as u64, 4)
        } else {
            (self.ins.far_branch16() as u64, 2)
        };
        let next = self.next_ip();
        self.b.call_k(h, &[sel, off, bytes, next]);
        self.jump_to_state_rip()
    }

    /// JMP/CALL m16:16/32/64: offset first, selector after it.
    fn far_transfer_mem(&mut self, h: Helper) -> Flow {
        let bytes = self.far_bytes();
        let a = self.mem_address();
        let off = self.load_operand(Ty::from_bytes(bytes as u32), a);
        let sa = self.b.bin_imm(BinOp::Add, a, bytes);
        let sel = self.load_operand(Ty::I16, sa);
        let sel = self.b.zext(Ty::I64, sel);
        let off = self.b.zext(Ty::I64, off);
        let nb = self.b.konst(Ty::I64, bytes);
        let next = self.b.konst(Ty::I64, self.next_ip());
        self.b.call(h, &[sel, off, nb, next]);
        self.jump_to_state_rip()
    }
}
