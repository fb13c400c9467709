//! The softmmu's TLB: a direct-mapped cache of linear pages, one table per privilege index
//! (supervisor, user), knowing nothing of how x86 page tables look (the machine's
//! emulated CPU walks them and fills it). It lives with the translator, as QEMU's
//! `cputlb.c` lives with TCG, because generated code reads it: the JIT emits the compare
//! and the add of [`Tlb::lookup`] inline, with the offsets of [`layout`]. As QEMU's `cputlb.c`,
//! each entry has three comparators (read, write, code): a linear page address whose low
//! bits carry flags, and one host addend (host pointer minus linear page) for the page's
//! RAM or ROM. An access hits the fast path only when its comparator equals the page
//! exactly, so any flag in it (no host memory, translated code, a watched page, an
//! invalid entry) sends the access to the slow path, which resolves it by name.
//!
//! The layout is `#[repr(C)]` and read by offset (`offset_of!`), so generated code can do
//! the compare and the add inline.

use std::mem::offset_of;

pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
pub const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// Entries per privilege index: 4096, indexed by the page number's low bits (see
/// [`slot`]), so that generated code finds an entry with a shift and a mask. Pages 16 MiB
/// apart share a slot (the victims catch a copy between two such buffers); a flush clears
/// only the slots filled since the last one ([`Tlb::flush`]), so the table's size costs
/// nothing there.
pub const TLB_BITS: u32 = 12;
pub const TLB_SIZE: usize = 1 << TLB_BITS;

/// The comparator holds nothing (an empty entry, or an access the page does not allow).
pub const TLB_INVALID: u64 = 1 << 0;
/// Not plain host memory for this access: MMIO, a hole, or a write to ROM.
pub const TLB_IO: u64 = 1 << 1;
/// The page holds translated code: writes go through the slow path, which invalidates it.
pub const TLB_CODE: u64 = 1 << 2;
/// A debugger watchpoint or a guest data breakpoint covers part of the page.
pub const TLB_WATCH: u64 = 1 << 3;
/// Every flag bit; the rest of a comparator is the linear page address.
pub const TLB_FLAGS: u64 = TLB_INVALID | TLB_IO | TLB_CODE | TLB_WATCH;

/// The three kinds of access an entry answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read = 0,
    Write = 1,
    Exec = 2,
}

/// One TLB entry. The comparators come first, in [`Access`] order. A cache line each:
/// generated code finds an entry with a shift rather than a multiply by 48, which sat on
/// the dependency chain of every guest memory access.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct TlbEntry {
    pub cmp: [u64; 3],
    /// Host address of the page minus its linear address (wrapping); meaningful for a
    /// comparator without [`TLB_IO`].
    pub addend: u64,
    /// The guest-physical page, for the slow path.
    pub phys: u64,
    /// Kept by a flush that keeps global pages (MOV CR3).
    pub global: bool,
}

/// Byte offsets of an entry's fields, for generated code.
pub mod layout {
    use super::*;
    pub const ENTRY_SIZE: usize = std::mem::size_of::<TlbEntry>();
    /// `ENTRY_SIZE` is this power of two.
    pub const ENTRY_SHIFT: u32 = ENTRY_SIZE.trailing_zeros();
    pub const CMP: usize = offset_of!(TlbEntry, cmp);
    pub const ADDEND: usize = offset_of!(TlbEntry, addend);
    /// Where the table of privilege index `i` starts within [`Tlb`](super::Tlb).
    pub const fn table(i: usize) -> usize {
        offset_of!(super::Tlb, entries) + i * TLB_SIZE * ENTRY_SIZE
    }
}

pub const EMPTY: TlbEntry = TlbEntry {
    cmp: [TLB_INVALID; 3],
    addend: 0,
    phys: 0,
    global: false,
};

/// What a fill puts in an entry: the physical page, the host page if it is memory, and
/// the flags of each comparator (`TLB_INVALID` for an access the page does not allow).
pub struct Fill {
    pub phys: u64,
    pub host: Option<*mut u8>,
    pub flags: [u64; 3],
    pub global: bool,
}

