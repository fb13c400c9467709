//! The ACPI power-management register block at 0x600 (the PIIX4 PM layout QEMU uses):
//! PM1a_EVT_BLK (0x600: status, 0x602: enable), PM1a_CNT_BLK (0x604) and the 24-bit
//! PM timer (0x608) at 3.579545 MHz. Writing SLP_EN with SLP_TYP 0 (S5) powers off.

use std::rc::Rc;

use crate::bus::BusDevice;
use crate::clock::Clock;
use crate::signals::{SystemEvent, SystemSignals};

pub const PM_BASE: u16 = 0x600;
pub const PM_LEN: u16 = 0x10;
pub const PM_TIMER_HZ: u64 = 3_579_545;
const SCI_EN: u16 = 0x0001;
const SLP_EN: u16 = 0x2000;

pub struct AcpiPm {
    pm1_status: u16,
    pm1_enable: u16,
    pm1_control: u16,
    clock: Rc<dyn Clock>,
    signals: Rc<SystemSignals>,
}

impl AcpiPm {
    pub fn new(clock: Rc<dyn Clock>, signals: Rc<SystemSignals>) -> Self {
        Self {
            pm1_status: 0,
            pm1_enable: 0,
            // No SMI handler to switch modes: the block is in ACPI mode from reset.
            pm1_control: SCI_EN,
            clock,
            signals,
        }
    }

    fn timer(&self) -> u32 {
        let ticks = self.clock.now_ns() as u128 * PM_TIMER_HZ as u128 / 1_000_000_000;
        (ticks as u32) & 0x00FF_FFFF
    }

    fn read_byte(&self, offset: u64) -> u8 {
        let word = |v: u16, hi: bool| if hi { (v >> 8) as u8 } else { v as u8 };
        match offset {
            0 | 1 => word(self.pm1_status, offset == 1),
            2 | 3 => word(self.pm1_enable, offset == 3),
            4 | 5 => word(self.pm1_control, offset == 5),
            8..=11 => (self.timer() >> ((offset - 8) * 8)) as u8,
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, offset: u64, v: u8) {
        let set = |r: &mut u16, hi: bool, v: u8| {
            *r = if hi {
                (*r & 0x00FF) | (v as u16) << 8
            } else {
                (*r & 0xFF00) | v as u16
            }
        };
        match offset {
            // Status bits are write-one-to-clear.
            0 => self.pm1_status &= !(v as u16),
            1 => self.pm1_status &= !((v as u16) << 8),
            2 | 3 => set(&mut self.pm1_enable, offset == 3, v),
            4 | 5 => {
                set(&mut self.pm1_control, offset == 5, v);
                if self.pm1_control & SLP_EN != 0 {
                    let slp_typ = (self.pm1_control >> 10) & 7;
                    self.pm1_control &= !SLP_EN; // SLP_EN reads as zero
                    if slp_typ == 0 {
                        self.signals.raise(SystemEvent::PowerOff);
                    }
                }
                self.pm1_control |= SCI_EN;
            }
            _ => {}
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.read_byte(offset + i as u64);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // A 16-bit write to PM1a_CNT must see both bytes before acting on SLP_EN.
        if offset == 4 && data.len() >= 2 {
            self.pm1_control = (self.pm1_control & 0xFF00) | data[0] as u16;
            self.write_byte(5, data[1]);
            return;
        }
        for (i, v) in data.iter().enumerate() {
            self.write_byte(offset + i as u64, *v);
        }
    }

    fn wide_access(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn s5_powers_off_and_timer_runs() {
        let clock = Rc::new(ManualClock::new(0));
        let s = Rc::new(SystemSignals::default());
        let mut pm = AcpiPm::new(clock.clone(), s.clone());
        let mut d = [0u8; 2];
        pm.read(4, &mut d);
        assert_eq!(u16::from_le_bytes(d) & SCI_EN, SCI_EN);
        // SLP_TYP 5 with SLP_EN (an S3-style request) does not power off.
        pm.write(4, &(0x2000u16 | 5 << 10).to_le_bytes());
        assert!(!s.pending());
        pm.write(4, &0x2000u16.to_le_bytes());
        assert_eq!(s.take(), Some(SystemEvent::PowerOff));
        // Byte-wise, as /dev/port writes it: 0x604 then 0x605.
        pm.write(4, &[0x00]);
        pm.write(5, &[0x20]);
        assert_eq!(s.take(), Some(SystemEvent::PowerOff));
        clock.set(1_000_000_000);
        let mut t = [0u8; 4];
        pm.read(8, &mut t);
        assert_eq!(u32::from_le_bytes(t), (PM_TIMER_HZ as u32) & 0xFF_FFFF);
    }
}
