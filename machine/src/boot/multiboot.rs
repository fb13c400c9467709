//! Multiboot (version 0.6.96) kernels: found by the header in the first 8 KiB, loaded from
//! the header's address fields or, without them, from the ELF program headers, and entered
//! in flat 32-bit protected mode with EAX = 0x2BADB002 and EBX = the multiboot information.
//! `--initrd` becomes module 0.

use goblin::elf::{program_header::PT_LOAD, Elf};

use super::placer::Placer;
use super::tables::gdt_bytes;
use super::{cmdline_bytes, place_bytes, KernelImage, LoadError, Loaded};
use crate::e820::memory_map;
use crate::layout::*;
use crate::memory::GuestMemory;

pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
const FLAG_VIDEO_MODE: u32 = 1 << 2;
const FLAG_ADDRESSES: u32 = 1 << 16;

const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

/// The stack the kernel is entered with, in bytes.
const STACK: u64 = 0x1000;

#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub offset: usize,
    pub flags: u32,
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// The first valid multiboot header (magic, flags and checksum summing to 0) in `search`.
pub fn find_header(search: &[u8]) -> Option<Header> {
    (0..search.len().saturating_sub(11))
        .step_by(4)
        .find_map(|off| {
            let magic = u32_at(search, off)?;
            let flags = u32_at(search, off + 4)?;
            let sum = u32_at(search, off + 8)?;
            if magic != HEADER_MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
                return None;
            }
            Some(Header {
                offset: off,
                flags,
                header_addr: u32_at(search, off + 12).unwrap_or(0),
                load_addr: u32_at(search, off + 16).unwrap_or(0),
                load_end_addr: u32_at(search, off + 20).unwrap_or(0),
                bss_end_addr: u32_at(search, off + 24).unwrap_or(0),
                entry_addr: u32_at(search, off + 28).unwrap_or(0),
            })
        })
}

fn invalid(why: impl Into<String>) -> LoadError {
    LoadError::Invalid {
        kind: "multiboot kernel",
        why: why.into(),
    }
}

/// Loads using the header's address fields; returns the entry and the image's range (its
/// bss included).
fn load_by_addresses(
    mem: &mut GuestMemory,
    k: &[u8],
    h: &Header,
) -> Result<(u32, Vec<(u64, u64)>), LoadError> {
    if h.offset + 32 > k.len() {
        return Err(LoadError::Truncated(
            "the multiboot address fields are cut short",
        ));
    }
    if h.load_addr > h.header_addr {
        return Err(invalid("load_addr is above header_addr"));
    }
    let file_start = h
        .offset
        .checked_sub((h.header_addr - h.load_addr) as usize)
        .ok_or_else(|| invalid("header_addr - load_addr reaches before the file start"))?;
    let load_len = if h.load_end_addr == 0 {
        k.len() - file_start
    } else {
        h.load_end_addr
            .checked_sub(h.load_addr)
            .ok_or_else(|| invalid("load_end_addr is below load_addr"))? as usize
    };
    let data = k
        .get(file_start..file_start + load_len)
        .ok_or(LoadError::Truncated(
            "the image is shorter than load_end_addr says",
        ))?;
    mem.write(h.load_addr as u64, data)?;
    let mut end = h.load_addr as u64 + load_len as u64;
    if h.bss_end_addr != 0 {
        if (h.bss_end_addr as u64) < end {
            return Err(invalid("bss_end_addr is below the loaded image"));
        }
        mem.zero(end, h.bss_end_addr as u64 - end)?;
        end = h.bss_end_addr as u64;
    }
    Ok((h.entry_addr, vec![(h.load_addr as u64, end)]))
}

fn load_elf(mem: &mut GuestMemory, k: &[u8]) -> Result<(u32, Vec<(u64, u64)>), LoadError> {
    let elf = Elf::parse(k).map_err(|e| invalid(format!("ELF: {e}")))?;
    let ranges = super::pvh::load_segments(mem, k, &elf, "multiboot kernel")?;
    // Entry is a virtual address; translate through the segment that holds it.
    let entry = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .find(|p| (p.p_vaddr..p.p_vaddr + p.p_memsz).contains(&elf.entry))
        .map(|p| elf.entry - p.p_vaddr + p.p_paddr)
        .ok_or_else(|| invalid("the ELF entry point is in no loadable segment"))?;
    let entry = u32::try_from(entry).map_err(|_| invalid("entry point above 4 GiB"))?;
    Ok((entry, ranges))
}

