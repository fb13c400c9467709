//! The emulated CPU's view of the machine while it runs: memory by linear address through
//! the softmmu (also for helpers and interrupt delivery), and the board.

use gantry_frontend::state::CpuState;
use gantry_translator::Exception;

use super::mmu::{Access, Mmu, Privilege};
use crate::board::Board;
use crate::memory::GuestMemory;
use gantry_translator::tlb::Lookup;

pub struct Ctx<'a> {
    pub mmu: &'a mut Mmu,
    pub mem: &'a mut GuestMemory,
    pub board: &'a mut Board,
    /// Physical pages whose translations a store invalidated (the caller drops them).
    pub dirty_code: &'a mut Vec<(u64, u16)>,
    pub stats: &'a mut super::CpuStats,
    pub traps: &'a mut super::debug::DebugTraps,
    /// An exception a task switch raised after its commit point: it belongs to the new
    /// task, and the run loop delivers it with the new task's state (SDM vol. 3, 7.3).
    pub task_fault: &'a mut Option<Exception>,
    /// The CPU model's vendor, for CPUID.
    pub vendor: gantry_frontend::vendor::Vendor,
    /// Set while a block runs from the run loop: what letting it chain into the next
    /// needs.
    pub chain: Option<super::chain::Chain<'a>>,
}

/// Where a write goes in physical memory: one page, or the first page's address, the
/// bytes that fall in it, and the next page's.
#[derive(Clone, Copy)]
enum WritePages {
    One(u64),
    Two(u64, u8, u64),
}

/// The linear address of the part of an access past the end of its first page, `first`
/// bytes on: outside 64-bit mode linear addresses are 32 bits, so an access that runs past
/// 4 GiB (in a 4 GiB segment, where the CPU model lets it) goes on at 0.
fn second_page(cpu: &CpuState, linear: u64, first: u8) -> u64 {
    let next = linear + first as u64;
    if cpu.mode64() {
        next
    } else {
        next & 0xFFFF_FFFF
    }
}

