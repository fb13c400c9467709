//! Where a snippet and its data live. Both sides use the same linear addresses: the host
//! oracle maps them in its child process, the sandbox guest maps them with its page tables,
//! so addresses in registers, faulting addresses (CR2) and RIP compare as they are.
//!
//! Everything is below 4 GiB so that 32-bit code (compatibility mode) reaches it too.
//! 16-bit code runs in segments based at [`CODE_VA`] with a 64 KiB limit, so the code and
//! data pages are within its reach: its registers and IP hold offsets from that base
//! ([`seg_base`]). Real mode has neither paging nor addresses that high: there the same
//! layout starts at [`REAL_BASE`] (linear = physical).
//!
//! [`CODE_VA`] and [`DATA_VA`] are the addresses outside real mode; [`code_va`] and
//! [`data_va`] give them for any mode.

use super::Mode;

/// The snippet's page (read + execute): the snippet, then its [`end_marker`].
pub const CODE_VA: u64 = 0x1000_0000;
pub const CODE_SIZE: usize = 0x1000;
/// The data pages (read + write, no execute), also the snippet's stack. The page before
/// them and the page after them are unmapped on both sides, so runs off either end fault.
pub const DATA_VA: u64 = 0x1000_2000;
pub const DATA_SIZE: usize = 0x2000;
/// INT3 ends a snippet at CPL 3: #BP is a trap, so both sides report it with RIP just
/// after it.
pub const END_MARKER: u8 = 0xCC;
/// HLT ends a snippet at CPL 0 outside real mode: the CPU stops with RIP just after it and
/// the state as the snippet left it. No exception is delivered: in legacy protected mode
/// that would push a frame on the snippet's own stack, and KVM's instruction emulator
/// (which runs ring-0 code on software-assisted KVMs) cannot deliver INT3 outside real
/// mode.
pub const END_MARKER_RING0: u8 = 0xF4;

/// The instruction that ends a snippet of this mode at this CPL.
pub fn end_marker(mode: Mode, cpl: u8) -> u8 {
    if cpl == 0 && mode != Mode::Real {
        END_MARKER_RING0
    } else {
        END_MARKER
    }
}
/// The longest snippet the generators make (the marker must still fit on the page).
pub const MAX_SNIPPET: usize = 256;
/// The limit of the 16-bit code, data and stack segments (byte-granular, expand-up).
pub const SEG16_LIMIT: u32 = 0xFFFF;

/// The addresses both sides map alike: the code page, the data pages, and nothing else
/// in the 64 KiB 16-bit code reaches from the code page, nor in the page after them
/// (where an access at its last offsets ends). Everywhere else one side has the host kernel's
/// mappings (present, supervisor-only) and the other the sandbox guest's kernel.
pub fn mirrored(linear: u64) -> bool {
    (CODE_VA..CODE_VA + 0x1_0000 + 0x1000).contains(&linear)
}

/// Real mode: the code page's address, and the base of CS, DS, ES and SS (selector
/// 2000h). The 64 KiB segment and the 3 bytes an access at its end may reach past it are
/// the sandbox's; everything below is the sandbox guest's (IVT, stubs).
pub const REAL_BASE: u64 = 0x2_0000;

/// The code page's linear address in this mode.
pub fn code_va(mode: Mode) -> u64 {
    match mode {
        Mode::Real => REAL_BASE,
        _ => CODE_VA,
    }
}

/// The data pages' linear address in this mode.
pub fn data_va(mode: Mode) -> u64 {
    code_va(mode) + (DATA_VA - CODE_VA)
}

/// The base of the segments code of this size runs with: flat for 32- and 64-bit code.
pub fn seg_base(mode: Mode) -> u64 {
    match mode {
        Mode::B16 | Mode::Real | Mode::Pm16 => code_va(mode),
        Mode::B32 | Mode::B64 | Mode::Pm32 => 0,
    }
}

/// The snippet's first byte as the code sees it (RIP, an offset from CS's base).
pub fn code_ip(mode: Mode) -> u64 {
    code_va(mode) - seg_base(mode)
}

/// The data pages as the code addresses them (an offset from DS's, ES's and SS's base).
pub fn data_addr(mode: Mode) -> u64 {
    data_va(mode) - seg_base(mode)
}

/// #BP from the end marker: the normal end of a snippet of `len` bytes.
pub fn end_rip(mode: Mode, len: usize) -> u64 {
    code_ip(mode) + len as u64 + 1
}
