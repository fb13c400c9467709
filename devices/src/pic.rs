//! The cascaded Intel 8259A pair of the PC (master at 0x20, slave at 0xA0 on the master's
//! IR2) and the PIIX edge/level control registers (ELCR) at 0x4D0/0x4D1.
//!
//! Names follow the 8259A datasheet: ICW1-4, OCW1-3, IRR/ISR/IMR. The LTIM bit of ICW1 is
//! ignored, as on PC chipsets, where the ELCR chooses level triggering per line.

use std::rc::Rc;

use crate::bus::BusDevice;
use crate::irq::IrqWires;

#[derive(Default, Debug, Clone)]
struct Pic8259 {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Line levels as last sampled, for edge detection.
    last_level: u8,
    elcr: u8,
    elcr_mask: u8,
    vector_base: u8,
    /// Rotation: the IR line with the lowest priority is `priority_add - 1`.
    priority_add: u8,
    /// 0: ready for OCWs; 1-3: waiting for ICW2..ICW4.
    icw_step: u8,
    icw4_needed: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
    is_master: bool,
}

impl Pic8259 {
    fn new(is_master: bool, elcr_mask: u8) -> Self {
        Self {
            is_master,
            elcr_mask,
            ..Default::default()
        }
    }

    /// Priority (0 = highest) of the highest request in `mask`, or 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        if mask == 0 {
            return 8;
        }
        let mut p = 0;
        while mask & (1 << ((p + self.priority_add) & 7)) == 0 {
            p += 1;
        }
        p
    }

    /// The IR line the INT output asks for, honouring masks and in-service priorities.
    fn requested(&self) -> Option<u8> {
        let p = self.priority(self.irr & !self.imr);
        if p == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.is_master {
            in_service &= !(1 << 2);
        }
        (p < self.priority(in_service)).then_some((p + self.priority_add) & 7)
    }

    fn set_line(&mut self, irq: u8, level: bool, rising: bool) {
        let bit = 1 << irq;
        if self.elcr & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if rising || (level && self.last_level & bit == 0) {
            self.irr |= bit;
        }
        if level {
            self.last_level |= bit;
        } else {
            self.last_level &= !bit;
        }
    }

    /// The INTA cycle for `irq`.
    fn acknowledge(&mut self, irq: u8) {
        let bit = 1 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if self.elcr & bit == 0 {
            self.irr &= !bit;
        }
    }

    fn write_command(&mut self, val: u8) {
        if val & 0x10 != 0 {
            // ICW1 starts initialisation: the IMR, ISR and modes are cleared.
            self.irr &= self.elcr;
            self.last_level = 0;
            self.isr = 0;
            self.imr = 0;
            self.priority_add = 0;
            self.vector_base = 0;
            self.auto_eoi = false;
            self.rotate_on_auto_eoi = false;
            self.special_fully_nested = false;
            self.special_mask = false;
            self.read_isr = false;
            self.poll = false;
            self.icw4_needed = val & 1 != 0;
            self.single = val & 2 != 0;
            self.icw_step = 1;
        } else if val & 0x08 != 0 {
            // OCW3
            if val & 0x04 != 0 {
                self.poll = true;
            }
            if val & 0x02 != 0 {
                self.read_isr = val & 1 != 0;
            }
            if val & 0x40 != 0 {
                self.special_mask = val & 0x20 != 0;
            }
        } else {
            // OCW2
            match val >> 5 {
                0 => self.rotate_on_auto_eoi = false,
                4 => self.rotate_on_auto_eoi = true,
                1 | 5 => {
                    let p = self.priority(self.isr);
                    if p != 8 {
                        let irq = (p + self.priority_add) & 7;
                        self.isr &= !(1 << irq);
                        if val >> 5 == 5 {
                            self.priority_add = (irq + 1) & 7;
                        }
                    }
                }
                3 => self.isr &= !(1 << (val & 7)),
                6 => self.priority_add = (val + 1) & 7,
                7 => {
                    let irq = val & 7;
                    self.isr &= !(1 << irq);
                    self.priority_add = (irq + 1) & 7;
                }
                _ => {} // 2: no operation
            }
        }
    }

    fn write_data(&mut self, val: u8) {
        match self.icw_step {
            0 => self.imr = val, // OCW1
            1 => {
                self.vector_base = val & 0xF8;
                self.icw_step = match (self.single, self.icw4_needed) {
                    (false, _) => 2,
                    (true, true) => 3,
                    (true, false) => 0,
                };
            }
            2 => self.icw_step = if self.icw4_needed { 3 } else { 0 }, // ICW3: wiring is fixed
            _ => {
                self.special_fully_nested = val & 0x10 != 0;
                self.auto_eoi = val & 0x02 != 0;
                self.icw_step = 0;
            }
        }
    }
}

