//! Operands: general-purpose registers with x86's partial-write rules, effective and
//! linear addresses, memory operands, immediates, and the stack.

use iced_x86::{OpKind, Register};

use super::Lift;
use crate::ir::*;
use crate::state::{ARITH_FLAGS, CS, DS, ES, FS, GS, RSP, SS};

/// Where an operand lives, so an instruction can read it and later write it back.
#[derive(Clone, Copy, Debug)]
pub enum Place {
    Reg(Register),
    /// Linear address.
    Mem(Val),
}

pub fn gpr_index(reg: Register) -> Option<(u8, u32)> {
    // (index of the 64-bit register, bit offset of the sub-register)
    let high = matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    );
    let full = reg.full_register();
    if !full.is_gpr64() {
        return None;
    }
    let idx = full as u32 - Register::RAX as u32;
    Some((idx as u8, if high { 8 } else { 0 }))
}

pub fn seg_index(reg: Register) -> usize {
    match reg {
        Register::ES => ES,
        Register::CS => CS,
        Register::SS => SS,
        Register::FS => FS,
        Register::GS => GS,
        _ => DS,
    }
}

pub fn reg_ty(reg: Register) -> Ty {
    Ty::from_bytes(reg.size() as u32)
}

impl Lift<'_> {
    pub fn read_gpr(&mut self, reg: Register) -> Val {
        let Some((idx, shift)) = gpr_index(reg) else {
            self.failed = true;
            return self.b.konst(Ty::I64, 0);
        };
        let full = self.b.get(Loc::Gpr(idx));
        let v = if shift != 0 {
            self.b.bin_imm(BinOp::Shr, full, shift as u64)
        } else {
            full
        };
        self.b.trunc(reg_ty(reg), v)
    }

    /// Writes with x86's rules: 32-bit writes zero the upper half, 8- and 16-bit writes
    /// keep the other bits.
    pub fn write_gpr(&mut self, reg: Register, v: Val) {
        let Some((idx, shift)) = gpr_index(reg) else {
            self.failed = true;
            return;
        };
        let ty = reg_ty(reg);
        let v = self.b.resize(v, ty);
        match ty {
            Ty::I64 | Ty::I32 => {
                let w = self.b.zext(Ty::I64, v);
                self.b.put(Loc::Gpr(idx), w);
            }
            _ => {
                let old = self.b.get(Loc::Gpr(idx));
                let mask = ty.mask() << shift;
                let kept = self.b.bin_imm(BinOp::And, old, !mask);
                let mut new = self.b.zext(Ty::I64, v);
                if shift != 0 {
                    new = self.b.bin_imm(BinOp::Shl, new, shift as u64);
                }
                let merged = self.b.bin(BinOp::Or, kept, new);
                self.b.put(Loc::Gpr(idx), merged);
            }
        }
    }

    /// Writes `v` to `reg` where `cond` holds; elsewhere the whole 64-bit register keeps
    /// its value (a 32-bit write that does not happen does not clear the upper half).
    pub fn write_gpr_if(&mut self, cond: Val, reg: Register, v: Val) {
        let Some((idx, _)) = gpr_index(reg) else {
            self.failed = true;
            return;
        };
        if reg_ty(reg) == Ty::I32 {
            let old = self.b.get(Loc::Gpr(idx));
            let new = self.b.zext(Ty::I64, v);
            let w = self.b.select(cond, new, old);
            self.b.put(Loc::Gpr(idx), w);
        } else {
            let old = self.read_gpr(reg);
            let w = self.b.select(cond, v, old);
            self.write_gpr(reg, w);
        }
    }

    pub fn addr_bits(&self) -> u32 {
        let i = self.ins;
        let base = i.memory_base();
        let index = i.memory_index();
        if base != Register::None && base != Register::RIP && base != Register::EIP {
            return base.size() as u32 * 8;
        }
        if base == Register::EIP {
            return 32;
        }
        if base == Register::RIP {
            return 64;
        }
        if index != Register::None {
            return index.size() as u32 * 8;
        }
        match (i.memory_displ_size(), self.mode.code_bits) {
            (2, _) => 16,
            (_, 64) => 64,
            (4, _) => 32,
            (_, bits) => bits,
        }
    }

    /// Adds the segment base (ignored in 64-bit mode except for FS and GS) and, outside
    /// 64-bit mode, wraps the linear address to 32 bits.
    pub fn linear(&mut self, seg: usize, offset: Val) -> Val {
        let off64 = self.b.zext(Ty::I64, offset);
        if self.mode.mode64 && seg != FS && seg != GS {
            return off64;
        }
        let base = self.b.get(Loc::SegBase(seg as u8));
        let lin = self.b.bin(BinOp::Add, base, off64);
        if self.mode.mode64 {
            lin
        } else {
            let t = self.b.trunc(Ty::I32, lin);
            self.b.zext(Ty::I64, t)
        }
    }

    /// The effective address (offset within the segment) of the memory operand.
    pub fn effective_address(&mut self) -> Val {
        let i = self.ins;
        let aty = Ty::from_bytes(self.addr_bits() / 8);
        let base = i.memory_base();
        if base == Register::RIP || base == Register::EIP {
            return self.b.konst(aty, i.memory_displacement64());
        }
        let mut ea = self.b.konst(aty, i.memory_displacement64());
        if base != Register::None {
            let bv = self.read_gpr(base);
            let bv = self.b.resize(bv, aty);
            ea = self.b.bin(BinOp::Add, ea, bv);
        }
        let index = i.memory_index();
        if index != Register::None {
            let iv = self.read_gpr(index);
            let mut iv = self.b.resize(iv, aty);
            let scale = i.memory_index_scale();
            if scale > 1 {
                iv = self
                    .b
                    .bin_imm(BinOp::Shl, iv, scale.trailing_zeros() as u64);
            }
            ea = self.b.bin(BinOp::Add, ea, iv);
        }
        ea
    }

    pub fn mem_address(&mut self) -> Val {
        let ea = self.effective_address();
        let seg = seg_index(self.ins.memory_segment());
        self.linear(seg, ea)
    }

    pub fn mem_ty(&self) -> Ty {
        Ty::from_bytes(self.ins.memory_size().size() as u32)
    }

    /// The type of operand `n` (registers and memory; immediates take operand 0's).
    pub fn op_ty(&self, n: u32) -> Ty {
        match self.ins.op_kind(n) {
            OpKind::Register => reg_ty(self.ins.op_register(n)),
            OpKind::Memory => self.mem_ty(),
            _ => self.op_ty(0),
        }
    }

    pub fn place(&mut self, n: u32) -> Place {
        match self.ins.op_kind(n) {
            OpKind::Register => Place::Reg(self.ins.op_register(n)),
            _ => Place::Mem(self.mem_address()),
        }
    }

    pub fn read_place(&mut self, p: Place, ty: Ty) -> Val {
        match p {
            Place::Reg(r) => self.read_gpr(r),
            Place::Mem(a) => self.load_operand(ty, a),
        }
    }

    /// Reads a place the instruction then writes ([`Self::load_mem_rmw`]).
    pub fn read_place_rmw(&mut self, p: Place, ty: Ty) -> Val {
        match p {
            Place::Reg(r) => self.read_gpr(r),
            Place::Mem(a) => {
                let seg = seg_index(self.ins.memory_segment());
                self.load_mem_rmw(seg, ty, a)
            }
        }
    }

    pub fn write_place(&mut self, p: Place, v: Val) {
        match p {
            Place::Reg(r) => self.write_gpr(r, v),
            Place::Mem(a) => self.store_operand(a, v),
        }
    }

    /// Checks an access of `bytes` bytes at linear `addr` against segment `seg` (outside
    /// 64-bit mode, where limits and segment types apply).
    pub fn check_segment(&mut self, seg: usize, addr: Val, bytes: u32, write: bool) {
        if self.mode.mode64 {
            return;
        }
        // A write check covers a read check of the same bytes: a writable segment is a
        // readable one.
        if let Some((s, a, n, w)) = self.last_seg_check {
            if (s, a, n) == (seg, addr, bytes) && (w || !write) {
                return;
            }
        }
        let top = self.mode.vendor.flat_segment_top();
        self.b.seg_check(seg, addr, bytes, write, top);
        self.last_seg_check = Some((seg, addr, bytes, write));
    }

    /// Loads `ty` from linear `addr` in segment `seg`, with the segment check first.
    pub fn load_mem(&mut self, seg: usize, ty: Ty, addr: Val) -> Val {
        self.check_segment(seg, addr, ty.bytes() as u32, false);
        self.b.load_seg(ty, addr, seg == SS, false)
    }

    /// The read half of a read-modify-write of `ty` at linear `addr` in segment `seg`:
    /// the CPU makes it with write intent, so the segment and the pages are checked for
    /// writing before anything is read (a read-only first page faults as a write before a
    /// missing second page does; found by difftest in 16-bit code).
    pub fn load_mem_rmw(&mut self, seg: usize, ty: Ty, addr: Val) -> Val {
        self.check_segment(seg, addr, ty.bytes() as u32, true);
        self.b.load_seg(ty, addr, seg == SS, true)
    }

    pub fn store_mem(&mut self, seg: usize, addr: Val, v: Val) {
        let bytes = self.b.ty(v).bytes() as u32;
        self.check_segment(seg, addr, bytes, true);
        self.b.store_seg(addr, v, seg == SS);
    }

    /// Loads through the instruction's memory operand's segment (SS for RSP/RBP bases
    /// or an SS: override: a stack access).
    pub fn load_operand(&mut self, ty: Ty, addr: Val) -> Val {
        let seg = seg_index(self.ins.memory_segment());
        self.load_mem(seg, ty, addr)
    }

    pub fn store_operand(&mut self, addr: Val, v: Val) {
        let seg = seg_index(self.ins.memory_segment());
        self.store_mem(seg, addr, v);
    }

    /// Checks the whole memory operand for an access made by a helper.
    pub fn check_operand(&mut self, addr: Val, bytes: u32, write: bool) {
        let seg = seg_index(self.ins.memory_segment());
        self.check_segment(seg, addr, bytes, write);
    }

    /// Reads operand `n` as `ty` (immediates sign-extended as encoded, then cut to `ty`).
    pub fn read_op(&mut self, n: u32, ty: Ty) -> Val {
        match self.ins.op_kind(n) {
            OpKind::Register => {
                let r = self.ins.op_register(n);
                if r.is_segment_register() {
                    let s = self.b.get(Loc::SegSelector(seg_index(r) as u8));
                    return self.b.zext(ty, s);
                }
                let v = self.read_gpr(r);
                self.b.resize(v, ty)
            }
            OpKind::Memory => {
                let a = self.mem_address();
                let mty = self.mem_ty();
                let v = self.load_operand(mty, a);
                self.b.resize(v, ty)
            }
            OpKind::Immediate8_2nd => self.b.konst(ty, self.ins.immediate8_2nd() as u64),
            _ => self.b.konst(ty, self.ins.immediate(n)),
        }
    }

    // The stack.

    fn stack_ty(&self) -> Ty {
        Ty::from_bytes(self.mode.stack_bits / 8)
    }

    /// Reads SP at the stack's width.
    pub fn read_sp(&mut self) -> Val {
        let sp = self.b.get(Loc::Gpr(RSP as u8));
        let t = self.stack_ty();
        self.b.trunc(t, sp)
    }

    /// Writes SP at the stack's width (a 16-bit stack keeps RSP's upper bits).
    pub fn write_sp(&mut self, v: Val) {
        let reg = match self.mode.stack_bits {
            64 => Register::RSP,
            32 => Register::ESP,
            _ => Register::SP,
        };
        self.write_gpr(reg, v);
    }

    /// The new SP and the linear address of a push of `bytes`, without writing anything.
    pub fn push_slot(&mut self, bytes: u32) -> (Val, Val) {
        let sp = self.read_sp();
        let nsp = self.b.bin_imm(BinOp::Sub, sp, bytes as u64);
        let addr = self.linear(SS, nsp);
        (nsp, addr)
    }

    /// PUSH: stores first, then moves SP (precise if the store faults).
    pub fn push(&mut self, v: Val, bytes: u32) {
        let (nsp, addr) = self.push_slot(bytes);
        let v = self.b.resize(v, Ty::from_bytes(bytes));
        self.store_mem(SS, addr, v);
        self.write_sp(nsp);
    }

    /// Loads the stack top without moving SP; returns (value, SP after the pop).
    pub fn peek_pop(&mut self, bytes: u32, skip: u32) -> (Val, Val) {
        let sp = self.read_sp();
        let at = if skip > 0 {
            self.b.bin_imm(BinOp::Add, sp, skip as u64)
        } else {
            sp
        };
        let addr = self.linear(SS, at);
        let v = self.load_mem(SS, Ty::from_bytes(bytes), addr);
        let nsp = self.b.bin_imm(BinOp::Add, at, bytes as u64);
        (v, nsp)
    }

    // Flags computed in IR (for instructions whose flags the lazy kinds do not cover).

    /// Makes `flags` (a full RFLAGS value) the flags' home.
    pub fn put_eflags(&mut self, flags: Val) {
        self.b.put(Loc::Rflags, flags);
        let op = self
            .b
            .konst(Ty::I32, crate::flags::CcOp::EFLAGS.encode() as u64);
        self.b.put(Loc::CcOp, op);
    }

    /// RFLAGS with the bits in `mask` replaced by the 0/1 values given (each `(bit, v)`);
    /// nothing when the next instruction sets all of them without a chance to see them
    /// ([`Lift::next_overwrites`]): the update starts from the whole of RFLAGS, which
    /// costs a call out of generated code where the flags are another block's.
    pub fn update_flags(&mut self, mask: u64, bits: &[(u64, Val)]) {
        if self.next_overwrites & mask == mask {
            return;
        }
        let cur = self.b.rflags();
        let mut f = self.b.bin_imm(BinOp::And, cur, !mask);
        for (bit, v) in bits {
            let v = self.b.zext(Ty::I64, *v);
            let v = self.b.bin_imm(BinOp::And, v, 1);
            let shifted = self.b.bin_imm(BinOp::Shl, v, bit.trailing_zeros() as u64);
            f = self.b.bin(BinOp::Or, f, shifted);
        }
        self.put_eflags(f);
    }

    /// PF, ZF and SF of `r` as 0/1 values, for eagerly computed flags.
    pub fn zsp_bits(&mut self, r: Val) -> [(u64, Val); 3] {
        use crate::state::{PF, SF, ZF};
        let ty = self.b.ty(r);
        let zero = self.b.cmp_imm(CmpOp::Eq, r, 0);
        let sign = self.b.bin_imm(BinOp::Shr, r, ty.bits() as u64 - 1);
        let low = self.b.trunc(Ty::I8, r);
        let pop = self.b.un(UnOp::Popcnt, low);
        let even = self.b.bin_imm(BinOp::Xor, pop, 1);
        [(ZF, zero), (SF, sign), (PF, even)]
    }

    pub fn arith_mask() -> u64 {
        ARITH_FLAGS
    }
}
