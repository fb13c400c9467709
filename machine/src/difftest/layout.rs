//! Where a snippet and its data live. Both sides use the same linear addresses: the host
//! oracle maps them in its child process, the sandbox guest maps them with its page tables,
//! so addresses in registers, faulting addresses (CR2) and RIP compare as they are.
//!
//! Everything is below 4 GiB so that 32-bit code (compatibility mode) reaches it too.

/// The snippet's page (read + execute): the snippet, then [`END_MARKER`].
pub const CODE_VA: u64 = 0x1000_0000;
pub const CODE_SIZE: usize = 0x1000;
/// The data pages (read + write, no execute), also the snippet's stack. The page before
/// them and the page after them are unmapped on both sides, so runs off either end fault.
pub const DATA_VA: u64 = 0x1000_2000;
pub const DATA_SIZE: usize = 0x2000;
/// INT3 ends a snippet: #BP is a trap, so both sides report it with RIP just after it.
pub const END_MARKER: u8 = 0xCC;
/// The longest snippet the generators make (the marker must still fit on the page).
pub const MAX_SNIPPET: usize = 256;

/// #BP from the end marker: the normal end of a snippet of `len` bytes.
pub fn end_rip(len: usize) -> u64 {
    CODE_VA + len as u64 + 1
}
