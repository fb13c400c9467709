//! System instructions: port I/O, interrupt flag, HLT, CPUID, MSRs, the TSC, descriptor
//! tables, control and debug registers, fast system calls, the x87/SSE state instructions
//! the Linux kernel uses while booting, and the no-operation forms. Most go through helpers
//! (privilege checks and machine state live there).

use iced_x86::{Mnemonic as M, OpKind, Register};

/// The x87 instructions the lifter implements: control and status, FILD and EMMS, no
/// arithmetic yet (the rest raise #UD, counted). The WAIT forms (FINIT, FCLEX, FSTCW, FSTSW) are the
/// no-wait ones after a WAIT, which has nothing to report while no x87 exception can be
/// pending.
pub fn x87_implemented(m: M) -> bool {
    matches!(
        m,
        M::Fninit
            | M::Finit
            | M::Fnclex
            | M::Fclex
            | M::Wait
            | M::Fnstsw
            | M::Fstsw
            | M::Fnstcw
            | M::Fstcw
            | M::Fldcw
            | M::Fild
            | M::Emms
    )
}

use super::operands::Place;
use super::{Flow, Lift};
use crate::flags::Cond;
use crate::ir::*;
use crate::state::UD_VECTOR;
use crate::vendor::BoundReads;

impl Lift<'_> {
    pub(super) fn system(&mut self) -> Option<Flow> {
        let m = self.ins.mnemonic();
        let next = self.next_ip();
        Some(match m {
            M::In | M::Out => {
                let (port_op, data_op) = if m == M::In { (1, 0) } else { (0, 1) };
                let data_reg = self.ins.op_register(data_op);
                let bytes = data_reg.size() as u64;
                let port = match self.ins.op_kind(port_op) {
                    OpKind::Register => {
                        let dx = self.read_gpr(Register::DX);
                        self.b.zext(Ty::I64, dx)
                    }
                    _ => self.b.konst(Ty::I64, self.ins.immediate8() as u64),
                };
                let size = self.b.konst(Ty::I64, bytes);
                self.b.call(Helper::IoPermission, &[port, size]);
                if m == M::In {
                    let v = self.b.call_value(Helper::In(bytes as u8), &[port], Ty::I64);
                    self.write_gpr(data_reg, v);
                } else {
                    let v = self.read_gpr(data_reg);
                    let v = self.b.zext(Ty::I64, v);
                    self.b.call(Helper::Out(bytes as u8), &[port, v]);
                }
                // A write may end the run (the debug-exit port, ACPI S5, a reset), move
                // the A20 gate or unmask an interrupt: the run loop looks before the next
                // instruction.
                if m == M::Out {
                    self.exit_sync()
                } else {
                    Flow::Next
                }
            }
            M::Cli => {
                self.b.call(Helper::Cli, &[]);
                Flow::Next
            }
            M::Sti => {
                // STI's interrupt shadow and a possibly pending interrupt: back to the loop.
                self.b.call(Helper::Sti, &[]);
                self.exit_sync()
            }
            M::Hlt => {
                self.b.call(Helper::Hlt, &[]);
                self.b.push(Inst::Exit {
                    next,
                    why: ExitWhy::Halt,
                });
                Flow::End
            }
            M::Cpuid => {
                self.b.call(Helper::Cpuid, &[]);
                Flow::Next
            }
            M::Rdmsr => {
                self.b.call(Helper::Rdmsr, &[]);
                Flow::Next
            }
            M::Wrmsr => {
                self.b.call(Helper::Wrmsr, &[]);
                self.exit_sync()
            }
            M::Rdtsc => {
                self.b.call(Helper::Rdtsc, &[]);
                Flow::Next
            }
            M::Rdtscp => {
                self.b.call(Helper::Rdtscp, &[]);
                Flow::Next
            }
            M::Lgdt | M::Lidt | M::Sgdt | M::Sidt => {
                // The base's size: 16-bit operand size (24 bits of 4 bytes used), the
                // 10-byte 64-bit form, or 4 bytes.
                let bytes = match (
                    self.ins.code().op_code().operand_size(),
                    self.ins.memory_size().size(),
                ) {
                    (16, _) => 2,
                    (_, 10) => 8,
                    _ => 4,
                };
                let a = self.mem_address();
                // The limit (2 bytes) and the base field, 4 bytes even where only 24 bits
                // of it are used (16-bit operand size).
                let size = 2 + (bytes as u32).max(4);
                self.check_operand(a, size, matches!(m, M::Sgdt | M::Sidt));
                let nb = self.b.konst(Ty::I64, bytes);
                let h = match m {
                    M::Lgdt => Helper::Lgdt,
                    M::Lidt => Helper::Lidt,
                    M::Sgdt => Helper::Sgdt,
                    _ => Helper::Sidt,
                };
                self.b.call(h, &[a, nb]);
                Flow::Next
            }
            M::Lldt | M::Ltr | M::Lmsw => {
                let v = self.read_op(0, Ty::I16);
                let v = self.b.zext(Ty::I64, v);
                let h = match m {
                    M::Lldt => Helper::Lldt,
                    M::Ltr => Helper::Ltr,
                    _ => Helper::Lmsw,
                };
                self.b.call(h, &[v]);
                if m == M::Lmsw {
                    return Some(self.exit_sync());
                }
                Flow::Next
            }
            M::Sldt | M::Str | M::Smsw => {
                let h = match m {
                    M::Sldt => Helper::Sldt,
                    M::Str => Helper::Str,
                    _ => Helper::Smsw,
                };
                let v = self.b.call_value(h, &[], Ty::I64);
                let ty = if self.ins.op0_kind() == OpKind::Memory {
                    Ty::I16
                } else {
                    self.op_ty(0)
                };
                let v = self.b.trunc(ty, v);
                let p = self.place(0);
                self.write_place(p, v);
                Flow::Next
            }
            M::Clts => {
                self.b.call(Helper::Clts, &[]);
                Flow::Next
            }
            M::Mov => {
                let (r0, r1) = (self.ins.op0_register(), self.ins.op1_register());
                if r0.is_cr() || r0.is_dr() {
                    let v = self.read_gpr(r1);
                    let v = self.b.zext(Ty::I64, v);
                    let h = if r0.is_cr() {
                        Helper::MovToCr((r0 as u32 - Register::CR0 as u32) as u8)
                    } else {
                        Helper::MovToDr((r0 as u32 - Register::DR0 as u32) as u8)
                    };
                    self.b.call(h, &[v]);
                    return Some(self.exit_sync());
                }
                if r1.is_cr() || r1.is_dr() {
                    let h = if r1.is_cr() {
                        Helper::MovFromCr((r1 as u32 - Register::CR0 as u32) as u8)
                    } else {
                        Helper::MovFromDr((r1 as u32 - Register::DR0 as u32) as u8)
                    };
                    let v = self.b.call_value(h, &[], Ty::I64);
                    self.write_gpr(r0, v);
                    return Some(Flow::Next);
                }
                return None;
            }
            M::Invlpg => {
                let a = self.mem_address();
                self.b.call(Helper::Invlpg, &[a]);
                Flow::Next
            }
            M::Wbinvd | M::Invd => {
                self.b.call(Helper::Wbinvd, &[]);
                Flow::Next
            }
            M::Syscall | M::Sysret | M::Sysretq | M::Sysenter | M::Sysexit | M::Sysexitq => {
                let h = match m {
                    M::Syscall => Helper::Syscall,
                    M::Sysret | M::Sysretq => Helper::Sysret,
                    M::Sysenter => Helper::Sysenter,
                    _ => Helper::Sysexit,
                };
                let bytes = if matches!(m, M::Sysretq | M::Sysexitq) {
                    8
                } else {
                    4
                };
                self.b.call_k(h, &[next, bytes]);
                let t = self.b.get(Loc::Rip);
                self.b.push(Inst::Jump { target: t });
                Flow::End
            }
            M::Swapgs => {
                self.b.call(Helper::Swapgs, &[]);
                Flow::Next
            }
            M::Lar | M::Lsl | M::Verr | M::Verw => {
                let which = match m {
                    M::Lar => 0,
                    M::Lsl => 1,
                    M::Verr => 2,
                    _ => 3,
                };
                let n = if matches!(m, M::Verr | M::Verw) { 0 } else { 1 };
                let sel = self.read_op(n, Ty::I16);
                let sel = self.b.zext(Ty::I64, sel);
                let v = self
                    .b
                    .call_value(Helper::DescriptorCheck(which), &[sel], Ty::I64);
                if n == 1 {
                    let zf = self.b.test(Cond::E);
                    let ty = self.op_ty(0);
                    let old = self.read_gpr(self.ins.op0_register());
                    let nv = self.b.resize(v, ty);
                    let out = self.b.select(zf, nv, old);
                    self.write_gpr(self.ins.op0_register(), out);
                }
                Flow::Next
            }
            M::Arpl => {
                let p = self.place(0);
                let d = self.read_place(p, Ty::I16);
                let s = self.read_gpr(self.ins.op1_register());
                let drpl = self.b.bin_imm(BinOp::And, d, 3);
                let srpl = self.b.bin_imm(BinOp::And, s, 3);
                let lower = self.b.cmp(CmpOp::Ult, drpl, srpl);
                let cleared = self.b.bin_imm(BinOp::And, d, !3);
                let raised = self.b.bin(BinOp::Or, cleared, srpl);
                use crate::state::ZF;
                match p {
                    Place::Reg(_) => {
                        let nd = self.b.select(lower, raised, d);
                        self.write_place(p, nd);
                        self.update_flags(ZF, &[(ZF, lower)]);
                    }
                    Place::Mem(_) => {
                        // The CPU writes a memory destination only when it raises the
                        // RPL: with nothing to adjust, ARPL on a read-only page does not
                        // fault (AMD; found by difftest). That path clears ZF and leaves;
                        // the other keeps the flags until the store has succeeded.
                        let keep = self.b.cmp_imm(CmpOp::Eq, lower, 0);
                        let cur = self.b.rflags();
                        let clear = self.b.bin_imm(BinOp::And, cur, !ZF);
                        let f = self.b.select(keep, clear, cur);
                        self.put_eflags(f);
                        let next = self.next_ip();
                        self.b.push(Inst::ExitIf { cond: keep, next });
                        self.write_place(p, raised);
                        let one = self.b.konst(Ty::I8, 1);
                        self.update_flags(ZF, &[(ZF, one)]);
                    }
                }
                Flow::Next
            }
            M::Bound => {
                let ty = self.op_ty(0);
                let idx = self.read_gpr(self.ins.op0_register());
                let a = self.mem_address();
                let lo = self.load_operand(ty, a);
                let below = self.b.cmp(CmpOp::Slt, idx, lo);
                if self.mode.vendor.bound_reads() == BoundReads::CheckingEach {
                    self.b.trap_if(below, 5, None);
                }
                let ha = self.b.bin_imm(BinOp::Add, a, ty.bytes() as u64);
                let hi = self.load_operand(ty, ha);
                let above = self.b.cmp(CmpOp::Slt, hi, idx);
                let out = self.b.bin(BinOp::Or, below, above);
                self.b.trap_if(out, 5, None);
                Flow::Next
            }
            M::Fninit | M::Finit => {
                self.b.call(Helper::Fninit, &[]);
                Flow::Next
            }
            M::Emms => {
                self.b.call(Helper::Emms, &[]);
                Flow::Next
            }
            M::Fild => {
                let a = self.mem_address();
                let bytes = self.ins.memory_size().size() as u32;
                self.check_operand(a, bytes, false);
                self.b.call(Helper::Fild(bytes as u8), &[a]);
                Flow::Next
            }
            // No x87 arithmetic yet, so no x87 exception is ever pending: FNCLEX has nothing
            // to clear and WAIT nothing to report.
            M::Fnclex | M::Fclex | M::Wait => Flow::Next,
            M::Fnstsw | M::Fstsw => {
                let v = self.b.call_value(Helper::Fnstsw, &[], Ty::I64);
                let v = self.b.trunc(Ty::I16, v);
                let p = self.place(0);
                self.write_place(p, v);
                Flow::Next
            }
            M::Fnstcw
            | M::Fstcw
            | M::Fldcw
            | M::Fxsave
            | M::Fxrstor
            | M::Fxsave64
            | M::Fxrstor64
            | M::Ldmxcsr
            | M::Stmxcsr => {
                let a = self.mem_address();
                let bytes = self.ins.memory_size().size() as u32;
                let write = matches!(
                    m,
                    M::Fnstcw | M::Fstcw | M::Fxsave | M::Fxsave64 | M::Stmxcsr
                );
                self.check_operand(a, bytes, write);
                let h = match m {
                    M::Fnstcw | M::Fstcw => Helper::Fnstcw,
                    M::Fldcw => Helper::Fldcw,
                    M::Fxsave | M::Fxsave64 => Helper::Fxsave,
                    M::Fxrstor | M::Fxrstor64 => Helper::Fxrstor,
                    M::Ldmxcsr => Helper::Ldmxcsr,
                    _ => Helper::Stmxcsr,
                };
                self.b.call(h, &[a]);
                Flow::Next
            }
            M::Xgetbv => {
                self.b.call(Helper::Xgetbv, &[]);
                Flow::Next
            }
            M::Nop
            | M::Pause
            | M::Lfence
            | M::Mfence
            | M::Sfence
            | M::Clflush
            | M::Clflushopt
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchw
            | M::Endbr32
            | M::Endbr64 => Flow::Next,
            M::Ud0 | M::Ud1 | M::Ud2 => {
                self.b.push(Inst::Raise { vector: UD_VECTOR });
                Flow::End
            }
            _ => return None,
        })
    }
}