pub fn load(mem: &mut GuestMemory, img: &KernelImage) -> Result<Loaded, LoadError> {
    let k = img.kernel;
    let h = find_header(&k[..k.len().min(8192)]).ok_or(LoadError::UnknownFormat)?;
    let unsupported = h.flags & 0xFFFF & !(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE);
    if unsupported != 0 {
        return Err(LoadError::Unsupported(format!(
            "multiboot header requires features {unsupported:#x} Gantry does not know"
        )));
    }
    let (entry, image) = if h.flags & FLAG_ADDRESSES != 0 {
        load_by_addresses(mem, k, &h)?
    } else if k.starts_with(b"\x7fELF") {
        load_elf(mem, k)?
    } else {
        return Err(invalid("neither address fields nor an ELF image"));
    };

    let cmdline = cmdline_bytes(img.cmdline, CMDLINE_MAX)?;
    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME;
    let mut placer = Placer::default();
    for &(start, end) in &image {
        placer.reserve(start, end);
    }
    let image_end = image.iter().map(|&(_, e)| e).max().unwrap_or(0);

    // Module 0: the initrd, page-aligned after the image.
    let mut mods_at = 0;
    let mut initrd = None;
    if let Some(data) = img.initrd {
        let start = (image_end + 0xFFF) & !0xFFF;
        let end = start + data.len() as u64;
        if end > mem.low_ram_end() {
            return Err(LoadError::TooBig(format!(
                "module of {} bytes after the kernel at {start:#x}",
                data.len()
            )));
        }
        mem.write(start, data)?;
        placer.reserve(start, end);
        initrd = Some((start, end));
    }

    let mut state = super::entry::protected_flat(entry);
    // The GDT first, at 0x500 unless the kernel or its module is there.
    state.gdtr.base = place_bytes(mem, &mut placer, &gdt_bytes(&state), 8, "the GDT")?;
    if let Some((start, end)) = initrd {
        let name = place_bytes(mem, &mut placer, b"initrd\0", 1, "the module's name")?;
        let mut m = Vec::new();
        for v in [start as u32, end as u32, name as u32, 0] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        mods_at = place_bytes(mem, &mut placer, &m, 4, "the module list")?;
        flags |= INFO_MODS;
    }
    let cmdline = place_bytes(mem, &mut placer, &cmdline, 1, "the command line")?;
    let loader_name = place_bytes(mem, &mut placer, b"gantry\0", 1, "the boot loader's name")?;
    let mut mmap = Vec::new();
    for e in memory_map(mem, 0) {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&e.addr.to_le_bytes());
        mmap.extend_from_slice(&e.size.to_le_bytes());
        mmap.extend_from_slice(&e.kind.to_le_bytes());
    }
    let mmap_at = place_bytes(mem, &mut placer, &mmap, 4, "the memory map")?;

    let mem_upper = (mem.low_ram_end().saturating_sub(HIGH_MEMORY_START) / 1024) as u32;
    let mut info = [0u32; 22];
    info[0] = flags;
    info[1] = 640; // mem_lower, KiB
    info[2] = mem_upper;
    info[4] = cmdline as u32;
    info[5] = initrd.is_some() as u32; // mods_count
    info[6] = mods_at as u32;
    info[11] = mmap.len() as u32;
    info[12] = mmap_at as u32;
    info[16] = loader_name as u32;
    let bytes: Vec<u8> = info.iter().flat_map(|v| v.to_le_bytes()).collect();
    let info_at = place_bytes(mem, &mut placer, &bytes, 8, "the multiboot information")?;
    // The kernel makes its own stack (the specification leaves ESP undefined); this one
    // is for those that push before they do.
    let stack = placer.place(STACK, 16, "the stack")?;

    state.gpr[super::entry::RAX] = BOOTLOADER_MAGIC as u64;
    state.gpr[super::entry::RBX] = info_at;
    state.gpr[super::entry::RSP] = stack + STACK;
    Ok(Loaded {
        entry: state,
        format: "multiboot",
        initrd,
    })
}
