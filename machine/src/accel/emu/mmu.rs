//! The softmmu: the TLB ([`gantry_translator::tlb`]) in front of the x86 page walk and its permission
//! rules ([`super::paging::walk_access`]), and the physical side ([`super::phys_memory`]):
//! RAM, ROM, MMIO and the pages that hold translated code.
//!
//! A fill grants each kind of access the walk allows the privilege index, so one walk
//! serves later reads, writes and fetches of the page; a write comparator exists only
//! once the page's dirty bit is set, so the first write to a clean page still walks (and
//! sets it). Pages with translated code, watched pages and anything not plain memory get
//! flags in their comparators, which send accesses to the slow path.

use gantry_frontend::state::*;
use gantry_translator::Exception;

use std::collections::HashMap;

use gantry_translator::cache::CodeSpan;

use super::paging;
use super::phys_memory::{self, CodePages, Written};
use crate::board::Board;
use crate::memory::GuestMemory;
pub use gantry_translator::tlb::Access;
use gantry_translator::tlb::{
    Fill, Tlb, PAGE_MASK, PAGE_SHIFT, TLB_CODE, TLB_INVALID, TLB_IO, TLB_WATCH,
};

/// Who is asking: the guest at its CPL, or the CPU itself (descriptor tables, TSS, the
/// interrupt stack frame), which is a supervisor access whatever the CPL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    User,
    Supervisor,
}

/// Counters for `--stats`.
#[derive(Default, Debug, Clone, Copy)]
pub struct MmuStats {
    pub tlb_misses: u64,
    pub page_faults: u64,
    pub tlb_flushes: u64,
    pub mmio_accesses: u64,
}

pub struct Mmu {
    pub tlb: Box<Tlb>,
    /// RAM pages holding translated code (writes must invalidate them).
    pub code_pages: CodePages,
    pub stats: MmuStats,
    /// Changes on every flush that may change where a block looked up by linear address
    /// is, so caches of translations (the CPU's jump cache, and the chains made from it)
    /// know.
    pub generation: u64,
    /// The linear pages blocks were looked up at since the generation changed
    /// ([`Self::note_code_page`]).
    code_linear: CodeLinearPages,
    /// Whether one of those blocks depends on a translation that is not global.
    code_local: bool,
    /// Per physical page with translated code, the bytes its blocks were read from (a
    /// range covering them all): writes elsewhere on the page are data, which neither
    /// drops a block nor ends the one running. Linux's code pages take about 78,000 such
    /// writes in a boot, against 11,000 to the code.
    code_spans: HashMap<u64, (u16, u16)>,
    /// The guest memory the TLB's host addresses point into ([`GuestMemory::mapping_id`]).
    bound: [usize; 4],
    /// Linear ranges `[start, end)` that watchpoints or guest data breakpoints cover: their
    /// pages are filled with [`TLB_WATCH`].
    watched: Vec<(u64, u64)>,
}

impl Mmu {
    pub fn new(ram_size: u64) -> Self {
        Self {
            tlb: Box::default(),
            code_pages: CodePages::new(ram_size),
            stats: MmuStats::default(),
            generation: 0,
            code_linear: CodeLinearPages::default(),
            code_local: false,
            code_spans: HashMap::new(),
            bound: [0; 4],
            watched: Vec::new(),
        }
    }

    /// The TLB's privilege index for an access.
    #[inline]
    pub fn index(cpu: &CpuState, privilege: Privilege) -> usize {
        (privilege == Privilege::User && cpu.cpl() == 3) as usize
    }

    /// Whether the TLB's host addresses are into `mem`'s mappings ([`Self::bind`]).
    pub fn is_bound(&self, mem: &GuestMemory) -> bool {
        mem.mapping_id() == self.bound
    }

    /// Makes sure the TLB's host addresses point into `mem`, flushing it when it was
    /// filled for other memory (the host addresses of the fast path rely on this).
    #[inline]
    pub fn bind(&mut self, mem: &GuestMemory) {
        let id = mem.mapping_id();
        if id != self.bound {
            self.flush(false);
            self.bound = id;
        }
    }

    /// Drops all entries (or all but global ones). A flush that keeps global pages
    /// changes the generation only if a block was looked up through a translation it
    /// drops: Linux's kernel code is global, and its CR3 writes (each text_poke switches
    /// to a poking mm and back) emptied the jump cache and unlinked every chain about
    /// 19,000 times in a boot that runs no user code until its end.
    pub fn flush(&mut self, keep_global: bool) {
        self.stats.tlb_flushes += 1;
        if !keep_global || self.code_local {
            self.new_generation();
        }
        self.tlb.flush(keep_global);
    }

    /// INVLPG: drops the page from every TLB, global or not. The generation changes only
    /// if a block was looked up on the page, or on the one before (whose last instruction
    /// may reach into it): most INVLPGs are of data pages, and each emptied the jump
    /// cache and unlinked every chain (70,000 in a Linux boot).
    pub fn flush_page(&mut self, linear: u64) {
        let page = linear >> PAGE_SHIFT;
        if self.code_linear.holds(page) || self.code_linear.holds(page.wrapping_sub(1)) {
            self.new_generation();
        }
        self.tlb.flush_page(linear);
    }

