//! The x86 page walk: [`walk`] reads the page tables without changing them (the debugger
//! uses it as is: a gdb memory read or `monitor info tlb` must not change the guest's page
//! tables, on either backend), and [`walk_access`] adds the permission rules, the page
//! fault's error code and the accessed/dirty bits for the softmmu's TLB fill.

use gantry_frontend::state::*;
use gantry_translator::Exception;

use crate::memory::GuestMemory;
use gantry_translator::tlb::Access;

/// What a walk for an access grants the TLB: the physical address, and which other kinds
/// of access the same privilege may make to the page without walking again.
#[derive(Clone, Copy, Debug)]
pub struct Granted {
    pub phys: u64,
    pub global: bool,
    /// Writable for this privilege, with the dirty bit set.
    pub write: bool,
    pub exec: bool,
}

/// Walks the page tables for an access by the guest (`user`: at CPL 3 and not a system
/// access) and checks it (Intel SDM vol. 3, 4.6): a page fault sets CR2 and returns #PF
/// with its error code; otherwise sets the accessed bits on every level and, for a write,
/// the dirty bit on the leaf.
pub fn walk_access(
    cpu: &mut CpuState,
    mem: &mut GuestMemory,
    linear: u64,
    access: Access,
    user: bool,
) -> Result<Granted, Exception> {
    let write = access == Access::Write;
    let fetch = access == Access::Exec;
    let nxe = cpu.efer & EFER_NXE != 0;
    let fault = |cpu: &mut CpuState, present: bool, rsvd: bool| {
        cpu.cr2 = linear;
        let code = present as u32
            | (write as u32) << 1
            | (user as u32) << 2
            | (rsvd as u32) << 3
            | ((fetch && (nxe || cpu.cr4 & CR4_PAE != 0)) as u32) << 4;
        Exception::with_code(14, code)
    };
    let w = walk(mem, &PagingRegs::of(cpu), linear);
    let wp = cpu.cr0 & CR0_WP != 0;
    let (phys, global, writable, executable) = match w.end {
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
            let may_write = writable || (!user && !wp);
            let denied = (user && !user_ok) || (write && !may_write) || (fetch && !executable);
            if denied {
                return Err(fault(cpu, true, false));
            }
            (phys, global, may_write, executable)
        }
    };
    // Accessed bits on every level, dirty on the leaf (the last entry) for writes.
    let entries = w.entries();
    let leaf = entries.len().saturating_sub(1);
    let mut dirty = entries.is_empty();
    for (n, e) in entries.iter().enumerate().filter(|(_, e)| e.has_ad) {
        let mut nv = e.value | 0x20;
        if n == leaf && write {
            nv |= 0x40;
        }
        if n == leaf {
            dirty = nv & 0x40 != 0;
        }
        if nv != e.value {
            let _ = if e.wide {
                mem.write_u64(e.addr, nv)
            } else {
                mem.write_u32(e.addr, nv as u32)
            };
        }
    }
    Ok(Granted {
        phys,
        global: global && cpu.cr4 & CR4_PGE != 0,
        write: writable && dirty,
        exec: executable,
    })
}

/// The registers a walk depends on.
#[derive(Clone, Copy, Debug)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub a20_mask: u64,
}

impl PagingRegs {
    pub fn of(cpu: &CpuState) -> Self {
        Self {
            cr0: cpu.cr0,
            cr3: cpu.cr3,
            cr4: cpu.cr4,
            efer: cpu.efer,
            a20_mask: cpu.a20_mask,
        }
    }

    fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    pub fn paging(&self) -> bool {
        self.cr0 & CR0_PG != 0
    }
}

/// One page-table entry a walk read.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableEntry {
    /// Physical address of the entry.
    pub addr: u64,
    pub value: u64,
    /// 8-byte entry (PAE and long mode) rather than 4-byte.
    pub wide: bool,
    /// The entry takes accessed/dirty bits (PAE's PDPTEs do not).
    pub has_ad: bool,
    /// Name of the table level, for the debugger: "PML4E", "PDPTE", "PDE", "PTE".
    pub level: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkEnd {
    Mapped {
        phys: u64,
        page_size: u64,
        global: bool,
        /// Permissions accumulated over the levels.
        writable: bool,
        user: bool,
        executable: bool,
    },
    NotPresent,
    /// A reserved bit is set (NX without EFER.NXE).
    Reserved,
}

#[derive(Clone, Copy, Debug)]
pub struct TableWalk {
    entries: [TableEntry; 4],
    len: usize,
    pub end: WalkEnd,
}

impl TableWalk {
    pub fn entries(&self) -> &[TableEntry] {
        &self.entries[..self.len]
    }

    fn push(&mut self, e: TableEntry) {
        if self.len < self.entries.len() {
            self.entries[self.len] = e;
            self.len += 1;
        }
    }
}

/// The physical address `linear` maps to, if it is mapped (a debugger's look-up: no
/// permission checks, no accessed/dirty updates).
pub fn phys_of(mem: &GuestMemory, r: &PagingRegs, linear: u64) -> Option<u64> {
    match walk(mem, r, linear).end {
        WalkEnd::Mapped { phys, .. } => Some(phys),
        _ => None,
    }
}

