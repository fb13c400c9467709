//! Which chain slots hold a link, and what every link assumed: the code cache's chain
//! epoch and the lookup context (privilege, mode, CS base) it was made in. A direct exit
//! then follows its slot with no check of its own but the run's budget, as QEMU's
//! patched jumps between translation blocks do: a slot is either empty (its exit asks the
//! chaining shim) or right for every run that can reach it.
//!
//! That holds because every link is dropped whenever what it assumed may have changed:
//! - the chain epoch moved (a jump-cache flush, a compiled block dropped): [`Links::enter`]
//!   sees it at the next boundary that asks, before any link is followed again (the host
//!   call that moved it makes the run ask);
//! - a block is entered in another context than the one its links were made in. Each
//!   compiled block keeps that context's number ([`crate::block::Compiled::linked`]);
//!   links are made only from a block entered in the context they are made in, to a block
//!   then marked with it, so that a block whose mark changes may be the target of links
//!   from the old context: all of them are dropped. A block runs in one context in
//!   practice (kernel and user code live on different pages), so this is rare.
//!
//! Exits to computed addresses share one table ([`INDIRECT_TARGETS`]), whose entries keep
//! the address and the context number they were filled for, which the exit compares.

use std::cell::Cell;
use std::rc::{Rc, Weak};

use crate::block::ChainSlot;

/// Entries of the table through which exits to computed addresses (RET, indirect jumps
/// and calls, IRET) chain: direct-mapped by address, each a chain slot that also holds
/// the address and the context it is for.
pub(crate) const INDIRECT_TARGETS: usize = 4096;

/// Contexts numbered at most: a run in yet another context chains through the host.
const MAX_CONTEXTS: usize = 0xFFFF;

pub(crate) struct Links {
    /// The chain epoch the links were made under; `None` before the first.
    epoch: Option<u64>,
    /// The lookup contexts seen, numbered from 1 by their place.
    contexts: Vec<u64>,
    /// The slots of every compiled block of the code memory that has any; a block that
    /// is gone leaves its entry dead until the next pass over them.
    tables: Vec<Weak<[ChainSlot]>>,
    /// The table's length after its last pass: it is pruned when it doubles.
    live: usize,
    /// The table of indirect targets; the generated code holds its address.
    targets: Box<[ChainSlot]>,
    /// How often every link was dropped.
    pub(crate) clears: u64,
}

impl Links {
    pub(crate) fn new() -> Self {
        Self {
            epoch: None,
            contexts: Vec::new(),
            tables: Vec::new(),
            live: 0,
            targets: (0..INDIRECT_TARGETS)
                .map(|_| ChainSlot::default())
                .collect(),
            clears: 0,
        }
    }

    /// The address of the table of indirect targets, for generated code.
    pub(crate) fn targets(&self) -> usize {
        self.targets.as_ptr() as usize
    }

    /// Keeps track of a newly compiled block's slots.
    pub(crate) fn register(&mut self, slots: &Rc<[ChainSlot]>) {
        if slots.is_empty() {
            return;
        }
        self.tables.push(Rc::downgrade(slots));
        if self.tables.len() > 2 * self.live + 64 {
            self.tables.retain(|t| t.strong_count() > 0);
            self.live = self.tables.len();
        }
    }

    /// Drops every link.
    pub(crate) fn clear(&mut self) {
        self.clears += 1;
        self.tables.retain(|t| match t.upgrade() {
            Some(slots) => {
                slots.iter().for_each(ChainSlot::empty);
                true
            }
            None => false,
        });
        self.live = self.tables.len();
        self.targets.iter().for_each(ChainSlot::empty);
    }

    /// Forgets every block's slots: the code memory they ran from was freed.
    pub(crate) fn forget_blocks(&mut self) {
        self.tables.clear();
        self.live = 0;
        self.targets.iter().for_each(ChainSlot::empty);
    }

    /// A block marked `linked` is entered in `context` under chain epoch `epoch`: drops
    /// the links that may no longer hold (all of them, if the epoch moved or the block's
    /// mark changes) and marks the block. The context's number, or `None` past
    /// [`MAX_CONTEXTS`] (the run then makes no links).
    pub(crate) fn enter(&mut self, epoch: u64, context: u64, linked: &Cell<u16>) -> Option<u16> {
        if self.epoch != Some(epoch) {
            self.clear();
            self.epoch = Some(epoch);
        }
        let n = self.number(context)?;
        let was = linked.get();
        if was != n {
            if was != 0 {
                self.clear();
            }
            linked.set(n);
        }
        Some(n)
    }

    fn number(&mut self, context: u64) -> Option<u16> {
        let i = match self.contexts.iter().position(|&c| c == context) {
            Some(i) => i,
            None if self.contexts.len() < MAX_CONTEXTS => {
                self.contexts.push(context);
                self.contexts.len() - 1
            }
            None => return None,
        };
        u16::try_from(i + 1).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linked_slots(n: usize) -> Rc<[ChainSlot]> {
        (0..n)
            .map(|i| {
                let s = ChainSlot::default();
                s.code.set(0x1000 + i as u64);
                s
            })
            .collect()
    }

    fn all_empty(slots: &[ChainSlot]) -> bool {
        slots.iter().all(|s| s.code.get() == 0)
    }

    #[test]
    fn a_new_epoch_drops_every_link() {
        let mut l = Links::new();
        let a = Cell::new(0);
        assert_eq!(l.enter(1, 7, &a), Some(1));
        let slots = linked_slots(3);
        l.register(&slots);
        assert_eq!(l.enter(1, 7, &a), Some(1));
        assert!(
            !all_empty(&slots),
            "the same epoch and context keep the links"
        );
        assert_eq!(l.enter(2, 7, &a), Some(1));
        assert!(all_empty(&slots));
    }

    #[test]
    fn a_block_entered_in_another_context_drops_every_link() {
        let mut l = Links::new();
        let (a, b) = (Cell::new(0), Cell::new(0));
        assert_eq!(l.enter(1, 7, &a), Some(1));
        assert_eq!(l.enter(1, 9, &b), Some(2), "a first mark drops nothing");
        let slots = linked_slots(2);
        l.register(&slots);
        l.targets[5].code.set(0x2000);
        assert!(!all_empty(&slots));
        assert_eq!(l.enter(1, 9, &a), Some(2));
        assert_eq!(a.get(), 2);
        assert!(all_empty(&slots));
        assert!(all_empty(&l.targets));
    }

    #[test]
    fn slots_of_blocks_gone_are_pruned() {
        let mut l = Links::new();
        let kept = linked_slots(1);
        l.register(&kept);
        for _ in 0..1000 {
            l.register(&linked_slots(1));
        }
        assert!(l.tables.len() < 200, "{} tables", l.tables.len());
        l.clear();
        assert_eq!(l.tables.len(), 1);
        assert!(all_empty(&kept));
    }
}
