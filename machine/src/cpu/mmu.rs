//! The softmmu: linear -> physical translation (page walks for no paging, 32-bit 2-level
//! with 4 MiB pages, PAE, and 4-level long mode with 2 MiB and 1 GiB pages), a TLB per
//! access kind and privilege, and physical access to RAM, ROM and MMIO.

use gantry_frontend::state::*;
use gantry_translator::Exception;

use super::paging::{self, PagingRegs, WalkEnd};
use crate::board::Board;
use crate::memory::{Backing, GuestMemory};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read = 0,
    Write = 1,
    Exec = 2,
}

/// Who is asking: the guest at its CPL, or the CPU itself (descriptor tables, TSS, the
/// interrupt stack frame), which is a supervisor access whatever the CPL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    User,
    Supervisor,
}

const TLB_SIZE: usize = 256;
const PAGE_SHIFT: u32 = 12;
const PAGE_MASK: u64 = 0xFFF;

#[derive(Clone, Copy)]
struct TlbEntry {
    /// Virtual page number, or u64::MAX when empty.
    vpn: u64,
    /// Physical page base.
    phys: u64,
    global: bool,
}

const EMPTY: TlbEntry = TlbEntry {
    vpn: u64::MAX,
    phys: 0,
    global: false,
};

/// Counters for `--stats`.
#[derive(Default, Debug, Clone, Copy)]
pub struct MmuStats {
    pub tlb_misses: u64,
    pub page_faults: u64,
    pub tlb_flushes: u64,
    pub mmio_accesses: u64,
    pub smc_invalidations: u64,
}

pub struct Mmu {
    /// [access kind][user?][index]
    tlb: Box<[[[TlbEntry; TLB_SIZE]; 2]; 3]>,
    /// Per RAM page: holds translated code (writes must invalidate it).
    pub code_pages: Vec<bool>,
    pub stats: MmuStats,
    /// Changes on every flush, so caches of translations (the CPU's jump cache) know.
    pub generation: u64,
}

/// The result of a page walk.
struct Walk {
    phys: u64,
    global: bool,
}

impl Mmu {
    pub fn new(ram_size: u64) -> Self {
        Self {
            tlb: Box::new([[[EMPTY; TLB_SIZE]; 2]; 3]),
            code_pages: vec![false; (ram_size >> PAGE_SHIFT) as usize + 1],
            stats: MmuStats::default(),
            generation: 0,
        }
    }

    /// Drops all entries (or all but global ones).
    pub fn flush(&mut self, keep_global: bool) {
        self.stats.tlb_flushes += 1;
        self.generation += 1;
        for kind in self.tlb.iter_mut() {
            for user in kind.iter_mut() {
                for e in user.iter_mut() {
                    if !(keep_global && e.global) {
                        *e = EMPTY;
                    }
                }
            }
        }
    }

