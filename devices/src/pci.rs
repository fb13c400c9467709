//! PCI configuration mechanism #1 (CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC-0xCFF)
//! with the two functions every PC guest expects on bus 0: an Intel 82441FX (i440FX) host
//! bridge at 00:00.0 and a PIIX3 PCI-to-ISA bridge at 00:01.0. Absent functions read
//! all-ones. The PIIX3's reset control register (0xCF9) shares the port range.

use std::cell::RefCell;
use std::rc::Rc;

use crate::bus::BusDevice;
use crate::irq::{IrqWires, SharedIrqLine};
use crate::signals::{SystemEvent, SystemSignals};

/// A function's 256-byte configuration space with a per-byte write mask.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; 256],
    wmask: [u8; 256],
    bars: [Option<Bar>; 6],
    /// Where the next capability goes, and the last one's next pointer (0x34 while there
    /// is none).
    cap_free: usize,
    cap_link: usize,
}

impl ConfigSpace {
    pub fn new(vendor: u16, device: u16, class: u32, header_type: u8) -> Self {
        let mut c = Self {
            bytes: [0; 256],
            wmask: [0; 256],
            bars: [None; 6],
            cap_free: FIRST_CAPABILITY,
            cap_link: CAPABILITIES_POINTER,
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

/// What a base address register decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory space.
    Memory,
    Io,
}

#[derive(Clone, Copy, Debug)]
struct Bar {
    kind: BarKind,
    size: u32,
}

const COMMAND_IO: u8 = 0x01;
const COMMAND_MEMORY: u8 = 0x02;
const COMMAND_BUS_MASTER: u8 = 0x04;
const STATUS_CAPABILITIES: u8 = 0x10;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3C;
const INTERRUPT_PIN: usize = 0x3D;
/// Where a function's capability list starts (after the type 0 header).
const FIRST_CAPABILITY: usize = 0x40;

impl ConfigSpace {
    /// Declares BAR `index` (0-5): `size` bytes (a power of two) of `kind` space. Its
    /// address bits below the size read as zero, as a firmware sizing it expects.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u32) {
        debug_assert!(index < 6 && size.is_power_of_two());
        let min = match kind {
            BarKind::Memory => 16,
            BarKind::Io => 4,
        };
        let mask = !(size.max(min) - 1);
        let off = 0x10 + 4 * index;
        self.bytes[off..off + 4].copy_from_slice(&u32::from(kind == BarKind::Io).to_le_bytes());
        self.wmask[off..off + 4].copy_from_slice(&mask.to_le_bytes());
        self.bars[index] = Some(Bar {
            kind,
            size: size.max(min),
        });
    }

    /// The address BAR `index` decodes at, if the command register enables its space.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let enable = match bar.kind {
            BarKind::Memory => COMMAND_MEMORY,
            BarKind::Io => COMMAND_IO,
        };
        if self.bytes[4] & enable == 0 {
            return None;
        }
        let off = 0x10 + 4 * index;
        let raw = u32::from_le_bytes([
            self.bytes[off],
            self.bytes[off + 1],
            self.bytes[off + 2],
            self.bytes[off + 3],
        ]);
        let addr = raw & !(bar.size - 1);
        // Zero is unassigned; a BAR left all ones (sized, not yet placed) decodes nothing.
        (addr != 0 && addr | (bar.size - 1) != u32::MAX).then_some(u64::from(addr))
    }

    /// Whether the function may master the bus (reach guest memory by itself).
    pub fn bus_master(&self) -> bool {
        self.bytes[4] & COMMAND_BUS_MASTER != 0
    }

    /// The function raises INTx on pin `pin` (1 = INTA#); the interrupt line register is
    /// the firmware's to fill in.
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.bytes[INTERRUPT_PIN] = pin;
        self.wmask[INTERRUPT_LINE] = 0xFF;
    }

    pub fn interrupt_pin(&self) -> u8 {
        self.bytes[INTERRUPT_PIN]
    }

    /// Appends a capability with ID `id` and the bytes after its ID and next pointer;
    /// returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> usize {
        let at = self.cap_free;
        assert!(at + 2 + body.len() <= 256, "capabilities overflow");
        self.bytes[self.cap_link] = at as u8;
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..at + 2 + body.len()].copy_from_slice(body);
        self.cap_link = at + 1;
        self.cap_free = (at + 2 + body.len()).next_multiple_of(4);
        self.bytes[6] |= STATUS_CAPABILITIES;
        at
    }

    pub fn get(&self, offset: usize) -> u8 {
        self.bytes[offset]
    }

    pub fn get_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    /// Writes as the firmware does (through the write mask).
    pub fn write_u32(&mut self, offset: usize, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }
}

