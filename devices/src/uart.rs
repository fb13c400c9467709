//! National Semiconductor 16550A UART, as COM1-COM4 of a PC.
//!
//! Written here rather than taken from vm-superio: its `Serial` reports interrupts as edge
//! "triggers" with no level output, has no receiver-line-status interrupt, no FIFO trigger
//! levels and no OUT2 gating of the IRQ line. On a PC the line is driven only while MCR.OUT2
//! is set and an enabled interrupt is pending, and guests (Linux's 8250 driver among them)
//! probe exactly that.
//!
//! Transmission is instantaneous: a byte written to THR goes to the sink at once, so THRE
//! and TEMT are set again immediately and the THRE interrupt fires.

use std::collections::VecDeque;
use std::io::Write;

use crate::bus::BusDevice;
use crate::irq::IrqLine;

const FIFO_SIZE: usize = 16;

// IER bits
const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IER_RLS: u8 = 0x04;
const IER_MSI: u8 = 0x08;
// LSR bits
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_BI: u8 = 0x10;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const LSR_FIFO_ERR: u8 = 0x80;
const LSR_ERRORS: u8 = 0x1E;
// MCR bits
const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
// IIR values
const IIR_NONE: u8 = 0x01;
const IIR_MSI: u8 = 0x00;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_RLS: u8 = 0x06;
const IIR_CTI: u8 = 0x0C;
const IIR_FIFO: u8 = 0xC0;

pub struct Uart {
    rx: VecDeque<u8>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    lsr: u8,
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
    rx_trigger: usize,
    thr_interrupt: bool,
    irq: IrqLine,
    out: Box<dyn Write>,
    bytes_out: u64,
    /// Bytes written to `out` since the last flush.
    unflushed: bool,
}

impl Uart {
    pub fn new(irq: IrqLine, out: Box<dyn Write>) -> Self {
        Self {
            rx: VecDeque::with_capacity(FIFO_SIZE),
            ier: 0,
            lcr: 0,
            mcr: MCR_OUT2,
            lsr: LSR_THRE | LSR_TEMT,
            // A modem that is present: CTS, DSR and DCD asserted.
            msr: 0xB0,
            scr: 0,
            dll: 0x0C, // 9600 baud, as left by a BIOS
            dlm: 0,
            fifo_enabled: false,
            rx_trigger: 1,
            thr_interrupt: false,
            irq,
            out,
            bytes_out: 0,
            unflushed: false,
        }
    }

