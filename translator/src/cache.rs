//! The code cache: translated blocks keyed by physical address, RIP and mode (a block is
//! what the bytes at a physical address mean in one mode, so changing page tables flushes
//! nothing), the per-page lists of the blocks whose code is on a page (a write there drops
//! them: self-modifying code), and in front a direct-mapped jump cache keyed by linear
//! address (QEMU's tb_jmp_cache), whose hit skips the instruction-fetch translation and the
//! hash lookup.

use std::rc::Rc;

use rustc_hash::FxHashMap;

use gantry_frontend::lift::Mode;

use crate::block::Prepared;

/// What a translation depends on: the code's physical address, RIP (the offset in CS the
/// block was lifted at) and the mode (code size, stack size, vendor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub phys: u64,
    pub rip: u64,
    pub mode: Mode,
}

/// The bytes of one physical page a block's code was read from, `[start, end)` within
/// it: a write to the page drops the block only if it touches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeSpan {
    pub page: u64,
    pub start: u16,
    pub end: u16,
}

/// What the jump cache is keyed by: the linear side of a lookup. Valid only while the
/// address translation it stands for is (the owner flushes it with the TLB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JumpKey {
    pub cs_base: u64,
    pub rip: u64,
    pub mode: Mode,
    pub cpl: u8,
}

impl JumpKey {
    /// The key but its RIP, as one word: what a chain slot's exit, whose RIP is fixed,
    /// looked up under. `None` for a CS base beyond 32 bits, which no descriptor loads.
    pub fn context(&self) -> Option<u64> {
        let m = &self.mode;
        let base = u32::try_from(self.cs_base).ok()?;
        Some(
            base as u64
                | (self.cpl as u64) << 32
                | (m.code_bits as u64 >> 4) << 34
                | (m.stack_bits as u64 >> 4) << 37
                | (m.mode64 as u64) << 40
                | (m.vendor as u64) << 41,
        )
    }
}

/// What the run loop's lookup of the next block found, for chaining: the block, and what
/// the lookup held under (the chain epoch, and the key's [`JumpKey::context`]).
pub struct Found {
    pub block: Rc<Prepared>,
    pub chain_epoch: u64,
    pub context: Option<u64>,
}

/// Where a run that may chain begins ([`crate::Host::chain_start`]): what the lookup of
/// its first block held under, and whether that block's exits may go straight on into
/// linked blocks, or must ask the host at the first boundary (an interrupt shadow ends
/// there, say).
pub struct Start {
    pub chain_epoch: u64,
    pub context: Option<u64>,
    pub straight: bool,
}

const JUMP_CACHE: usize = 16384;

pub struct CodeCache {
    /// Each entry with the epoch it was filled in: an entry of an older epoch is empty.
    /// (Emptying 4096 entries, dropping a block reference each, at every TLB flush and
    /// code write cost 1.4% of a Linux boot.) A stale entry keeps its block alive until
    /// the slot is filled again, and is never returned.
    jump: Vec<Option<(u64, JumpKey, Rc<Prepared>)>>,
    /// How often the jump cache was emptied.
    jump_epoch: u64,
    /// How often what compiled code caches of the jump cache (the chain slots of its
    /// exits) was invalidated: at every emptying, and when a block with code of its own
    /// was dropped (a slot may lead to it). Slots hold only while this is unchanged.
    chain_epoch: u64,
    /// Hashed with FxHash, not SipHash: the keys are addresses the guest chooses, and a
    /// guest that made them collide would slow only itself (SipHash cost 1.5% of a
    /// Linux boot, in the lookups after each jump-cache flush).
    blocks: FxHashMap<BlockKey, Rc<Prepared>>,
    /// Per physical page, the blocks with code on it and the bytes of the page they span.
    page_blocks: FxHashMap<u64, Vec<(BlockKey, u16, u16)>>,
}

impl Default for CodeCache {
    fn default() -> Self {
        Self {
            jump: vec![None; JUMP_CACHE],
            jump_epoch: 0,
            chain_epoch: 0,
            blocks: FxHashMap::default(),
            page_blocks: FxHashMap::default(),
        }
    }
}

#[inline]
fn slot(rip: u64) -> usize {
    (rip ^ (rip >> 12)) as usize % JUMP_CACHE
}

impl CodeCache {
    // Inlined across the crate boundary: the run loop looks a block up for every block it
    // runs.
    #[inline]
    pub fn jump_lookup(&self, key: &JumpKey) -> Option<Rc<Prepared>> {
        match &self.jump[slot(key.rip)] {
            Some((epoch, k, b)) if *epoch == self.jump_epoch && k == key => Some(b.clone()),
            _ => None,
        }
    }

    #[inline]
    pub fn jump_insert(&mut self, key: JumpKey, block: Rc<Prepared>) {
        self.jump[slot(key.rip)] = Some((self.jump_epoch, key, block));
    }

    /// Forgets every linear-address lookup (the TLB was flushed, or every translation
    /// dropped), and so every chain.
    pub fn flush_jumps(&mut self) {
        self.jump_epoch += 1;
        self.chain_epoch += 1;
    }

    /// How often the jump cache was emptied.
    pub fn jump_epoch(&self) -> u64 {
        self.jump_epoch
    }

    /// Changes whenever a chain slot may have become wrong: the jump cache was emptied,
    /// or a block with compiled code was dropped. While it does not, every compiled block
    /// a lookup returned stays cached, and the same lookup returns the same block.
    pub fn chain_epoch(&self) -> u64 {
        self.chain_epoch
    }

    #[inline]
    pub fn get(&self, key: &BlockKey) -> Option<Rc<Prepared>> {
        self.blocks.get(key).cloned()
    }