/// A PCI function: its configuration space and what its BARs decode.
pub trait PciFunction {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// After the guest wrote `len` bytes of configuration space at `offset` (a device
    /// with a capability whose register acts on a write looks here).
    fn config_written(&mut self, _offset: usize, _len: usize) {}
    /// Reads configuration space; a function whose registers there act on a read (a
    /// window into a BAR) overrides it.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

pub type SharedFunction = Rc<RefCell<dyn PciFunction>>;

/// A function with nothing behind its configuration space (the bridges).
struct Plain(ConfigSpace);

impl PciFunction for Plain {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }
}

struct Slot {
    dev: u8,
    func: u8,
    function: SharedFunction,
}

/// The PIIX3's PIRQ route registers, in the ISA bridge's configuration space.
const PIRQ_ROUTE: usize = 0x60;

pub struct PciHost {
    address: u32,
    functions: Vec<Slot>,
    reset_control: u8,
    signals: Rc<SystemSignals>,
    wires: Rc<IrqWires>,
    /// Bits handed to INTx sources so far (each asserts its PIRQ with a bit of its own).
    intx_sources: u32,
    /// The host bridge's PAM registers were written since [`PciHost::take_pam`].
    pam_written: bool,
}

impl PciHost {
    pub fn new(signals: Rc<SystemSignals>, wires: Rc<IrqWires>) -> Self {
        // i440FX: vendor 8086, device 1237, host bridge (06/00), revision 02.
        let mut host = ConfigSpace::new(0x8086, 0x1237, 0x0600_0002, 0x00);
        // PAM0-6 (0x59-0x5F): the machine applies them to the BIOS area (shadow RAM);
        // SMRAM (0x72) holds what the BIOS writes (there is no SMM).
        host.set_writable(PAM0, 7);
        host.set_writable(0x72, 1);
        // PIIX3 function 0: vendor 8086, device 7000, ISA bridge (06/01), multi-function.
        let mut isa = ConfigSpace::new(0x8086, 0x7000, 0x0601_0000, 0x80);
        for pirq in PIRQ_ROUTE..PIRQ_ROUTE + 4 {
            isa.set(pirq, 0x80); // PIRQA-D routing disabled
        }
        isa.set_writable(PIRQ_ROUTE, 4);
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
        let plain = |c| -> SharedFunction { Rc::new(RefCell::new(Plain(c))) };
        Self {
            address: 0,
            functions: vec![
                Slot {
                    dev: 0,
                    func: 0,
                    function: plain(host),
                },
                Slot {
                    dev: 1,
                    func: 0,
                    function: plain(isa),
                },
            ],
            reset_control: 0,
            signals,
            wires,
            intx_sources: 0,
            pam_written: false,
        }
    }

    /// Plugs `function` in at `dev`.`func`.
    pub fn add(&mut self, dev: u8, func: u8, function: SharedFunction) {
        self.functions.push(Slot {
            dev,
            func,
            function,
        });
    }

    /// The PIRQ line (0-3: PIRQA-D) the PIIX3 wires pin `pin` (1-4: INTA#-INTD#) of slot
    /// `dev` to: the board's swizzle, which QEMU's i440FX and SeaBIOS also use.
    pub fn pirq_of(dev: u8, pin: u8) -> u8 {
        (dev + pin).wrapping_sub(2) & 3
    }

    /// A wire for pin `pin` of slot `dev`, shared with the other functions on its PIRQ.
    pub fn intx_line(&mut self, dev: u8, pin: u8) -> SharedIrqLine {
        let bit = self.intx_sources.trailing_ones();
        self.intx_sources |= 1 << bit;
        self.wires.pirq_line(Self::pirq_of(dev, pin), bit)
    }