/// A host address the TLB resolved a guest access to: it lies in guest RAM or ROM with
/// the access's bytes on the same page. Only [`Tlb::lookup`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostAddr(*mut u8);

impl HostAddr {
    /// Reads `bytes` (1-8), little-endian. The IR's widths (1, 2, 4, 8) are one unaligned
    /// load each; a copy of a variable length was a call to `memmove` per access.
    #[inline]
    pub fn load(self, bytes: u8) -> u64 {
        // SAFETY: a `HostAddr` comes from a TLB hit: the entry's addend was made from
        // `GuestMemory::host_page` for the mapping the TLB is bound to (`Mmu::bind` drops
        // every entry when the CPU is handed other memory), and the hit checked that the
        // `bytes` bytes stay within that page. Guest memory is plain bytes, so any value is
        // valid, and the reads are unaligned ones.
        unsafe {
            match bytes {
                1 => u64::from(*self.0),
                2 => u64::from(u16::from_le(self.0.cast::<u16>().read_unaligned())),
                4 => u64::from(u32::from_le(self.0.cast::<u32>().read_unaligned())),
                8 => u64::from_le(self.0.cast::<u64>().read_unaligned()),
                _ => {
                    let mut buf = [0u8; 8];
                    let n = (bytes as usize).min(8);
                    std::ptr::copy_nonoverlapping(self.0, buf.as_mut_ptr(), n);
                    u64::from_le_bytes(buf)
                }
            }
        }
    }

    /// Writes the low `bytes` (1-8) of `value`, little-endian. Only write comparators
    /// without flags resolve to a `HostAddr` for a store, and those are RAM.
    #[inline]
    pub fn store(self, bytes: u8, value: u64) {
        // SAFETY: as in `load`; a write comparator without TLB_IO is only filled for a RAM
        // page, whose mapping is writable, and the CPU holds the guest memory exclusively
        // while it runs (`Ctx` borrows it mutably).
        unsafe {
            match bytes {
                1 => *self.0 = value as u8,
                2 => self.0.cast::<u16>().write_unaligned((value as u16).to_le()),
                4 => self.0.cast::<u32>().write_unaligned((value as u32).to_le()),
                8 => self.0.cast::<u64>().write_unaligned(value.to_le()),
                _ => {
                    let buf = value.to_le_bytes();
                    let n = (bytes as usize).min(8);
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), self.0, n);
                }
            }
        }
    }
}

/// What a look-up found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Plain host memory at this address.
    Host(HostAddr),
    /// The page is in the TLB, but the access cannot go to host memory directly: its
    /// comparator carries flags, or the access crosses into the next page. The physical
    /// address, and the flags.
    Flagged {
        phys: u64,
        flags: u64,
    },
    Miss,
}

/// Entries a fill pushes out of the direct-mapped table, kept per privilege index and
/// searched on a miss (QEMU's victim TLB): pages 16 MiB apart share a slot, and a copy
/// loop between two such buffers would otherwise miss on every access.
pub const VICTIMS: usize = 8;

#[repr(C)]
pub struct Tlb {
    /// `[privilege index][slot(linear)]`; first, so its offsets are fixed.
    entries: [[TlbEntry; TLB_SIZE]; 2],
    victims: [[TlbEntry; VICTIMS]; 2],
    /// Where each index's next evicted entry goes (round robin).
    next_victim: [usize; 2],
    /// Per kind (`[0]` non-global, `[1]` global) and index, the slots that may hold an
    /// entry of that kind (each once, as `listed` marks): what a flush empties and a code
    /// page's change of flags visits, rather than all 4096. Global entries have a list of
    /// their own so that the flushes that keep them (every MOV CR3) do not walk them.
    filled: [[Vec<u16>; 2]; 2],
    listed: [[[u64; TLB_SIZE / 64]; 2]; 2],
}

