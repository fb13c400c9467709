//! Emitting IR: value allocation and the small constructors the lifter uses.

use crate::flags::{CcOp, Cond};
use crate::ir::*;

#[derive(Default)]
pub struct Builder {
    pub insts: Vec<Inst>,
    pub vals: Vec<Ty>,
}

impl Builder {
    pub fn val(&mut self, ty: Ty) -> Val {
        self.vals.push(ty);
        Val(self.vals.len() as u32 - 1)
    }
    pub fn ty(&self, v: Val) -> Ty {
        self.vals[v.0 as usize]
    }
    pub fn push(&mut self, i: Inst) {
        self.insts.push(i);
    }
    pub fn konst(&mut self, ty: Ty, value: u64) -> Val {
        let dst = self.val(ty);
        self.push(Inst::Const {
            dst,
            value: value & ty.mask(),
        });
        dst
    }
    pub fn get(&mut self, loc: Loc) -> Val {
        let dst = self.val(loc.ty());
        self.push(Inst::Get { dst, loc });
        dst
    }
    pub fn put(&mut self, loc: Loc, src: Val) {
        let src = self.resize(src, loc.ty());
        self.push(Inst::Put { loc, src });
    }
    pub fn bin(&mut self, op: BinOp, a: Val, b: Val) -> Val {
        let ty = self.ty(a);
        let b = self.resize(b, ty);
        let dst = self.val(ty);
        self.push(Inst::Bin { dst, op, a, b });
        dst
    }
    pub fn bin_imm(&mut self, op: BinOp, a: Val, imm: u64) -> Val {
        let ty = self.ty(a);
        let b = self.konst(ty, imm);
        self.bin(op, a, b)
    }
    pub fn un(&mut self, op: UnOp, a: Val) -> Val {
        let dst = self.val(self.ty(a));
        self.push(Inst::Un { dst, op, a });
        dst
    }
    pub fn zext(&mut self, ty: Ty, a: Val) -> Val {
        if self.ty(a) == ty {
            return a;
        }
        let dst = self.val(ty);
        self.push(Inst::Zext { dst, a });
        dst
    }
    pub fn sext(&mut self, ty: Ty, a: Val) -> Val {
        if self.ty(a) == ty {
            return a;
        }
        let dst = self.val(ty);
        self.push(Inst::Sext { dst, a });
        dst
    }
    pub fn trunc(&mut self, ty: Ty, a: Val) -> Val {
        if self.ty(a) == ty {
            return a;
        }
        let dst = self.val(ty);
        self.push(Inst::Trunc { dst, a });
        dst
    }
    /// Zero-extends or truncates to `ty`.
    pub fn resize(&mut self, a: Val, ty: Ty) -> Val {
        let from = self.ty(a);
        if from.bits() < ty.bits() {
            self.zext(ty, a)
        } else {
            self.trunc(ty, a)
        }
    }
    pub fn cmp(&mut self, op: CmpOp, a: Val, b: Val) -> Val {
        let b = self.resize(b, self.ty(a));
        let dst = self.val(Ty::I8);
        self.push(Inst::Cmp { dst, op, a, b });
        dst
    }
    pub fn cmp_imm(&mut self, op: CmpOp, a: Val, imm: u64) -> Val {
        let b = self.konst(self.ty(a), imm);
        self.cmp(op, a, b)
    }
    pub fn select(&mut self, cond: Val, a: Val, b: Val) -> Val {
        let ty = self.ty(a);
        let b = self.resize(b, ty);
        let dst = self.val(ty);
        self.push(Inst::Select { dst, cond, a, b });
        dst
    }
    pub fn load(&mut self, ty: Ty, addr: Val) -> Val {
        let dst = self.val(ty);
        self.push(Inst::Load { dst, addr });
        dst
    }
    pub fn store(&mut self, addr: Val, src: Val) {
        self.push(Inst::Store { addr, src });
    }
    pub fn set_flags(&mut self, op: CcOp, dst: Val, src: Val, aux: Val) {
        self.push(Inst::SetFlags { op, dst, src, aux });
    }
    pub fn rflags(&mut self) -> Val {
        let dst = self.val(Ty::I64);
        self.push(Inst::GetFlags { dst });
        dst
    }
    pub fn test(&mut self, cond: Cond) -> Val {
        let dst = self.val(Ty::I8);
        self.push(Inst::Test { dst, cond });
        dst
    }
    pub fn call(&mut self, helper: Helper, args: &[Val], ret: Option<Ty>) -> Option<Val> {
        let dst = ret.map(|t| self.val(t));
        self.push(Inst::Call {
            dst,
            helper,
            args: args.to_vec(),
        });
        dst
    }
    pub fn trap_if(&mut self, cond: Val, vector: u8, error: Option<u32>) {
        self.push(Inst::TrapIf {
            cond,
            vector,
            error,
        });
    }

    /// A helper call whose arguments are constants.
    pub fn call_k(&mut self, helper: Helper, args: &[u64], ret: Option<Ty>) -> Option<Val> {
        let vals: Vec<Val> = args.iter().map(|a| self.konst(Ty::I64, *a)).collect();
        self.call(helper, &vals, ret)
    }
}