    fn capacity(&self) -> usize {
        if self.fifo_enabled {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Room for host input, so the board feeds the UART no faster than the guest reads.
    pub fn rx_room(&self) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            return 0;
        }
        self.capacity().saturating_sub(self.rx.len())
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// A byte from the host side of the line (the console).
    pub fn receive(&mut self, byte: u8) {
        if self.rx.len() >= self.capacity() {
            self.lsr |= LSR_OE;
        } else {
            self.rx.push_back(byte);
        }
        self.lsr |= LSR_DR;
        self.update_irq();
    }

    /// A break condition on the line.
    pub fn receive_break(&mut self) {
        self.lsr |= LSR_BI;
        self.receive(0);
    }

    /// Pushes transmitted bytes to the host. The board calls this after each exit that
    /// produced output, so a prompt without a newline shows while the guest polls.
    pub fn flush(&mut self) {
        if std::mem::take(&mut self.unflushed) {
            let _ = self.out.flush();
        }
    }

    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.lsr & LSR_ERRORS != 0 {
            IIR_RLS
        } else if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            // Without a character timer, data below the trigger level reports as a
            // character timeout at once, as it would after four idle character times.
            if self.rx.len() >= self.rx_trigger || !self.fifo_enabled {
                IIR_RDA
            } else {
                IIR_CTI
            }
        } else if self.ier & IER_THRE != 0 && self.thr_interrupt {
            IIR_THRE
        } else if self.ier & IER_MSI != 0 && self.msr & 0x0F != 0 {
            IIR_MSI
        } else {
            IIR_NONE
        }
    }

    fn update_irq(&mut self) {
        let pending = self.interrupt_id() != IIR_NONE;
        // In loopback mode OUT2 is disconnected from the line (it loops to DCD).
        let gated = self.mcr & MCR_OUT2 != 0 && self.mcr & MCR_LOOP == 0;
        self.irq.set_level(pending && gated);
    }

    fn transmit(&mut self, byte: u8) {
        if self.mcr & MCR_LOOP != 0 {
            if self.rx.len() < self.capacity() {
                self.rx.push_back(byte);
            } else {
                self.lsr |= LSR_OE;
            }
            self.lsr |= LSR_DR;
        } else {
            // A console that went away must not stop the guest; the byte is lost as on a
            // disconnected line.
            let _ = self.out.write_all(&[byte]);
            self.unflushed = true;
            self.bytes_out += 1;
        }
        self.lsr |= LSR_THRE | LSR_TEMT;
        self.thr_interrupt = true;
    }

    fn loopback_msr(&self) -> u8 {
        let m = self.mcr;
        ((m & MCR_RTS != 0) as u8) << 4
            | ((m & MCR_DTR != 0) as u8) << 5
            | ((m & MCR_OUT1 != 0) as u8) << 6
            | ((m & MCR_OUT2 != 0) as u8) << 7
    }

    fn set_mcr(&mut self, val: u8) {
        let old_msr = self.read_msr_bits();
        self.mcr = val & 0x1F;
        let new_msr = self.read_msr_bits();
        // Delta bits for CTS, DSR, DCD; trailing edge of RI.
        let changed = old_msr ^ new_msr;
        let mut delta = (changed >> 4) & 0x0B;
        if old_msr & 0x40 != 0 && new_msr & 0x40 == 0 {
            delta |= 0x04;
        }
        self.msr = (self.msr & 0x0F) | delta | (new_msr & 0xF0);
    }

    fn read_msr_bits(&self) -> u8 {
        if self.mcr & MCR_LOOP != 0 {
            self.loopback_msr()
        } else {
            0xB0
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }
}

