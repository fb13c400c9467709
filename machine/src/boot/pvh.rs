//! ELF kernels with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), as Linux's vmlinux with
//! CONFIG_PVH: segments at their physical addresses, entry in flat 32-bit protected mode
//! with paging off and EBX = an `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).

use goblin::elf::program_header::{PT_LOAD, PT_NOTE};
use goblin::elf::Elf;

use super::tables::write_gdt;
use super::{place_cmdline, place_high, KernelImage, LoadError, Loaded};
use crate::e820::memory_map;
use crate::layout::*;
use crate::memory::GuestMemory;

const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const HVM_START_MAGIC: u32 = 0x336E_C578;

fn invalid(kind: &'static str, why: impl Into<String>) -> LoadError {
    LoadError::Invalid {
        kind,
        why: why.into(),
    }
}

/// Copies every PT_LOAD segment to its physical address and zeroes its bss. Returns the
/// highest physical address loaded.
pub(super) fn load_segments(
    mem: &mut GuestMemory,
    k: &[u8],
    elf: &Elf,
    kind: &'static str,
) -> Result<u64, LoadError> {
    let mut end = 0u64;
    let mut any = false;
    for ph in elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD) {
        let data = k
            .get(ph.p_offset as usize..)
            .and_then(|d| d.get(..ph.p_filesz as usize))
            .ok_or(LoadError::Truncated(
                "a loadable segment lies past the end of the file",
            ))?;
        if ph.p_memsz < ph.p_filesz {
            return Err(invalid(
                kind,
                "a segment's memory size is below its file size",
            ));
        }
        let seg_end = ph
            .p_paddr
            .checked_add(ph.p_memsz)
            .filter(|e| *e <= mem.low_ram_end())
            .ok_or_else(|| {
                LoadError::TooBig(format!(
                    "segment at {:#x}+{:#x} is outside RAM",
                    ph.p_paddr, ph.p_memsz
                ))
            })?;
        mem.write(ph.p_paddr, data)?;
        mem.zero(ph.p_paddr + ph.p_filesz, ph.p_memsz - ph.p_filesz)?;
        end = end.max(seg_end);
        any = true;
    }
    if !any {
        return Err(invalid(kind, "no loadable segments"));
    }
    Ok(end)
}

fn pvh_entry(k: &[u8], elf: &Elf) -> Option<u64> {
    // Notes are found through the program headers (vmlinux has PT_NOTE segments).
    if !elf.program_headers.iter().any(|p| p.p_type == PT_NOTE) {
        return None;
    }
    elf.iter_note_headers(k)?.flatten().find_map(|note| {
        if note.name != "Xen" || note.n_type != XEN_ELFNOTE_PHYS32_ENTRY {
            return None;
        }
        match note.desc.len() {
            4 => Some(u32::from_le_bytes(note.desc.try_into().ok()?) as u64),
            8 => Some(u64::from_le_bytes(note.desc.try_into().ok()?)),
            _ => None,
        }
    })
}

pub fn load(mem: &mut GuestMemory, img: &KernelImage) -> Result<Loaded, LoadError> {
    let k = img.kernel;
    let elf = Elf::parse(k).map_err(|e| invalid("ELF kernel", format!("{e}")))?;
    let entry = pvh_entry(k, &elf).ok_or_else(|| {
        LoadError::Unsupported(
            "ELF kernel without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) or multiboot header"
                .into(),
        )
    })?;
    let entry =
        u32::try_from(entry).map_err(|_| invalid("ELF kernel", "PVH entry point above 4 GiB"))?;
    let end = load_segments(mem, k, &elf, "ELF kernel")?;

    let cmdline = place_cmdline(mem, img.cmdline, CMDLINE_MAX)?;
    let modlist_at = BOOT_TABLES;
    let memmap_at = BOOT_TABLES + 0x100;
    let initrd = match img.initrd {
        Some(data) => {
            let (start, stop) = place_high(mem, data, end, mem.low_ram_end())?;
            let mut m = Vec::new();
            for v in [start, stop - start, 0, 0] {
                m.extend_from_slice(&v.to_le_bytes());
            }
            mem.write(modlist_at, &m)?;
            Some((start, stop))
        }
        None => None,
    };
    let map = memory_map(mem, 0);
    let mut table = Vec::new();
    for e in &map {
        table.extend_from_slice(&e.addr.to_le_bytes());
        table.extend_from_slice(&e.size.to_le_bytes());
        table.extend_from_slice(&e.kind.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
    }
    mem.write(memmap_at, &table)?;
    let rsdp = super::acpi::write_tables(mem)?;

    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&HVM_START_MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version 1: has the memory map
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&(initrd.is_some() as u32).to_le_bytes());
    info.extend_from_slice(&modlist_at.to_le_bytes());
    info.extend_from_slice(&cmdline.to_le_bytes());
    info.extend_from_slice(&rsdp.to_le_bytes());
    info.extend_from_slice(&memmap_at.to_le_bytes());
    info.extend_from_slice(&(map.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    mem.write(BOOT_INFO, &info)?;

    let mut state = super::entry::protected_flat(entry);
    state.gpr[super::entry::RBX] = BOOT_INFO;
    write_gdt(mem, &state)?;
    Ok(Loaded {
        entry: state,
        format: "ELF with PVH entry",
        initrd,
    })
}