impl Ctx<'_> {
    /// Reads `bytes` (1-8) at a linear address: from host memory on a TLB hit, else by
    /// [`Self::read_slow`].
    #[inline]
    pub fn read(
        &mut self,
        cpu: &mut CpuState,
        linear: u64,
        bytes: u8,
        access: Access,
        privilege: Privilege,
    ) -> Result<u64, Exception> {
        let idx = Mmu::index(cpu, privilege);
        match self.mmu.tlb.lookup(idx, linear, bytes, access) {
            Lookup::Host(h) => Ok(h.load(bytes)),
            _ => self.read_slow(cpu, linear, bytes, access, privilege),
        }
    }

    /// A read the TLB could not resolve to host memory: a miss, a watched page, MMIO, or
    /// an access that crosses a page (split, with both pages translated before anything is
    /// read).
    #[inline(never)]
    fn read_slow(
        &mut self,
        cpu: &mut CpuState,
        linear: u64,
        bytes: u8,
        access: Access,
        privilege: Privilege,
    ) -> Result<u64, Exception> {
        self.traps.check(linear, bytes, false);
        let off = linear & 0xFFF;
        if off + bytes as u64 <= 0x1000 {
            let p = self
                .mmu
                .translate(cpu, self.mem, linear, access, privilege)?;
            return Ok(self.mmu.phys_read(self.mem, self.board, p, bytes));
        }
        let first = (0x1000 - off) as u8;
        let p1 = self
            .mmu
            .translate(cpu, self.mem, linear, access, privilege)?;
        let p2 = self.mmu.translate(
            cpu,
            self.mem,
            second_page(cpu, linear, first),
            access,
            privilege,
        )?;
        let mut v = 0u64;
        for i in 0..bytes {
            let p = if i < first {
                p1 + i as u64
            } else {
                p2 + (i - first) as u64
            };
            v |= self.mmu.phys_read(self.mem, self.board, p, 1) << (8 * i);
        }
        Ok(v)
    }

    /// Writes `bytes` (1-8) at a linear address: to host memory on a TLB hit, else by
    /// [`Self::write_slow`].
    #[inline]
    pub fn write(
        &mut self,
        cpu: &mut CpuState,
        linear: u64,
        bytes: u8,
        value: u64,
        privilege: Privilege,
    ) -> Result<(), Exception> {
        if self.write_hit(cpu, linear, bytes, value, privilege) {
            return Ok(());
        }
        self.write_slow(cpu, linear, bytes, value, privilege)
    }

    /// Writes to host memory on a TLB hit (never a page with translated code, which the
    /// TLB flags); whether it did.
    #[inline]
    fn write_hit(
        &mut self,
        cpu: &CpuState,
        linear: u64,
        bytes: u8,
        value: u64,
        privilege: Privilege,
    ) -> bool {
        let idx = Mmu::index(cpu, privilege);
        match self.mmu.tlb.lookup(idx, linear, bytes, Access::Write) {
            Lookup::Host(h) => {
                h.store(bytes, value);
                true
            }
            _ => false,
        }
    }

    /// A write as [`Self::write`], unless it would write translated code: then nothing is
    /// written and the answer is `Ok(false)` ([`Host::store_unless_code`]). Its pages are
    /// translated first either way, so a fault comes before the answer.
    ///
    /// [`Host::store_unless_code`]: gantry_translator::Host::store_unless_code
    pub fn write_unless_code(
        &mut self,
        cpu: &mut CpuState,
        linear: u64,
        bytes: u8,
        value: u64,
        privilege: Privilege,
    ) -> Result<bool, Exception> {
        if self.write_hit(cpu, linear, bytes, value, privilege) {
            return Ok(true);
        }
        let pages = self.write_pages(cpu, linear, bytes, privilege)?;
        let code = match pages {
            WritePages::One(p) => self.writes_code(p, bytes),
            WritePages::Two(p1, first, p2) => {
                self.writes_code(p1, first) || self.writes_code(p2, bytes - first)
            }
        };
        if code {
            return Ok(false);
        }
        self.traps.check(linear, bytes, true);
        self.write_phys(pages, bytes, value);
        Ok(true)
    }

    /// Whether a write of `bytes` at `phys` (within one page) would touch translated code:
    /// the bytes of a cached block, when the run loop lent the code cache (while blocks
    /// chain), else the page's span of code. Most writes to pages with code fall between
    /// its blocks (48,000 of 58,000 in a Linux boot, most as it frees its init memory).
    fn writes_code(&self, phys: u64, bytes: u8) -> bool {
        let start = (phys & 0xFFF) as u16;
        self.mmu.writes_code(self.mem, phys, bytes)
            && self
                .chain
                .as_ref()
                .is_none_or(|c| c.code.touches(phys >> 12, start, start + u16::from(bytes)))
    }

    /// A write the TLB could not resolve to host memory: a miss, a page with translated
    /// code (invalidated), a watched page, ROM, MMIO, or an access that crosses a page.
    #[inline(never)]
    fn write_slow(
        &mut self,
        cpu: &mut CpuState,
        linear: u64,
        bytes: u8,
        value: u64,
        privilege: Privilege,
    ) -> Result<(), Exception> {
        self.traps.check(linear, bytes, true);
        let pages = self.write_pages(cpu, linear, bytes, privilege)?;
        self.write_phys(pages, bytes, value);
        Ok(())
    }

    /// The physical pages a write of `bytes` at `linear` goes to, translated for writing,
    /// the first page first.
    fn write_pages(
        &mut self,
        cpu: &mut CpuState,
        linear: u64,
        bytes: u8,
        privilege: Privilege,
    ) -> Result<WritePages, Exception> {
        let off = linear & 0xFFF;
        let p1 = self
            .mmu
            .translate(cpu, self.mem, linear, Access::Write, privilege)?;
        if off + u64::from(bytes) <= 0x1000 {
            return Ok(WritePages::One(p1));
        }
        let first = (0x1000 - off) as u8;
        let p2 = self.mmu.translate(
            cpu,
            self.mem,
            second_page(cpu, linear, first),
            Access::Write,
            privilege,
        )?;
        Ok(WritePages::Two(p1, first, p2))
    }

    /// After a port write: applies the BIOS area's new map if the chipset's PAM registers
    /// changed it, dropping the TLB (it holds host addresses of the old map) and what was
    /// translated from the area (the same addresses now read other bytes).
    pub fn apply_memory_map(&mut self) {
        let Some(pam) = self.board.take_pam_change() else {
            return;
        };
        if self.mem.set_pam(pam) {
            self.mmu.flush(false);
            for page in (0xC_0000..0x10_0000u64).step_by(0x1000) {
                self.dirty_code.push((page, 0x1000));
            }
        }
    }

    /// Notes what devices wrote of translated code since the last call (a device writes
    /// guest memory only when the CPU touches its registers: after a port or MMIO write).
    pub fn note_device_writes(&mut self) {
        let Some(ranges) = self.board.take_dma_writes() else {
            return;
        };
        for (gpa, len) in ranges {
            let end = gpa.saturating_add(len);
            let mut at = gpa;
            while at < end {
                let span = (end - at).min(0x1000 - (at & 0xFFF)) as u16;
                if self.mmu.writes_code_span(self.mem, at, span) {
                    self.dirty_code.push((at, span));
                }
                at += u64::from(span);
            }
        }
    }

    /// Writes `bytes` of `value` (little-endian) to `pages`, noting what it wrote of
    /// translated code.
    fn write_phys(&mut self, pages: WritePages, bytes: u8, value: u64) {
        match pages {
            WritePages::One(p) => {
                if self.mmu.phys_write(self.mem, self.board, p, bytes, value) {
                    self.dirty_code.push((p, bytes.into()));
                }
                self.note_device_writes();
            }
            WritePages::Two(p1, first, p2) => {
                for i in 0..bytes {
                    let p = if i < first {
                        p1 + i as u64
                    } else {
                        p2 + (i - first) as u64
                    };
                    if self
                        .mmu
                        .phys_write(self.mem, self.board, p, 1, value >> (8 * i))
                    {
                        self.dirty_code.push((p, 1));
                    }
                }
            }
        }
    }

    /// Translates every page of a `len`-byte write at `linear`, lowest first, without
    /// writing: an instruction whose store is split into several writes (a 16-byte SSE
    /// store, FXSAVE) faults before any of them, as the CPU does.
    pub fn check_writable(
        &mut self,
        cpu: &mut CpuState,
        linear: u64,
        len: u64,
        privilege: Privilege,
    ) -> Result<(), Exception> {
        if len == 0 {
            return Ok(());
        }
        let last = linear.wrapping_add(len - 1);
        let mut page = linear & !0xFFF;
        loop {
            let at = page.max(linear);
            self.mmu
                .translate(cpu, self.mem, at, Access::Write, privilege)?;
            if page == last & !0xFFF {
                return Ok(());
            }
            page = page.wrapping_add(0x1000);
        }
    }

    /// Supervisor-level accesses the CPU makes itself (descriptor tables, TSS, stacks of
    /// interrupt delivery at CPL 0).
    pub fn sys_read(
        &mut self,
        cpu: &mut CpuState,
        linear: u64,
        bytes: u8,
    ) -> Result<u64, Exception> {
        self.read(cpu, linear, bytes, Access::Read, Privilege::Supervisor)
    }

    pub fn sys_write(
        &mut self,
        cpu: &mut CpuState,
        linear: u64,
        bytes: u8,
        v: u64,
    ) -> Result<(), Exception> {
        self.write(cpu, linear, bytes, v, Privilege::Supervisor)
    }
}
