//! Data movement and integer arithmetic: MOV and friends, the ALU with lazy flags,
//! shifts and rotates, multiply and divide, bit operations, conditional moves.

use iced_x86::{Mnemonic as M, OpKind, Register};

use super::operands::{reg_ty, Place};
use super::{Flow, Lift};
use crate::flags::{CcKind, CcOp, Cond};
use crate::ir::*;
use crate::state::{AF, ARITH_FLAGS, CF, DF, DS, ES, FS, GS, OF, SS, ZF};
use crate::vendor::{
    BitScanFlags, CountFlags, DivFlags, DoubleShiftOf, Movsxd16Read, MulFlags, RotateCarryTurnOf,
    ShiftAf, ShrOf,
};

impl Lift<'_> {
    pub(super) fn alu(&mut self) -> Option<Flow> {
        let m = self.ins.mnemonic();
        match m {
            M::Mov
                if [0, 1].iter().any(|&n| {
                    let k = self.ins.op_kind(n);
                    let r = self.ins.op_register(n);
                    k == OpKind::Register && (r.is_cr() || r.is_dr() || r.is_tr())
                }) =>
            {
                return None; // control/debug registers: system()
            }
            M::Mov => {
                if self.mov() {
                    // A segment load: CS/SS/mode assumptions, and MOV SS's interrupt shadow.
                    return Some(self.exit_sync());
                }
            }
            M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => {
                // A far pointer: the offset, then the selector after it. The segment is
                // loaded (which may fault) before the register is written.
                let dst = self.ins.op0_register();
                let ty = super::operands::reg_ty(dst);
                let seg = super::operands::seg_index(self.ins.memory_segment());
                let ea = self.effective_address();
                let addr = self.linear(seg, ea);
                let offset = self.load_operand(ty, addr);
                // The selector's offset wraps as the operand's does (at 64 KiB in 16-bit
                // addressing).
                let ea = self.b.bin_imm(BinOp::Add, ea, ty.bytes() as u64);
                let addr = self.linear(seg, ea);
                let selector = self.load_operand(Ty::I16, addr);
                let selector = self.b.zext(Ty::I64, selector);
                let target = match m {
                    M::Lds => DS,
                    M::Les => ES,
                    M::Lfs => FS,
                    M::Lgs => GS,
                    _ => SS,
                };
                self.b.call(Helper::LoadSeg(target as u8), &[selector]);
                self.write_gpr(dst, offset);
                return Some(self.exit_sync());
            }
            M::Movzx | M::Movsx | M::Movsxd => {
                let dty = self.op_ty(0);
                let sty = self.op_ty(1);
                let wide_read = m == M::Movsxd
                    && dty == Ty::I16
                    && self.ins.op1_kind() == OpKind::Memory
                    && self.mode.vendor.movsxd16_read() == Movsxd16Read::Doubleword;
                let v = if wide_read {
                    let a = self.mem_address();
                    let d = self.load_operand(Ty::I32, a);
                    self.b.trunc(Ty::I16, d)
                } else {
                    self.read_op(1, sty)
                };
                let v = if m == M::Movzx {
                    self.b.zext(dty, v)
                } else {
                    self.b.sext(dty, v)
                };
                let p = self.place(0);
                self.write_place(p, v);
            }
            M::Lea => {
                let ea = self.effective_address();
                let ty = self.op_ty(0);
                let v = self.b.resize(ea, ty);
                self.write_gpr(self.ins.op0_register(), v);
            }
            M::Xchg => {
                let ty = self.op_ty(0);
                let p0 = self.place(0);
                let p1 = self.place(1);
                let a = self.read_place_rmw(p0, ty);
                let c = self.read_place_rmw(p1, ty);
                // A memory operand is written first (it may fault).
                if let Place::Mem(_) = p1 {
                    self.write_place(p1, a);
                    self.write_place(p0, c);
                } else {
                    self.write_place(p0, c);
                    self.write_place(p1, a);
                }
            }
            M::Add | M::Or | M::Adc | M::Sbb | M::And | M::Sub | M::Xor | M::Cmp | M::Test => {
                self.binary_alu(m)
            }
            M::Inc | M::Dec => {
                let ty = self.op_ty(0);
                let p = self.place(0);
                let a = self.read_place_rmw(p, ty);
                let cf = self.b.test(Cond::B);
                let cf = self.b.zext(ty, cf);
                let r = self
                    .b
                    .bin_imm(if m == M::Inc { BinOp::Add } else { BinOp::Sub }, a, 1);
                self.write_place(p, r);
                let kind = if m == M::Inc {
                    CcKind::Inc
                } else {
                    CcKind::Dec
                };
                let z = self.b.konst(ty, 0);
                self.b.set_flags(CcOp::new(kind, ty.bytes()), r, cf, z);
            }
            M::Neg => {
                let ty = self.op_ty(0);
                let p = self.place(0);
                let a = self.read_place_rmw(p, ty);
                let z = self.b.konst(ty, 0);
                let r = self.b.bin(BinOp::Sub, z, a);
                self.write_place(p, r);
                self.b
                    .set_flags(CcOp::new(CcKind::Sub, ty.bytes()), r, a, z);
            }
            M::Not => {
                let ty = self.op_ty(0);
                let p = self.place(0);
                let a = self.read_place_rmw(p, ty);
                let r = self.b.un(UnOp::Not, a);
                self.write_place(p, r);
            }
            M::Shl | M::Sal | M::Shr | M::Sar => self.shift(m),
            M::Rol | M::Ror | M::Rcl | M::Rcr => self.rotate(m),
            M::Shld | M::Shrd => self.double_shift(m),
            M::Mul | M::Imul => self.multiply(m),
            M::Div | M::Idiv => {
                let ty = self.op_ty(0);
                let d = self.read_op(0, ty);
                let d = self.b.zext(Ty::I64, d);
                let h = if m == M::Div {
                    Helper::Div(ty.bytes())
                } else {
                    Helper::Idiv(ty.bytes())
                };
                self.b.call(h, &[d]);
                if self.mode.vendor.div_flags() == DivFlags::AfSetRestCleared {
                    let one = self.b.konst(Ty::I8, 1);
                    self.update_flags(ARITH_FLAGS & !(CF | OF), &[(AF, one)]);
                }
            }
            M::Bt | M::Bts | M::Btr | M::Btc => self.bit_test(m),
            M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt | M::Popcnt => self.bit_scan(m),
            M::Bswap => {
                let r = self.ins.op0_register();
                // BSWAP of a 16-bit register is undefined; real CPUs clear it.
                let s = if r.size() == 2 {
                    self.b.konst(Ty::I16, 0)
                } else {
                    let v = self.read_gpr(r);
                    self.b.un(UnOp::Bswap, v)
                };
                self.write_gpr(r, s);
            }
            M::Cbw | M::Cwde | M::Cdqe => {
                let to = match m {
                    M::Cbw => Register::AX,
                    M::Cwde => Register::EAX,
                    _ => Register::RAX,
                };
                let from = match m {
                    M::Cbw => Register::AL,
                    M::Cwde => Register::AX,
                    _ => Register::EAX,
                };
                let v = self.read_gpr(from);
                let v = self.b.sext(reg_ty(to), v);
                self.write_gpr(to, v);
            }
            M::Cwd | M::Cdq | M::Cqo => {
                let (a, d) = match m {
                    M::Cwd => (Register::AX, Register::DX),
                    M::Cdq => (Register::EAX, Register::EDX),
                    _ => (Register::RAX, Register::RDX),
                };
                let v = self.read_gpr(a);
                let bits = reg_ty(a).bits() as u64 - 1;
                let s = self.b.bin_imm(BinOp::Sar, v, bits);
                self.write_gpr(d, s);
            }
            M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg => {
                let cond = self.ins.condition_code();
                let c = self.b.test(cond_of(cond));
                let ty = self.op_ty(0);
                let src = self.read_op(1, ty);
                let old = self.read_op(0, ty);
                let v = self.b.select(c, src, old);
                self.write_gpr(self.ins.op0_register(), v);
            }
            M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg => {
                let c = self.b.test(cond_of(self.ins.condition_code()));
                let p = self.place(0);
                self.write_place(p, c);
            }
            M::Xadd => {
                let ty = self.op_ty(0);
                let p = self.place(0);
                let a = self.read_place_rmw(p, ty);
                let src = self.ins.op1_register();
                let c = self.read_gpr(src);
                let r = self.b.bin(BinOp::Add, a, c);
                // SRC <- DEST, then DEST <- sum (SDM): with one register as both, the sum
                // wins. A memory destination is written first, so a fault leaves SRC alone.
                if self.ins.op0_kind() == iced_x86::OpKind::Register {
                    self.write_gpr(src, a);
                    self.write_place(p, r);
                } else {
                    self.write_place(p, r);
                    self.write_gpr(src, a);
                }
                let z = self.b.konst(ty, 0);
                self.b
                    .set_flags(CcOp::new(CcKind::Add, ty.bytes()), r, c, z);
            }
            M::Cmpxchg => self.cmpxchg(),
            M::Cmpxchg8b | M::Cmpxchg16b => self.cmpxchg_double(m),
            M::Salc => {
                // Undocumented but on every x86 outside 64-bit mode: AL = CF ? FFh : 0.
                let c = self.b.test(cond_of(iced_x86::ConditionCode::b));
                let zero = self.b.konst(Ty::I8, 0);
                let v = self.b.bin(BinOp::Sub, zero, c);
                self.write_gpr(Register::AL, v);
            }
            M::Lahf => {
                let f = self.b.rflags();
                let low = self.b.trunc(Ty::I8, f);
                self.write_gpr(Register::AH, low);
            }
            M::Sahf => {
                let ah = self.read_gpr(Register::AH);
                let ah = self.b.zext(Ty::I64, ah);
                let keep = self.b.bin_imm(BinOp::And, ah, 0xD5);
                let f = self.b.rflags();
                let f = self.b.bin_imm(BinOp::And, f, !0xD5);
                let f = self.b.bin(BinOp::Or, f, keep);
                self.put_eflags(f);
            }
            M::Cld | M::Std => {
                // DF is not an arithmetic flag: change it in place, the lazy flags stay.
                let f = self.b.get(Loc::Rflags);
                let f = if m == M::Cld {
                    self.b.bin_imm(BinOp::And, f, !DF)
                } else {
                    self.b.bin_imm(BinOp::Or, f, DF)
                };
                self.b.put(Loc::Rflags, f);
            }
            M::Clc | M::Stc | M::Cmc => {
                let f = self.b.rflags();
                let f = match m {
                    M::Clc => self.b.bin_imm(BinOp::And, f, !CF),
                    M::Stc => self.b.bin_imm(BinOp::Or, f, CF),
                    _ => self.b.bin_imm(BinOp::Xor, f, CF),
                };
                self.put_eflags(f);
            }
            M::Daa | M::Das | M::Aaa | M::Aas | M::Aam | M::Aad => {
                let imm = if self.ins.op_count() > 0 {
                    self.ins.immediate8() as u64
                } else {
                    0
                };
                self.b.call_k(Helper::Bcd, &[m as u64, imm]);
            }
            M::Xlatb => {
                let aty = Ty::from_bytes(self.addr_bits() / 8);
                let bx = self.b.get(Loc::Gpr(3));
                let bx = self.b.trunc(aty, bx);
                let al = self.read_gpr(Register::AL);
                let al = self.b.zext(aty, al);
                let ea = self.b.bin(BinOp::Add, bx, al);
                let seg = super::operands::seg_index(self.ins.memory_segment());
                let addr = self.linear(seg, ea);
                let v = self.load_operand(Ty::I8, addr);
                self.write_gpr(Register::AL, v);
            }
            _ => return None,
        }
        Some(Flow::Next)
    }

    /// Returns true if it loaded a segment register.
    fn mov(&mut self) -> bool {
        let k0 = self.ins.op0_kind();
        if k0 == OpKind::Register && self.ins.op0_register().is_segment_register() {
            // MOV Sreg, r/m16: a descriptor load (helper), ends the block (CS/SS/mode).
            let v = self.read_op(1, Ty::I16);
            let v = self.b.zext(Ty::I64, v);
            let seg = super::operands::seg_index(self.ins.op0_register()) as u8;
            self.b.call(Helper::LoadSeg(seg), &[v]);
            return true;
        }
        let ty = match self.ins.op_kind(1) {
            OpKind::Register if self.ins.op1_register().is_segment_register() => {
                // MOV r/m, Sreg: 16 bits to memory, zero-extended into a register.
                if k0 == OpKind::Memory {
                    Ty::I16
                } else {
                    self.op_ty(0)
                }
            }
            _ => self.op_ty(0),
        };
        let v = self.read_op(1, ty);
        let p = self.place(0);
        self.write_place(p, v);
        false
    }

    fn binary_alu(&mut self, m: M) {
        let ty = self.op_ty(0);
        let p = self.place(0);
        let a = if matches!(m, M::Cmp | M::Test) {
            self.read_place(p, ty)
        } else {
            self.read_place_rmw(p, ty)
        };
        let c = self.read_op(1, ty);
        let z = self.b.konst(ty, 0);
        let size = ty.bytes();
        let (r, kind, aux) = match m {
            M::Add => (self.b.bin(BinOp::Add, a, c), CcKind::Add, z),
            M::Sub | M::Cmp => (self.b.bin(BinOp::Sub, a, c), CcKind::Sub, z),
            M::Adc | M::Sbb => {
                let cf = self.b.test(Cond::B);
                let cf = self.b.zext(ty, cf);
                let (op, kind) = if m == M::Adc {
                    (BinOp::Add, CcKind::Adc)
                } else {
                    (BinOp::Sub, CcKind::Sbb)
                };
                let t = self.b.bin(op, a, c);
                (self.b.bin(op, t, cf), kind, cf)
            }
            M::And | M::Test => (self.b.bin(BinOp::And, a, c), CcKind::Logic, z),
            M::Or => (self.b.bin(BinOp::Or, a, c), CcKind::Logic, z),
            _ => (self.b.bin(BinOp::Xor, a, c), CcKind::Logic, z),
        };
        if !matches!(m, M::Cmp | M::Test) {
            self.write_place(p, r);
        }
        self.b.set_flags(CcOp::new(kind, size), r, c, aux);
    }

    /// The count operand of a shift or rotate, masked as the CPU does (5 bits, 6 for
    /// 64-bit operands), as i64.
    fn shift_count(&mut self, n: u32, ty: Ty) -> Val {
        let mask = if ty == Ty::I64 { 63 } else { 31 };
        if self.ins.op_kind(n) == OpKind::Immediate8 {
            return self.b.konst(Ty::I64, self.ins.immediate8() as u64 & mask);
        }
        let c = self.read_op(n, Ty::I8);
        let c = self.b.zext(Ty::I64, c);
        self.b.bin_imm(BinOp::And, c, mask)
    }

    /// Flags that stay as they were when a shift count is 0: selects between the old lazy
    /// state and the new one.
    fn set_flags_unless_zero(&mut self, count: Val, op: CcOp, r: Val, src: Val, aux: Val) {
        match self.b.const_value(count) {
            Some(0) => return,
            Some(_) => return self.b.set_flags(op, r, src, aux),
            None => {}
        }
        let zero = self.b.cmp_imm(CmpOp::Eq, count, 0);
        let old = [Loc::CcOp, Loc::CcDst, Loc::CcSrc, Loc::CcAux].map(|l| self.b.get(l));
        let newop = self.b.konst(Ty::I32, op.encode() as u64);
        let vals = [newop, r, src, aux];
        for (i, loc) in [Loc::CcOp, Loc::CcDst, Loc::CcSrc, Loc::CcAux]
            .iter()
            .enumerate()
        {
            let n = self.b.resize(vals[i], loc.ty());
            let v = self.b.select(zero, old[i], n);
            self.b.put(*loc, v);
        }
    }

    fn shift(&mut self, m: M) {
        let ty = self.op_ty(0);
        let p = self.place(0);
        let a = self.read_place_rmw(p, ty);
        let count = if self.ins.op_count() > 1 {
            self.shift_count(1, ty)
        } else {
            self.b.konst(Ty::I64, 1)
        };
        // Computed in 64 bits, so that counts up to 31 on narrow operands come out right.
        let wide = if m == M::Sar {
            self.b.sext(Ty::I64, a)
        } else {
            self.b.zext(Ty::I64, a)
        };
        let one = self.b.konst(Ty::I64, 1);
        let cm1 = self.b.bin(BinOp::Sub, count, one);
        let cm1 = self.b.bin_imm(BinOp::And, cm1, 63);
        let (op, kind) = match m {
            M::Shl | M::Sal => (BinOp::Shl, CcKind::Shl),
            M::Shr => (BinOp::Shr, CcKind::Shr),
            _ => (BinOp::Sar, CcKind::Sar),
        };
        let r64 = self.b.bin(op, wide, count);
        let src64 = self.b.bin(op, wide, cm1);
        let r = self.b.trunc(ty, r64);
        let src = self.b.trunc(ty, src64);
        let zero = self.b.cmp_imm(CmpOp::Eq, count, 0);
        let out = self.b.select(zero, a, r);
        self.write_place(p, out);
        let vendor = self.mode.vendor;
        // SHR's OF is the top bit of `aux`: the operand's, or with `LastStep` the top bit
        // before the last 1-bit step, which is the operand's only for a count of 1.
        let aux = if kind == CcKind::Shr && vendor.shr_of() == ShrOf::LastStep {
            let by_one = self.b.cmp_imm(CmpOp::Eq, count, 1);
            let z = self.b.konst(ty, 0);
            self.b.select(by_one, a, z)
        } else {
            a
        };
        let op = CcOp::new(kind, ty.bytes()).with_af_set(vendor.shift_af() == ShiftAf::Set);
        self.set_flags_unless_zero(count, op, r, src, aux);
    }

    fn rotate(&mut self, m: M) {
        let ty = self.op_ty(0);
        let w = ty.bits() as u64;
        let p = self.place(0);
        let a = self.read_place_rmw(p, ty);
        let masked = if self.ins.op_count() > 1 {
            self.shift_count(1, ty)
        } else {
            self.b.konst(Ty::I64, 1)
        };
        let a64 = self.b.zext(Ty::I64, a);
        if matches!(m, M::Rol | M::Ror) && self.next_overwrites & (CF | OF) == CF | OF {
            // ROL and ROR change only CF and OF, and the next instruction sets both
            // without reading them and cannot fault first: nobody sees them, and the
            // whole RFLAGS the update starts from (a call out of generated code, where
            // the flags are another block's) need not be computed. SHA-256's rounds
            // are such rotations, each followed by an XOR or another rotation.
            let r = self.rotated(m, a64, masked, ty);
            let r = self.b.trunc(ty, r);
            self.write_place(p, r);
            return;
        }
        let f = self.b.rflags();
        // RCL/RCR by a whole turn (the count mod w+1 is 0): whether OF stays as it was.
        let mut turn = None;
        let (r64, cf) = match m {
            M::Rol | M::Ror => {
                let r = self.rotated(m, a64, masked, ty);
                let cf = if m == M::Rol {
                    self.b.bin_imm(BinOp::And, r, 1)
                } else {
                    self.b.bin_imm(BinOp::Shr, r, w - 1)
                };
                (r, cf)
            }
            _ => {
                // Rotate through carry: a (w+1)-bit rotation of CF:a by c mod (w+1).
                let c = if ty.bits() < 32 {
                    let k = self.b.konst(Ty::I64, w + 1);
                    self.rem_small(masked, k)
                } else {
                    masked
                };
                let cf_in = self.b.bin_imm(BinOp::And, f, CF);
                let one = self.b.konst(Ty::I64, 1);
                let cz = self.b.cmp_imm(CmpOp::Eq, c, 0);
                let cs = self.b.select(cz, one, c); // avoid shifts by 0-1 below
                let wk = self.b.konst(Ty::I64, w);
                let wp1 = self.b.konst(Ty::I64, w + 1);
                let cm1 = self.b.bin(BinOp::Sub, cs, one);
                let w_c = self.b.bin(BinOp::Sub, wk, cs);
                let w1_c = self.b.bin(BinOp::Sub, wp1, cs);
                let is_one = self.b.cmp_imm(CmpOp::Eq, cs, 1);
                let zero = self.b.konst(Ty::I64, 0);
                let (r, cf) = if m == M::Rcl {
                    // (a << c) | (cf << (c-1)) | (a >> (w+1-c)); CF = bit (w-c) of a
                    let x = self.b.bin(BinOp::Shl, a64, cs);
                    let y = self.b.bin(BinOp::Shl, cf_in, cm1);
                    let z0 = self.b.bin(BinOp::Shr, a64, w1_c);
                    let z = self.b.select(is_one, zero, z0);
                    let xy = self.b.bin(BinOp::Or, x, y);
                    let r = self.b.bin(BinOp::Or, xy, z);
                    let cf = self.b.bin(BinOp::Shr, a64, w_c);
                    (r, cf)
                } else {
                    // (a >> c) | (cf << (w-c)) | (a << (w+1-c)); CF = bit (c-1) of a
                    let x = self.b.bin(BinOp::Shr, a64, cs);
                    let y = self.b.bin(BinOp::Shl, cf_in, w_c);
                    let z0 = self.b.bin(BinOp::Shl, a64, w1_c);
                    let z = self.b.select(is_one, zero, z0);
                    let xy = self.b.bin(BinOp::Or, x, y);
                    let r = self.b.bin(BinOp::Or, xy, z);
                    let cf = self.b.bin(BinOp::Shr, a64, cm1);
                    (r, cf)
                };
                let r = self.b.bin_imm(BinOp::And, r, ty.mask());
                let cf = self.b.bin_imm(BinOp::And, cf, 1);
                // A rotation by 0 (mod w+1) leaves everything as it was.
                let cf_old = self.b.bin_imm(BinOp::And, f, CF);
                let r = self.b.select(cz, a64, r);
                let cf = self.b.select(cz, cf_old, cf);
                if self.mode.vendor.rotate_carry_turn_of() == RotateCarryTurnOf::Unchanged {
                    turn = Some(cz);
                }
                (r, cf)
            }
        };
        let r = self.b.trunc(ty, r64);
        let msb = self.b.bin_imm(BinOp::Shr, r64, w - 1);
        let of = match m {
            M::Rol | M::Rcl => self.b.bin(BinOp::Xor, msb, cf),
            _ => {
                let next = self.b.bin_imm(BinOp::Shr, r64, w - 2);
                self.b.bin(BinOp::Xor, msb, next)
            }
        };
        // Only CF and OF change, and only when the masked count is not 0.
        let fcleared = self.b.bin_imm(BinOp::And, f, !(CF | OF));
        let cf1 = self.b.bin_imm(BinOp::And, cf, 1);
        let of1 = self.b.bin_imm(BinOp::And, of, 1);
        let of_sh = self.b.bin_imm(BinOp::Shl, of1, OF.trailing_zeros() as u64);
        let t = self.b.bin(BinOp::Or, fcleared, cf1);
        let nf = self.b.bin(BinOp::Or, t, of_sh);
        let zero = self.b.cmp_imm(CmpOp::Eq, masked, 0);
        let out = self.b.select(zero, a, r);
        let keep = match turn {
            Some(cz) => self.b.bin(BinOp::Or, zero, cz),
            None => zero,
        };
        let nf = self.b.select(keep, f, nf);
        self.write_place(p, out);
        self.put_eflags(nf);
    }

    /// `a64` (zero-extended from `ty`) rotated left (ROL) or right (ROR) by the masked
    /// count `masked`, modulo the width; zero-extended.
    fn rotated(&mut self, m: M, a64: Val, masked: Val, ty: Ty) -> Val {
        let w = ty.bits() as u64;
        let c = self.b.bin_imm(BinOp::And, masked, w - 1);
        let inv = self.b.konst(Ty::I64, w);
        let inv = self.b.bin(BinOp::Sub, inv, c);
        let inv = self.b.bin_imm(BinOp::And, inv, w - 1);
        let (first, second) = if m == M::Rol {
            (BinOp::Shl, BinOp::Shr)
        } else {
            (BinOp::Shr, BinOp::Shl)
        };
        let x = self.b.bin(first, a64, c);
        let y = self.b.bin(second, a64, inv);
        let r = self.b.bin(BinOp::Or, x, y);
        self.b.bin_imm(BinOp::And, r, ty.mask())
    }

    /// x mod k for small values (count mod 9 or 17), by repeated subtraction in IR-free
    /// form: x - k * (x / k) needs a division op the IR lacks, so unroll: x < 32.
    fn rem_small(&mut self, x: Val, k: Val) -> Val {
        let mut r = x;
        for _ in 0..3 {
            let ge = self.b.cmp(CmpOp::Ule, k, r);
            let sub = self.b.bin(BinOp::Sub, r, k);
            r = self.b.select(ge, sub, r);
        }
        r
    }

    fn double_shift(&mut self, m: M) {
        let ty = self.op_ty(0);
        let w = ty.bits() as u64;
        let p = self.place(0);
        let a = self.read_place_rmw(p, ty);
        let fill = self.read_gpr(self.ins.op1_register());
        let count = self.shift_count(2, ty);
        let a64 = self.b.zext(Ty::I64, a);
        let f64 = self.b.zext(Ty::I64, fill);
        let one = self.b.konst(Ty::I64, 1);
        let cz = self.b.cmp_imm(CmpOp::Eq, count, 0);
        let cs = self.b.select(cz, one, count);
        let wk = self.b.konst(Ty::I64, w);
        let inv = self.b.bin(BinOp::Sub, wk, cs);
        let inv = self.b.bin_imm(BinOp::And, inv, 63);
        let cm1 = self.b.bin(BinOp::Sub, cs, one);
        let (r, last_out) = if m == M::Shld {
            let x = self.b.bin(BinOp::Shl, a64, cs);
            let y = self.b.bin(BinOp::Shr, f64, inv);
            // For 64-bit operands a shift by w (count 0 is excluded above) cannot occur.
            let r = self.b.bin(BinOp::Or, x, y);
            let out = self.b.bin(BinOp::Shr, a64, inv);
            (r, out)
        } else {
            let x = self.b.bin(BinOp::Shr, a64, cs);
            let y = self.b.bin(BinOp::Shl, f64, inv);
            let r = self.b.bin(BinOp::Or, x, y);
            let out = self.b.bin(BinOp::Shr, a64, cm1);
            (r, out)
        };
        let r = self.b.trunc(ty, r);
        let cf = self.b.bin_imm(BinOp::And, last_out, 1);
        let msb_r = self.b.bin_imm(BinOp::Shr, r, w - 1);
        let vendor = self.mode.vendor;
        // OF is defined for a count of 1, where all the rules agree.
        let of = match (vendor.double_shift_of(), m) {
            (DoubleShiftOf::SignChange, _) => {
                let msb_a = self.b.bin_imm(BinOp::Shr, a, w - 1);
                self.b.bin(BinOp::Xor, msb_r, msb_a)
            }
            (DoubleShiftOf::LastStep, M::Shld) => {
                let cf = self.b.resize(cf, ty);
                let of = self.b.bin(BinOp::Xor, msb_r, cf);
                if ty == Ty::I16 {
                    // A 16-bit SHLD by 16 leaves OF = CF.
                    let by16 = self.b.cmp_imm(CmpOp::Eq, count, 16);
                    self.b.select(by16, cf, of)
                } else {
                    of
                }
            }
            (DoubleShiftOf::LastStep, _) => {
                let next = self.b.bin_imm(BinOp::Shr, r, w - 2);
                self.b.bin(BinOp::Xor, msb_r, next)
            }
        };
        let out = self.b.select(cz, a, r);
        self.write_place(p, out);
        // Flags computed eagerly (no lazy kind gives these OF rules); a zero count changes
        // nothing.
        let [z, s, pf] = self.zsp_bits(r);
        let f_before = self.b.rflags();
        let af = self
            .b
            .konst(Ty::I8, (vendor.shift_af() == ShiftAf::Set) as u64);
        self.update_flags(
            Self::arith_mask(),
            &[(CF, cf), (OF, of), z, s, pf, (AF, af)],
        );
        let f_after = self.b.get(Loc::Rflags);
        let keep = self.b.select(cz, f_before, f_after);
        self.put_eflags(keep);
    }

    fn multiply(&mut self, m: M) {
        let n = self.ins.op_count();
        if m == M::Imul && n >= 2 {
            // IMUL r, r/m[, imm]: truncated product; CF = OF = the product overflowed.
            let ty = self.op_ty(0);
            let (x, y) = if n == 3 {
                (self.read_op(1, ty), self.read_op(2, ty))
            } else {
                (self.read_op(0, ty), self.read_op(1, ty))
            };
            let lo = self.b.bin(BinOp::Mul, x, y);
            let hi = self.b.bin(BinOp::MulHiS, x, y);
            let sign = self.b.bin_imm(BinOp::Sar, lo, ty.bits() as u64 - 1);
            let ovf = self.b.cmp(CmpOp::Ne, hi, sign);
            let ovf = self.b.zext(ty, ovf);
            self.write_gpr(self.ins.op0_register(), lo);
            self.set_mul_flags(lo, ovf);
            return;
        }
        let ty = self.op_ty(0);
        let src = self.read_op(0, ty);
        if ty == Ty::I8 {
            let al = self.read_gpr(Register::AL);
            let (x, y) = if m == M::Mul {
                (self.b.zext(Ty::I16, al), self.b.zext(Ty::I16, src))
            } else {
                (self.b.sext(Ty::I16, al), self.b.sext(Ty::I16, src))
            };
            let p = self.b.bin(BinOp::Mul, x, y);
            let lo = self.b.trunc(Ty::I8, p);
            let ovf = if m == M::Mul {
                let hi = self.b.bin_imm(BinOp::Shr, p, 8);
                self.b.cmp_imm(CmpOp::Ne, hi, 0)
            } else {
                let back = self.b.sext(Ty::I16, lo);
                self.b.cmp(CmpOp::Ne, back, p)
            };
            self.write_gpr(Register::AX, p);
            let ovf = self.b.zext(Ty::I8, ovf);
            self.set_mul_flags(lo, ovf);
            return;
        }
        let (ra, rd) = match ty {
            Ty::I16 => (Register::AX, Register::DX),
            Ty::I32 => (Register::EAX, Register::EDX),
            _ => (Register::RAX, Register::RDX),
        };
        let a = self.read_gpr(ra);
        let lo = self.b.bin(BinOp::Mul, a, src);
        let hi = self.b.bin(
            if m == M::Mul {
                BinOp::MulHiU
            } else {
                BinOp::MulHiS
            },
            a,
            src,
        );
        let ovf = if m == M::Mul {
            self.b.cmp_imm(CmpOp::Ne, hi, 0)
        } else {
            let sign = self.b.bin_imm(BinOp::Sar, lo, ty.bits() as u64 - 1);
            self.b.cmp(CmpOp::Ne, hi, sign)
        };
        self.write_gpr(ra, lo);
        self.write_gpr(rd, hi);
        let ovf = self.b.zext(ty, ovf);
        self.set_mul_flags(lo, ovf);
    }

    /// CF = OF = `ovf` (0 or 1, of `lo`'s type), the rest as the vendor leaves them.
    fn set_mul_flags(&mut self, lo: Val, ovf: Val) {
        match self.mode.vendor.mul_flags() {
            MulFlags::FromLowHalf => {
                let ty = self.b.ty(lo);
                let z = self.b.konst(ty, 0);
                self.b
                    .set_flags(CcOp::new(CcKind::Mul, ty.bytes()), lo, ovf, z);
            }
            MulFlags::Unchanged => self.update_flags(CF | OF, &[(CF, ovf), (OF, ovf)]),
        }
    }

    fn bit_test(&mut self, m: M) {
        let ty = self.op_ty(0);
        let w = ty.bits() as u64;
        let imm = !matches!(self.ins.op1_kind(), OpKind::Register);
        let off = self.read_op(1, ty);
        let (p, bit) = match self.ins.op0_kind() {
            OpKind::Memory if !imm => {
                // A register bit offset addresses a bit string: move the address by whole
                // operands (signed), test within one.
                // The move is part of the effective address, so it wraps at the address
                // size (a 32-bit address stays 32-bit; found by difftest).
                let ea = self.effective_address();
                let aty = Ty::from_bytes(self.addr_bits() / 8);
                let off64 = self.b.sext(Ty::I64, off);
                let words = self.b.bin_imm(BinOp::Sar, off64, w.trailing_zeros() as u64);
                let bytes = self.b.bin_imm(BinOp::Mul, words, w / 8);
                let bytes = self.b.resize(bytes, aty);
                let ea = self.b.bin(BinOp::Add, ea, bytes);
                let seg = super::operands::seg_index(self.ins.memory_segment());
                let addr = self.linear(seg, ea);
                let bit = self.b.bin_imm(BinOp::And, off, w - 1);
                (Place::Mem(addr), bit)
            }
            _ => {
                let p = self.place(0);
                let bit = self.b.bin_imm(BinOp::And, off, w - 1);
                (p, bit)
            }
        };
        let a = if m == M::Bt {
            self.read_place(p, ty)
        } else {
            self.read_place_rmw(p, ty)
        };
        let shifted = self.b.bin(BinOp::Shr, a, bit);
        let cf = self.b.bin_imm(BinOp::And, shifted, 1);
        if m != M::Bt {
            let one = self.b.konst(ty, 1);
            let mask = self.b.bin(BinOp::Shl, one, bit);
            let r = match m {
                M::Bts => self.b.bin(BinOp::Or, a, mask),
                M::Btr => {
                    let nm = self.b.un(UnOp::Not, mask);
                    self.b.bin(BinOp::And, a, nm)
                }
                _ => self.b.bin(BinOp::Xor, a, mask),
            };
            self.write_place(p, r);
        }
        self.update_flags(CF, &[(CF, cf)]);
    }

    fn bit_scan(&mut self, m: M) {
        let ty = self.op_ty(0);
        let src = self.read_op(1, ty);
        let dst = self.ins.op0_register();
        let zero = self.b.cmp_imm(CmpOp::Eq, src, 0);
        match m {
            M::Bsf | M::Bsr => {
                let idx = if m == M::Bsf {
                    self.b.un(UnOp::Ctz, src)
                } else {
                    let clz = self.b.un(UnOp::Clz, src);
                    let top = self.b.konst(ty, ty.bits() as u64 - 1);
                    self.b.bin(BinOp::Sub, top, clz)
                };
                // With a zero source the destination keeps its value, all 64 bits of it
                // (as AMD documents and Intel CPUs do).
                let nonzero = self.b.cmp_imm(CmpOp::Ne, src, 0);
                self.write_gpr_if(nonzero, dst, idx);
                match self.mode.vendor.bit_scan_flags() {
                    BitScanFlags::Unchanged => self.update_flags(ZF, &[(ZF, zero)]),
                    BitScanFlags::IndexParity => {
                        let none = self.b.konst(ty, 0);
                        let found = self.b.select(zero, none, idx);
                        let [_, _, pf] = self.zsp_bits(found);
                        self.update_flags(ARITH_FLAGS, &[(ZF, zero), pf]);
                    }
                }
            }
            M::Tzcnt | M::Lzcnt => {
                let v = self
                    .b
                    .un(if m == M::Tzcnt { UnOp::Ctz } else { UnOp::Clz }, src);
                self.write_gpr(dst, v);
                let vz = self.b.cmp_imm(CmpOp::Eq, v, 0);
                let mask = match self.mode.vendor.count_flags() {
                    CountFlags::Unchanged => CF | ZF,
                    CountFlags::OfKept => ARITH_FLAGS & !OF,
                };
                self.update_flags(mask, &[(CF, zero), (ZF, vz)]);
            }
            _ => {
                let v = self.b.un(UnOp::Popcnt, src);
                self.write_gpr(dst, v);
                self.update_flags(Self::arith_mask(), &[(ZF, zero)]);
            }
        }
    }

    fn cmpxchg(&mut self) {
        let ty = self.op_ty(0);
        let p = self.place(0);
        let dest = self.read_place_rmw(p, ty);
        let acc_reg = match ty {
            Ty::I8 => Register::AL,
            Ty::I16 => Register::AX,
            Ty::I32 => Register::EAX,
            Ty::I64 => Register::RAX,
        };
        let acc = self.read_gpr(acc_reg);
        let src = self.read_gpr(self.ins.op1_register());
        let eq = self.b.cmp(CmpOp::Eq, acc, dest);
        if self.ins.op0_kind() == iced_x86::OpKind::Register {
            // A register destination is written only on success: real CPUs (Intel and
            // AMD) do not write it back when the comparison fails, so a 32-bit one keeps
            // its upper half, whatever the SDM's pseudo-code suggests. Found by difftest.
            self.write_gpr_if(eq, self.ins.op0_register(), src);
        } else {
            // Memory is always written (a locked cycle on real hardware).
            let newdest = self.b.select(eq, src, dest);
            self.write_place(p, newdest);
        }
        // The accumulator is loaded only on failure (no zero-extension on success).
        let rax = self.b.get(Loc::Gpr(0));
        let loaded = self.b.zext(Ty::I64, dest);
        let merged = if ty.bits() < 32 {
            let mask = self.b.konst(Ty::I64, !ty.mask());
            let kept = self.b.bin(BinOp::And, rax, mask);
            self.b.bin(BinOp::Or, kept, loaded)
        } else {
            loaded
        };
        let nrax = self.b.select(eq, rax, merged);
        self.b.put(Loc::Gpr(0), nrax);
        let r = self.b.bin(BinOp::Sub, acc, dest);
        let z = self.b.konst(ty, 0);
        self.b
            .set_flags(CcOp::new(CcKind::Sub, ty.bytes()), r, dest, z);
    }

    fn cmpxchg_double(&mut self, m: M) {
        let half = if m == M::Cmpxchg8b { Ty::I32 } else { Ty::I64 };
        let hb = half.bytes() as u64;
        let addr = self.mem_address();
        if m == M::Cmpxchg16b {
            // #GP(0) unless 16-byte aligned.
            let low = self.b.bin_imm(BinOp::And, addr, 15);
            let misaligned = self.b.cmp_imm(CmpOp::Ne, low, 0);
            self.b.trap_if(misaligned, 13, Some(0));
        }
        let hi_addr = self.b.bin_imm(BinOp::Add, addr, hb);
        // Both halves are read with write intent first, so the stores cannot fault.
        let lo = self.read_place_rmw(Place::Mem(addr), half);
        let hi = self.read_place_rmw(Place::Mem(hi_addr), half);
        let (ra, rd, rb, rc) = if half == Ty::I32 {
            (Register::EAX, Register::EDX, Register::EBX, Register::ECX)
        } else {
            (Register::RAX, Register::RDX, Register::RBX, Register::RCX)
        };
        let a = self.read_gpr(ra);
        let d = self.read_gpr(rd);
        let bl = self.read_gpr(rb);
        let ch = self.read_gpr(rc);
        let e1 = self.b.cmp(CmpOp::Eq, lo, a);
        let e2 = self.b.cmp(CmpOp::Eq, hi, d);
        let eq = self.b.bin(BinOp::And, e1, e2);
        let nlo = self.b.select(eq, bl, lo);
        let nhi = self.b.select(eq, ch, hi);
        self.store_operand(addr, nlo);
        self.store_operand(hi_addr, nhi);
        let na = self.b.select(eq, a, lo);
        let nd = self.b.select(eq, d, hi);
        // On success EDX:EAX are not written (no zero-extension in 64-bit mode).
        let rax = self.b.get(Loc::Gpr(0));
        let rdx = self.b.get(Loc::Gpr(2));
        let na64 = self.b.zext(Ty::I64, na);
        let nd64 = self.b.zext(Ty::I64, nd);
        let fa = self.b.select(eq, rax, na64);
        let fd = self.b.select(eq, rdx, nd64);
        self.b.put(Loc::Gpr(0), fa);
        self.b.put(Loc::Gpr(2), fd);
        self.update_flags(ZF, &[(ZF, eq)]);
    }
}

pub(super) fn cond_of(c: iced_x86::ConditionCode) -> Cond {
    use iced_x86::ConditionCode as C;
    match c {
        C::o => Cond::O,
        C::no => Cond::No,
        C::b => Cond::B,
        C::ae => Cond::Ae,
        C::e => Cond::E,
        C::ne => Cond::Ne,
        C::be => Cond::Be,
        C::a => Cond::A,
        C::s => Cond::S,
        C::ns => Cond::Ns,
        C::p => Cond::P,
        C::np => Cond::Np,
        C::l => Cond::L,
        C::ge => Cond::Ge,
        C::le => Cond::Le,
        _ => Cond::G,
    }
}