impl Default for Tlb {
    fn default() -> Self {
        Self {
            entries: [[EMPTY; TLB_SIZE]; 2],
            victims: [[EMPTY; VICTIMS]; 2],
            next_victim: [0; 2],
            filled: Default::default(),
            listed: [[[0; TLB_SIZE / 64]; 2]; 2],
        }
    }
}

/// The entry holds `page` for some kind of access.
#[inline]
fn holds(e: &TlbEntry, page: u64) -> bool {
    e.cmp
        .iter()
        .any(|c| c & !TLB_FLAGS == page && c & TLB_INVALID == 0)
}

/// The slot of `linear`'s page: the page number's low bits, so that a page and the next
/// one never share a slot. An access that crosses into the next page then can never hit
/// its first page's slot when compared with the page of its last byte, which is how
/// generated code checks hit and fit at once (`jit.rs`, `tlb_probe`), computing the same
/// slot.
#[inline]
pub fn slot(linear: u64) -> usize {
    (linear >> PAGE_SHIFT) as usize & (TLB_SIZE - 1)
}

impl Tlb {
    /// Looks `bytes` at `linear` up for `access`, in the table and then among the
    /// victims; an access that crosses its page is never a host address (the slow path
    /// splits it).
    #[inline]
    pub fn lookup(&mut self, idx: usize, linear: u64, bytes: u8, access: Access) -> Lookup {
        match self.lookup_table(idx, linear, bytes, access) {
            Lookup::Miss if self.swap_in_victim(idx, linear) => {
                self.lookup_table(idx, linear, bytes, access)
            }
            found => found,
        }
    }

    #[inline]
    fn lookup_table(&self, idx: usize, linear: u64, bytes: u8, access: Access) -> Lookup {
        let page = linear & !PAGE_MASK;
        let e = &self.entries[idx & 1][slot(linear)];
        let cmp = e.cmp[access as usize];
        if cmp == page && (linear & PAGE_MASK) + bytes as u64 <= PAGE_SIZE {
            return Lookup::Host(HostAddr(e.addend.wrapping_add(linear) as *mut u8));
        }
        if cmp & !TLB_FLAGS == page && cmp & TLB_INVALID == 0 {
            return Lookup::Flagged {
                phys: e.phys | (linear & PAGE_MASK),
                flags: cmp & TLB_FLAGS,
            };
        }
        Lookup::Miss
    }

    /// The physical address of `linear` if its page is in the TLB for `access`, whatever
    /// the flags.
    #[inline]
    pub fn phys(&mut self, idx: usize, linear: u64, access: Access) -> Option<u64> {
        if !holds(&self.entries[idx & 1][slot(linear)], linear & !PAGE_MASK) {
            self.swap_in_victim(idx, linear);
        }
        let e = &self.entries[idx & 1][slot(linear)];
        let cmp = e.cmp[access as usize];
        (cmp & !TLB_FLAGS == linear & !PAGE_MASK && cmp & TLB_INVALID == 0)
            .then_some(e.phys | (linear & PAGE_MASK))
    }

    /// Whether the table holds `linear`'s page as global (kept by MOV CR3): asked right
    /// after a translation, which leaves the page's entry in the table.
    pub fn is_global(&self, idx: usize, linear: u64) -> bool {
        let e = &self.entries[idx & 1][slot(linear)];
        e.global && holds(e, linear & !PAGE_MASK)
    }

    /// Moves the victim that holds `linear`'s page, if any, into the table, and the
    /// table's entry into its place.
    fn swap_in_victim(&mut self, idx: usize, linear: u64) -> bool {
        let page = linear & !PAGE_MASK;
        let i = idx & 1;
        let Some(v) = self.victims[i].iter().position(|e| holds(e, page)) else {
            return false;
        };
        self.list(i, slot(linear), self.victims[i][v].global);
        std::mem::swap(&mut self.entries[i][slot(linear)], &mut self.victims[i][v]);
        true
    }