impl BusDevice for Uart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data[0] = match offset {
            0 if self.dlab() => self.dll,
            0 => {
                let byte = self.rx.pop_front().unwrap_or(0);
                if self.rx.is_empty() {
                    self.lsr &= !(LSR_DR | LSR_FIFO_ERR);
                }
                byte
            }
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            2 => {
                let id = self.interrupt_id();
                // Reading IIR while it reports THRE clears that source.
                if id == IIR_THRE {
                    self.thr_interrupt = false;
                }
                id | if self.fifo_enabled { IIR_FIFO } else { 0 }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let v = self.lsr;
                self.lsr &= !(LSR_ERRORS | LSR_FIFO_ERR);
                v
            }
            6 => {
                let v = (self.msr & 0x0F) | self.read_msr_bits();
                self.msr &= 0xF0;
                v
            }
            _ => self.scr,
        };
        self.update_irq();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let val = data[0];
        match offset {
            0 if self.dlab() => self.dll = val,
            0 => {
                self.thr_interrupt = false;
                self.transmit(val);
            }
            1 if self.dlab() => self.dlm = val,
            1 => {
                let enabling_thre = val & IER_THRE != 0 && self.ier & IER_THRE == 0;
                self.ier = val & 0x0F;
                // An empty THR raises THRE as soon as the interrupt is enabled.
                if enabling_thre && self.lsr & LSR_THRE != 0 {
                    self.thr_interrupt = true;
                }
            }
            2 => {
                let enable = val & 1 != 0;
                if enable != self.fifo_enabled {
                    self.rx.clear();
                    self.lsr &= !LSR_DR;
                }
                self.fifo_enabled = enable;
                if val & 0x02 != 0 {
                    self.rx.clear();
                    self.lsr &= !(LSR_DR | LSR_FIFO_ERR);
                }
                self.rx_trigger = [1, 4, 8, 14][(val >> 6) as usize];
            }
            3 => self.lcr = val,
            4 => self.set_mcr(val),
            5 => {} // LSR is read-only (factory test only)
            6 => {}
            _ => self.scr = val,
        }
        self.update_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqWires;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Clone, Default)]
    struct Sink(Rc<RefCell<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn rig() -> (Uart, IrqLine, Sink) {
        let wires = IrqWires::new();
        let sink = Sink::default();
        let line = wires.line(4);
        (Uart::new(line.clone(), Box::new(sink.clone())), line, sink)
    }
    fn inb(u: &mut Uart, r: u64) -> u8 {
        let mut d = [0];
        u.read(r, &mut d);
        d[0]
    }

    #[test]
    fn transmit_and_thre_interrupt() {
        let (mut u, irq, sink) = rig();
        assert_eq!(inb(&mut u, 2), IIR_NONE);
        u.write(1, &[IER_THRE]);
        assert!(irq.is_high(), "enabling THRE with an empty THR interrupts");
        assert_eq!(inb(&mut u, 2), IIR_THRE);
        assert!(!irq.is_high(), "reading IIR cleared THRE");
        u.write(0, b"h");
        u.write(0, b"i");
        assert_eq!(sink.0.borrow().as_slice(), b"hi");
        assert!(irq.is_high());
        assert_eq!(inb(&mut u, 5) & 0x60, 0x60);
        // OUT2 gates the line.
        u.write(4, &[0]);
        assert!(!irq.is_high());
        u.write(4, &[MCR_OUT2]);
        assert!(irq.is_high());
        assert_eq!(u.bytes_out(), 2);
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let (mut u, _, sink) = rig();
        u.write(3, &[0x83]);
        u.write(0, &[0x01]);
        u.write(1, &[0x00]);
        assert_eq!(inb(&mut u, 0), 0x01);
        assert_eq!(inb(&mut u, 1), 0x00);
        u.write(3, &[0x03]);
        assert_eq!(inb(&mut u, 1), 0, "IER, not DLM");
        assert!(sink.0.borrow().is_empty(), "DLL writes are not data");
        u.write(7, &[0x5A]);
        assert_eq!(inb(&mut u, 7), 0x5A);
    }

    #[test]
    fn fifo_trigger_levels_and_timeout() {
        let (mut u, irq, _) = rig();
        u.write(2, &[0x81]); // FIFO on, trigger 8
        u.write(1, &[IER_RDA]);
        assert_eq!(inb(&mut u, 2) & 0xC0, 0xC0);
        for b in 0..4 {
            u.receive(b);
        }
        assert_eq!(inb(&mut u, 2) & 0x0F, IIR_CTI);
        for b in 4..8 {
            u.receive(b);
        }
        assert_eq!(inb(&mut u, 2) & 0x0F, IIR_RDA);
        assert!(irq.is_high());
        assert_eq!(u.rx_room(), 8);
        for b in 0..8 {
            assert_eq!(inb(&mut u, 5) & LSR_DR, LSR_DR);
            assert_eq!(inb(&mut u, 0), b);
        }
        assert_eq!(inb(&mut u, 5) & LSR_DR, 0);
        assert!(!irq.is_high());
    }

    #[test]
    fn overrun_raises_line_status_interrupt() {
        let (mut u, irq, _) = rig();
        u.write(1, &[IER_RLS]);
        u.receive(1);
        assert!(!irq.is_high());
        u.receive(2); // no FIFO: one-byte holding register overruns
        assert!(irq.is_high());
        assert_eq!(inb(&mut u, 2), IIR_RLS);
        assert_eq!(inb(&mut u, 5) & LSR_OE, LSR_OE);
        assert_eq!(inb(&mut u, 5) & LSR_OE, 0, "read clears OE");
        assert!(!irq.is_high());
        assert_eq!(inb(&mut u, 0), 1);
    }

    #[test]
    fn loopback_echoes_and_mirrors_modem_lines() {
        let (mut u, irq, sink) = rig();
        u.write(4, &[MCR_LOOP | MCR_OUT2 | MCR_RTS]);
        u.write(1, &[IER_RDA]);
        u.write(0, &[0xAE]);
        assert!(sink.0.borrow().is_empty());
        assert!(!irq.is_high(), "OUT2 is disconnected in loopback");
        assert_eq!(inb(&mut u, 0), 0xAE);
        let msr = inb(&mut u, 6);
        assert_eq!(msr & 0xF0, 0x90, "CTS from RTS, DCD from OUT2");
        assert_eq!(msr & 0x0F, 0x02, "DSR fell (DTR is clear): delta DSR");
        assert_eq!(inb(&mut u, 6) & 0x0F, 0, "deltas clear on read");
    }
}
