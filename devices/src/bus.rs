//! Address-range buses for port I/O and MMIO. The bus, not the device, knows where a device
//! lives: a device sees offsets from the base of the range it was registered at.

use std::cell::RefCell;
use std::rc::Rc;

/// A device on a bus. Accesses arrive with an offset into the device's range and a data
/// slice whose length is the access width (1, 2, 4 or 8 bytes, little-endian).
pub trait BusDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
    /// Byte-wide ISA devices (the default) see a wide access as consecutive byte accesses,
    /// as the ISA bus splits them. Devices with wider registers return true.
    fn wide_access(&self) -> bool {
        false
    }
}

pub type SharedDevice = Rc<RefCell<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {base:#x} has zero length")]
    Empty { base: u64 },
}

struct Entry {
    base: u64,
    len: u64,
    /// Added to the offset within the range: lets one device appear at several
    /// discontiguous ranges (the i8042 at 0x60 and 0x64) with distinct offsets.
    offset: u64,
    device: SharedDevice,
}

/// Ranges sorted by base, so a lookup is a binary search.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        self.insert_at(base, len, device, 0)
    }

    /// Registers `device` at `[base, base+len)`, where it sees offsets starting at `offset`.
    pub fn insert_at(
        &mut self,
        base: u64,
        len: u64,
        device: SharedDevice,
        offset: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(
            pos,
            Entry {
                base,
                len,
                offset,
                device,
            },
        );
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Entry> {
        let pos = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(pos.checked_sub(1)?)?;
        (addr - e.base < e.len).then_some(e)
    }

    /// Reads `data.len()` bytes at `addr`. Bytes no device answers read as 0xFF, as an
    /// undriven ISA bus does. Returns false if no device answered any byte.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        if let Some(e) = self.find(addr) {
            let mut dev = e.device.borrow_mut();
            if dev.wide_access() && addr - e.base + data.len() as u64 <= e.len {
                dev.read(addr - e.base + e.offset, data);
                return true;
            }
        }
        let mut any = false;
        for (i, byte) in data.iter_mut().enumerate() {
            let a = addr.wrapping_add(i as u64);
            let mut b = [0xFFu8];
            if let Some(e) = self.find(a) {
                e.device.borrow_mut().read(a - e.base + e.offset, &mut b);
                any = true;
            }
            *byte = b[0];
        }
        any
    }

    /// Writes `data` at `addr`; returns false if no device took any byte.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        if let Some(e) = self.find(addr) {
            let mut dev = e.device.borrow_mut();
            if dev.wide_access() && addr - e.base + data.len() as u64 <= e.len {
                dev.write(addr - e.base + e.offset, data);
                return true;
            }
        }
        let mut any = false;
        for (i, byte) in data.iter().enumerate() {
            let a = addr.wrapping_add(i as u64);
            if let Some(e) = self.find(a) {
                e.device.borrow_mut().write(a - e.base + e.offset, &[*byte]);
                any = true;
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Regs {
        bytes: [u8; 4],
        wide: bool,
        log: Vec<(u64, usize)>,
    }
    impl BusDevice for Regs {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.log.push((offset, data.len()));
            for (i, d) in data.iter_mut().enumerate() {
                *d = self.bytes[offset as usize + i];
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.log.push((offset, data.len()));
            for (i, d) in data.iter().enumerate() {
                self.bytes[offset as usize + i] = *d;
            }
        }
        fn wide_access(&self) -> bool {
            self.wide
        }
    }

    #[test]
    fn byte_devices_see_split_accesses_and_holes_read_ones() {
        let dev = Rc::new(RefCell::new(Regs::default()));
        let mut bus = Bus::new();
        bus.insert(0x20, 2, dev.clone()).unwrap();
        assert!(bus.write(0x20, &[0x11, 0x22]));
        assert_eq!(dev.borrow().log, vec![(0, 1), (1, 1)]);
        let mut d = [0u8; 4];
        assert!(bus.read(0x20, &mut d));
        assert_eq!(d, [0x11, 0x22, 0xFF, 0xFF]);
        assert!(!bus.read(0x30, &mut d));
        assert_eq!(d, [0xFF; 4]);
        assert!(!bus.write(0x1F, &[]));
    }

    #[test]
    fn wide_devices_see_whole_accesses() {
        let dev = Rc::new(RefCell::new(Regs {
            wide: true,
            ..Default::default()
        }));
        let mut bus = Bus::new();
        bus.insert(0x100, 4, dev.clone()).unwrap();
        bus.write(0x100, &0xdead_beefu32.to_le_bytes());
        assert_eq!(dev.borrow().log, vec![(0, 4)]);
        assert_eq!(dev.borrow().bytes, 0xdead_beefu32.to_le_bytes());
    }

    #[test]
    fn one_device_at_two_ranges() {
        let dev = Rc::new(RefCell::new(Regs::default()));
        let mut bus = Bus::new();
        bus.insert_at(0x60, 1, dev.clone(), 0).unwrap();
        bus.insert_at(0x64, 1, dev.clone(), 3).unwrap();
        bus.write(0x64, &[7]);
        bus.write(0x60, &[9]);
        assert_eq!(dev.borrow().bytes, [9, 0, 0, 7]);
        let mut d = [0u8; 1];
        assert!(!bus.read(0x63, &mut d));
    }

    #[test]
    fn overlaps_are_refused() {
        let dev = Rc::new(RefCell::new(Regs::default()));
        let mut bus = Bus::new();
        bus.insert(0x40, 4, dev.clone()).unwrap();
        assert!(bus.insert(0x43, 1, dev.clone()).is_err());
        assert!(bus.insert(0x3c, 5, dev.clone()).is_err());
        assert!(bus.insert(0x44, 1, dev.clone()).is_ok());
        assert!(bus.insert(0x3c, 4, dev.clone()).is_ok());
        assert!(bus.insert(0x50, 0, dev).is_err());
    }
}