    /// Notes that slot `s` of index `i` is about to hold an entry, global or not.
    #[inline]
    fn list(&mut self, i: usize, s: usize, global: bool) {
        let g = global as usize;
        let (word, bit) = (s / 64, 1u64 << (s % 64));
        if self.listed[g][i][word] & bit == 0 {
            self.listed[g][i][word] |= bit;
            self.filled[g][i].push(s as u16);
        }
    }

    /// Enters the page of `linear`, pushing the entry in its slot out to the victims.
    ///
    /// # Safety
    /// `f.host`, when given, must point to a 4 KiB page of guest memory (writable if any
    /// write comparator is entered without `TLB_IO`) that stays mapped until the entry is
    /// flushed: hits hand out addresses within it, and generated code loads and stores
    /// there.
    pub unsafe fn fill(&mut self, idx: usize, linear: u64, f: &Fill) {
        let page = linear & !PAGE_MASK;
        let i = idx & 1;
        let old = self.entries[i][slot(linear)];
        if old.cmp.iter().any(|c| c & TLB_INVALID == 0) && !holds(&old, page) {
            let n = self.next_victim[i];
            self.victims[i][n] = old;
            self.next_victim[i] = (n + 1) % VICTIMS;
        }
        let mut cmp = [0; 3];
        for (c, flags) in cmp.iter_mut().zip(f.flags) {
            let flags = if f.host.is_none() {
                flags | TLB_IO
            } else {
                flags
            };
            *c = if flags & TLB_INVALID != 0 {
                TLB_INVALID
            } else {
                page | flags
            };
        }
        self.list(i, slot(linear), f.global);
        self.entries[i][slot(linear)] = TlbEntry {
            cmp,
            addend: f.host.map_or(0, |h| (h as u64).wrapping_sub(page)),
            phys: f.phys & !PAGE_MASK,
            global: f.global,
        };
    }

    /// The direct-mapped table of privilege index `idx`, for generated code's inline
    /// look-up (a miss there goes to the slow path, which also searches the victims).
    pub fn table(&self, idx: usize) -> *const TlbEntry {
        self.entries[idx & 1].as_ptr()
    }

    /// Drops all entries, or all but global ones: the slots filled since the last flush
    /// and the victims.
    ///
    /// A slot holding a global entry is on the global list (it was listed as such when the
    /// entry came in, and only a full flush empties that list), so a flush that keeps them
    /// walks the other list alone, leaving the global entries it meets there in place.
    pub fn flush(&mut self, keep_global: bool) {
        self.empty_listed(false, keep_global);
        if !keep_global {
            self.empty_listed(true, false);
        }
        for e in self.victims.iter_mut().flatten() {
            if !(keep_global && e.global) {
                *e = EMPTY;
            }
        }
    }

    /// Empties the slots on the lists of global entries or of the others, all but the
    /// global entries if `keep_global`, and the lists.
    fn empty_listed(&mut self, global: bool, keep_global: bool) {
        let g = global as usize;
        for i in 0..2 {
            for s in self.filled[g][i].drain(..) {
                let e = &mut self.entries[i][s as usize];
                if !(keep_global && e.global) {
                    *e = EMPTY;
                }
            }
            self.listed[g][i] = [0; TLB_SIZE / 64];
        }
    }

    /// Drops the entries of one linear page (INVLPG), global or not.
    pub fn flush_page(&mut self, linear: u64) {
        let page = linear & !PAGE_MASK;
        let victims = self.victims.iter_mut().flatten();
        let slots = self.entries.iter_mut().map(|t| &mut t[slot(linear)]);
        for e in slots.chain(victims) {
            if holds(e, page) {
                *e = EMPTY;
            }
        }
    }