    fn new_generation(&mut self) {
        self.generation += 1;
        self.code_linear.clear();
        self.code_local = false;
    }

    /// Records that a block was looked up by linear address `linear` under the current
    /// generation (and may be chained into while it lasts), just after `linear` was
    /// translated for it; `next_page` is the linear address of the next page for a block
    /// whose last instruction crosses into it, whose translation the block depends on
    /// too (translated for the look-up as well). Before, such a block counted as on a
    /// page that is not global, and one of them on the path of Linux's text_poke (which
    /// switches CR3 twice a poke) could make every poke empty the jump cache: some
    /// Debian boots emptied it 15,000 times instead of 150.
    #[inline]
    pub fn note_code_page(&mut self, cpu: &CpuState, linear: u64, next_page: Option<u64>) {
        self.code_linear.insert(linear >> PAGE_SHIFT);
        let idx = Self::index(cpu, Privilege::User);
        let global = |l| self.tlb.is_global(idx, l);
        if !global(linear) || next_page.is_some_and(|n| !global(n)) {
            self.code_local = true;
        }
    }

    /// The ranges debug traps watch; the TLB is dropped so that fills tag their pages.
    pub fn set_watched(&mut self, ranges: Vec<(u64, u64)>) {
        if ranges != self.watched {
            self.watched = ranges;
            self.flush(false);
        }
    }

    /// Forgets every page's translated code (the translations were all dropped).
    pub fn clear_code_pages(&mut self) {
        self.code_pages.clear();
        self.code_spans.clear();
    }

    /// Widens what physical page `span.page` holds of translated code to `span`'s bytes
    /// (the page is marked with [`Self::set_code_page`]).
    pub fn note_code_span(&mut self, span: &CodeSpan) {
        let e = self
            .code_spans
            .entry(span.page)
            .or_insert((span.start, span.end));
        *e = (e.0.min(span.start), e.1.max(span.end));
    }

    /// Whether a write of `bytes` at `phys` (within one page) would touch translated
    /// code: [`Self::phys_write`]'s answer, before writing.
    pub fn writes_code(&self, mem: &GuestMemory, phys: u64, bytes: u8) -> bool {
        self.writes_code_span(mem, phys, bytes.into())
    }

    /// [`Self::writes_code`] for `len` bytes (up to the end of the page): a device's
    /// write to guest memory.
    pub fn writes_code_span(&self, mem: &GuestMemory, phys: u64, len: u16) -> bool {
        mem.ram_page(phys).is_some_and(|r| self.code_pages.get(r)) && self.touches_code(phys, len)
    }

    /// Whether a write of `bytes` at `phys`, on a page with translated code, may touch it
    /// (outside the bytes blocks were read from, it is data sharing the page).
    fn touches_code(&self, phys: u64, len: u16) -> bool {
        let off = (phys & 0xFFF) as u16;
        self.code_spans
            .get(&(phys >> 12))
            .is_none_or(|&(start, end)| off < end && start < off + len)
    }

    /// Marks physical page `page` as holding translated code (or no longer).
    pub fn set_code_page(&mut self, mem: &GuestMemory, page: u64, on: bool) {
        if !on {
            self.code_spans.remove(&page);
        }
        if let Some(r) = mem.ram_page(page << PAGE_SHIFT) {
            if self.code_pages.get(r) != on {
                self.code_pages.set(r, on);
                self.tlb.set_write_flag(page, TLB_CODE, on);
            }
        }
    }

    /// Translates a linear address for an access, walking the page tables on a TLB miss.
    /// Page faults set CR2 and return #PF with its error code.
    pub fn translate(
        &mut self,
        cpu: &mut CpuState,
        mem: &mut GuestMemory,
        linear: u64,
        access: Access,
        privilege: Privilege,
    ) -> Result<u64, Exception> {
        let idx = Self::index(cpu, privilege);
        if let Some(phys) = self.tlb.phys(idx, linear, access) {
            return Ok(phys);
        }
        self.fill(cpu, mem, linear, access, idx)
    }

