//! ELF kernels with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), as Linux's vmlinux with
//! CONFIG_PVH: segments at their physical addresses, entry in flat 32-bit protected mode
//! with paging off and EBX = an `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).

use goblin::elf::program_header::{PT_LOAD, PT_NOTE};
use goblin::elf::Elf;

use super::placer::Placer;
use super::tables::gdt_bytes;
use super::{cmdline_bytes, place_bytes, place_high, KernelImage, LoadError, Loaded};
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
/// physical ranges loaded.
pub(super) fn load_segments(
    mem: &mut GuestMemory,
    k: &[u8],
    elf: &Elf,
    kind: &'static str,
) -> Result<Vec<(u64, u64)>, LoadError> {
    let mut ranges = Vec::new();
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
        ranges.push((ph.p_paddr, seg_end));
    }
    if ranges.is_empty() {
        return Err(invalid(kind, "no loadable segments"));
    }
    Ok(ranges)
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
    let image = load_segments(mem, k, &elf, "ELF kernel")?;
    let end = image.iter().map(|&(_, e)| e).max().unwrap_or(0);

    let cmdline = cmdline_bytes(img.cmdline, CMDLINE_MAX)?;
    let mut placer = Placer::default();
    for &(start, stop) in &image {
        placer.reserve(start, stop);
    }
    let initrd = match img.initrd {
        Some(data) => {
            let (start, stop) = place_high(mem, data, end, mem.low_ram_end())?;
            placer.reserve(start, stop);
            Some((start, stop))
        }
        None => None,
    };
    let mut state = super::entry::protected_flat(entry);
    state.gdtr.base = place_bytes(mem, &mut placer, &gdt_bytes(&state), 8, "the GDT")?;
    let cmdline = place_bytes(mem, &mut placer, &cmdline, 1, "the command line")?;
    let modlist_at = match initrd {
        Some((start, stop)) => {
            let mut m = Vec::new();
            for v in [start, stop - start, 0, 0] {
                m.extend_from_slice(&v.to_le_bytes());
            }
            place_bytes(mem, &mut placer, &m, 8, "the module list")?
        }
        None => 0,
    };
    let map = memory_map(mem, 0);
    let mut table = Vec::new();
    for e in &map {
        table.extend_from_slice(&e.addr.to_le_bytes());
        table.extend_from_slice(&e.size.to_le_bytes());
        table.extend_from_slice(&e.kind.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
    }
    let memmap_at = place_bytes(mem, &mut placer, &table, 8, "the memory map")?;
    let rsdp = super::write_platform_tables(mem, img.local_apics)?;

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
    let info_at = place_bytes(mem, &mut placer, &info, 8, "the start info")?;
    state.gpr[super::entry::RBX] = info_at;
    Ok(Loaded {
        entry: state,
        format: "ELF with PVH entry",
        initrd,
    })
}