/// Counters for `--stats`.
#[derive(Default, Debug, Clone, Copy)]
pub struct PicStats {
    pub acknowledged: u64,
    pub spurious: u64,
}

/// The master/slave pair as wired in a PC.
pub struct PicPair {
    master: Pic8259,
    slave: Pic8259,
    wires: Rc<IrqWires>,
    stats: PicStats,
}

impl PicPair {
    pub fn new(wires: Rc<IrqWires>) -> Self {
        Self {
            master: Pic8259::new(true, 0xF8),
            slave: Pic8259::new(false, 0xDE),
            wires,
            stats: PicStats::default(),
        }
    }

    pub fn stats(&self) -> PicStats {
        self.stats
    }

    /// Samples the IRQ wires into the IRRs and propagates the slave's INT to master IR2.
    fn sync(&mut self) {
        let rising = self.wires.take_rising();
        let level = self.wires.levels();
        for irq in 0..8u8 {
            if irq != 2 {
                self.master
                    .set_line(irq, level & (1 << irq) != 0, rising & (1 << irq) != 0);
            }
            let s = irq + 8;
            self.slave
                .set_line(irq, level & (1 << s) != 0, rising & (1 << s) != 0);
        }
        let cascade = self.slave.requested().is_some();
        self.master.set_line(2, cascade, false);
    }

    /// The state of the master's INT output: an interrupt awaits acknowledgement.
    pub fn has_interrupt(&mut self) -> bool {
        self.sync();
        self.master.requested().is_some()
    }

    /// The INTA cycles: returns the vector the CPU receives. With no request left (it was
    /// withdrawn), the 8259A answers with IR7 of the chip concerned: a spurious interrupt.
    pub fn acknowledge(&mut self) -> u8 {
        self.sync();
        let vector = match self.master.requested() {
            Some(2) => {
                self.master.acknowledge(2);
                match self.slave.requested() {
                    Some(irq) => {
                        self.slave.acknowledge(irq);
                        self.slave.vector_base + irq
                    }
                    None => {
                        self.stats.spurious += 1;
                        self.slave.vector_base + 7
                    }
                }
            }
            Some(irq) => {
                self.master.acknowledge(irq);
                self.master.vector_base + irq
            }
            None => {
                self.stats.spurious += 1;
                self.master.vector_base + 7
            }
        };
        self.stats.acknowledged += 1;
        self.sync();
        vector
    }

    fn chip(&mut self, slave: bool) -> &mut Pic8259 {
        if slave {
            &mut self.slave
        } else {
            &mut self.master
        }
    }

    /// Poll command read: acknowledges the highest request of that chip and returns
    /// 0x80 | level, or 0 when nothing is pending.
    fn poll_read(&mut self, slave: bool) -> u8 {
        self.sync();
        let chip = self.chip(slave);
        chip.poll = false;
        match chip.requested() {
            Some(irq) => {
                chip.acknowledge(irq);
                if slave {
                    // The cascade request on the master is answered with it.
                    self.master.isr &= !(1 << 2);
                    self.master.irr &= !(1 << 2);
                }
                self.sync();
                0x80 | irq
            }
            None => 0,
        }
    }

    fn read_port(&mut self, slave: bool, reg: u64) -> u8 {
        if self.chip(slave).poll {
            return self.poll_read(slave);
        }
        self.sync();
        let chip = self.chip(slave);
        match reg {
            0 if chip.read_isr => chip.isr,
            0 => chip.irr,
            _ => chip.imr,
        }
    }

    fn write_port(&mut self, slave: bool, reg: u64, val: u8) {
        self.sync();
        let chip = self.chip(slave);
        if reg == 0 {
            chip.write_command(val);
        } else {
            chip.write_data(val);
        }
        self.sync();
    }
}