/// Is `linear` canonical for 4-level paging (bits 63:48 copies of bit 47)?
pub fn canonical(linear: u64) -> bool {
    ((linear << 16) as i64 >> 16) as u64 == linear
}

/// Walks the page tables for `linear`; without paging, the identity (A20 applied).
pub fn walk(mem: &GuestMemory, r: &PagingRegs, linear: u64) -> TableWalk {
    let mut w = TableWalk {
        entries: [TableEntry::default(); 4],
        len: 0,
        end: WalkEnd::NotPresent,
    };
    let a20 = r.a20_mask;
    if !r.paging() {
        let a = if r.long_mode() {
            linear
        } else {
            linear & 0xFFFF_FFFF
        };
        w.end = WalkEnd::Mapped {
            phys: a & a20,
            page_size: 1 << 12,
            global: false,
            writable: true,
            user: true,
            executable: true,
        };
        return w;
    }
    if r.long_mode() && !canonical(linear) {
        // Bits 63:47 must all equal bit 47; no table maps anything else.
        return w;
    }
    let nxe = r.efer & EFER_NXE != 0;
    let mut writable = true;
    let mut user = true;
    let mut executable = true;
    let mapped = |phys, shift: u32, global, writable, user, executable| WalkEnd::Mapped {
        phys,
        page_size: 1 << shift,
        global,
        writable,
        user,
        executable,
    };
    if r.cr4 & CR4_PAE == 0 {
        let pde_addr = ((r.cr3 & 0xFFFF_F000) + ((linear >> 22) & 0x3FF) * 4) & a20;
        let pde = read_u32(mem, pde_addr);
        w.push(TableEntry {
            addr: pde_addr,
            value: pde,
            wide: false,
            has_ad: true,
            level: "PDE",
        });
        if pde & 1 == 0 {
            return w;
        }
        writable &= pde & 2 != 0;
        user &= pde & 4 != 0;
        if pde & 0x80 != 0 && r.cr4 & CR4_PSE != 0 {
            let base = (pde & 0xFFC0_0000) | ((pde >> 13) & 0xFF) << 32;
            w.end = mapped(
                base | (linear & 0x3F_FFFF),
                22,
                pde & 0x100 != 0,
                writable,
                user,
                executable,
            );
            return w;
        }
        let pte_addr = ((pde & 0xFFFF_F000) + ((linear >> 12) & 0x3FF) * 4) & a20;
        let pte = read_u32(mem, pte_addr);
        w.push(TableEntry {
            addr: pte_addr,
            value: pte,
            wide: false,
            has_ad: true,
            level: "PTE",
        });
        if pte & 1 == 0 {
            return w;
        }
        writable &= pte & 2 != 0;
        user &= pte & 4 != 0;
        w.end = mapped(
            (pte & 0xFFFF_F000) | (linear & 0xFFF),
            12,
            pte & 0x100 != 0,
            writable,
            user,
            executable,
        );
        return w;
    }
    let addr_mask = 0x000F_FFFF_FFFF_F000u64;
    const LONG: [(u32, &str); 4] = [(39, "PML4E"), (30, "PDPTE"), (21, "PDE"), (12, "PTE")];
    const PAE: [(u32, &str); 2] = [(21, "PDE"), (12, "PTE")];
    let (mut table, levels): (u64, &[(u32, &str)]) = if r.long_mode() {
        (r.cr3 & addr_mask, &LONG)
    } else {
        // PAE: the PDPTE selects a page directory; its permission bits are reserved.
        let pdpte_addr = ((r.cr3 & 0xFFFF_FFE0) + ((linear >> 30) & 3) * 8) & a20;
        let pdpte = read_u64(mem, pdpte_addr);
        w.push(TableEntry {
            addr: pdpte_addr,
            value: pdpte,
            wide: true,
            has_ad: false,
            level: "PDPTE",
        });
        if pdpte & 1 == 0 {
            return w;
        }
        (pdpte & addr_mask, &PAE)
    };
    for (n, (shift, level)) in levels.iter().enumerate() {
        let e_addr = (table + ((linear >> shift) & 0x1FF) * 8) & a20;
        let e = read_u64(mem, e_addr);
        w.push(TableEntry {
            addr: e_addr,
            value: e,
            wide: true,
            has_ad: true,
            level,
        });
        if e & 1 == 0 {
            return w;
        }
        if e >> 63 != 0 && !nxe {
            w.end = WalkEnd::Reserved;
            return w;
        }
        writable &= e & 2 != 0;
        user &= e & 4 != 0;
        executable &= !(nxe && e >> 63 != 0);
        let last = n == levels.len() - 1;
        let large = !last && e & 0x80 != 0 && (*shift == 21 || *shift == 30);
        if last || large {
            let page_mask = (1u64 << shift) - 1;
            let base = e & addr_mask & !page_mask;
            w.end = mapped(
                base | (linear & page_mask),
                *shift,
                e & 0x100 != 0,
                writable,
                user,
                executable,
            );
            return w;
        }
        table = e & addr_mask;
    }
    w
}

fn read_u32(mem: &GuestMemory, a: u64) -> u64 {
    mem.read_u32(a).unwrap_or(0) as u64
}

fn read_u64(mem: &GuestMemory, a: u64) -> u64 {
    mem.read_u64(a).unwrap_or(0)
}
