//! PCI configuration mechanism #1 (CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC-0xCFF)
//! with the two functions every PC guest expects on bus 0: an Intel 82441FX (i440FX) host
//! bridge at 00:00.0 and a PIIX3 PCI-to-ISA bridge at 00:01.0. Absent functions read
//! all-ones. The PIIX3's reset control register (0xCF9) shares the port range.

use std::rc::Rc;

use crate::bus::BusDevice;
use crate::signals::{SystemEvent, SystemSignals};

/// A function's 256-byte configuration space with a per-byte write mask.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; 256],
    wmask: [u8; 256],
}

impl ConfigSpace {
    pub fn new(vendor: u16, device: u16, class: u32, header_type: u8) -> Self {
        let mut c = Self {
            bytes: [0; 256],
            wmask: [0; 256],
        };
        c.bytes[0..2].copy_from_slice(&vendor.to_le_bytes());
        c.bytes[2..4].copy_from_slice(&device.to_le_bytes());
        // class: class code, subclass, prog-if, revision (big-endian order in `class`).
        c.bytes[8] = class as u8;
        c.bytes[9] = (class >> 8) as u8;
        c.bytes[10] = (class >> 16) as u8;
        c.bytes[11] = (class >> 24) as u8;
        c.bytes[0x0E] = header_type;
        // Command register: I/O, memory, bus master, SERR#.
        c.wmask[4] = 0x07;
        c.wmask[5] = 0x01;
        c
    }

    pub fn set_writable(&mut self, offset: usize, len: usize) {
        for m in &mut self.wmask[offset..offset + len] {
            *m = 0xFF;
        }
    }

    pub fn set(&mut self, offset: usize, value: u8) {
        self.bytes[offset] = value;
    }

    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.bytes.get(offset + i).copied().unwrap_or(0xFF);
        }
    }

    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, d) in data.iter().enumerate() {
            if let (Some(b), Some(m)) = (self.bytes.get_mut(offset + i), self.wmask.get(offset + i))
            {
                *b = (*b & !m) | (d & m);
            }
        }
    }
}

pub struct PciHost {
    address: u32,
    functions: Vec<(u8, u8, ConfigSpace)>,
    reset_control: u8,
    signals: Rc<SystemSignals>,
}

impl PciHost {
    pub fn new(signals: Rc<SystemSignals>) -> Self {
        // i440FX: vendor 8086, device 1237, host bridge (06/00), revision 02.
        let mut host = ConfigSpace::new(0x8086, 0x1237, 0x0600_0002, 0x00);
        // PAM0-6 (0x59-0x5F) and SMRAM (0x72) hold what the BIOS writes; shadowing of
        // the ROM area is not modelled: the ROM mirror stays read-only.
        host.set_writable(0x59, 7);
        host.set_writable(0x72, 1);
        // PIIX3 function 0: vendor 8086, device 7000, ISA bridge (06/01), multi-function.
        let mut isa = ConfigSpace::new(0x8086, 0x7000, 0x0601_0000, 0x80);
        for pirq in 0x60..0x64 {
            isa.set(pirq, 0x80); // PIRQA-D routing disabled
        }
        isa.set_writable(0x60, 4);
        isa.set(0x4C, 0x4D); // ISA recovery timer
        isa.set_writable(0x4C, 1);
        isa.set(0x4E, 0x03); // X-bus chip select
        isa.set_writable(0x4E, 1);
        isa.set(0x69, 0x02); // top of memory
        isa.set_writable(0x69, 1);
        isa.set(0x6A, 0x00);
        isa.set_writable(0x6A, 1);
        isa.set(0x70, 0x80); // MBIRQ0 disabled
        isa.set_writable(0x70, 2);
        isa.set(0xB0, 0x00);
        isa.set_writable(0xB0, 2);
        Self {
            address: 0,
            functions: vec![(0, 0, host), (1, 0, isa)],
            reset_control: 0,
            signals,
        }
    }

    /// The PIIX3's IDE function (00:01.1, 8086:7010): both channels in legacy mode (the
    /// ports and IRQs 14/15 of the ISA days), bus-master capable in its class code, but
    /// with no bus-master BAR yet, so drivers use PIO; IDETIM says both channels decode.
    pub fn add_piix3_ide(&mut self) {
        let mut ide = ConfigSpace::new(0x8086, 0x7010, 0x0101_8000, 0x00);
        ide.set(0x41, 0x80); // IDETIM primary: IDE decode enable
        ide.set(0x43, 0x80); // IDETIM secondary
        ide.set_writable(0x40, 8);
        self.functions.push((1, 1, ide));
    }

