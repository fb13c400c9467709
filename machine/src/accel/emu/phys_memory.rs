//! Physical accesses of the emulated CPU: RAM, ROM (writes discarded) and the MMIO bus,
//! and the bitmap of RAM pages that hold translated code, which a write to such a page
//! must invalidate. The bitmap is indexed by RAM page (offset in the RAM mapping), so it
//! covers RAM above 4 GiB as well as below.

use crate::board::Board;
use crate::memory::{Backing, GuestMemory};

/// One bit per RAM page: the page holds translated code.
pub struct CodePages {
    bits: Vec<u64>,
}

impl CodePages {
    pub fn new(ram_size: u64) -> Self {
        let pages = ram_size.div_ceil(4096) as usize;
        Self {
            bits: vec![0; pages.div_ceil(64)],
        }
    }

    pub fn get(&self, ram_page: u64) -> bool {
        let i = ram_page as usize;
        self.bits
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 != 0)
    }

    pub fn set(&mut self, ram_page: u64, on: bool) {
        let i = ram_page as usize;
        if let Some(w) = self.bits.get_mut(i / 64) {
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    pub fn clear(&mut self) {
        self.bits.fill(0);
    }
}

/// Reads `bytes` (1-8) at a physical address: RAM, ROM or the MMIO bus. Returns the value
/// and whether it went to the bus.
pub fn read(mem: &GuestMemory, board: &mut Board, phys: u64, bytes: u8) -> (u64, bool) {
    let mut buf = [0u8; 8];
    let n = bytes as usize;
    let mmio = mem.read(phys, &mut buf[..n]).is_err();
    if mmio {
        board.mmio_read(phys, &mut buf[..n]);
    }
    (u64::from_le_bytes(buf), mmio)
}

/// What a physical write reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// RAM; with the RAM page when that page holds translated code.
    Ram {
        code_page: Option<u64>,
    },
    Rom,
    Mmio,
}

/// Writes `bytes` (1-8) at a physical address. ROM ignores writes; MMIO goes to the bus.
pub fn write(
    mem: &mut GuestMemory,
    board: &mut Board,
    code: &CodePages,
    phys: u64,
    bytes: u8,
    value: u64,
) -> Written {
    let data = value.to_le_bytes();
    let n = bytes as usize;
    let code_page = |mem: &GuestMemory| mem.ram_page(phys).filter(|p| code.get(*p));
    // RAM first: one region lookup on the common path.
    if mem.write(phys, &data[..n]).is_ok() {
        return Written::Ram {
            code_page: code_page(mem),
        };
    }
    match mem.region_at(phys).map(|r| r.backing) {
        Some(Backing::Rom(_) | Backing::ShadowRo(_)) => Written::Rom,
        Some(Backing::Ram(_)) => {
            // Crosses out of its RAM region: byte by byte.
            for (i, b) in data[..n].iter().enumerate() {
                let _ = mem.write(phys + i as u64, &[*b]);
            }
            Written::Ram {
                code_page: code_page(mem),
            }
        }
        None => {
            board.mmio_write(phys, &data[..n]);
            Written::Mmio
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RAM above 4 GiB (where a large guest's memory continues) has code pages of its
    /// own: they were once indexed by physical page and sized by the RAM size, so writes
    /// there never invalidated translated code.
    #[test]
    fn code_pages_above_4_gib_are_their_own() {
        use crate::layout::{FOUR_GIB, LOW_RAM_MAX};
        let mem = GuestMemory::new(LOW_RAM_MAX + (64 << 20), None).unwrap();
        let mut c = CodePages::new(mem.ram_size());
        let high = mem.ram_page(FOUR_GIB + 0x5000).unwrap();
        let low = mem.ram_page(0x5000).unwrap();
        assert_ne!(high, low);
        c.set(high, true);
        assert!(c.get(high) && !c.get(low));
    }

    #[test]
    fn code_pages_cover_all_of_ram() {
        let mut c = CodePages::new((5 << 30) + 4096);
        let last = (5 << 30) / 4096;
        c.set(last, true);
        c.set(3, true);
        assert!(c.get(last) && c.get(3) && !c.get(4));
        c.set(3, false);
        assert!(!c.get(3));
        c.set(last + 64, true); // past RAM: ignored
        assert!(!c.get(last + 64));
    }
}