    /// Sets or clears `flag` in the write comparators of every entry that maps physical
    /// page `phys_page` (a page that gained or lost translated code).
    pub fn set_write_flag(&mut self, phys_page: u64, flag: u64, on: bool) {
        let update = |e: &mut TlbEntry| {
            let w = &mut e.cmp[Access::Write as usize];
            if e.phys == phys_page << PAGE_SHIFT && *w & TLB_INVALID == 0 {
                if on {
                    *w |= flag;
                } else {
                    *w &= !flag;
                }
            }
        };
        let (filled, entries) = (&self.filled, &mut self.entries);
        for kind in filled {
            for (slots, table) in kind.iter().zip(entries.iter_mut()) {
                for &s in slots {
                    update(&mut table[s as usize]);
                }
            }
        }
        self.victims.iter_mut().flatten().for_each(update);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(host: Option<*mut u8>, flags: [u64; 3]) -> Fill {
        Fill {
            phys: 0x5000,
            host,
            flags,
            global: false,
        }
    }

    #[test]
    fn hits_compare_the_whole_page_and_flags_divert() {
        let mut buf = [0u8; 0x2000];
        buf[0xff8] = 0x5a;
        let host = buf.as_mut_ptr();
        let mut t = Tlb::default();
        // SAFETY: the pages are `buf`, or none, and outlive the TLB.
        unsafe {
            t.fill(
                1,
                0x7000_1234,
                &fill(Some(host), [0, TLB_CODE, TLB_INVALID]),
            )
        };
        let Lookup::Host(h) = t.lookup(1, 0x7000_1ff8, 8, Access::Read) else {
            panic!("no hit")
        };
        assert_eq!(h.load(1), 0x5a);
        // Crossing into the next page goes the slow way; the other privilege index and
        // another page miss.
        assert_eq!(
            t.lookup(1, 0x7000_1ff9, 8, Access::Read),
            Lookup::Flagged {
                phys: 0x5ff9,
                flags: 0
            }
        );
        assert_eq!(t.lookup(0, 0x7000_1000, 1, Access::Read), Lookup::Miss);
        assert_eq!(t.lookup(1, 0x7010_1000, 1, Access::Read), Lookup::Miss);
        assert_eq!(
            t.lookup(1, 0x7000_1010, 4, Access::Write),
            Lookup::Flagged {
                phys: 0x5010,
                flags: TLB_CODE
            }
        );
        assert_eq!(t.lookup(1, 0x7000_1000, 1, Access::Exec), Lookup::Miss);
        t.set_write_flag(5, TLB_CODE, false);
        assert!(matches!(
            t.lookup(1, 0x7000_1010, 4, Access::Write),
            Lookup::Host(_)
        ));
        t.flush_page(0x7000_1000);
        assert_eq!(t.lookup(1, 0x7000_1000, 1, Access::Read), Lookup::Miss);
    }

    #[test]
    fn io_pages_never_hit_and_global_entries_survive() {
        let mut t = Tlb::default();
        // SAFETY: the pages are `buf`, or none, and outlive the TLB.
        unsafe { t.fill(0, 0, &fill(None, [0; 3])) };
        assert_eq!(
            t.lookup(0, 8, 1, Access::Read),
            Lookup::Flagged {
                phys: 0x5008,
                flags: TLB_IO
            }
        );
        // Linear page 0 is a real page: an empty entry must not look like it.
        let mut empty = Tlb::default();
        assert_eq!(empty.lookup(0, 0, 1, Access::Read), Lookup::Miss);
        let mut g = fill(None, [0; 3]);
        g.global = true;
        // SAFETY: the pages are `buf`, or none, and outlive the TLB.
        unsafe { t.fill(1, 0x1000, &g) };
        t.flush(true);
        assert_eq!(t.phys(1, 0x1004, Access::Write), Some(0x5004));
        assert_eq!(t.phys(0, 0x0, Access::Read), None);
        t.flush(false);
        assert_eq!(t.phys(1, 0x1004, Access::Write), None);
    }

    #[test]
    fn a_page_pushed_out_of_its_slot_is_found_among_the_victims() {
        let mut buf = [0u8; 0x1000];
        let host = buf.as_mut_ptr();
        let mut t = Tlb::default();
        // Linear pages 0x200 and 0x1200 (16 MiB apart) share a slot.
        assert_eq!(slot(0x20_0000), slot(0x120_0000));
        // SAFETY: the pages are `buf`, or none, and outlive the TLB.
        unsafe { t.fill(0, 0x20_0000, &fill(Some(host), [0; 3])) };
        // SAFETY: the pages are `buf`, or none, and outlive the TLB.
        unsafe { t.fill(0, 0x120_0000, &fill(Some(host), [0; 3])) };
        assert!(matches!(
            t.lookup(0, 0x20_0010, 4, Access::Write),
            Lookup::Host(_)
        ));
        assert!(matches!(
            t.lookup(0, 0x120_0010, 4, Access::Read),
            Lookup::Host(_)
        ));
        t.flush_page(0x20_0000);
        assert_eq!(t.lookup(0, 0x20_0010, 4, Access::Read), Lookup::Miss);
        assert_eq!(t.phys(0, 0x120_0004, Access::Exec), Some(0x5004));
        t.flush(false);
        assert_eq!(t.phys(0, 0x120_0004, Access::Exec), None);
        // Copies between buffers 1 MiB or 4 MiB apart use two slots.
        assert_ne!(slot(0x20_0000), slot(0x30_0000));
        assert_ne!(slot(0x20_0000), slot(0x60_0000));
    }

    /// A flush visits only the slots filled since the last one: every entry, in the
    /// table or among the victims, must still be gone after it.
    #[test]
    fn a_flush_empties_every_slot_it_filled() {
        let mut buf = [0u8; 0x1000];
        let host = buf.as_mut_ptr();
        let mut t = Tlb::default();
        let empty = |t: &Tlb| {
            let victims = t.victims.iter().flatten();
            t.entries
                .iter()
                .flatten()
                .chain(victims)
                .all(|e| e.cmp.iter().all(|c| c & TLB_INVALID != 0))
        };
        for round in 0..3u64 {
            for n in 0..40u64 {
                // Some pages 16 MiB apart, so that victims fill as well.
                let linear = (n % 8) << 24 | (n / 8 + round) << PAGE_SHIFT;
                let global = Fill {
                    global: n % 5 == 0,
                    ..fill(Some(host), [0; 3])
                };
                // SAFETY: the pages are `buf`, which outlives the TLB.
                unsafe { t.fill((n & 1) as usize, linear, &global) };
                if n % 7 == 0 {
                    t.flush_page(linear);
                }
            }
            assert!(!empty(&t));
            t.flush(true);
            let kept = t.entries.iter().flatten().filter(|e| e.global).count();
            assert!(kept > 0, "global entries survive a flush that keeps them");
            // Look-ups swap global victims back into the slots the flush emptied.
            for n in 0..40u64 {
                let linear = (n % 8) << 24 | (n / 8 + round) << PAGE_SHIFT;
                t.lookup((n & 1) as usize, linear, 1, Access::Read);
            }
            t.flush(false);
            assert!(empty(&t), "round {round}");
            assert!(t.filled.iter().flatten().all(Vec::is_empty));
        }
    }

    /// What the inline look-up's single compare relies on: the slot of a page never
    /// holds the next page, so an access crossing into it cannot hit.
    #[test]
    fn a_page_and_the_next_never_share_a_slot() {
        let edges = [
            0u64,
            0x3FF,
            0x400,
            0x7FFFF,
            0xFFFFF,
            0x1FF_FFFF,
            (1 << 52) - 2,
        ];
        let pages = (0..0x40_0000u64).chain(edges.iter().flat_map(|&e| e.saturating_sub(4)..e + 4));
        for vpn in pages {
            let page = vpn << PAGE_SHIFT;
            assert_ne!(
                slot(page),
                slot(page.wrapping_add(PAGE_SIZE)),
                "page {page:#x}"
            );
        }
    }

    #[test]
    fn layout_is_what_generated_code_reads() {
        assert_eq!(layout::CMP, 0);
        assert_eq!(layout::ADDEND, 24);
        assert_eq!(layout::table(1), TLB_SIZE * layout::ENTRY_SIZE);
        assert!(layout::ENTRY_SIZE.is_power_of_two());
    }
}
