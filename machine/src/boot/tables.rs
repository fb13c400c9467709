//! The GDT and identity page tables loaders build for protected- and long-mode entry.

use super::LoadError;
use crate::layout::{BOOT_GDT, BOOT_PD, BOOT_PDPT, BOOT_PML4};
use crate::memory::GuestMemory;
use gantry_frontend::state::CpuState;

pub fn write_gdt(mem: &mut GuestMemory, entry: &CpuState) -> Result<(), LoadError> {
    mem.write(BOOT_GDT, &gdt_bytes(entry))?;
    Ok(())
}

/// The GDT `entry`'s segments come from, as the loader writes it.
pub fn gdt_bytes(entry: &CpuState) -> Vec<u8> {
    super::entry::gdt_image(entry)
        .iter()
        .flat_map(|d| d.to_le_bytes())
        .collect()
}

/// Identity-maps the first 4 GiB with 2 MiB pages (PML4 -> PDPT -> four PDs).
pub fn write_identity_paging(mem: &mut GuestMemory) -> Result<(), LoadError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.zero(BOOT_PML4, 0x1000)?;
    mem.zero(BOOT_PDPT, 0x1000)?;
    mem.write_u64(BOOT_PML4, BOOT_PDPT | PRESENT_RW)?;
    for gib in 0..4u64 {
        let pd = BOOT_PD + gib * 0x1000;
        mem.write_u64(BOOT_PDPT + gib * 8, pd | PRESENT_RW)?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((gib << 30) | (i << 21)) | PRESENT_RW | PAGE_SIZE_2M).to_le_bytes())
            .collect();
        mem.write(pd, &entries)?;
    }
    Ok(())
}