    /// What a PC firmware does before it boots an OS: routes PIRQA-D to ISA IRQs 10, 10,
    /// 11 and 11 (as SeaBIOS does on this chipset), places every BAR (memory from
    /// `mem_base` up, I/O from `io_base` up, each aligned to its size), fills in the
    /// interrupt line registers and enables decoding and bus mastering. Gantry does this
    /// itself when it boots a kernel directly; with `--bios` the firmware does.
    pub fn assign_resources(&mut self, mut mem_base: u32, mut io_base: u32) {
        for (i, irq) in PIRQ_ISA_IRQS.iter().enumerate() {
            self.write_config(1, 0, PIRQ_ROUTE + i, &[*irq]);
        }
        for slot in &self.functions {
            let mut f = slot.function.borrow_mut();
            let c = f.config_mut();
            let mut command = 0;
            for i in 0..6 {
                let Some(bar) = c.bars[i] else { continue };
                let next = match bar.kind {
                    BarKind::Memory => &mut mem_base,
                    BarKind::Io => &mut io_base,
                };
                let at = next.next_multiple_of(bar.size);
                c.write_u32(0x10 + 4 * i, at);
                *next = at + bar.size;
                command |= match bar.kind {
                    BarKind::Memory => COMMAND_MEMORY,
                    BarKind::Io => COMMAND_IO,
                } | COMMAND_BUS_MASTER;
            }
            let pin = c.interrupt_pin();
            if pin != 0 {
                let pirq = Self::pirq_of(slot.dev, pin);
                c.write(INTERRUPT_LINE, &[PIRQ_ISA_IRQS[pirq as usize]]);
            }
            let old = c.get(4);
            c.write(4, &[old | command]);
        }
    }

    /// The ISA IRQ a function's INTx reaches as firmware routed it, for the ACPI tables
    /// of a directly booted kernel.
    pub fn routed_irq(dev: u8, pin: u8) -> u8 {
        PIRQ_ISA_IRQS[Self::pirq_of(dev, pin) as usize]
    }

    /// The function whose BAR of `kind` decodes `addr`, with the BAR and the offset in it.
    pub fn bar_at(&self, kind: BarKind, addr: u64) -> Option<(SharedFunction, usize, u64)> {
        self.functions.iter().find_map(|s| {
            let f = s.function.borrow();
            let c = f.config();
            (0..6).find_map(|i| {
                let bar = c.bars[i].filter(|b| b.kind == kind)?;
                let base = c.bar_address(i)?;
                (addr >= base && addr < base + u64::from(bar.size))
                    .then(|| (s.function.clone(), i, addr - base))
            })
        })
    }

    fn write_config(&mut self, dev: u8, func: u8, reg: usize, data: &[u8]) {
        let Some(slot) = self
            .functions
            .iter()
            .find(|s| s.dev == dev && s.func == func)
        else {
            return;
        };
        let mut f = slot.function.borrow_mut();
        f.config_mut().write(reg, data);
        f.config_written(reg, data.len());
        if (dev, func) == (0, 0) && reg < PAM0 + 7 && reg + data.len() > PAM0 {
            self.pam_written = true;
        }
        if (dev, func) == (1, 0) {
            let c = f.config();
            for pirq in 0..4u8 {
                self.wires
                    .set_pirq_route(pirq, c.get(PIRQ_ROUTE + pirq as usize));
            }
        }
    }

    /// The selected function and register of CONFIG_ADDRESS, if it names bus 0.
    fn selected(&self) -> Option<(u8, u8, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xFF != 0 {
            return None;
        }
        let dev = ((a >> 11) & 0x1F) as u8;
        let func = ((a >> 8) & 7) as u8;
        let reg = (a & 0xFC) as usize;
        Some((dev, func, reg))
    }

    fn function(&self, dev: u8, func: u8) -> Option<&SharedFunction> {
        self.functions
            .iter()
            .find(|s| s.dev == dev && s.func == func)
            .map(|s| &s.function)
    }
}

/// The i440FX's PAM0-PAM6: what 0xC0000-0xFFFFF shows (ROM or shadow RAM).
const PAM0: usize = 0x59;