    fn selected(&mut self) -> Option<(&mut ConfigSpace, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xFF != 0 {
            return None;
        }
        let dev = ((a >> 11) & 0x1F) as u8;
        let func = ((a >> 8) & 7) as u8;
        let reg = (a & 0xFC) as usize;
        self.functions
            .iter_mut()
            .find(|(d, f, _)| *d == dev && *f == func)
            .map(|(_, _, c)| (c, reg))
    }
}

impl BusDevice for PciHost {
    /// Registered at 0xCF8 with length 8.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (1, 1) => data[0] = self.reset_control,
            (4..=7, _) => match self.selected() {
                Some((cfg, reg)) => cfg.read(reg + (offset as usize - 4), data),
                None => data.fill(0xFF),
            },
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & 0x80FF_FFFC;
            }
            (1, 1) => {
                // Reset control: bit 2 (RCPU) going high resets; bit 1 selects hard reset.
                let v = data[0];
                if v & 0x04 != 0 && self.reset_control & 0x04 == 0 {
                    self.signals.raise(SystemEvent::Reset {
                        source: "port 0xCF9",
                    });
                }
                self.reset_control = v & 0x02;
            }
            (4..=7, _) => {
                if let Some((cfg, reg)) = self.selected() {
                    cfg.write(reg + (offset as usize - 4), data);
                }
            }
            _ => {}
        }
    }

    fn wide_access(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_read(h: &mut PciHost, dev: u32, func: u32, reg: u32) -> u32 {
        h.write(
            0,
            &(0x8000_0000 | dev << 11 | func << 8 | reg).to_le_bytes(),
        );
        let mut d = [0u8; 4];
        h.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn enumerates_host_and_isa_bridge() {
        let mut h = PciHost::new(Rc::new(SystemSignals::default()));
        assert_eq!(cfg_read(&mut h, 0, 0, 0), 0x1237_8086);
        assert_eq!(cfg_read(&mut h, 0, 0, 8), 0x0600_0002);
        assert_eq!(cfg_read(&mut h, 1, 0, 0), 0x7000_8086);
        assert_eq!(
            cfg_read(&mut h, 1, 0, 0x0C) >> 16 & 0xFF,
            0x80,
            "multi-function"
        );
        assert_eq!(cfg_read(&mut h, 2, 0, 0), 0xFFFF_FFFF);
        assert_eq!(cfg_read(&mut h, 1, 1, 0), 0xFFFF_FFFF);
        // Address register reads back; disabled accesses read all-ones.
        let mut d = [0u8; 4];
        h.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0800 | 1 << 8);
        h.write(0, &0u32.to_le_bytes());
        h.read(4, &mut d);
        assert_eq!(d, [0xFF; 4]);
    }

    #[test]
    fn write_masks_and_byte_access() {
        let mut h = PciHost::new(Rc::new(SystemSignals::default()));
        h.write(0, &(0x8000_0800u32 | 0x60).to_le_bytes());
        h.write(6, &[0x0B]); // PIRQC via CONFIG_DATA+2
        assert_eq!(cfg_read(&mut h, 1, 0, 0x60), 0x800B_8080);
        h.write(0, &0x8000_0000u32.to_le_bytes());
        h.write(4, &0xFFFF_FFFFu32.to_le_bytes()); // vendor/device are read-only
        assert_eq!(cfg_read(&mut h, 0, 0, 0), 0x1237_8086);
        h.write(0, &0x8000_0004u32.to_le_bytes());
        h.write(4, &0xFFFF_FFFFu32.to_le_bytes());
        assert_eq!(cfg_read(&mut h, 0, 0, 4) & 0xFFFF, 0x0107);
    }

    #[test]
    fn reset_control_register() {
        let s = Rc::new(SystemSignals::default());
        let mut h = PciHost::new(s.clone());
        h.write(1, &[0x02]);
        assert!(!s.pending());
        h.write(1, &[0x06]);
        assert_eq!(
            s.take(),
            Some(SystemEvent::Reset {
                source: "port 0xCF9"
            })
        );
    }
}
