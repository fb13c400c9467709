//! The IR interpreter: tier 0. Values live in a per-block scratch array of u64 (each masked
//! to its type); guest state is read and written in `CpuState` through the locations' own
//! fields.

use gantry_frontend::flags;
use gantry_frontend::ir::*;
use gantry_frontend::state::{CpuState, UD_VECTOR};

use crate::block::Prepared;
use crate::{BlockEnd, Exception, Host};

/// Reusable scratch space, so running a block does not allocate.
#[derive(Default)]
pub struct Interp {
    vals: Vec<u64>,
    args: Vec<u64>,
    /// Guest instructions completed (for `--stats` and MIPS figures).
    pub insns: u64,
}

fn get(cpu: &CpuState, loc: Loc) -> u64 {
    match loc {
        Loc::Gpr(r) => cpu.gpr[r as usize & 15],
        Loc::Rip => cpu.rip,
        Loc::Rflags => cpu.rflags,
        Loc::CcOp => cpu.cc.op as u64,
        Loc::CcDst => cpu.cc.dst,
        Loc::CcSrc => cpu.cc.src,
        Loc::CcAux => cpu.cc.aux,
        Loc::SegBase(s) => cpu.seg[s as usize % 6].base,
        Loc::SegSelector(s) => cpu.seg[s as usize % 6].selector as u64,
    }
}

fn put(cpu: &mut CpuState, loc: Loc, v: u64) {
    match loc {
        Loc::Gpr(r) => cpu.gpr[r as usize & 15] = v,
        Loc::Rip => cpu.rip = v,
        Loc::Rflags => cpu.rflags = v,
        Loc::CcOp => cpu.cc.op = v as u32,
        Loc::CcDst => cpu.cc.dst = v,
        Loc::CcSrc => cpu.cc.src = v,
        Loc::CcAux => cpu.cc.aux = v,
        Loc::SegBase(s) => cpu.seg[s as usize % 6].base = v,
        Loc::SegSelector(s) => cpu.seg[s as usize % 6].selector = v as u16,
    }
}

fn sext(v: u64, ty: Ty) -> i64 {
    let shift = 64 - ty.bits();
    ((v << shift) as i64) >> shift
}

pub fn bin(op: BinOp, ty: Ty, a: u64, b: u64) -> u64 {
    let bits = ty.bits();
    let m = ty.mask();
    let r = match op {
        BinOp::Add => a.wrapping_add(b),
        BinOp::Sub => a.wrapping_sub(b),
        BinOp::And => a & b,
        BinOp::Or => a | b,
        BinOp::Xor => a ^ b,
        BinOp::Shl => a.wrapping_shl(b as u32 % bits),
        BinOp::Shr => (a & m).wrapping_shr(b as u32 % bits),
        BinOp::Sar => (sext(a, ty) >> (b as u32 % bits)) as u64,
        BinOp::Rol => {
            let c = b as u32 % bits;
            if c == 0 {
                a
            } else {
                ((a & m) << c) | ((a & m) >> (bits - c))
            }
        }
        BinOp::Ror => {
            let c = b as u32 % bits;
            if c == 0 {
                a
            } else {
                ((a & m) >> c) | ((a & m) << (bits - c))
            }
        }
        BinOp::Mul => a.wrapping_mul(b),
        BinOp::MulHiU => (((a & m) as u128 * (b & m) as u128) >> bits) as u64,
        BinOp::MulHiS => ((sext(a, ty) as i128 * sext(b, ty) as i128) >> bits) as u64,
    };
    r & m
}

