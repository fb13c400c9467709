//! Emitting IR: value allocation and the small constructors the lifter uses.

use crate::flags::{CcOp, Cond};
use crate::ir::*;
use crate::state::RFLAGS_FIXED;

/// Builds a block's IR, with four block-local simplifications that keep the op count (the
/// interpreter's cost) down without changing what is written to the state:
/// - constants are shared (SSA values never change);
/// - a comparison of two constants is a constant, and a select on a constant one of its
///   operands (shift counts from immediates fold so);
/// - a `get` of a location the block already read or wrote reuses that value, since nothing
///   but IR and helpers changes the state, and every helper call forgets what is known;
/// - `trunc` of a `zext` gives back the original value.
pub struct Builder {
    pub insts: Vec<Inst>,
    pub vals: Vec<Ty>,
    /// Small: a linear scan beats hashing for the few dozen constants of a block.
    consts: Vec<(Ty, u64, Val)>,
    /// Indexed by [`loc_index`].
    known: [Option<Val>; LOCS],
    /// For each value, the value it zero-extends (if it is a `zext`).
    zext_of: Vec<Option<Val>>,
}

const LOCS: usize = 16 + 6 + 6 + 6;

fn loc_index(l: Loc) -> usize {
    match l {
        Loc::Gpr(r) => r as usize & 15,
        Loc::Rip => 16,
        Loc::Rflags => 17,
        Loc::CcOp => 18,
        Loc::CcDst => 19,
        Loc::CcSrc => 20,
        Loc::CcAux => 21,
        Loc::SegBase(s) => 22 + s as usize % 6,
        Loc::SegSelector(s) => 28 + s as usize % 6,
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            insts: Vec::with_capacity(256),
            vals: Vec::with_capacity(256),
            consts: Vec::with_capacity(32),
            known: [None; LOCS],
            zext_of: Vec::with_capacity(256),
        }
    }
}

impl Builder {
    pub fn val(&mut self, ty: Ty) -> Val {
        self.vals.push(ty);
        self.zext_of.push(None);
        Val(self.vals.len() as u32 - 1)
    }
    pub fn ty(&self, v: Val) -> Ty {
        self.vals[v.0 as usize]
    }
    pub fn push(&mut self, i: Inst) {
        self.insts.push(i);
    }
    pub fn konst(&mut self, ty: Ty, value: u64) -> Val {
        let value = value & ty.mask();
        if let Some((_, _, v)) = self.consts.iter().find(|(t, c, _)| *t == ty && *c == value) {
            return *v;
        }
        let dst = self.val(ty);
        self.push(Inst::Const { dst, value });
        self.consts.push((ty, value, dst));
        dst
    }
    pub fn get(&mut self, loc: Loc) -> Val {
        if let Some(v) = self.known[loc_index(loc)] {
            return v;
        }
        let dst = self.val(loc.ty());
        self.push(Inst::Get { dst, loc });
        self.known[loc_index(loc)] = Some(dst);
        dst
    }
    pub fn put(&mut self, loc: Loc, src: Val) {
        let mut src = self.resize(src, loc.ty());
        if loc == Loc::Rflags {
            // Bit 1 of RFLAGS always reads as 1.
            src = self.bin_imm(BinOp::Or, src, RFLAGS_FIXED);
        }
        self.push(Inst::Put { loc, src });
        self.known[loc_index(loc)] = Some(src);
    }
    /// Empty, for the next block, with the buffers kept.
    pub fn clear(&mut self) {
        self.insts.clear();
        self.vals.clear();
        self.consts.clear();
        self.known = [None; LOCS];
        self.zext_of.clear();
    }

    /// Forgets every cached value (after discarding instructions that defined them).
    pub fn reset_caches(&mut self) {
        self.consts.clear();
        self.known = [None; LOCS];
        self.zext_of.iter_mut().for_each(|z| *z = None);
    }

    /// Forgets what is known of the state (after anything that may change it behind IR).
    pub fn forget(&mut self) {
        self.known = [None; LOCS];
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
        self.zext_of[dst.0 as usize] = Some(a);
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
        if let Some(orig) = self.zext_of[a.0 as usize] {
            if self.ty(orig) == ty {
                return orig;
            }
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
    /// The value `v` has if it is a constant.
    pub fn const_value(&self, v: Val) -> Option<u64> {
        self.consts
            .iter()
            .find(|(_, _, c)| *c == v)
            .map(|(_, value, _)| *value)
    }
    pub fn cmp(&mut self, op: CmpOp, a: Val, b: Val) -> Val {
        let b = self.resize(b, self.ty(a));
        if let (Some(x), Some(y)) = (self.const_value(a), self.const_value(b)) {
            let holds = op.holds(self.ty(a), x, y);
            return self.konst(Ty::I8, holds as u64);
        }
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
        if let Some(c) = self.const_value(cond) {
            return if c & 1 != 0 { a } else { b };
        }
        let dst = self.val(ty);
        self.push(Inst::Select { dst, cond, a, b });
        dst
    }
    pub fn load_seg(&mut self, ty: Ty, addr: Val, ss: bool, rmw: bool) -> Val {
        let dst = self.val(ty);
        self.push(Inst::Load { dst, addr, ss, rmw });
        dst
    }
    pub fn store_seg(&mut self, addr: Val, src: Val, ss: bool) {
        self.push(Inst::Store { addr, src, ss });
    }
    pub fn seg_check(
        &mut self,
        seg: usize,
        addr: Val,
        bytes: u32,
        write: bool,
        top: crate::vendor::FlatSegmentTop,
    ) {
        self.push(Inst::SegCheck {
            seg: seg as u8,
            addr,
            bytes: bytes as u16,
            write,
            top,
        });
    }
    pub fn set_flags(&mut self, op: CcOp, dst: Val, src: Val, aux: Val) {
        self.push(Inst::SetFlags { op, dst, src, aux });
        for l in [Loc::CcOp, Loc::CcDst, Loc::CcSrc, Loc::CcAux] {
            self.known[loc_index(l)] = None;
        }
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
    /// Calls a helper for its effect.
    pub fn call(&mut self, helper: Helper, args: &[Val]) {
        self.call_with(helper, args, None);
    }
    /// Calls a helper for its result, of type `ret`.
    pub fn call_value(&mut self, helper: Helper, args: &[Val], ret: Ty) -> Val {
        let dst = self.val(ret);
        self.call_with(helper, args, Some(dst));
        dst
    }
    fn call_with(&mut self, helper: Helper, args: &[Val], dst: Option<Val>) {
        self.push(Inst::Call {
            dst,
            helper,
            args: args.into(),
        });
        // Helpers may change any state.
        self.forget();
    }
    pub fn trap_if(&mut self, cond: Val, vector: u8, error: Option<u32>) {
        self.push(Inst::TrapIf {
            cond,
            vector,
            error,
        });
    }

    /// A helper call whose arguments are constants.
    pub fn call_k(&mut self, helper: Helper, args: &[u64]) {
        let vals: Vec<Val> = args.iter().map(|a| self.konst(Ty::I64, *a)).collect();
        self.call(helper, &vals)
    }
    pub fn call_k_value(&mut self, helper: Helper, args: &[u64], ret: Ty) -> Val {
        let vals: Vec<Val> = args.iter().map(|a| self.konst(Ty::I64, *a)).collect();
        self.call_value(helper, &vals, ret)
    }
}
