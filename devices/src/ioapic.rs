//! The 82093AA I/O APIC at 0xFEC00000: 24 input pins, each with a redirection table entry
//! that turns an edge or an asserted level into a message for the local APICs. Level
//! inputs hold their remote IRR bit from the message until the destination's EOI for its
//! vector comes back, and send again if the line is still asserted then.
//!
//! The board says which pins are asserted and which rose since it last said
//! ([`IoApic::set_inputs`]); it wires the ISA IRQs to pins as a PC does (IRQ0 to pin 2, the
//! others one to one) and carries the messages. The pins' polarity bit is kept but not
//! applied: the board's lines carry the asserted state, as the MADT describes the wiring.

use crate::apic_bus::{DeliveryMode, Destination, Message, Outgoing};
use crate::bus::BusDevice;

pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// The decoded window: IOREGSEL at 0x00, IOWIN at 0x10.
pub const IOAPIC_LEN: u64 = 0x20;
pub const IOAPIC_PINS: usize = 24;

/// Version 0x11 (the 82093AA), 24 entries.
const VERSION: u32 = 0x11 | ((IOAPIC_PINS as u32 - 1) << 16);

const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
const DELIVERY_STATUS: u64 = 1 << 12;
/// Vector, delivery mode, destination mode, polarity, trigger mode, mask, destination.
const WRITABLE: u64 = 0xFF00_0000_0001_AFFF;

pub struct IoApic {
    id: u32,
    select: u8,
    redirection: [u64; IOAPIC_PINS],
    /// The pins' asserted state, bit n for pin n.
    asserted: u32,
    outbox: Vec<Outgoing>,
    /// Messages sent for each pin, for `--stats`.
    sent: [u64; IOAPIC_PINS],
}

impl IoApic {
    /// An I/O APIC with APIC ID `id`, every entry masked.
    pub fn new(id: u32) -> Self {
        Self {
            id: id & 0xF,
            select: 0,
            redirection: [MASKED; IOAPIC_PINS],
            asserted: 0,
            outbox: Vec::new(),
            sent: [0; IOAPIC_PINS],
        }
    }