    /// Caches `block`, whose code was read from `spans`.
    pub fn insert(&mut self, key: BlockKey, spans: &[CodeSpan], block: Rc<Prepared>) {
        for s in spans {
            self.page_blocks
                .entry(s.page)
                .or_default()
                .push((key, s.start, s.end));
        }
        self.blocks.insert(key, block);
    }

    /// Drops the blocks whose code spans bytes `[start, end)` of physical page `page`,
    /// as QEMU drops only the translations a write overlaps: Linux patches its code a few
    /// bytes at a time (jump labels, alternatives, static calls), and dropping every block
    /// of the patched page had sent hot kernel code back through the interpreter and the
    /// compiler. A dropped block leaves the jump cache too (its one entry), and if
    /// compiled code may chain into it, every chain slot is invalidated (they hold the
    /// chain epoch), as QEMU unlinks the jumps into a dropped translation. Emptying the
    /// whole jump cache for every dropped block had sent each of the Debian boot's 13,000
    /// invalidations through a refill of the jump cache and of every chain slot. Returns how many
    /// blocks were dropped, and whether the page still holds code of a cached block.
    pub fn invalidate(&mut self, page: u64, start: u16, end: u16) -> (u64, bool) {
        let Some(list) = self.page_blocks.get_mut(&page) else {
            return (0, false);
        };
        // Most writes to a page with code touch none of it (in the Debian boot, 47,000
        // of 58,000): those leave the list as it is, without a look-up per entry.
        if !list.iter().any(|(_, s, e)| *s < end && start < *e) {
            return (0, true);
        }
        let mut dropped = 0;
        let mut chained = false;
        let (blocks, jump) = (&mut self.blocks, &mut self.jump);
        list.retain(|(key, s, e)| {
            if *s < end && start < *e {
                if let Some(b) = blocks.remove(key) {
                    dropped += 1;
                    chained |= b.tier.may_be_chained_to();
                    let entry = &mut jump[slot(key.rip)];
                    if entry.as_ref().is_some_and(|(_, _, j)| Rc::ptr_eq(j, &b)) {
                        *entry = None;
                    }
                }
                false
            } else {
                // An entry whose block another page's write dropped goes too.
                blocks.contains_key(key)
            }
        });
        let still = !list.is_empty();
        if !still {
            self.page_blocks.remove(&page);
        }
        if chained {
            self.chain_epoch += 1;
        }
        (dropped, still)
    }

    /// Whether bytes `start..end` of physical page `page` hold code of a cached block
    /// (the blocks [`Self::invalidate`] would drop).
    pub fn touches(&self, page: u64, start: u16, end: u16) -> bool {
        self.page_blocks.get(&page).is_some_and(|list| {
            list.iter()
                .any(|(key, s, e)| *s < end && start < *e && self.blocks.contains_key(key))
        })
    }

    /// Drops every translation.
    pub fn clear(&mut self) {
        self.blocks.clear();
        self.page_blocks.clear();
        self.flush_jumps();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_frontend::ir::Block;
    use gantry_frontend::vendor::Vendor;

    fn mode() -> Mode {
        Mode::long64(Vendor::Intel)
    }

    #[test]
    fn a_write_to_a_code_page_drops_its_blocks_and_their_jump_cache_entries() {
        let mut c = CodeCache::default();
        let b1 = Rc::new(Prepared::new(Block::default()));
        let b2 = Rc::new(Prepared::new(Block::default()));
        let k1 = BlockKey {
            phys: 0x1000,
            rip: 0x1000,
            mode: mode(),
        };
        let k2 = BlockKey {
            phys: 0x2ff0,
            rip: 0x2ff0,
            mode: mode(),
        };
        let span = |page, start, end| CodeSpan { page, start, end };
        c.insert(k1, &[span(1, 0, 0x20)], b1.clone());
        c.insert(k2, &[span(2, 0xff0, 0x1000), span(3, 0, 0x8)], b2.clone());
        let j1 = JumpKey {
            cs_base: 0,
            rip: 0x1000,
            mode: mode(),
            cpl: 0,
        };
        let j2 = JumpKey { rip: 0x2ff0, ..j1 };
        c.jump_insert(j1, b1.clone());
        c.jump_insert(j2, b2.clone());
        assert!(c.jump_lookup(&j1).is_some() && c.jump_lookup(&j2).is_some());
        // Another mode is another translation.
        let other = BlockKey {
            mode: Mode {
                vendor: Vendor::Amd,
                ..mode()
            },
            ..k1
        };
        assert!(c.get(&other).is_none());
        assert_eq!(
            c.invalidate(1, 0x20, 0x40),
            (0, true),
            "past the block's bytes"
        );
        assert!(
            c.jump_lookup(&j1).is_some(),
            "nothing dropped, nothing forgotten"
        );
        let epochs = (c.jump_epoch(), c.chain_epoch());
        assert_eq!(
            c.invalidate(3, 7, 8),
            (1, false),
            "the block straddling into page 3"
        );
        assert!(c.get(&k2).is_none() && c.get(&k1).is_some());
        assert!(c.jump_lookup(&j2).is_none(), "the dropped block's entry");
        assert!(
            c.jump_lookup(&j1).is_some() && (c.jump_epoch(), c.chain_epoch()) == epochs,
            "a block no compiled code can chain into leaves the rest of the jump cache and \
             the chains"
        );
        assert_eq!(c.invalidate(3, 0, 0x1000), (0, false));
        assert_eq!(
            c.invalidate(2, 0, 0x1000),
            (0, false),
            "its entry on page 2 is gone"
        );
        assert_eq!(c.invalidate(1, 0x1f, 0x20), (1, false));
        assert!(c.jump_lookup(&j1).is_none());
        c.clear();
        assert!(c.get(&k1).is_none());
    }
}