    /// The TLB fill: walks the page tables (the identity without paging) for `access`,
    /// enters what the walk grants, and returns the physical address.
    #[cold]
    fn fill(
        &mut self,
        cpu: &mut CpuState,
        mem: &mut GuestMemory,
        linear: u64,
        access: Access,
        idx: usize,
    ) -> Result<u64, Exception> {
        self.stats.tlb_misses += 1;
        // Checked on a miss only: TLB tags are whole page addresses, so a non-canonical
        // address never hits an entry. A stack access raises #SS(0) instead: the IR marks
        // those, and the memory interface turns this #GP(0) into #SS(0) for them.
        if cpu.long_mode() && !paging::canonical(linear) {
            return Err(Exception::with_code(13, 0));
        }
        let g = paging::walk_access(cpu, mem, linear, access, idx == 1).inspect_err(|_| {
            self.stats.page_faults += 1;
        })?;
        let phys = g.phys & cpu.a20_mask;
        let phys_page = phys & !PAGE_MASK;
        let host = mem.host_page(phys_page);
        let page = linear & !PAGE_MASK;
        let watched = self
            .watched
            .iter()
            .any(|&(s, e)| s < page.wrapping_add(1 << PAGE_SHIFT) && e > page);
        let watch = if watched { TLB_WATCH } else { 0 };
        let code = match host.and_then(|h| h.ram_page) {
            Some(r) if self.code_pages.get(r) => TLB_CODE,
            _ => 0,
        };
        let rom = host.is_some_and(|h| h.ram_page.is_none());
        let allow = |ok: bool, flags: u64| if ok { flags } else { TLB_INVALID };
        let fill = Fill {
            phys: phys_page,
            host: host.map(|h| h.ptr),
            flags: [
                allow(true, watch),
                allow(g.write, watch | code | if rom { TLB_IO } else { 0 }),
                allow(g.exec, 0),
            ],
            global: g.global,
        };
        // SAFETY: the host page comes from `mem`, which the TLB is bound to (`bind` drops
        // every entry when the CPU is handed other memory); it is a whole page of one RAM
        // or ROM region, and ROM's write comparator carries TLB_IO.
        unsafe { self.tlb.fill(idx, linear, &fill) };
        Ok(phys)
    }

    /// Reads `bytes` (1-8) at a physical address: RAM, ROM or the MMIO bus.
    pub fn phys_read(&mut self, mem: &GuestMemory, board: &mut Board, phys: u64, bytes: u8) -> u64 {
        let (v, mmio) = phys_memory::read(mem, board, phys, bytes);
        self.stats.mmio_accesses += mmio as u64;
        v
    }

    /// Writes at a physical address. ROM ignores writes; MMIO goes to the bus. Returns true
    /// if the page held translated code (the caller invalidates it).
    pub fn phys_write(
        &mut self,
        mem: &mut GuestMemory,
        board: &mut Board,
        phys: u64,
        bytes: u8,
        value: u64,
    ) -> bool {
        match phys_memory::write(mem, board, &self.code_pages, phys, bytes, value) {
            Written::Ram { code_page } => {
                code_page.is_some() && self.touches_code(phys, bytes.into())
            }
            Written::Rom => false,
            Written::Mmio => {
                self.stats.mmio_accesses += 1;
                false
            }
        }
    }
}

/// The linear page numbers blocks were looked up on since the last generation change:
/// what [`Mmu::flush_page`] asks. Exact: a bitmap of 4,096 bits indexed by the page number
/// modulo 4,096 (pages 16 MiB apart shared a bit) answered yes for the page Linux's
/// text_poke maps its writes at whenever a kernel code page shared its bit, which
/// depends on where KASLR put the two; then every poke's INVLPG emptied the jump cache,
/// and some Debian boots emptied it 15,000 times instead of 150.
#[derive(Clone, Default)]
struct CodeLinearPages(rustc_hash::FxHashSet<u64>);

impl CodeLinearPages {
    fn insert(&mut self, page: u64) {
        self.0.insert(page);
    }

    fn holds(&self, page: u64) -> bool {
        self.0.contains(&page)
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_touches_code_only_within_the_bytes_blocks_were_read_from() {
        let mut m = Mmu::new(1 << 20);
        let span = |start, end| CodeSpan {
            page: 5,
            start,
            end,
        };
        m.note_code_span(&span(0x100, 0x120));
        m.note_code_span(&span(0x200, 0x210));
        assert!(!m.touches_code(0x5000 + 0xFC, 4), "just before");
        assert!(
            m.touches_code(0x5000 + 0xFD, 4),
            "its last byte on the first"
        );
        assert!(
            m.touches_code(0x5000 + 0x180, 1),
            "between two blocks: covered"
        );
        assert!(!m.touches_code(0x5000 + 0x210, 8), "just after");
        assert!(
            m.touches_code(0x6000 + 0x10, 1),
            "a page with no span known"
        );
        m.clear_code_pages();
        assert!(m.touches_code(0x5000, 1), "forgotten: assumed code");
    }

    #[test]
    fn invlpg_changes_the_generation_only_for_pages_code_was_looked_up_on() {
        let mut m = Mmu::new(1 << 20);
        let cpu = CpuState::default();
        let code = 0xffff_ffff_8100_0000u64;
        m.note_code_page(&cpu, code, None);
        let g = m.generation;
        // 16 MiB away: the page number modulo 4,096 is the same.
        m.flush_page(code + (16 << 20));
        m.flush_page(code - (16 << 20));
        assert_eq!(
            m.generation, g,
            "data pages leave the jump cache and the chains"
        );
        m.flush_page(code + 0x1000);
        assert_ne!(
            m.generation, g,
            "the page after a code page may hold its last bytes"
        );
        let g = m.generation;
        m.flush_page(code);
        assert_eq!(
            m.generation, g,
            "the change forgot the pages noted before it"
        );
        m.note_code_page(&cpu, code, None);
        m.flush_page(code + 0x123);
        assert_ne!(m.generation, g, "a code page");
    }
}
