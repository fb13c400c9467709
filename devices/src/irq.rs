//! Interrupt request wires: the ISA bus's 16 IRQs, the I/O APIC's further inputs (GSIs
//! 16-23), and the HPET's two legacy replacement outputs. Devices drive a wire's level;
//! the interrupt controllers sample the wires, and latched rising edges are not lost
//! between samples (a PIT pulse that rises and falls between two samples still counts, as
//! on the 8259A's edge-triggered inputs).
//!
//! In the HPET's legacy replacement mode its timer 0 drives IRQ0 in place of the PIT and
//! its timer 1 IRQ8 in place of the RTC, as the chipset's routing does on a PC.

use std::cell::Cell;
use std::rc::Rc;

pub const ISA_IRQS: usize = 16;
/// The I/O APIC's inputs: the ISA IRQs (IRQ0 on pin 2) and GSIs 16-23.
pub const GSIS: usize = 24;
/// The wires the HPET drives in legacy replacement mode (they reach the controllers as
/// IRQ0 and IRQ8 while that mode is on, and nowhere otherwise).
pub const HPET_LEGACY_IRQ0: u8 = 24;
pub const HPET_LEGACY_IRQ8: u8 = 25;
/// The PIIX3's PIRQA-D, on which PCI functions raise INTx: each reaches the ISA IRQ its
/// route register names, or nothing while routing is disabled (bit 7).
pub const PIRQ_BASE: u8 = 26;
const SOURCES: u8 = 30;

#[derive(Debug)]
pub struct IrqWires {
    /// The level each source drives, bit n for wire n.
    level: Cell<u32>,
    /// Rising edges not yet taken by the PIC, and by the I/O APIC: each input latches its
    /// own.
    rising: Cell<u32>,
    rising_ioapic: Cell<u32>,
    legacy_replacement: Cell<bool>,
    /// The PIRQ route registers.
    pirq_route: Cell<[u8; 4]>,
    /// Per PIRQ, the functions asserting it (a bit each): the lines are shared, wired-OR.
    pirq_sources: [Cell<u32>; 4],
    /// Bumped on every change of any wire, so a controller can skip re-sampling.
    generation: Cell<u64>,
}

impl IrqWires {
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            level: Cell::default(),
            rising: Cell::default(),
            rising_ioapic: Cell::default(),
            legacy_replacement: Cell::default(),
            pirq_route: Cell::new([0x80; 4]),
            pirq_sources: Default::default(),
            generation: Cell::default(),
        })
    }

    pub fn line(self: &Rc<Self>, irq: u8) -> IrqLine {
        assert!(irq < SOURCES, "IRQ wire {irq} out of range");
        IrqLine {
            wires: self.clone(),
            mask: 1 << irq,
        }
    }

    /// What the controllers see of the sources: IRQ0 and IRQ8 from the PIT and the RTC,
    /// or in legacy replacement mode from the HPET's timers 0 and 1.
    fn seen(&self, sources: u32) -> u32 {
        const GSI_MASK: u32 = (1 << GSIS) - 1;
        let mut pci = 0;
        for (i, route) in self.pirq_route.get().iter().enumerate() {
            if sources >> (PIRQ_BASE as usize + i) & 1 != 0 && *route & 0x80 == 0 {
                pci |= 1 << (route & 0x0F);
            }
        }
        let sources = sources | pci;
        if !self.legacy_replacement.get() {
            return sources & GSI_MASK;
        }
        let hpet0 = (sources >> HPET_LEGACY_IRQ0) & 1;
        let hpet8 = (sources >> HPET_LEGACY_IRQ8) & 1;
        (sources & GSI_MASK & !(1 | 1 << 8)) | hpet0 | hpet8 << 8
    }

    /// The levels the controllers see, bit n for IRQ/GSI n.
    pub fn levels(&self) -> u32 {
        self.seen(self.level.get())
    }

    /// Rising edges of the ISA IRQs seen since the PIC's last call.
    pub fn take_rising(&self) -> u16 {
        self.seen(self.rising.replace(0)) as u16
    }

    /// Rising edges of the GSIs seen since the I/O APIC's last call.
    pub fn take_rising_ioapic(&self) -> u32 {
        self.seen(self.rising_ioapic.replace(0))
    }

    /// True if any wire has risen since a controller last sampled.
    pub fn has_news(&self) -> bool {
        self.rising.get() | self.rising_ioapic.get() != 0
    }

    /// Changes whenever any wire's level changes.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// A PIRQ line (0-3) for the INTx output of a PCI function, which asserts it with
    /// `bit` among the others sharing it.
    pub fn pirq_line(self: &Rc<Self>, pirq: u8, bit: u32) -> SharedIrqLine {
        SharedIrqLine {
            line: self.line(PIRQ_BASE + (pirq & 3)),
            pirq: (pirq & 3) as usize,
            bit: 1 << bit,
        }
    }

    /// PIRQ route register `pirq` (PIIX3 configuration 0x60-0x63) now holds `route`.
    pub fn set_pirq_route(&self, pirq: u8, route: u8) {
        let mut r = self.pirq_route.get();
        if r[pirq as usize & 3] != route {
            r[pirq as usize & 3] = route;
            self.pirq_route.set(r);
            self.generation.set(self.generation.get() + 1);
        }
    }

    /// The HPET's LEG_RT_CNF.
    pub fn set_legacy_replacement(&self, on: bool) {
        if self.legacy_replacement.replace(on) != on {
            self.generation.set(self.generation.get() + 1);
        }
    }
}

/// One wire, held by the device that drives it.
#[derive(Clone, Debug)]
pub struct IrqLine {
    wires: Rc<IrqWires>,
    mask: u32,
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
                let io = &self.wires.rising_ioapic;
                io.set(io.get() | self.mask);
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

/// A PCI function's INTx output on a PIRQ line it may share: the line is high while any
/// of its functions asserts it.
#[derive(Clone, Debug)]
pub struct SharedIrqLine {
    line: IrqLine,
    pirq: usize,
    bit: u32,
}

impl SharedIrqLine {
    pub fn set_level(&self, high: bool) {
        let sources = &self.line.wires.pirq_sources[self.pirq];
        let v = if high {
            sources.get() | self.bit
        } else {
            sources.get() & !self.bit
        };
        sources.set(v);
        self.line.set_level(v != 0);
    }
}
