//! Where the multiboot and PVH loaders put what they hand the kernel (its GDT, the boot
//! information and its tables, the command line, a stack): in conventional memory around
//! what the kernel's image and its modules occupy, instead of at fixed addresses a kernel
//! may be linked at (test kernels often are, at 0x8000 and thereabouts).

use super::LoadError;
use crate::layout::EBDA_START;

/// The lowest address handed out: past the real-mode interrupt table and the BIOS data
/// area, which firmware-minded kernels read.
const FLOOR: u64 = 0x500;
/// Conventional memory ends at the EBDA (the E820 map reserves it).
const CEILING: u64 = EBDA_START;

/// The ranges of conventional memory taken so far: the kernel's and its modules', then
/// whatever was placed.
#[derive(Default)]
pub struct Placer {
    taken: Vec<(u64, u64)>,
}

impl Placer {
    /// Marks guest-physical `[start, end)` as the kernel's or a module's.
    pub fn reserve(&mut self, start: u64, end: u64) {
        if end > start {
            self.taken.push((start, end));
        }
    }

    /// The lowest `align`-aligned address in conventional memory where `len` bytes
    /// overlap nothing taken, now taken by `what`.
    pub fn place(&mut self, len: u64, align: u64, what: &'static str) -> Result<u64, LoadError> {
        let align = align.max(1);
        let up = |a: u64| a.div_ceil(align) * align;
        let mut at = up(FLOOR);
        loop {
            let end = at + len;
            if end > CEILING {
                return Err(LoadError::NoRoom(what));
            }
            let overlapped = self
                .taken
                .iter()
                .filter(|&&(s, e)| s < end && at < e)
                .map(|&(_, e)| e)
                .max();
            match overlapped {
                Some(e) => at = up(e),
                None => {
                    self.taken.push((at, end));
                    return Ok(at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_around_what_is_taken_and_says_when_nothing_fits() {
        let mut p = Placer::default();
        p.reserve(0x500, 0x9000);
        assert_eq!(p.place(0x100, 8, "a").unwrap(), 0x9000);
        assert_eq!(p.place(0x10, 0x1000, "b").unwrap(), 0xA000);
        assert_eq!(p.place(8, 8, "c").unwrap(), 0x9100, "the gap before b");
        p.reserve(0xB000, CEILING);
        let err = p.place(0x2000, 8, "the stack").unwrap_err();
        assert!(matches!(err, LoadError::NoRoom("the stack")), "{err}");
        assert_eq!(p.place(0xEF0, 8, "d").unwrap(), 0x9108, "what still fits");
    }
}