impl PciHost {
    /// PAM0-PAM6 if the guest wrote them since the last call: the machine then remaps the
    /// BIOS area.
    pub fn take_pam(&mut self) -> Option<[u8; 7]> {
        if !std::mem::take(&mut self.pam_written) {
            return None;
        }
        let f = self.function(0, 0)?.borrow();
        let mut pam = [0u8; 7];
        f.config().read(PAM0, &mut pam);
        Some(pam)
    }
}

/// The ISA IRQs firmware routes PIRQA-D to.
const PIRQ_ISA_IRQS: [u8; 4] = [10, 10, 11, 11];

impl BusDevice for PciHost {
    /// Registered at 0xCF8 with length 8.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (1, 1) => data[0] = self.reset_control,
            (4..=7, _) => match self
                .selected()
                .and_then(|(d, f, reg)| Some((self.function(d, f)?, reg)))
            {
                Some((function, reg)) => function
                    .borrow_mut()
                    .config_read(reg + (offset as usize - 4), data),
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
                if let Some((dev, func, reg)) = self.selected() {
                    self.write_config(dev, func, reg + (offset as usize - 4), data);
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
        let mut h = PciHost::new(Rc::new(SystemSignals::default()), IrqWires::new());
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
        let mut h = PciHost::new(Rc::new(SystemSignals::default()), IrqWires::new());
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
        let mut h = PciHost::new(s.clone(), IrqWires::new());
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

    struct Dev(ConfigSpace);

    impl PciFunction for Dev {
        fn config(&self) -> &ConfigSpace {
            &self.0
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.0
        }
    }

    /// A BAR sizes as firmware probes it (all ones in, the size mask out), decodes once
    /// placed and enabled; the firmware's assignment routes PIRQs and fills in the
    /// interrupt line; a function's INTx reaches the ISA IRQ its PIRQ is routed to.
    #[test]
    fn bars_size_place_and_route() {
        let wires = IrqWires::new();
        let mut h = PciHost::new(Rc::new(SystemSignals::default()), wires.clone());
        let mut c = ConfigSpace::new(0x1AF4, 0x1042, 0x0100_0001, 0);
        c.add_bar(0, BarKind::Memory, 0x4000);
        c.add_bar(2, BarKind::Io, 0x20);
        c.set_interrupt_pin(1);
        h.add(3, 0, Rc::new(RefCell::new(Dev(c))));
        let line = h.intx_line(3, 1);
        h.write(0, &(0x8000_0000u32 | 3 << 11 | 0x10).to_le_bytes());
        h.write(4, &u32::MAX.to_le_bytes());
        assert_eq!(cfg_read(&mut h, 3, 0, 0x10), 0xFFFF_C000);
        assert_eq!(
            cfg_read(&mut h, 3, 0, 0x18) & 0xFFFF,
            0x0001,
            "I/O BAR flag"
        );
        assert!(
            h.bar_at(BarKind::Memory, 0xFFFF_C000).is_none(),
            "sizing is no address"
        );

        h.assign_resources(0xFE00_0000, 0xC000);
        assert_eq!(cfg_read(&mut h, 3, 0, 0x10), 0xFE00_0000);
        assert_eq!(cfg_read(&mut h, 3, 0, 0x18), 0xC001);
        assert_eq!(cfg_read(&mut h, 3, 0, 4) & 7, 7, "I/O, memory, bus master");
        // Slot 3's INTA# is on PIRQC, which firmware routes to IRQ 11.
        assert_eq!(cfg_read(&mut h, 3, 0, 0x3C) & 0xFFFF, 0x010B);
        assert_eq!(cfg_read(&mut h, 1, 0, 0x60), 0x0B0B_0A0A);
        let (_, bar, off) = h.bar_at(BarKind::Memory, 0xFE00_3004).unwrap();
        assert_eq!((bar, off), (0, 0x3004));
        assert_eq!(h.bar_at(BarKind::Io, 0xC01F).map(|f| f.1), Some(2));

        line.set_level(true);
        assert_eq!(wires.levels(), 1 << 11);
        assert_eq!(wires.take_rising(), 1 << 11);
        // Routing disabled: the line reaches nothing.
        h.write(0, &(0x8000_0800u32 | 0x60).to_le_bytes());
        h.write(6, &[0x80]);
        assert_eq!(wires.levels(), 0);
        line.set_level(false);
    }
}
