//! Memory accesses of a block that can share one inline TLB look-up in its compiled code:
//! the same kind (reads; or writes and the reads of read-modify-writes, which look up
//! for writing), at constant offsets from the same base value, with no helper call
//! between them (a helper may change the TLB), within [`SPAN`] bytes. The group's first
//! access looks up the whole range they touch; when that hits, every access of the group
//! is a native load or store after it, and when it misses (a TLB miss, the range across
//! two pages, a flagged page), each takes its own slow path.
//!
//! Structure fields and stack slots through one pointer are the common case: in the XZ
//! decompressor of Debian's kernel, which is half of its boot, most of a block's accesses
//! fall into a few groups: sharing their look-ups made the decompression about 5% faster
//! and the boot take 0.94-0.97x the time.
//!
//! Whatever the accesses do in between, a look-up stays good for the group: stores do
//! not change the TLB (a guest that rewrites a page-table entry must INVLPG, which is a
//! helper), and a slow path that fills another entry over this one leaves the page's
//! mapping as it was.

use gantry_frontend::ir::*;

use crate::block::Ir;
use crate::tlb::Access;

/// The most bytes a group's accesses may span: the wider, the likelier its range falls
/// across a page boundary and sends all of them to the slow path.
pub const SPAN: i64 = 256;

/// The range a group's accesses touch, relative to its first access's address, and the
/// kind of look-up they share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub lo: i64,
    pub hi: i64,
    pub access: Access,
}

/// The groups of a block's memory accesses.
#[derive(Debug, Default)]
pub struct Groups {
    /// Per op, the group its access is in (an index into `ranges`), if any.
    pub of: Vec<Option<u32>>,
    pub ranges: Vec<Range>,
}

/// A group still taking accesses.
struct Open {
    base: Val,
    access: Access,
    /// The first access's offset from the base; `lo` and `hi` are relative to it.
    first: i64,
    lo: i64,
    hi: i64,
    members: Vec<usize>,
}

impl Groups {
    /// A group of one shares nothing: its access looks up alone.
    fn close(&mut self, o: Open) {
        if o.members.len() < 2 {
            return;
        }
        let id = self.ranges.len() as u32;
        self.ranges.push(Range {
            lo: o.lo,
            hi: o.hi,
            access: o.access,
        });
        for m in o.members {
            self.of[m] = Some(id);
        }
    }
}

