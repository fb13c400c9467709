//! The CPU state at a guest's first instruction, in architectural terms.

use crate::layout::{BOOT_GDT, BOOT_PML4};

/// A segment register with its hidden descriptor cache, in the field names of the SDM
/// (the same split KVM's `kvm_segment` uses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// Descriptor type (4 bits).
    pub type_: u8,
    /// S: code/data (1) or system (0).
    pub s: bool,
    pub dpl: u8,
    pub present: bool,
    pub avl: bool,
    /// L: 64-bit code segment.
    pub l: bool,
    /// D/B: 32-bit default operand size / stack.
    pub db: bool,
    /// G: limit in 4 KiB units (the cached limit is already scaled).
    pub g: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

/// GPR indices in x86 encoding order (the frontend's, so `gpr` maps onto `CpuState`).
pub use gantry_frontend::state::{RAX, RBP, RBX, RCX, RDI, RDX, RSI, RSP};

/// Selectors of the loader's GDT (Linux's boot protocol wants __BOOT_CS = 0x10 and
/// __BOOT_DS = 0x18).
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const GDT_ENTRIES: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryState {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

fn real_mode_data(selector: u16) -> Segment {
    Segment {
        selector,
        base: (selector as u64) << 4,
        limit: 0xFFFF,
        type_: 3,
        s: true,
        present: true,
        ..Default::default()
    }
}

fn flat(type_: u8, l: bool) -> Segment {
    Segment {
        selector: if type_ & 8 != 0 { BOOT_CS } else { BOOT_DS },
        base: 0,
        limit: 0xFFFF_FFFF,
        type_,
        s: true,
        present: true,
        l,
        db: !l,
        g: true,
        ..Default::default()
    }
}

impl EntryState {
    /// The state after RESET: CS:IP = F000:FFF0 with CS.base = FFFF0000, so the first
    /// fetch is 16 bytes below 4 GiB (Intel SDM vol. 3, 9.1.4).
    pub fn reset() -> Self {
        let mut cs = real_mode_data(0xF000);
        cs.base = 0xFFFF_0000;
        cs.type_ = 0xB;
        let mut gpr = [0u64; 16];
        // EDX holds the processor signature after reset.
        gpr[RDX] = 0x600;
        Self {
            gpr,
            rip: 0xFFF0,
            rflags: 0x2,
            cs,
            ds: real_mode_data(0),
            es: real_mode_data(0),
            fs: real_mode_data(0),
            gs: real_mode_data(0),
            ss: real_mode_data(0),
            tr: Segment {
                limit: 0xFFFF,
                type_: 3, // 16-bit busy TSS
                present: true,
                ..Default::default()
            },
            ldt: Segment {
                limit: 0xFFFF,
                type_: 2,
                present: true,
                ..Default::default()
            },
            gdt: DescriptorTable {
                base: 0,
                limit: 0xFFFF,
            },
            idt: DescriptorTable {
                base: 0,
                limit: 0xFFFF,
            },
            cr0: CR0_ET | CR0_CD | CR0_NW,
            cr3: 0,
            cr4: 0,
            efer: 0,
        }
    }

    /// Flat 32-bit protected mode, paging off, with the loader's GDT at [`BOOT_GDT`].
    pub fn protected_flat(eip: u32) -> Self {
        let data = flat(3, false);
        let mut s = Self::reset();
        s.gpr = [0; 16];
        s.rip = eip as u64;
        s.cs = flat(0xB, false);
        s.ds = data;
        s.es = data;
        s.fs = data;
        s.gs = data;
        s.ss = data;
        s.tr.type_ = 0xB; // 32-bit busy TSS
        s.gdt = DescriptorTable {
            base: BOOT_GDT,
            limit: (GDT_ENTRIES * 8 - 1) as u16,
        };
        s.idt = DescriptorTable { base: 0, limit: 0 };
        s.cr0 = CR0_PE | CR0_ET;
        s
    }

    /// 64-bit mode with the loader's identity page tables at [`BOOT_PML4`].
    pub fn long_mode(rip: u64) -> Self {
        let mut s = Self::protected_flat(0);
        s.rip = rip;
        s.cs = flat(0xB, true);
        s.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
        s.cr3 = BOOT_PML4;
        s.cr4 = CR4_PAE;
        s.efer = EFER_LME | EFER_LMA;
        s
    }

    pub fn is_long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// The GDT image matching `cs`/`ds` of a flat state: null, null, code, data.
    pub fn gdt_image(&self) -> [u64; GDT_ENTRIES] {
        let code = if self.cs.l {
            0x00AF_9B00_0000_FFFF
        } else {
            0x00CF_9B00_0000_FFFF
        };
        [0, 0, code, 0x00CF_9300_0000_FFFF]
    }
}