    /// The messages sent per pin.
    pub fn sent(&self) -> &[u64; IOAPIC_PINS] {
        &self.sent
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, Outgoing> {
        self.outbox.drain(..)
    }

    pub fn has_outgoing(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The input pins' levels now, and which of them rose since the last call.
    pub fn set_inputs(&mut self, asserted: u32, rising: u32) {
        self.asserted = asserted;
        for pin in 0..IOAPIC_PINS {
            let e = self.redirection[pin];
            let fire = if e & LEVEL != 0 {
                asserted & (1 << pin) != 0 && e & REMOTE_IRR == 0
            } else {
                rising & (1 << pin) != 0
            };
            if fire {
                self.send(pin);
            }
        }
    }

    fn send(&mut self, pin: usize) {
        let e = self.redirection[pin];
        if e & MASKED != 0 {
            return;
        }
        let Some(mode) = DeliveryMode::from_bits((e >> 8) as u32) else {
            return;
        };
        let field = (e >> 56) as u32;
        let dest = if e & (1 << 11) != 0 {
            Destination::Logical(field)
        } else {
            Destination::Physical(field)
        };
        let level = e & LEVEL != 0;
        if level {
            self.redirection[pin] |= REMOTE_IRR;
        }
        self.sent[pin] += 1;
        self.outbox.push(Outgoing::Interrupt(Message {
            dest,
            mode,
            vector: e as u8,
            level,
        }));
    }

    /// A local APIC's EOI for a level-triggered `vector`.
    pub fn eoi(&mut self, vector: u8) {
        for pin in 0..IOAPIC_PINS {
            let e = self.redirection[pin];
            if e & REMOTE_IRR != 0 && e as u8 == vector {
                self.redirection[pin] &= !REMOTE_IRR;
                if self.asserted & (1 << pin) != 0 {
                    self.send(pin);
                }
            }
        }
    }

    fn read_register(&self, reg: u8) -> u32 {
        match reg {
            0 => self.id << 24,
            1 => VERSION,
            2 => self.id << 24,
            0x10..=0x3F => {
                let e = self.redirection[usize::from(reg - 0x10) / 2];
                if reg & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u8, v: u32) {
        match reg {
            0 => self.id = (v >> 24) & 0xF,
            0x10..=0x3F => {
                let pin = usize::from(reg - 0x10) / 2;
                let old = self.redirection[pin];
                let new = if reg & 1 == 0 {
                    (old & !0xFFFF_FFFF) | u64::from(v)
                } else {
                    (old & 0xFFFF_FFFF) | u64::from(v) << 32
                };
                let mut new = (new & WRITABLE) | (old & (REMOTE_IRR | DELIVERY_STATUS));
                if new & LEVEL == 0 {
                    new &= !REMOTE_IRR;
                }
                self.redirection[pin] = new;
                // Unmasking a level input that is asserted delivers it.
                let level_now = new & (LEVEL | MASKED | REMOTE_IRR) == LEVEL;
                if level_now && self.asserted & (1 << pin) != 0 {
                    self.send(pin);
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for IoApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0x00 => u32::from(self.select),
            0x10 => self.read_register(self.select),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        for (i, b) in data.iter().take(4).enumerate() {
            bytes[i] = *b;
        }
        let v = u32::from_le_bytes(bytes);
        match offset {
            0x00 => self.select = v as u8,
            0x10 if data.len() >= 4 => self.write_register(self.select, v),
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

    fn program(io: &mut IoApic, pin: u8, low: u32, high: u32) {
        io.write(0, &[0x10 + 2 * pin]);
        io.write(0x10, &low.to_le_bytes());
        io.write(0, &[0x11 + 2 * pin]);
        io.write(0x10, &high.to_le_bytes());
    }

    fn sent(io: &mut IoApic) -> Vec<Outgoing> {
        io.drain().collect()
    }

    #[test]
    fn version_says_24_pins() {
        let mut io = IoApic::new(0);
        io.write(0, &[1]);
        let mut b = [0u8; 4];
        io.read(0x10, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0017_0011);
    }

    #[test]
    fn edge_pins_send_on_rising_edges_when_unmasked() {
        let mut io = IoApic::new(0);
        io.set_inputs(1 << 2, 1 << 2);
        assert!(sent(&mut io).is_empty(), "masked at reset");
        program(&mut io, 2, 0x30, 0x0100_0000);
        io.set_inputs(1 << 2, 0);
        assert!(sent(&mut io).is_empty(), "a level is not an edge");
        io.set_inputs(1 << 2, 1 << 2);
        assert_eq!(
            sent(&mut io),
            vec![Outgoing::Interrupt(Message {
                dest: Destination::Physical(1),
                mode: DeliveryMode::Fixed,
                vector: 0x30,
                level: false
            })]
        );
    }

    #[test]
    fn level_pins_hold_remote_irr_until_eoi() {
        let mut io = IoApic::new(0);
        program(&mut io, 9, 0x49 | 1 << 15, 0);
        io.set_inputs(1 << 9, 1 << 9);
        assert_eq!(sent(&mut io).len(), 1);
        io.set_inputs(1 << 9, 0);
        assert!(sent(&mut io).is_empty(), "remote IRR holds it");
        io.write(0, &[0x10 + 18]);
        let mut b = [0u8; 4];
        io.read(0x10, &mut b);
        assert_ne!(
            u32::from_le_bytes(b) & (1 << 14),
            0,
            "remote IRR reads back"
        );
        io.eoi(0x49);
        assert_eq!(sent(&mut io).len(), 1, "still asserted: sent again");
        io.set_inputs(0, 0);
        io.eoi(0x49);
        assert!(sent(&mut io).is_empty());
    }
}
