//! The CPU states loaders start guests in, as the one register model both backends take
//! ([`CpuState`]): the reset state is [`CpuState::reset`]; a kernel starts in flat 32-bit
//! protected mode or in 64-bit mode on the loader's GDT and page tables.

use gantry_frontend::flags;
use gantry_frontend::state::{
    attr, CpuState, DescriptorTable, Segment, CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, CS,
    EFER_LMA, EFER_LME, SS,
};

use crate::layout::{BOOT_GDT, BOOT_PML4};

/// GPR indices in x86 encoding order.
pub use gantry_frontend::state::{RAX, RBP, RBX, RCX, RDI, RDX, RSI, RSP};

/// Selectors of the loader's GDT (Linux's boot protocol wants __BOOT_CS = 0x10 and
/// __BOOT_DS = 0x18).
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const GDT_ENTRIES: usize = 4;

/// A flat 4 GiB segment of the loader's GDT: 32-bit code or data, or 64-bit code.
fn flat(code: bool, long: bool) -> Segment {
    let size = if long { attr::L } else { attr::DB };
    Segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: if code { BOOT_CS } else { BOOT_DS },
        attr: attr::P | attr::S | attr::G | size | if code { 0xB } else { 0x3 },
    }
}

/// Flat 32-bit protected mode, paging off, with the loader's GDT at [`BOOT_GDT`].
pub fn protected_flat(eip: u32) -> CpuState {
    let mut s = CpuState::reset();
    s.gpr = [0; 16];
    s.rip = eip as u64;
    flags::set_rflags(&mut s, 0x2);
    s.seg = [flat(false, false); 6];
    s.seg[CS] = flat(true, false);
    s.tr.attr = attr::P | 0xB; // 32-bit busy TSS
    s.gdtr = DescriptorTable {
        base: BOOT_GDT,
        limit: (GDT_ENTRIES * 8 - 1) as u32,
    };
    s.idtr = DescriptorTable { base: 0, limit: 0 };
    s.cr0 = CR0_PE | CR0_ET;
    s.cpl = 0;
    s
}

/// 64-bit mode with the loader's identity page tables at [`BOOT_PML4`].
pub fn long_mode(rip: u64) -> CpuState {
    let mut s = protected_flat(0);
    s.rip = rip;
    s.seg[CS] = flat(true, true);
    s.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    s.cr3 = BOOT_PML4;
    s.cr4 = CR4_PAE;
    s.efer = EFER_LME | EFER_LMA;
    s
}

/// The GDT image matching CS and the data segments of a flat state: null, null, code,
/// data.
pub fn gdt_image(s: &CpuState) -> [u64; GDT_ENTRIES] {
    let code = if s.seg[CS].long() {
        0x00AF_9B00_0000_FFFF
    } else {
        0x00CF_9B00_0000_FFFF
    };
    debug_assert_eq!(s.seg[SS].selector, BOOT_DS);
    [0, 0, code, 0x00CF_9300_0000_FFFF]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flat segments are what the GDT image's descriptors load.
    #[test]
    fn flat_segments_match_the_gdt_image() {
        let s = long_mode(0x1000);
        let g = gdt_image(&s);
        let attr_of = |d: u64| (((d >> 40) & 0xFF) | ((d >> 52) & 0xF) << 12) as u16;
        assert_eq!(attr_of(g[2]), s.seg[CS].attr);
        assert_eq!(attr_of(g[3]), s.seg[SS].attr);
        assert_eq!(
            attr_of(gdt_image(&protected_flat(0))[2]),
            flat(true, false).attr
        );
    }
}
