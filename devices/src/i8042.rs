//! Intel 8042 keyboard controller at 0x60 (data) and 0x64 (status/command), with a
//! keyboard that answers the usual commands and no mouse behind the AUX port. It carries
//! the two system signals firmware and Linux use it for: the A20 gate (output port bit 1)
//! and CPU reset (output port bit 0 low, or the pulse command 0xFE).

use std::collections::VecDeque;
use std::rc::Rc;

use crate::bus::BusDevice;
use crate::irq::IrqLine;
use crate::signals::{SystemEvent, SystemSignals};

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX: u8 = 0x20;

const CB_KBD_INT: u8 = 0x01;
const CB_AUX_INT: u8 = 0x02;
const CB_SYS: u8 = 0x04;
const CB_KBD_DISABLE: u8 = 0x10;
const CB_AUX_DISABLE: u8 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    CommandByte,
    OutputPort,
    KbdOutput,
    AuxOutput,
    AuxDevice,
    KbdLeds,
    KbdRate,
}

pub struct I8042 {
    out: VecDeque<(u8, bool)>,
    command_byte: u8,
    status_cmd: bool,
    pending: Pending,
    /// Keyboard command awaiting its parameter byte.
    kbd_pending: Pending,
    output_port: u8,
    kbd_irq: IrqLine,
    aux_irq: IrqLine,
    signals: Rc<SystemSignals>,
}

impl I8042 {
    pub fn new(kbd_irq: IrqLine, aux_irq: IrqLine, signals: Rc<SystemSignals>) -> Self {
        Self {
            out: VecDeque::new(),
            command_byte: CB_KBD_INT | CB_SYS,
            status_cmd: false,
            pending: Pending::None,
            kbd_pending: Pending::None,
            output_port: 0x03, // reset line inactive (high), A20 enabled
            kbd_irq,
            aux_irq,
            signals,
        }
    }

    fn push(&mut self, byte: u8, aux: bool) {
        self.out.push_back((byte, aux));
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let front = self.out.front().copied();
        self.kbd_irq
            .set_level(matches!(front, Some((_, false))) && self.command_byte & CB_KBD_INT != 0);
        self.aux_irq
            .set_level(matches!(front, Some((_, true))) && self.command_byte & CB_AUX_INT != 0);
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if let Some((_, aux)) = self.out.front() {
            s |= STATUS_OBF;
            if *aux {
                s |= STATUS_AUX;
            }
        }
        if self.command_byte & CB_SYS != 0 {
            s |= STATUS_SYS;
        }
        if self.status_cmd {
            s |= STATUS_CMD;
        }
        s
    }

    fn write_output_port(&mut self, val: u8) {
        self.output_port = val;
        self.signals.set_a20(val & 0x02 != 0);
        if val & 0x01 == 0 {
            self.signals.raise(SystemEvent::Reset {
                source: "i8042 output port",
            });
        }
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            0x20..=0x3F => {
                // Read controller RAM; byte 0 is the command byte.
                let v = if cmd == 0x20 { self.command_byte } else { 0 };
                self.push(v, false);
            }
            0x60 => self.pending = Pending::CommandByte,
            0x61..=0x7F => {} // controller RAM writes are not kept
            0xA7 => self.command_byte |= CB_AUX_DISABLE,
            0xA8 => self.command_byte &= !CB_AUX_DISABLE,
            0xA9 => self.push(0x00, false), // AUX interface test: passed
            0xAA => {
                self.command_byte |= CB_SYS;
                self.push(0x55, false);
            }
            0xAB => self.push(0x00, false), // keyboard interface test: passed
            0xAD => self.command_byte |= CB_KBD_DISABLE,
            0xAE => self.command_byte &= !CB_KBD_DISABLE,
            0xC0 => self.push(0x80, false), // input port: keyboard not inhibited
            0xD0 => self.push(self.output_port, false),
            0xD1 => self.pending = Pending::OutputPort,
            0xD2 => self.pending = Pending::KbdOutput,
            0xD3 => self.pending = Pending::AuxOutput,
            0xD4 => self.pending = Pending::AuxDevice,
            0xDD => self.signals.set_a20(false),
            0xDF => self.signals.set_a20(true),
            // Pulse output port bits whose mask bit is clear; bit 0 is the CPU reset line.
            0xF0..=0xFF if cmd & 0x01 == 0 => self.signals.raise(SystemEvent::Reset {
                source: "i8042 pulse 0xFE",
            }),
            _ => {}
        }
        self.update_irq();
    }

    fn keyboard_command(&mut self, val: u8) {
        match self.kbd_pending {
            Pending::KbdLeds | Pending::KbdRate => {
                self.kbd_pending = Pending::None;
                self.push(0xFA, false);
                return;
            }
            _ => {}
        }
        match val {
            0xED => {
                self.kbd_pending = Pending::KbdLeds;
                self.push(0xFA, false);
            }
            0xF3 => {
                self.kbd_pending = Pending::KbdRate;
                self.push(0xFA, false);
            }
            0xEE => self.push(0xEE, false), // echo
            0xF2 => {
                // Identify: an MF2 keyboard.
                self.push(0xFA, false);
                self.push(0xAB, false);
                self.push(0x83, false);
            }
            0xFF => {
                self.out.clear();
                self.push(0xFA, false);
                self.push(0xAA, false); // BAT passed
            }
            _ => self.push(0xFA, false),
        }
    }

    fn data_write(&mut self, val: u8) {
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::CommandByte => {
                self.command_byte = val;
                self.update_irq();
            }
            Pending::OutputPort => self.write_output_port(val),
            Pending::KbdOutput => self.push(val, false),
            Pending::AuxOutput => self.push(val, true),
            // No mouse: the controller reports a timeout with 0xFE from the AUX port.
            Pending::AuxDevice => self.push(0xFE, true),
            _ => self.keyboard_command(val),
        }
    }
}