/// The groups of `p`'s accesses; `consts` holds, per value, its content if a constant.
pub fn find(p: &Ir, consts: &[Option<u64>]) -> Groups {
    let ops = p.ops();
    let mut groups = Groups {
        of: vec![None; ops.len()],
        ranges: Vec::new(),
    };
    // Per value: the base value and the constant offset it is the sum of (64-bit adds
    // and subtracts of constants, followed back), when it is such a sum.
    let mut based: Vec<Option<(Val, i64)>> = vec![None; p.block.vals.len()];
    let mut open: Vec<Open> = Vec::new();
    for (at, inst) in ops.iter().enumerate() {
        let (addr, bytes, access) = match *inst {
            Inst::Bin { dst, op, a, b } if p.block.ty(dst) == Ty::I64 => {
                let base = |v: Val| based[v.0 as usize].unwrap_or((v, 0));
                let k = |v: Val| consts[v.0 as usize].map(|k| k as i64);
                based[dst.0 as usize] = match (op, k(a), k(b)) {
                    (BinOp::Add, _, Some(k)) => Some((base(a).0, base(a).1.wrapping_add(k))),
                    (BinOp::Sub, _, Some(k)) => Some((base(a).0, base(a).1.wrapping_sub(k))),
                    (BinOp::Add, Some(k), None) => Some((base(b).0, base(b).1.wrapping_add(k))),
                    _ => None,
                };
                continue;
            }
            Inst::Load { dst, addr, rmw, .. } => {
                let access = if rmw { Access::Write } else { Access::Read };
                (addr, i64::from(p.block.ty(dst).bytes()), access)
            }
            Inst::Store { addr, src, .. } => {
                (addr, i64::from(p.block.ty(src).bytes()), Access::Write)
            }
            Inst::Call { .. } => {
                for o in open.drain(..) {
                    groups.close(o);
                }
                continue;
            }
            _ => continue,
        };
        let (base, offset) = based[addr.0 as usize].unwrap_or((addr, 0));
        if let Some(i) = open
            .iter()
            .position(|o| o.base == base && o.access == access)
        {
            let o = &mut open[i];
            let rel = offset.wrapping_sub(o.first);
            if rel.unsigned_abs() <= SPAN as u64 {
                let (lo, hi) = (o.lo.min(rel), o.hi.max(rel + bytes));
                if hi - lo <= SPAN {
                    (o.lo, o.hi) = (lo, hi);
                    o.members.push(at);
                    continue;
                }
            }
            let o = open.swap_remove(i);
            groups.close(o);
        }
        open.push(Open {
            base,
            access,
            first: offset,
            lo: 0,
            hi: bytes,
            members: vec![at],
        });
    }
    for o in open {
        groups.close(o);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Prepared;
    use gantry_frontend::lift::{self, CodeBytes, Mode};
    use gantry_frontend::vendor::Vendor;

    /// The groups of 64-bit `code` lifted as one block, as (the accesses' ranks among
    /// the block's accesses, the group's range) per group.
    fn groups_of(code: &[u8]) -> Vec<(Vec<usize>, Range)> {
        let mode = Mode::long64(Vendor::Intel);
        let block = lift::translate(
            &mut CodeBytes {
                at: 0x1000,
                bytes: code,
            },
            0x1000,
            0,
            mode,
        )
        .unwrap();
        let p = Prepared::new(block);
        let mut consts = vec![None; p.block.vals.len()];
        for &(v, k) in p.consts.iter() {
            consts[v as usize] = Some(k);
        }
        let g = find(&p, &consts);
        let accesses: Vec<usize> = p
            .ops()
            .iter()
            .enumerate()
            .filter(|(_, i)| matches!(i, Inst::Load { .. } | Inst::Store { .. }))
            .map(|(at, _)| at)
            .collect();
        (0..g.ranges.len())
            .map(|id| {
                let ranks = accesses
                    .iter()
                    .enumerate()
                    .filter(|(_, &at)| g.of[at] == Some(id as u32))
                    .map(|(rank, _)| rank)
                    .collect();
                (ranks, g.ranges[id])
            })
            .collect()
    }

    fn range(lo: i64, hi: i64, access: Access) -> Range {
        Range { lo, hi, access }
    }

    #[test]
    fn loads_through_one_register_share_a_look_up_and_stores_their_own() {
        let g = groups_of(&[
            0x48, 0x8B, 0x43, 0x10, // mov rax, [rbx+16]
            0x48, 0x8B, 0x4B, 0xF8, // mov rcx, [rbx-8]
            0x48, 0x89, 0x53, 0x08, // mov [rbx+8], rdx
            0x89, 0x73, 0x0C, // mov [rbx+12], esi
            0x48, 0x8B, 0x3E, // mov rdi, [rsi]
            0xF4, // hlt
        ]);
        assert_eq!(
            g,
            vec![
                (vec![0, 1], range(-24, 8, Access::Read)),
                (vec![2, 3], range(0, 8, Access::Write)),
            ]
        );
    }

    #[test]
    fn pushes_share_one_through_the_stack_pointer_they_move() {
        let g = groups_of(&[
            0x50, // push rax
            0x51, // push rcx
            0x5A, // pop rdx
            0xF4, // hlt
        ]);
        // The pushes at RSP-8 and RSP-16; the pop alone.
        assert_eq!(g, vec![(vec![0, 1], range(-8, 8, Access::Write))]);
    }

    #[test]
    fn a_helper_call_ends_a_group_and_adding_a_constant_does_not() {
        let g = groups_of(&[
            0x48, 0x8B, 0x03, // mov rax, [rbx]
            0x0F, 0xA2, // cpuid (a helper)
            0x48, 0x8B, 0x4B, 0x08, // mov rcx, [rbx+8]
            0x48, 0x83, 0xC3, 0x10, // add rbx, 16
            0x48, 0x8B, 0x53, 0x08, // mov rdx, [rbx+8]: RBX+24, through RBX + 16
            0x48, 0x8B, 0x73, 0xF0, // mov rsi, [rbx-16]: RBX before the add
            0xF4, // hlt
        ]);
        assert_eq!(g, vec![(vec![1, 2, 3], range(-8, 24, Access::Read))]);
    }

    #[test]
    fn accesses_farther_apart_than_the_span_do_not_share() {
        let g = groups_of(&[
            0x48, 0x8B, 0x03, // mov rax, [rbx]
            0x48, 0x8B, 0x8B, 0x00, 0x01, 0x00, 0x00, // mov rcx, [rbx+256]
            0x48, 0x8B, 0x93, 0xF8, 0x00, 0x00, 0x00, // mov rdx, [rbx+248]
            0xF4, // hlt
        ]);
        // [rbx+256, +264) does not fit with [rbx, +8) in 256 bytes; it starts a group
        // with [rbx+248], which does.
        assert_eq!(g, vec![(vec![1, 2], range(-8, 8, Access::Read))]);
    }
}
