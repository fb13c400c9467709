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
    /// Changes on every flush, so caches of translations (the CPU's jump cache) know.
    pub generation: u64,
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
            bound: [0; 4],
            watched: Vec::new(),
        }
    }

    /// The TLB's privilege index for an access.
    #[inline]
    pub fn index(cpu: &CpuState, privilege: Privilege) -> usize {
        (privilege == Privilege::User && cpu.cpl() == 3) as usize
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

    /// Drops all entries (or all but global ones).
    pub fn flush(&mut self, keep_global: bool) {
        self.stats.tlb_flushes += 1;
        self.generation += 1;
        self.tlb.flush(keep_global);
    }

    /// INVLPG: drops the page from every TLB, global or not.
    pub fn flush_page(&mut self, linear: u64) {
        self.generation += 1;
        self.tlb.flush_page(linear);
    }

    /// The ranges debug traps watch; the TLB is dropped so that fills tag their pages.
    pub fn set_watched(&mut self, ranges: Vec<(u64, u64)>) {
        if ranges != self.watched {
            self.watched = ranges;
            self.flush(false);
        }
    }

    /// Marks physical page `page` as holding translated code (or no longer).
    pub fn set_code_page(&mut self, mem: &GuestMemory, page: u64, on: bool) {
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
            Written::Ram { code_page } => code_page.is_some(),
            Written::Rom => false,
            Written::Mmio => {
                self.stats.mmio_accesses += 1;
                false
            }
        }
    }
}