pub fn un(op: UnOp, ty: Ty, a: u64) -> u64 {
    let m = ty.mask();
    let a = a & m;
    let r = match op {
        UnOp::Not => !a,
        UnOp::Neg => a.wrapping_neg(),
        UnOp::Bswap => match ty {
            Ty::I64 => a.swap_bytes(),
            Ty::I32 => (a as u32).swap_bytes() as u64,
            Ty::I16 => (a as u16).swap_bytes() as u64,
            Ty::I8 => a,
        },
        UnOp::Popcnt => a.count_ones() as u64,
        UnOp::Ctz => {
            if a == 0 {
                ty.bits() as u64
            } else {
                a.trailing_zeros() as u64
            }
        }
        UnOp::Clz => (a.leading_zeros() - (64 - ty.bits())) as u64,
    };
    r & m
}

impl Interp {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs a block once from its start. On a fault, RIP is the faulting instruction's and
    /// the state is as it was before it (the lifter orders effects for that).
    pub fn run(&mut self, p: &Prepared, cpu: &mut CpuState, host: &mut dyn Host) -> BlockEnd {
        // Values other than constants are written before they are read: the table keeps
        // whatever an earlier block left in them.
        if self.vals.len() < p.block.vals.len() {
            self.vals.resize(p.block.vals.len(), 0);
        }
        // Slices of the fields, so that their lengths (the bounds checks') stay in
        // registers rather than being loaded again after every store through `self`.
        let Self {
            vals,
            args: call_args,
            insns,
        } = self;
        let vals = vals.as_mut_slice();
        let tys = p.block.vals.as_slice();
        let ty = |v: Val| tys[v.0 as usize];
        for &(v, k) in p.consts.iter() {
            vals[v as usize] = k;
        }
        macro_rules! v {
            ($x:expr) => {
                vals[$x.0 as usize]
            };
        }
        // Ends the block at op `$at`: instructions begun so far complete (or, on a fault,
        // all but the current one).
        macro_rules! fault {
            ($at:expr, $e:expr) => {{
                let (begun, rip) = p.locate($at);
                cpu.rip = rip;
                *insns += begun.saturating_sub(1);
                return BlockEnd::Fault($e);
            }};
        }
        macro_rules! done {
            ($at:expr) => {{
                *insns += p.completed($at);
            }};
        }
        // Where the block ends: its last op, or, once a store wrote guest code, the next
        // instruction's first op (the loop's own bound, rather than a test of every op);
        // and that instruction's index among the block's.
        let ops = &p.ops[..];
        let mut end = ops.len();
        let mut stop_insn = 0;
        let mut at = 0;
        while at < end {
            let inst = &ops[at];
            match inst {
                Inst::Mark { .. } | Inst::Const { .. } => {}
                // Registers first, as arms of their own: nearly every get and put is of
                // one, and the general case is a second dispatch on the location.
                Inst::Get {
                    dst,
                    loc: Loc::Gpr(r),
                } => v!(dst) = cpu.gpr[*r as usize & 15],
                Inst::Put {
                    loc: Loc::Gpr(r),
                    src,
                } => cpu.gpr[*r as usize & 15] = v!(src),
                Inst::Get { dst, loc } => v!(dst) = get(cpu, *loc) & loc.ty().mask(),
                Inst::Put { loc, src } => put(cpu, *loc, v!(src)),
                Inst::Bin { dst, op, a, b } => {
                    v!(dst) = bin(*op, ty(*dst), v!(a), v!(b));
                }
                Inst::Un { dst, op, a } => v!(dst) = un(*op, ty(*dst), v!(a)),
                Inst::Zext { dst, a } => v!(dst) = v!(a) & ty(*a).mask(),
                Inst::Sext { dst, a } => {
                    v!(dst) = sext(v!(a), ty(*a)) as u64 & ty(*dst).mask();
                }
                Inst::Trunc { dst, a } => v!(dst) = v!(a) & ty(*dst).mask(),
                Inst::Cmp { dst, op, a, b } => {
                    v!(dst) = op.holds(ty(*a), v!(a), v!(b)) as u64;
                }
                Inst::Select { dst, cond, a, b } => {
                    v!(dst) = if v!(cond) & 1 != 0 { v!(a) } else { v!(b) };
                }
                Inst::Load { dst, addr, ss, rmw } => {
                    match host.load(cpu, v!(addr), ty(*dst).bytes(), *ss, *rmw) {
                        Ok(x) => v!(dst) = x & ty(*dst).mask(),
                        Err(e) => fault!(at, e),
                    }
                }
                Inst::Store { addr, src, ss } => {
                    let ty = ty(*src);
                    let value = v!(src) & ty.mask();
                    if let Err(e) = host.store(cpu, v!(addr), ty.bytes(), value, *ss) {
                        fault!(at, e);
                    }
                    if end == ops.len() && host.wrote_code() {
                        let next = p.marks.partition_point(|(i, _)| *i as usize <= at);
                        if let Some(&(i, _)) = p.marks.get(next) {
                            (end, stop_insn) = (i as usize, next);
                        }
                    }
                }
                Inst::SegCheck {
                    seg,
                    addr,
                    bytes,
                    write,
                    top,
                } => {
                    let (seg, bytes) = (*seg as usize, *bytes as u32);
                    if let Err(e) = crate::seg_check(cpu, seg, v!(addr), bytes, *write, *top) {
                        fault!(at, e);
                    }
                }
                Inst::SetFlags { op, dst, src, aux } => {
                    cpu.cc.op = op.encode();
                    cpu.cc.dst = v!(dst);
                    cpu.cc.src = v!(src);
                    cpu.cc.aux = v!(aux);
                }
                Inst::GetFlags { dst } => v!(dst) = flags::rflags(cpu),
                Inst::Test { dst, cond } => {
                    v!(dst) = flags::cond_holds(cpu, *cond) as u64;
                }
                Inst::Call { dst, helper, args } => {
                    call_args.clear();
                    call_args.extend(args.iter().map(|a| vals[a.0 as usize]));
                    // The helper sees RIP at the calling instruction.
                    cpu.rip = p.locate(at).1;
                    let r = host.helper(cpu, *helper, call_args);
                    match r {
                        Ok(x) => {
                            if let Some(d) = dst {
                                v!(d) = x & ty(*d).mask();
                            }
                        }
                        Err(e) => fault!(at, e),
                    }
                }
                Inst::Raise { vector } => fault!(at, Exception::new(*vector)),
                Inst::TrapIf {
                    cond,
                    vector,
                    error,
                } => {
                    if v!(cond) & 1 != 0 {
                        fault!(
                            at,
                            Exception {
                                vector: *vector,
                                error_code: *error,
                            }
                        );
                    }
                }
                Inst::ExitIf { cond, next } => {
                    if v!(cond) & 1 != 0 {
                        cpu.rip = *next;
                        done!(at);
                        return BlockEnd::Next;
                    }
                }
                Inst::Jump { target } => {
                    cpu.rip = v!(target);
                    done!(at);
                    return BlockEnd::Next;
                }
                Inst::Branch {
                    cond,
                    taken,
                    not_taken,
                } => {
                    cpu.rip = if v!(cond) & 1 != 0 {
                        *taken
                    } else {
                        *not_taken
                    };
                    done!(at);
                    return BlockEnd::Next;
                }
                Inst::Exit { next, why } => {
                    cpu.rip = *next;
                    done!(at);
                    return match why {
                        ExitWhy::Continue => BlockEnd::Next,
                        ExitWhy::Sync => BlockEnd::Sync,
                        ExitWhy::Halt => BlockEnd::Halt,
                    };
                }
            }
            at += 1;
        }
        if end < ops.len() {
            cpu.rip = p.marks[stop_insn].1;
            *insns += stop_insn as u64;
            return BlockEnd::Sync;
        }
        // A lifter bug (a block without a terminator) must not run off into the void.
        cpu.rip = p.locate(p.ops.len()).1;
        BlockEnd::Fault(Exception::new(UD_VECTOR))
    }
}
