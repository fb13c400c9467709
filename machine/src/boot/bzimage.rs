//! The Linux x86 boot protocol for a bzImage, entered at the 64-bit entry point
//! (Documentation/arch/x86/boot.rst, "64-bit boot protocol"): the protected-mode kernel at
//! 1 MiB, a zero page with the setup header, command line, initrd and E820 map, identity
//! paging, and RSI pointing at the zero page.
//!
//! The setup header and zero page are [`super::zero_page`]'s. linux-loader's `BzImage`
//! loader is not used because it writes through vm-memory's `GuestMemory` trait, which
//! Gantry's memmap2-backed memory does not implement; the placement below is short and
//! checked.

use super::tables::{write_gdt, write_identity_paging};
use super::zero_page::{E820Entry, SetupHeader, ZeroPage, ZERO_PAGE_LEN};
use super::{entry, place_cmdline, place_high, KernelImage, LoadError, Loaded};
use crate::e820::memory_map;
use crate::layout::*;
use crate::memory::GuestMemory;

const HDRS: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG: u16 = 0xAA55;
const LOADED_HIGH: u8 = 0x01;
const XLF_KERNEL_64: u16 = 0x01;
const KERNEL_LOAD: u64 = 0x10_0000;
/// The 64-bit entry point is 0x200 past the start of the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;

pub fn is_bzimage(k: &[u8]) -> bool {
    k.len() >= 0x206 && u32::from_le_bytes([k[0x202], k[0x203], k[0x204], k[0x205]]) == HDRS
}

/// The setup header of a bzImage, checked for what the 64-bit protocol needs.
pub fn parse_header(k: &[u8]) -> Result<SetupHeader, LoadError> {
    let hdr = SetupHeader::read(k).ok_or(LoadError::Truncated("the setup header is cut short"))?;
    let invalid = |why: &str| LoadError::Invalid {
        kind: "Linux bzImage",
        why: why.into(),
    };
    if { hdr.boot_flag } != BOOT_FLAG {
        return Err(invalid("boot flag 0xAA55 missing"));
    }
    if { hdr.header } != HDRS {
        return Err(invalid("\"HdrS\" signature missing"));
    }
    let version = hdr.version;
    if version < 0x020C {
        return Err(LoadError::Unsupported(format!(
            "boot protocol {}.{:02}; the 64-bit entry needs 2.12 or later",
            version >> 8,
            version & 0xFF
        )));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(LoadError::Unsupported("a zImage (not loaded high)".into()));
    }
    if { hdr.xloadflags } & XLF_KERNEL_64 == 0 {
        return Err(LoadError::Unsupported(
            "kernel has no 64-bit entry point (XLF_KERNEL_64 clear)".into(),
        ));
    }
    Ok(hdr)
}

pub fn load(mem: &mut GuestMemory, img: &KernelImage) -> Result<Loaded, LoadError> {
    let k = img.kernel;
    let mut hdr = parse_header(k)?;
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        hdr.setup_sects as usize
    };
    let setup_size = (setup_sects + 1) * 512;
    let payload = k
        .get(setup_size..)
        .filter(|p| !p.is_empty())
        .ok_or(LoadError::Truncated(
            "no protected-mode kernel after the setup code",
        ))?;
    let syssize = { hdr.syssize } as usize * 16;
    if payload.len() < syssize {
        return Err(LoadError::Truncated(
            "the protected-mode kernel is shorter than the header's syssize",
        ));
    }
    let init_size = ({ hdr.init_size } as u64).max(payload.len() as u64);
    let kernel_end = KERNEL_LOAD + init_size;
    if kernel_end > mem.low_ram_end() {
        return Err(LoadError::TooBig(format!(
            "the kernel needs {init_size} bytes from 1 MiB, RAM ends at {:#x}",
            mem.low_ram_end()
        )));
    }
    mem.write(KERNEL_LOAD, payload)?;

    let cmdline_max = if { hdr.cmdline_size } == 0 {
        256
    } else {
        hdr.cmdline_size as usize + 1
    };
    let cmdline = place_cmdline(mem, img.cmdline, cmdline_max)?;

    let initrd = match img.initrd {
        Some(data) if !data.is_empty() => {
            let max = { hdr.initrd_addr_max } as u64;
            let limit = if max == 0 { 0x37FF_FFFF } else { max } + 1;
            Some(place_high(mem, data, kernel_end, limit)?)
        }
        Some(_) => return Err(LoadError::Unsupported("the initrd is empty".into())),
        None => None,
    };

    hdr.type_of_loader = 0xFF;
    hdr.cmd_line_ptr = cmdline as u32;
    hdr.code32_start = KERNEL_LOAD as u32;
    if let Some((start, end)) = initrd {
        hdr.ramdisk_image = start as u32;
        hdr.ramdisk_size = (end - start) as u32;
    }
    let mut page = ZeroPage::new(k, &hdr);
    let map: Vec<E820Entry> = memory_map(mem, 0)
        .iter()
        .map(|e| E820Entry {
            addr: e.addr,
            size: e.size,
            kind: e.kind,
        })
        .collect();
    if !page.set_e820(&map) {
        return Err(LoadError::Unsupported("memory map too long".into()));
    }
    page.set_acpi_rsdp_addr(super::write_platform_tables(mem, img.local_apics)?);
    mem.write(BOOT_INFO, &page.0)?;

    let mut state = entry::long_mode(KERNEL_LOAD + ENTRY_64_OFFSET);
    state.gpr[entry::RSI] = BOOT_INFO;
    write_gdt(mem, &state)?;
    write_identity_paging(mem)?;
    Ok(Loaded {
        entry: state,
        format: "Linux bzImage (64-bit boot protocol)",
        initrd,
    })
}

/// Reads back the zero page a load wrote (tests and `--stats`).
pub fn read_boot_params(mem: &GuestMemory) -> Option<ZeroPage> {
    let mut page = [0u8; ZERO_PAGE_LEN];
    mem.read(BOOT_INFO, &mut page).ok()?;
    Some(ZeroPage(page))
}
