//! Loaders: put a guest image into memory and say in which CPU state it starts.
//!
//! Each loader produces the [`CpuState`] at the guest's first instruction, the register
//! model both backends take (KVM converts it at its edge).

pub mod acpi;
pub mod aml;
pub mod bzimage;
pub mod entry;
pub mod mptable;
pub mod multiboot;
pub mod placer;
pub mod pvh;
pub mod tables;
pub mod zero_page;

use gantry_frontend::state::CpuState;

use crate::memory::{GuestMemory, MemoryError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("is empty")]
    Empty,
    #[error(
        "is not a kernel Gantry can boot (no Linux boot header, no multiboot header, not ELF)"
    )]
    UnknownFormat,
    #[error("is truncated: {0}")]
    Truncated(&'static str),
    #[error("is not a valid {kind}: {why}")]
    Invalid { kind: &'static str, why: String },
    #[error("is not supported: {0}")]
    Unsupported(String),
    #[error("does not fit in guest memory: {0} (try a larger --mem)")]
    TooBig(String),
    #[error("could not be placed: {0}")]
    Memory(#[from] MemoryError),
    #[error(
        "leaves no room for {0} in conventional memory (0x500-0x9FC00) around its image \
         and modules"
    )]
    NoRoom(&'static str),
}

/// What a kernel loader gets from the user.
pub struct KernelImage<'a> {
    pub kernel: &'a [u8],
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    /// How many local APICs the board has, for the ACPI tables (0: none).
    pub local_apics: u32,
}

/// What was loaded, for `--stats` and tests.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub entry: CpuState,
    pub format: &'static str,
    /// Guest-physical [start, end) of the initrd/module, if any.
    pub initrd: Option<(u64, u64)>,
}

const MULTIBOOT_SEARCH: usize = 8192;

/// Loads a kernel in whichever format it is: multiboot (a header in the first 8 KiB wins,
/// since multiboot kernels are often ELF too), Linux bzImage, or ELF with a PVH note.
pub fn load_kernel(mem: &mut GuestMemory, img: &KernelImage) -> Result<Loaded, LoadError> {
    let k = img.kernel;
    if k.is_empty() {
        return Err(LoadError::Empty);
    }
    if multiboot::find_header(&k[..k.len().min(MULTIBOOT_SEARCH)]).is_some() {
        return multiboot::load(mem, img);
    }
    if bzimage::is_bzimage(k) {
        return bzimage::load(mem, img);
    }
    if k.starts_with(b"\x7fELF") {
        return pvh::load(mem, img);
    }
    Err(LoadError::UnknownFormat)
}

/// The tables that describe the board to a kernel booted without firmware: ACPI's, and
/// on a board with APICs the MultiProcessor Specification's too. Returns the RSDP's
/// address.
fn write_platform_tables(mem: &mut GuestMemory, local_apics: u32) -> Result<u64, MemoryError> {
    if local_apics > 0 {
        mptable::write_tables(mem, local_apics)?;
    }
    acpi::write_tables(mem, local_apics)
}

/// Writes the command line (NUL-terminated) where the bzImage loader puts it.
fn place_cmdline(mem: &mut GuestMemory, cmdline: &str, max: usize) -> Result<u64, LoadError> {
    let bytes = cmdline_bytes(cmdline, max)?;
    mem.write(crate::layout::CMDLINE, &bytes)?;
    Ok(crate::layout::CMDLINE)
}

/// The command line as a kernel taking at most `max` bytes (its NUL included) gets it.
fn cmdline_bytes(cmdline: &str, max: usize) -> Result<Vec<u8>, LoadError> {
    if cmdline.len() + 1 > max.min(crate::layout::CMDLINE_MAX) {
        return Err(LoadError::Unsupported(format!(
            "command line is {} bytes; this kernel takes at most {}",
            cmdline.len(),
            max.saturating_sub(1)
        )));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(LoadError::Unsupported(
            "command line contains a NUL byte".into(),
        ));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    Ok(bytes)
}

/// Writes `bytes` where `placer` finds room for them (`align`ed), as `what`.
fn place_bytes(
    mem: &mut GuestMemory,
    placer: &mut placer::Placer,
    bytes: &[u8],
    align: u64,
    what: &'static str,
) -> Result<u64, LoadError> {
    let at = placer.place(bytes.len() as u64, align, what)?;
    mem.write(at, bytes)?;
    Ok(at)
}

/// Places an initrd at the highest page-aligned address that ends at or below `limit` and
/// starts at or above `floor`.
fn place_high(
    mem: &mut GuestMemory,
    data: &[u8],
    floor: u64,
    limit: u64,
) -> Result<(u64, u64), LoadError> {
    let top = limit.min(mem.low_ram_end());
    let len = data.len() as u64;
    let start = top
        .checked_sub(len)
        .map(|s| s & !0xFFF)
        .filter(|s| *s >= floor)
        .ok_or_else(|| {
            LoadError::TooBig(format!(
                "initrd of {len} bytes needs room between {floor:#x} and {top:#x}"
            ))
        })?;
    mem.write(start, data)?;
    Ok((start, start + len))
}