/// The PIC pair's port view: registered at 0x20 (2 ports), 0xA0 (2 ports) and ELCR 0x4D0
/// (2 ports) through [`PicPort`] handles that share the pair.
pub struct PicPort {
    pic: Rc<std::cell::RefCell<PicPair>>,
    kind: PicPortKind,
}

#[derive(Clone, Copy, Debug)]
pub enum PicPortKind {
    Master,
    Slave,
    Elcr,
}

impl PicPort {
    pub fn new(pic: Rc<std::cell::RefCell<PicPair>>, kind: PicPortKind) -> Self {
        Self { pic, kind }
    }
}

impl BusDevice for PicPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut pic = self.pic.borrow_mut();
        data[0] = match self.kind {
            PicPortKind::Master => pic.read_port(false, offset),
            PicPortKind::Slave => pic.read_port(true, offset),
            PicPortKind::Elcr => pic.chip(offset == 1).elcr,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut pic = self.pic.borrow_mut();
        match self.kind {
            PicPortKind::Master => pic.write_port(false, offset, data[0]),
            PicPortKind::Slave => pic.write_port(true, offset, data[0]),
            PicPortKind::Elcr => {
                let chip = pic.chip(offset == 1);
                chip.elcr = data[0] & chip.elcr_mask;
                pic.sync();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqLine;

    fn init(pic: &mut PicPair, aeoi: bool) {
        // The sequence Linux and BIOSes use: edge, cascade, ICW4; vectors 0x20/0x28.
        pic.write_port(false, 0, 0x11);
        pic.write_port(false, 1, 0x20);
        pic.write_port(false, 1, 0x04);
        pic.write_port(false, 1, if aeoi { 0x03 } else { 0x01 });
        pic.write_port(true, 0, 0x11);
        pic.write_port(true, 1, 0x28);
        pic.write_port(true, 1, 0x02);
        pic.write_port(true, 1, 0x01);
        pic.write_port(false, 1, 0x00);
        pic.write_port(true, 1, 0x00);
    }

    fn setup() -> (PicPair, Vec<IrqLine>) {
        let wires = IrqWires::new();
        let lines = (0..16).map(|i| wires.line(i)).collect();
        let mut pic = PicPair::new(wires);
        init(&mut pic, false);
        (pic, lines)
    }

    #[test]
    fn priority_order_and_eoi() {
        let (mut pic, l) = setup();
        l[4].pulse();
        l[1].pulse();
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x21);
        // IRQ4 is lower priority than the in-service IRQ1: held back until EOI.
        assert!(!pic.has_interrupt());
        pic.write_port(false, 0, 0x20); // non-specific EOI
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x24);
        // A higher-priority request nests over an in-service lower one.
        l[0].pulse();
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x20);
        pic.write_port(false, 0, 0x08 | 0x03); // OCW3: read ISR
        assert_eq!(pic.read_port(false, 0), 0x11);
        pic.write_port(false, 0, 0x60); // specific EOI for IRQ0
        pic.write_port(false, 0, 0x64); // specific EOI for IRQ4
        assert_eq!(pic.read_port(false, 0), 0x00);
    }

    #[test]
    fn masking_holds_requests_in_irr() {
        let (mut pic, l) = setup();
        pic.write_port(false, 1, 0x08); // mask IRQ3
        l[3].pulse();
        assert!(!pic.has_interrupt());
        pic.write_port(false, 0, 0x0A); // OCW3: read IRR
        assert_eq!(pic.read_port(false, 0), 0x08);
        assert_eq!(pic.read_port(false, 1), 0x08);
        pic.write_port(false, 1, 0x00);
        assert_eq!(pic.acknowledge(), 0x23);
    }

    #[test]
    fn cascade_through_slave() {
        let (mut pic, l) = setup();
        l[14].pulse();
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x2E);
        pic.write_port(true, 0, 0x0B);
        pic.write_port(false, 0, 0x0B);
        assert_eq!(pic.read_port(true, 0), 0x40);
        assert_eq!(pic.read_port(false, 0), 0x04);
        pic.write_port(true, 0, 0x20);
        pic.write_port(false, 0, 0x20);
        assert_eq!(pic.read_port(true, 0), 0);
        assert_eq!(pic.read_port(false, 0), 0);
        // Masking IRQ2 on the master masks the whole slave.
        pic.write_port(false, 1, 0x04);
        l[8].pulse();
        assert!(!pic.has_interrupt());
        pic.write_port(false, 1, 0x00);
        assert_eq!(pic.acknowledge(), 0x28);
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let wires = IrqWires::new();
        let l = wires.line(5);
        let mut pic = PicPair::new(wires);
        init(&mut pic, true);
        l.pulse();
        assert_eq!(pic.acknowledge(), 0x25);
        pic.write_port(false, 0, 0x0B);
        assert_eq!(pic.read_port(false, 0), 0);
        l.pulse();
        assert!(pic.has_interrupt());
    }

    #[test]
    fn spurious_irq7_when_request_withdrawn() {
        let (mut pic, l) = setup();
        pic.write_port(false, 0, 0x0B);
        // A level-triggered line that drops before INTA.
        pic.master.elcr = 0x20;
        l[5].set_level(true);
        assert!(pic.has_interrupt());
        l[5].set_level(false);
        assert_eq!(pic.acknowledge(), 0x27);
        assert_eq!(pic.stats().spurious, 1);
        // A spurious IRQ7 sets no ISR bit.
        assert_eq!(pic.read_port(false, 0), 0);
        // Slave spurious: IRQ15's vector, and the master's IR2 goes in service.
        pic.slave.elcr = 0x08;
        l[11].set_level(true);
        assert!(pic.has_interrupt());
        l[11].set_level(false);
        assert_eq!(pic.acknowledge(), 0x2F);
        assert_eq!(pic.read_port(false, 0), 0x04);
    }

    #[test]
    fn level_triggered_stays_pending_until_line_drops() {
        let wires = IrqWires::new();
        let l: Vec<IrqLine> = (0..16).map(|i| wires.line(i)).collect();
        let shared = Rc::new(std::cell::RefCell::new(PicPair::new(wires)));
        init(&mut shared.borrow_mut(), false);
        let mut elcr = PicPort::new(shared.clone(), PicPortKind::Elcr);
        elcr.write(1, &[0xFF]);
        let mut d = [0];
        elcr.read(1, &mut d);
        assert_eq!(d[0], 0xDE, "ELCR2 bits for IRQ8/IRQ13 are read-only zero");
        elcr.write(0, &[0x08]);
        let mut pic = shared.borrow_mut();
        l[3].set_level(true);
        assert_eq!(pic.acknowledge(), 0x23);
        pic.write_port(false, 0, 0x20);
        assert!(pic.has_interrupt(), "level still high");
        l[3].set_level(false);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn rotation_and_poll() {
        let (mut pic, l) = setup();
        pic.write_port(false, 0, 0xC0 | 4); // set priority: IRQ4 lowest, IRQ5 highest
        l[3].pulse();
        l[6].pulse();
        assert_eq!(pic.acknowledge(), 0x26);
        pic.write_port(false, 0, 0x20);
        // Poll mode: OCW3 with P set, then a read acknowledges.
        pic.write_port(false, 0, 0x0C);
        assert_eq!(pic.read_port(false, 0), 0x83);
        pic.write_port(false, 0, 0x0C);
        assert_eq!(pic.read_port(false, 0), 0x00);
        // Rotate on non-specific EOI: the serviced line becomes lowest.
        pic.write_port(false, 0, 0x20);
        pic.write_port(false, 0, 0xC7); // back to IRQ0 highest
        l[1].pulse();
        assert_eq!(pic.acknowledge(), 0x21);
        pic.write_port(false, 0, 0xA0); // rotate on non-specific EOI
        l[0].pulse();
        l[3].pulse();
        assert_eq!(pic.acknowledge(), 0x23, "IRQ3 now outranks IRQ0");
    }

    #[test]
    fn special_mask_mode_allows_lower_priorities() {
        let (mut pic, l) = setup();
        l[1].pulse();
        assert_eq!(pic.acknowledge(), 0x21);
        pic.write_port(false, 1, 0x02); // mask the in-service IRQ1
        pic.write_port(false, 0, 0x68); // OCW3: set special mask
        l[6].pulse();
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x26);
    }
}