impl BusDevice for I8042 {
    /// Register at 0x60 (offset 0, data) and 0x64 (offset 4, status/command).
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data[0] = match offset {
            0 => {
                let v = self.out.pop_front().map_or(0, |(b, _)| b);
                // Reading empties the output buffer, which drops the interrupt; the next
                // queued byte fills it again, a new edge for the 8259 (which otherwise
                // never sees the second byte of a multi-byte answer and Linux's ps2 code
                // waits out its timeouts).
                self.kbd_irq.set_level(false);
                self.aux_irq.set_level(false);
                self.update_irq();
                v
            }
            4 => self.status(),
            _ => 0xFF,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 => {
                self.status_cmd = false;
                self.data_write(data[0]);
            }
            4 => {
                self.status_cmd = true;
                self.command(data[0]);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqWires;

    fn rig() -> (I8042, Rc<SystemSignals>, IrqLine) {
        let wires = IrqWires::new();
        let signals = Rc::new(SystemSignals::default());
        let kbd = wires.line(1);
        (
            I8042::new(kbd.clone(), wires.line(12), signals.clone()),
            signals,
            kbd,
        )
    }
    fn inb(k: &mut I8042, o: u64) -> u8 {
        let mut d = [0];
        k.read(o, &mut d);
        d[0]
    }

    #[test]
    fn self_test_and_command_byte() {
        let (mut k, _, irq) = rig();
        k.write(4, &[0xAA]);
        assert_eq!(
            inb(&mut k, 4) & (STATUS_OBF | STATUS_CMD),
            STATUS_OBF | STATUS_CMD
        );
        assert!(irq.is_high());
        assert_eq!(inb(&mut k, 0), 0x55);
        assert!(!irq.is_high());
        k.write(4, &[0x60]);
        k.write(0, &[0x44]);
        k.write(4, &[0x20]);
        assert_eq!(inb(&mut k, 0), 0x44);
        assert!(!irq.is_high(), "interrupts disabled by the command byte");
        k.write(4, &[0xAB]);
        assert_eq!(inb(&mut k, 0), 0x00);
    }

    #[test]
    fn keyboard_reset_and_identify() {
        let (mut k, _, _) = rig();
        k.write(0, &[0xFF]);
        assert_eq!(inb(&mut k, 0), 0xFA);
        assert_eq!(inb(&mut k, 0), 0xAA);
        k.write(0, &[0xF2]);
        assert_eq!(
            [inb(&mut k, 0), inb(&mut k, 0), inb(&mut k, 0)],
            [0xFA, 0xAB, 0x83]
        );
        k.write(0, &[0xED]);
        assert_eq!(inb(&mut k, 0), 0xFA);
        k.write(0, &[0x07]);
        assert_eq!(inb(&mut k, 0), 0xFA);
        assert_eq!(inb(&mut k, 4) & STATUS_OBF, 0);
    }

    #[test]
    fn each_byte_of_an_answer_raises_its_own_interrupt() {
        let wires = IrqWires::new();
        let signals = Rc::new(SystemSignals::default());
        let mut k = I8042::new(wires.line(1), wires.line(12), signals);
        wires.take_rising();
        k.write(0, &[0xF2]);
        assert_eq!(wires.take_rising(), 1 << 1, "the ACK's edge");
        for (byte, edges) in [(0xFA, 1 << 1), (0xAB, 1 << 1), (0x83, 0)] {
            assert_eq!(inb(&mut k, 0), byte);
            assert_eq!(wires.take_rising(), edges, "after reading {byte:#x}");
        }
        assert_eq!(wires.levels() & (1 << 1), 0);
    }

    #[test]
    fn a20_and_reset_signals() {
        let (mut k, signals, _) = rig();
        k.write(4, &[0xD1]);
        k.write(0, &[0x01]);
        assert!(!signals.a20());
        assert!(!signals.pending());
        k.write(4, &[0xD0]);
        assert_eq!(inb(&mut k, 0), 0x01);
        k.write(4, &[0xD1]);
        k.write(0, &[0x03]);
        assert!(signals.a20());
        k.write(4, &[0xFE]);
        assert_eq!(
            signals.take(),
            Some(SystemEvent::Reset {
                source: "i8042 pulse 0xFE"
            })
        );
    }

    #[test]
    fn aux_loopback_and_absent_mouse() {
        let (mut k, _, _) = rig();
        k.write(4, &[0xD3]);
        k.write(0, &[0x5A]);
        assert_eq!(inb(&mut k, 4) & STATUS_AUX, STATUS_AUX);
        assert_eq!(inb(&mut k, 0), 0x5A);
        k.write(4, &[0xD4]);
        k.write(0, &[0xF2]);
        assert_eq!(inb(&mut k, 0), 0xFE);
    }
}
