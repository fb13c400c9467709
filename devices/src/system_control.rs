//! System control port A (0x92, "fast A20 and reset") of PS/2-class chipsets.

use std::rc::Rc;

use crate::bus::BusDevice;
use crate::signals::{SystemEvent, SystemSignals};

pub struct SystemControlA {
    signals: Rc<SystemSignals>,
    value: u8,
}

impl SystemControlA {
    pub fn new(signals: Rc<SystemSignals>) -> Self {
        Self {
            signals,
            value: 0x02,
        }
    }
}

impl BusDevice for SystemControlA {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data[0] = (self.value & !0x02) | if self.signals.a20() { 0x02 } else { 0 };
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let v = data[0];
        self.signals.set_a20(v & 0x02 != 0);
        // Bit 0 going from 0 to 1 resets the CPU.
        if v & 0x01 != 0 && self.value & 0x01 == 0 {
            self.signals.raise(SystemEvent::Reset {
                source: "port 0x92",
            });
        }
        self.value = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_a20_and_reset() {
        let s = Rc::new(SystemSignals::default());
        let mut p = SystemControlA::new(s.clone());
        p.write(0, &[0x00]);
        assert!(!s.a20());
        let mut d = [0];
        p.read(0, &mut d);
        assert_eq!(d[0], 0x00);
        p.write(0, &[0x02]);
        assert!(s.a20());
        assert!(!s.pending());
        p.write(0, &[0x03]);
        assert_eq!(
            s.take(),
            Some(SystemEvent::Reset {
                source: "port 0x92"
            })
        );
    }
}