    /// INVLPG: drops the page from every TLB, global or not.
    pub fn flush_page(&mut self, linear: u64) {
        self.generation += 1;
        let vpn = linear >> PAGE_SHIFT;
        let i = (vpn as usize) % TLB_SIZE;
        for kind in self.tlb.iter_mut() {
            for user in kind.iter_mut() {
                if user[i].vpn == vpn {
                    user[i] = EMPTY;
                }
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
        if cpu.cr0 & CR0_PG == 0 {
            let a = if cpu.long_mode() {
                linear
            } else {
                linear & 0xFFFF_FFFF
            };
            return Ok(a & cpu.a20_mask);
        }
        let user = privilege == Privilege::User && cpu.cpl() == 3;
        let vpn = linear >> PAGE_SHIFT;
        let i = (vpn as usize) % TLB_SIZE;
        let e = self.tlb[access as usize][user as usize][i];
        if e.vpn == vpn {
            return Ok(e.phys | (linear & PAGE_MASK));
        }
        self.stats.tlb_misses += 1;
        // Checked on a miss only: TLB tags are whole page numbers, so a non-canonical
        // address never hits an entry. A stack access raises #SS(0) instead: the IR marks
        // those, and the memory interface turns this #GP(0) into #SS(0) for them.
        if cpu.long_mode() && !paging::canonical(linear) {
            return Err(Exception::with_code(13, 0));
        }
        let w = self.walk(cpu, mem, linear, access, user)?;
        let phys_page = w.phys & !PAGE_MASK & cpu.a20_mask;
        self.tlb[access as usize][user as usize][i] = TlbEntry {
            vpn,
            phys: phys_page,
            global: w.global,
        };
        Ok(phys_page | (linear & PAGE_MASK))
    }

    fn walk(
        &mut self,
        cpu: &mut CpuState,
        mem: &mut GuestMemory,
        linear: u64,
        access: Access,
        user: bool,
    ) -> Result<Walk, Exception> {
        let write = access == Access::Write;
        let fetch = access == Access::Exec;
        let nxe = cpu.efer & EFER_NXE != 0;
        let mut fault = |cpu: &mut CpuState, present: bool, rsvd: bool| {
            self.stats.page_faults += 1;
            cpu.cr2 = linear;
            let code = present as u32
                | (write as u32) << 1
                | (user as u32) << 2
                | (rsvd as u32) << 3
                | ((fetch && (nxe || cpu.cr4 & CR4_PAE != 0)) as u32) << 4;
            Exception::with_code(14, code)
        };
        let w = paging::walk(mem, &PagingRegs::of(cpu), linear);
        let (phys, global) = match w.end {
            WalkEnd::NotPresent => return Err(fault(cpu, false, false)),
            WalkEnd::Reserved => return Err(fault(cpu, true, true)),
            WalkEnd::Mapped {
                phys,
                global,
                writable,
                user: user_ok,
                executable,
                ..
            } => {
                // Permission checks (Intel SDM vol. 3, 4.6).
                let wp = cpu.cr0 & CR0_WP != 0;
                let denied = (user && !user_ok)
                    || (write && !writable && (user || wp))
                    || (fetch && !executable);
                if denied {
                    return Err(fault(cpu, true, false));
                }
                (phys, global)
            }
        };
        // Accessed bits on every level, dirty on the leaf (the last entry) for writes.
        let entries = w.entries();
        let leaf = entries.len().saturating_sub(1);
        for (n, e) in entries.iter().enumerate().filter(|(_, e)| e.has_ad) {
            let mut nv = e.value | 0x20;
            if n == leaf && write {
                nv |= 0x40;
            }
            if nv != e.value {
                if e.wide {
                    write_u64(mem, e.addr, nv);
                } else {
                    write_u32(mem, e.addr, nv as u32);
                }
            }
        }
        Ok(Walk {
            phys,
            global: global && cpu.cr4 & CR4_PGE != 0,
        })
    }

    /// Reads `bytes` (1-8) at a physical address: RAM, ROM or the MMIO bus.
    pub fn phys_read(&mut self, mem: &GuestMemory, board: &mut Board, phys: u64, bytes: u8) -> u64 {
        let mut buf = [0u8; 8];
        let n = bytes as usize;
        if mem.read(phys, &mut buf[..n]).is_err() {
            self.stats.mmio_accesses += 1;
            board.mmio_read(phys, &mut buf[..n]);
        }
        u64::from_le_bytes(buf)
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
        let data = value.to_le_bytes();
        let n = bytes as usize;
        // RAM first: one region lookup on the common path.
        if mem.write(phys, &data[..n]).is_ok() {
            let page = (phys >> PAGE_SHIFT) as usize;
            return self.code_pages.get(page).copied().unwrap_or(false);
        }
        match mem.region_at(phys).map(|r| r.backing) {
            Some(Backing::Rom(_)) => false,
            Some(Backing::Ram(_)) => {
                // Crosses out of its RAM region: byte by byte.
                for (i, b) in data[..n].iter().enumerate() {
                    let _ = mem.write(phys + i as u64, &[*b]);
                }
                self.code_pages
                    .get((phys >> PAGE_SHIFT) as usize)
                    .copied()
                    .unwrap_or(false)
            }
            None => {
                self.stats.mmio_accesses += 1;
                board.mmio_write(phys, &data[..n]);
                false
            }
        }
    }
}

fn write_u32(mem: &mut GuestMemory, a: u64, v: u32) {
    let _ = mem.write(a, &v.to_le_bytes());
}
fn write_u64(mem: &mut GuestMemory, a: u64, v: u64) {
    let _ = mem.write(a, &v.to_le_bytes());
}
