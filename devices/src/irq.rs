//! Interrupt request wires of the ISA bus. Devices drive a wire's level; the interrupt
//! controller samples the wires, and latched rising edges are not lost between samples
//! (a PIT pulse that rises and falls between two samples still counts, as on the 8259A's
//! edge-triggered inputs).

use std::cell::Cell;
use std::rc::Rc;

pub const ISA_IRQS: usize = 16;

#[derive(Default, Debug)]
pub struct IrqWires {
    level: Cell<u16>,
    rising: Cell<u16>,
    /// Bumped on every change of any wire, so a controller can skip re-sampling.
    generation: Cell<u64>,
}

impl IrqWires {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    pub fn line(self: &Rc<Self>, irq: u8) -> IrqLine {
        assert!((irq as usize) < ISA_IRQS, "ISA IRQ {irq} out of range");
        IrqLine {
            wires: self.clone(),
            mask: 1 << irq,
        }
    }

    pub fn levels(&self) -> u16 {
        self.level.get()
    }

    /// Rising edges seen since the last call.
    pub fn take_rising(&self) -> u16 {
        self.rising.replace(0)
    }

    /// True if any wire has risen since the controller last sampled.
    pub fn has_news(&self) -> bool {
        self.rising.get() != 0
    }

    /// Changes whenever any wire's level changes.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }
}

/// One wire, held by the device that drives it.
#[derive(Clone, Debug)]
pub struct IrqLine {
    wires: Rc<IrqWires>,
    mask: u16,
}

impl IrqLine {
    pub fn set_level(&self, high: bool) {
        let old = self.wires.level.get();
        if (old & self.mask != 0) != high {
            self.wires.generation.set(self.wires.generation.get() + 1);
        }
        if high {
            if old & self.mask == 0 {
                self.wires.rising.set(self.wires.rising.get() | self.mask);
            }
            self.wires.level.set(old | self.mask);
        } else {
            self.wires.level.set(old & !self.mask);
        }
    }

    /// A low-high-low pulse: one edge for an edge-triggered input.
    pub fn pulse(&self) {
        self.set_level(false);
        self.set_level(true);
        self.set_level(false);
    }

    pub fn is_high(&self) -> bool {
        self.wires.level.get() & self.mask != 0
    }
}
