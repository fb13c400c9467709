//! The PC board: the port and MMIO buses with the devices wired to them, the IRQ wires into
//! the PIC, the timer queue, and the host console. Both CPUs (KVM and the emulated one)
//! drive it through port/MMIO accesses, interrupt acknowledge and [`Board::service`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use gantry_devices::acpi_pm::{AcpiPm, PM_BASE, PM_LEN};
use gantry_devices::apic_bus::{DeliveryMode, Destination, Message, Outgoing};
use gantry_devices::bus::{Bus, BusError, SharedDevice};
use gantry_devices::clock::Clock;
use gantry_devices::debug_ports::{DebugCon, DebugExit, PostCodes};
use gantry_devices::dma::{DmaLog, DmaMemory};
use gantry_devices::fw_cfg::{self, FwCfg};
use gantry_devices::hpet::{Hpet, HPET_BASE, HPET_LEN};
use gantry_devices::i8042::I8042;
use gantry_devices::ide::{self, Device, Drive, IdeChannel, Piix3Ide};
use gantry_devices::ioapic::{IoApic, IOAPIC_BASE, IOAPIC_LEN};
use gantry_devices::irq::IrqWires;
use gantry_devices::lapic::{Acknowledged, LocalApic, StartupSignals, LAPIC_PAGE};
use gantry_devices::msix::MsiOutbox;
use gantry_devices::pci::{BarKind, PciHost};
use gantry_devices::pic::{PicPair, PicPort, PicPortKind};
use gantry_devices::pit::{Pit, PORT61_OFFSET};
use gantry_devices::rtc::{CmosState, Rtc};
use gantry_devices::signals::{SystemEvent, SystemSignals};
use gantry_devices::system_control::SystemControlA;
use gantry_devices::uart::Uart;
use gantry_devices::virtio::{blk::Blk, VirtioPci};
use gantry_devices::Timed;

use crate::console::{ConsoleInput, HostConsole, Wait};
use crate::layout::*;

pub const COM1_BASE: u16 = 0x3F8;
pub const COM1_IRQ: u8 = 4;
pub const DEBUG_EXIT_PORT: u16 = 0xF4;

/// Where COM1's output goes.
pub enum SerialSink {
    Stdout,
    File(std::fs::File),
    None,
}

impl SerialSink {
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(match self {
            SerialSink::Stdout => SerialSink::Stdout,
            SerialSink::File(f) => SerialSink::File(f.try_clone()?),
            SerialSink::None => SerialSink::None,
        })
    }
}

pub struct BoardConfig {
    pub ram_size: u64,
    pub serial: SerialSink,
    pub debugcon_port: Option<u16>,
    /// CMOS contents from before a reset (battery-backed on a real PC).
    pub cmos: Option<CmosState>,
    /// The disks on the IDE channels: primary master and slave, secondary master and
    /// slave.
    pub ide: crate::drives::IdeImages,
    /// How many CPUs have a local APIC on this board, APIC IDs 0.. in order; with none
    /// (the instruction tests' bare board), there is no I/O APIC or HPET either and the
    /// PIC's INTR goes to the CPU.
    pub local_apics: u32,
    /// The virtio-blk disks, each a PCI function of its own.
    pub virtio: Vec<crate::drives::VirtioDisk>,
    /// Guest RAM for the devices that reach it (bus masters), and the log of what they
    /// wrote there; needed with any virtio disk.
    pub dma: Option<(Rc<DmaMemory>, Rc<DmaLog>)>,
    /// Firmware runs first (`--bios`) and sets up PCI itself; otherwise the board places
    /// the BARs and routes the interrupts as firmware would, before the kernel starts.
    pub firmware: bool,
    /// An empty ATAPI CD-ROM drive on the secondary master (where no disk is), as on
    /// QEMU's PC.
    pub empty_cdrom: bool,
    /// The BIOS's boot order, QEMU's `-boot` letters (c: the first hard disk, a: floppy,
    /// d: CD-ROM, n: network), kept in CMOS where SeaBIOS reads it.
    pub boot_order: String,
}

impl BoardConfig {
    /// A board with no disks, no console and no local APICs (the CPU tests' and the
    /// benchmarks').
    pub fn bare(ram_size: u64) -> Self {
        Self {
            ram_size,
            serial: SerialSink::None,
            debugcon_port: None,
            cmos: None,
            ide: Default::default(),
            local_apics: 0,
            virtio: Vec::new(),
            dma: None,
            firmware: false,
            empty_cdrom: false,
            boot_order: DEFAULT_BOOT_ORDER.to_string(),
        }
    }
}

/// QEMU's default: the hard disk, then floppy, then CD-ROM.
pub const DEFAULT_BOOT_ORDER: &str = "cad";

/// Checks a `--boot` order: up to three of QEMU's letters, none twice.
pub fn check_boot_order(order: &str) -> Result<(), String> {
    let mut seen = String::new();
    for c in order.chars() {
        if boot_device(c).is_none() {
            return Err(format!("'{c}' is not a boot device (a, c, d, n)"));
        }
        if seen.contains(c) {
            return Err(format!("'{c}' appears twice"));
        }
        seen.push(c);
    }
    if order.is_empty() || order.len() > 3 {
        return Err("one to three devices".into());
    }
    Ok(())
}

/// The Bochs BIOS's CMOS code for a boot device (SeaBIOS reads the same).
fn boot_device(c: char) -> Option<u8> {
    Some(match c {
        'a' => 1,
        'c' => 2,
        'd' => 3,
        'n' => 4,
        _ => return None,
    })
}

/// Where firmware places PCI memory BARs (in the hole below the I/O APIC; the DSDT's
/// window covers it) and I/O BARs.
const PCI_MEMORY_BASE: u32 = 0xFE00_0000;
const PCI_IO_BASE: u32 = 0xC000;

/// Why the board wants the run to end (or the machine to reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoardEvent {
    System(SystemEvent),
    /// The user pressed Ctrl-A x.
    Quit,
    /// SIGINT or SIGTERM arrived.
    Signal(i32),
}

#[derive(Default)]
struct PortStats {
    reads: u64,
    writes: u64,
}

pub struct Board {
    pio: Bus,
    mmio: Bus,
    pic: Rc<RefCell<PicPair>>,
    pit: Rc<RefCell<Pit>>,
    rtc: Rc<RefCell<Rtc>>,
    uart: Rc<RefCell<Uart>>,
    post: Rc<RefCell<PostCodes>>,
    wires: Rc<IrqWires>,
    signals: Rc<SystemSignals>,
    clock: Rc<dyn Clock>,
    console: HostConsole,
    pending_input: std::collections::VecDeque<u8>,
    quit: bool,
    /// The longest a halted CPU may sleep (a debugger polls its connection in between).
    max_wait: Option<Duration>,
    unknown_ports: BTreeMap<u16, PortStats>,
    unknown_mmio: u64,
    /// The PIC's INT output as last computed, valid while `int_valid`: it can change only
    /// when a wire changes or the guest touches a port (the PIC's among them).
    int_cached: bool,
    int_valid: bool,
    int_generation: u64,
    /// The local APICs, by CPU index, and the I/O APIC and the HPET (present with them).
    lapics: Vec<LocalApic>,
    ioapic: Option<Rc<RefCell<IoApic>>>,
    hpet: Option<Rc<RefCell<Hpet>>>,
    /// The CPU whose accesses and interrupt questions the board is answering.
    current: usize,
    /// The PIIX3's IDE channels, primary and secondary.
    ide: [Rc<RefCell<IdeChannel>>; 2],
    pci: Rc<RefCell<PciHost>>,
    virtio: Vec<Rc<RefCell<VirtioPci<Blk>>>>,
    /// MSI-X messages the PCI functions sent.
    msi: Rc<MsiOutbox>,
    fw_cfg: Rc<RefCell<FwCfg>>,
    dma_log: Option<Rc<DmaLog>>,
    /// PAM registers written and not yet applied to guest memory.
    pam: Option<[u8; 7]>,
}

/// What the firmware reads from fw_cfg: RAM size and map (etc/e820: RAM below the PCI
/// hole from 0, the rest above 4 GiB, as QEMU gives it), CPU counts, no boot menu, and
/// its serial console on COM1 (there is no VGA: SeaBIOS then writes what it would show
/// on the screen, and what boot loaders print through it, to the serial port).
fn fw_cfg_items(cfg: &BoardConfig) -> FwCfg {
    let mut f = FwCfg::new(cfg.dma.as_ref().map(|(m, _)| m.clone()));
    f.add(fw_cfg::RAM_SIZE, cfg.ram_size.to_le_bytes().to_vec());
    let cpus = cfg.local_apics.max(1) as u16;
    f.add(fw_cfg::NB_CPUS, cpus.to_le_bytes().to_vec());
    f.add(fw_cfg::MAX_CPUS, cpus.to_le_bytes().to_vec());
    let mut e820 = Vec::new();
    let mut entry = |addr: u64, len: u64| {
        e820.extend_from_slice(&addr.to_le_bytes());
        e820.extend_from_slice(&len.to_le_bytes());
        e820.extend_from_slice(&1u32.to_le_bytes()); // RAM
    };
    entry(0, cfg.ram_size.min(LOW_RAM_MAX));
    if cfg.ram_size > LOW_RAM_MAX {
        entry(FOUR_GIB, cfg.ram_size - LOW_RAM_MAX);
    }
    f.add_file("etc/e820", e820);
    f.add_file("etc/show-boot-menu", 0u16.to_le_bytes().to_vec());
    f.add_file("etc/sercon-port", COM1_BASE.to_le_bytes().to_vec());
    if cfg.firmware {
        // Booted directly, the loader writes the tables itself.
        use crate::boot::acpi;
        let (rsdp, tables, loader) = acpi::table_loader(cfg.local_apics);
        f.add_file(acpi::RSDP_FILE, rsdp);
        f.add_file(acpi::TABLES_FILE, tables);
        f.add_file(acpi::LOADER_FILE, loader);
    }
    f
}

impl Board {
    pub fn new(
        cfg: BoardConfig,
        clock: Rc<dyn Clock>,
        console: HostConsole,
    ) -> Result<Self, BusError> {
        let wires = IrqWires::new();
        let signals = Rc::new(SystemSignals::default());
        let fw_cfg = Rc::new(RefCell::new(fw_cfg_items(&cfg)));
        let pic = Rc::new(RefCell::new(PicPair::new(wires.clone())));
        let pit = Rc::new(RefCell::new(Pit::new(clock.clone(), wires.line(0))));
        let rtc = Rc::new(RefCell::new(Rtc::new(clock.clone(), wires.line(8))));
        if let Some(state) = &cfg.cmos {
            rtc.borrow_mut().restore(state);
        }
        let out: Box<dyn Write> = match cfg.serial {
            SerialSink::Stdout => Box::new(ReportFirstError::new(std::io::stdout())),
            SerialSink::File(f) => Box::new(ReportFirstError::new(std::io::BufWriter::new(f))),
            SerialSink::None => Box::new(std::io::sink()),
        };
        let uart = Rc::new(RefCell::new(Uart::new(wires.line(COM1_IRQ), out)));
        let post = Rc::new(RefCell::new(PostCodes::default()));

        let mut pio = Bus::new();
        let port = |kind| Rc::new(RefCell::new(PicPort::new(pic.clone(), kind)));
        pio.insert(0x20, 2, port(PicPortKind::Master))?;
        pio.insert(0xA0, 2, port(PicPortKind::Slave))?;
        pio.insert(0x4D0, 2, port(PicPortKind::Elcr))?;
        pio.insert(0x40, 4, pit.clone())?;
        pio.insert_at(0x61, 1, pit.clone(), PORT61_OFFSET)?;
        pio.insert(0x70, 2, rtc.clone())?;
        pio.insert(COM1_BASE as u64, 8, uart.clone())?;
        let kbd = Rc::new(RefCell::new(I8042::new(
            wires.line(1),
            wires.line(12),
            signals.clone(),
        )));
        pio.insert_at(0x60, 1, kbd.clone(), 0)?;
        pio.insert_at(0x64, 1, kbd, 4)?;
        pio.insert(0x80, 1, post.clone())?;
        pio.insert(
            0x92,
            1,
            Rc::new(RefCell::new(SystemControlA::new(signals.clone()))),
        )?;
        let mut pci = PciHost::new(signals.clone(), wires.clone());
        let [d0, d1, d2, d3] = cfg.ide.clone();
        let drive = |image: Option<gantry_devices::block::SharedImage>, n: u32| {
            image.map(|i| Device::Disk(Drive::new(i, &format!("QM{n:05}"))))
        };
        // The secondary master is an empty CD-ROM drive unless a disk took its place.
        let cdrom = match drive(d2, 3) {
            None if cfg.empty_cdrom => Some(Device::EmptyCdrom),
            d => d,
        };
        let channel = |master, slave, irq| {
            let c = IdeChannel::new(master, slave, wires.line(irq));
            let c = match &cfg.dma {
                Some((mem, _)) => c.with_dma(mem.clone()),
                None => c,
            };
            Rc::new(RefCell::new(c))
        };
        let ide = [
            channel(drive(d0, 1), drive(d1, 2), 14),
            channel(cdrom, drive(d3, 4), 15),
        ];
        pci.add(1, 1, Rc::new(RefCell::new(Piix3Ide::new(ide.clone()))));
        let msi = MsiOutbox::new();
        let mut virtio = Vec::new();
        if let Some((mem, _)) = &cfg.dma {
            for disk in &cfg.virtio {
                let slot = crate::drives::FIRST_VIRTIO_SLOT + disk.position as u8;
                let blk = Blk::new(
                    disk.image.clone(),
                    disk.read_only,
                    &format!("GANTRY-VD{}", disk.position),
                );
                let intx = pci.intx_line(slot, 1);
                let f = Rc::new(RefCell::new(VirtioPci::new(
                    blk,
                    mem.clone(),
                    intx,
                    msi.clone(),
                )));
                pci.add(slot, 0, f.clone());
                virtio.push(f);
            }
        }
        if !cfg.firmware {
            pci.assign_resources(PCI_MEMORY_BASE, PCI_IO_BASE);
        }
        let pci = Rc::new(RefCell::new(pci));
        pio.insert(0xCF8, 8, pci.clone())?;
        pio.insert(fw_cfg::PORT.into(), fw_cfg::PORT_LEN, fw_cfg.clone())?;
        for (channel, command, control) in [
            (&ide[0], ide::PRIMARY_COMMAND, ide::PRIMARY_CONTROL),
            (&ide[1], ide::SECONDARY_COMMAND, ide::SECONDARY_CONTROL),
        ] {
            pio.insert(command as u64, 8, channel.clone())?;
            pio.insert_at(control as u64, 1, channel.clone(), ide::CONTROL_OFFSET)?;
        }
        pio.insert(
            PM_BASE as u64,
            PM_LEN as u64,
            Rc::new(RefCell::new(AcpiPm::new(clock.clone(), signals.clone()))),
        )?;
        pio.insert(
            DEBUG_EXIT_PORT as u64,
            4,
            Rc::new(RefCell::new(DebugExit::new(signals.clone()))),
        )?;
        if let Some(p) = cfg.debugcon_port {
            let con: SharedDevice =
                Rc::new(RefCell::new(DebugCon::new(Box::new(std::io::stderr()))));
            pio.insert(p as u64, 1, con)?;
        }

        let lapics: Vec<LocalApic> = (0..cfg.local_apics)
            .map(|id| LocalApic::new(id, id == 0, clock.clone()))
            .collect();
        let mut mmio = Bus::new();
        let (ioapic, hpet) = if lapics.is_empty() {
            (None, None)
        } else {
            // The I/O APIC's ID follows the local APICs' (as the MADT says).
            let io = Rc::new(RefCell::new(IoApic::new(cfg.local_apics)));
            mmio.insert(IOAPIC_BASE, IOAPIC_LEN, io.clone())?;
            let hpet = Rc::new(RefCell::new(Hpet::new(clock.clone(), wires.clone())));
            mmio.insert(HPET_BASE, HPET_LEN, hpet.clone())?;
            (Some(io), Some(hpet))
        };

        let mut board = Self {
            pio,
            mmio,
            pic,
            pit,
            rtc,
            uart,
            post,
            wires,
            signals,
            clock,
            console,
            pending_input: Default::default(),
            quit: false,
            max_wait: None,
            unknown_ports: BTreeMap::new(),
            unknown_mmio: 0,
            int_cached: false,
            int_valid: false,
            int_generation: 0,
            lapics,
            ioapic,
            hpet,
            current: 0,
            ide,
            pci,
            virtio,
            msi,
            fw_cfg,
            dma_log: cfg.dma.map(|(_, log)| log),
            pam: None,
        };
        board.set_cmos_memory(cfg.ram_size);
        board.set_cmos_boot_order(&cfg.boot_order);
        board
            .rtc
            .borrow_mut()
            .set_cmos(0x5F, cfg.local_apics.saturating_sub(1) as u8);
        Ok(board)
    }

    /// The memory-size bytes BIOSes and loaders read from CMOS.
    fn set_cmos_memory(&mut self, ram: u64) {
        let mut rtc = self.rtc.borrow_mut();
        let kib = |v: u64| v.min(0xFFFF) as u16;
        rtc.set_cmos(0x15, (640u16 & 0xFF) as u8);
        rtc.set_cmos(0x16, (640u16 >> 8) as u8);
        let low_end = ram.min(LOW_RAM_MAX);
        let ext_kib = kib(low_end.saturating_sub(HIGH_MEMORY_START) / 1024);
        for base in [0x17u8, 0x30] {
            rtc.set_cmos(base, ext_kib as u8);
            rtc.set_cmos(base + 1, (ext_kib >> 8) as u8);
        }
        let above_16m = (low_end.saturating_sub(16 << 20) / 65536).min(0xFFFF) as u16;
        rtc.set_cmos(0x34, above_16m as u8);
        rtc.set_cmos(0x35, (above_16m >> 8) as u8);
        let above_4g = ram.saturating_sub(LOW_RAM_MAX) / 65536;
        rtc.set_cmos(0x5B, above_4g as u8);
        rtc.set_cmos(0x5C, (above_4g >> 8) as u8);
        rtc.set_cmos(0x5D, (above_4g >> 16) as u8);
        rtc.set_cmos(0x14, 0x06); // equipment: FPU, VGA/EGA
    }

    /// The boot order as QEMU keeps it for the BIOS: the first two devices in 0x3D, the
    /// third in 0x38's high nibble (its low bit clear: the boot sector's signature is
    /// checked).
    fn set_cmos_boot_order(&mut self, order: &str) {
        let mut codes = order.chars().filter_map(boot_device);
        let (a, b, c) = (
            codes.next().unwrap_or(0),
            codes.next().unwrap_or(0),
            codes.next().unwrap_or(0),
        );
        let mut rtc = self.rtc.borrow_mut();
        rtc.set_cmos(0x3D, b << 4 | a);
        rtc.set_cmos(0x38, c << 4);
    }

    /// See [`HostConsole::set_waker`].
    pub fn set_console_waker(&self, waker: Option<crate::console::Waker>) {
        self.console.set_waker(waker);
    }

    /// The CMOS state to carry across a reset.
    pub fn save_cmos(&self) -> CmosState {
        self.rtc.borrow().save()
    }

    /// Gives back the host console (kept across guest resets).
    pub fn into_console(self) -> HostConsole {
        self.console
    }

    /// Takes the host console out, leaving none (for a reset that rebuilds the board).
    pub fn take_console(&mut self) -> HostConsole {
        std::mem::replace(&mut self.console, HostConsole::none())
    }

    pub fn clock(&self) -> &Rc<dyn Clock> {
        &self.clock
    }

    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        self.int_valid = false;
        if !self.pio.read(port as u64, data) && !self.bar_read(BarKind::Io, port.into(), data) {
            self.unknown_ports.entry(port).or_default().reads += 1;
        }
    }

    pub fn pio_write(&mut self, port: u16, data: &[u8]) {
        self.int_valid = false;
        if port & !7 == 0xCF8 {
            self.pio.write(port as u64, data);
            if let Some(pam) = self.pci.borrow_mut().take_pam() {
                self.pam = Some(pam);
            }
            return;
        }
        if !self.pio.write(port as u64, data) {
            if self.bar_write(BarKind::Io, port.into(), data) {
                self.carry_messages();
            } else {
                self.unknown_ports.entry(port).or_default().writes += 1;
            }
        }
    }

    /// A read a PCI function's BAR decodes; false if none does.
    fn bar_read(&mut self, kind: BarKind, addr: u64, data: &mut [u8]) -> bool {
        let found = self.pci.borrow().bar_at(kind, addr);
        match found {
            Some((f, bar, offset)) => {
                f.borrow_mut().bar_read(bar, offset, data);
                true
            }
            None => false,
        }
    }

    fn bar_write(&mut self, kind: BarKind, addr: u64, data: &[u8]) -> bool {
        let found = self.pci.borrow().bar_at(kind, addr);
        match found {
            Some((f, bar, offset)) => {
                f.borrow_mut().bar_write(bar, offset, data);
                true
            }
            None => false,
        }
    }

    /// The host bridge's PAM registers, if the guest wrote them since the last call: the
    /// CPU's side applies them to guest memory ([`GuestMemory::set_pam`]).
    ///
    /// [`GuestMemory::set_pam`]: crate::memory::GuestMemory::set_pam
    pub fn take_pam_change(&mut self) -> Option<[u8; 7]> {
        self.pam.take()
    }

    /// The guest-physical ranges devices wrote since the last call (the emulated CPU drops
    /// what it translated from them), if any.
    pub fn take_dma_writes(&self) -> Option<Vec<(u64, u64)>> {
        let log = self.dma_log.as_ref()?;
        (!log.is_empty()).then(|| log.take())
    }

    /// The current CPU's local APIC, if its register page is decoded at `addr`.
    fn lapic_at(&mut self, addr: u64) -> Option<&mut LocalApic> {
        let lapic = self.lapics.get_mut(self.current)?;
        let base = lapic.mmio_base()?;
        (addr & !(LAPIC_PAGE - 1) == base).then_some(lapic)
    }

    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        if let Some(lapic) = self.lapic_at(addr) {
            lapic.mmio_read(addr & (LAPIC_PAGE - 1), data);
            return;
        }
        if !self.mmio.read(addr, data) && !self.bar_read(BarKind::Memory, addr, data) {
            self.unknown_mmio += 1;
        }
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        if (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_LEN).contains(&addr) {
            // Unmasking an asserted level input sends it: the lines as they are now.
            self.update_ioapic_inputs();
        }
        if let Some(lapic) = self.lapic_at(addr) {
            lapic.mmio_write(addr & (LAPIC_PAGE - 1), data);
        } else if !self.mmio.write(addr, data) && !self.bar_write(BarKind::Memory, addr, data) {
            self.unknown_mmio += 1;
        }
        // An ICR or EOI write, or an I/O APIC entry unmasked, may have sent messages.
        self.carry_messages();
    }

    /// The current CPU's local APIC, for its MSRs, CR8 and the TSC deadline; the messages
    /// it sends are carried when `f` returns.
    pub fn with_lapic<R>(&mut self, f: impl FnOnce(&mut LocalApic) -> R) -> Option<R> {
        let r = f(self.lapics.get_mut(self.current)?);
        self.carry_messages();
        Some(r)
    }

    /// Carries what the APICs sent until none has anything left to send (an EOI to the
    /// I/O APIC may send its pin's message again).
    fn carry_messages(&mut self) {
        loop {
            let mut carried = false;
            for from in 0..self.lapics.len() {
                if self.lapics[from].has_outgoing() {
                    let out: Vec<Outgoing> = self.lapics[from].drain().collect();
                    for o in out {
                        self.carry(Some(from), o);
                    }
                    carried = true;
                }
            }
            if !self.msi.is_empty() {
                for m in self.msi.take() {
                    self.carry(None, Outgoing::Interrupt(m));
                }
                carried = true;
            }
            if let Some(io) = self.ioapic.clone() {
                if io.borrow().has_outgoing() {
                    let out: Vec<Outgoing> = io.borrow_mut().drain().collect();
                    for o in out {
                        self.carry(None, o);
                    }
                    carried = true;
                }
            }
            if !carried {
                return;
            }
        }
    }

    /// One message from local APIC `from` (an IPI or an EOI) or the I/O APIC (`None`).
    fn carry(&mut self, from: Option<usize>, out: Outgoing) {
        let m: Message = match out {
            Outgoing::Eoi(vector) => {
                // The I/O APIC resends a level input still asserted at the EOI: it must
                // see the line as it is now (the handler may have quieted the device).
                self.update_ioapic_inputs();
                if let Some(io) = &self.ioapic {
                    io.borrow_mut().eoi(vector);
                }
                return;
            }
            Outgoing::Interrupt(m) => m,
        };
        let ipi = from.is_some();
        let is_for = |i: usize, l: &LocalApic| match m.dest {
            Destination::ToSelf => Some(i) == from,
            Destination::AllButSelf => Some(i) != from,
            dest => l.is_destination(dest),
        };
        if m.mode == DeliveryMode::LowestPriority {
            let target = (0..self.lapics.len())
                .filter(|&i| is_for(i, &self.lapics[i]))
                .min_by_key(|&i| self.lapics[i].arbitration_priority());
            if let Some(i) = target {
                self.lapics[i].receive(&m, ipi);
            }
            return;
        }
        for i in 0..self.lapics.len() {
            if is_for(i, &self.lapics[i]) {
                self.lapics[i].receive(&m, ipi);
            }
        }
    }

    /// Samples the IRQ wires into the I/O APIC's pins: IRQ0 on pin 2, IRQ n on pin n
    /// (IRQ2, the cascade, is never driven; pin 0 is not connected). What it sends stays in
    /// its outbox.
    fn update_ioapic_inputs(&mut self) {
        let Some(io) = &self.ioapic else {
            return;
        };
        // GSIs 16-23 go to their pins as they are.
        let pins = |gsis: u32| (gsis & !0b101) | ((gsis & 1) << 2);
        let rising = self.wires.take_rising_ioapic();
        io.borrow_mut()
            .set_inputs(pins(self.wires.levels()), pins(rising));
    }

    /// [`Self::update_ioapic_inputs`], and carries what the I/O APIC sent.
    fn sample_ioapic(&mut self) {
        if self.ioapic.is_some() {
            self.update_ioapic_inputs();
            self.carry_messages();
        }
    }

    /// The PIC's INT output.
    fn pic_interrupt(&mut self) -> bool {
        let generation = self.wires.generation();
        if !self.int_valid || generation != self.int_generation || self.wires.has_news() {
            self.sample_ioapic();
            self.int_cached = self.pic.borrow_mut().has_interrupt();
            self.int_generation = generation;
            self.int_valid = true;
        }
        self.int_cached
    }

    /// Makes CPU `cpu` the one whose accesses and interrupts the board answers for.
    pub fn set_current(&mut self, cpu: usize) {
        self.current = cpu;
    }

    /// Whether CPU `cpu` has an interrupt to take (see [`Self::interrupt_pending`]).
    pub fn interrupt_pending_for(&mut self, cpu: usize) -> bool {
        let pic = self.pic_interrupt();
        match self.lapics.get(cpu) {
            Some(lapic) => lapic.has_interrupt(pic),
            None => pic,
        }
    }

    /// Whether an NMI waits for CPU `cpu`.
    pub fn nmi_pending_for(&self, cpu: usize) -> bool {
        self.lapics.get(cpu).is_some_and(|l| l.nmi_pending())
    }

    /// Whether an NMI waits for the current CPU (neither IF nor the priorities hold it
    /// back; only a running NMI handler does).
    pub fn nmi_pending(&self) -> bool {
        self.nmi_pending_for(self.current)
    }

    /// The current CPU takes the NMI waiting for it, if one is.
    pub fn take_nmi(&mut self) -> bool {
        self.lapics
            .get_mut(self.current)
            .is_some_and(|l| l.take_nmi())
    }

    /// The INIT and start-up IPIs CPU `cpu` received since the last call.
    pub fn take_startup(&mut self, cpu: usize) -> StartupSignals {
        match self.lapics.get_mut(cpu) {
            Some(l) if l.has_startup() => l.take_startup(),
            _ => StartupSignals::default(),
        }
    }

    /// Whether the current CPU has an interrupt to take: from its local APIC, or the
    /// PIC's INTR (through LINT0, or straight where there is no APIC).
    pub fn interrupt_pending(&mut self) -> bool {
        let pic = self.pic_interrupt();
        match self.lapics.get(self.current) {
            Some(lapic) => lapic.has_interrupt(pic),
            None => pic,
        }
    }

    /// The INTA cycle: the vector the CPU takes.
    pub fn acknowledge_interrupt(&mut self) -> u8 {
        let pic = self.pic_interrupt();
        self.int_valid = false;
        let from_lapic = self
            .lapics
            .get_mut(self.current)
            .map(|l| l.acknowledge(pic));
        match from_lapic {
            Some(Acknowledged::Vector(v)) => v,
            Some(Acknowledged::Pic) | None => self.pic.borrow_mut().acknowledge(),
        }
    }

    fn timed(&self) -> impl Iterator<Item = Rc<RefCell<dyn Timed>>> {
        let devices: [Rc<RefCell<dyn Timed>>; 2] = [self.pit.clone(), self.rtc.clone()];
        let hpet = self.hpet.clone().map(|h| h as Rc<RefCell<dyn Timed>>);
        devices.into_iter().chain(hpet)
    }

    /// The earliest device deadline on the timer queue.
    pub fn next_deadline(&self) -> Option<u64> {
        let apics = self.lapics.iter().filter_map(|l| l.next_deadline());
        self.timed()
            .filter_map(|d| d.borrow().next_deadline())
            .chain(apics)
            .min()
    }

    /// Runs due timers and moves console input into the UART. Call after every exit.
    pub fn service(&mut self) {
        let now = self.clock.now_ns();
        for d in self.timed() {
            let due = d.borrow().next_deadline().is_some_and(|t| t <= now);
            if due {
                d.borrow_mut().on_timer(now);
            }
        }
        for lapic in &mut self.lapics {
            if lapic.next_deadline().is_some_and(|t| t <= now) {
                lapic.on_timer(now);
            }
        }
        while let Some(i) = self.console.try_input() {
            self.take_input(i);
        }
        self.feed_uart();
        self.uart.borrow_mut().flush();
    }

    fn take_input(&mut self, input: ConsoleInput) {
        match input {
            ConsoleInput::Byte(b) => self.pending_input.push_back(b),
            ConsoleInput::Break => self.uart.borrow_mut().receive_break(),
            ConsoleInput::Quit => self.quit = true,
        }
    }

    fn feed_uart(&mut self) {
        if self.pending_input.is_empty() {
            return;
        }
        let mut uart = self.uart.borrow_mut();
        for _ in 0..uart.rx_room() {
            match self.pending_input.pop_front() {
                Some(b) => uart.receive(b),
                None => break,
            }
        }
    }

    /// The CPU is halted: sleep until the next timer deadline or console input. Returns
    /// false if nothing can ever wake it (no deadline, no input, no pending interrupt).
    pub fn wait_for_event(&mut self) -> bool {
        self.uart.borrow_mut().flush();
        let deadline = self.next_deadline();
        let now = self.clock.now_ns();
        let timeout = deadline.map(|d| Duration::from_nanos(d.saturating_sub(now)));
        let timeout = match (timeout, self.max_wait) {
            (Some(t), Some(m)) => Some(t.min(m)),
            (t, m) => t.or(m),
        };
        match self.console.wait(timeout) {
            Wait::Input(i) => self.take_input(i),
            Wait::Timeout => {}
            Wait::Closed => match timeout {
                Some(t) => std::thread::sleep(t),
                None => {
                    self.service();
                    return self.interrupt_pending() || self.event_pending();
                }
            },
        }
        self.service();
        true
    }

    /// Bounds how long [`Self::wait_for_event`] sleeps.
    pub fn set_max_wait(&mut self, max: Option<Duration>) {
        self.max_wait = max;
    }

    pub fn event_pending(&self) -> bool {
        self.quit || self.signals.pending() || crate::console::termination_signal().is_some()
    }

    /// A reset, power-off, debug exit or quit request, if one is pending.
    pub fn take_event(&mut self) -> Option<BoardEvent> {
        if std::mem::take(&mut self.quit) {
            return Some(BoardEvent::Quit);
        }
        if let Some(sig) = crate::console::termination_signal() {
            return Some(BoardEvent::Signal(sig));
        }
        self.signals.take().map(BoardEvent::System)
    }

    pub fn a20(&self) -> bool {
        self.signals.a20()
    }

    pub fn flush(&mut self) {
        self.uart.borrow_mut().flush();
    }

    /// Device-side lines for `--stats`.
    pub fn stats(&self, out: &mut String) {
        let pic = self.pic.borrow().stats();
        let post = self.post.borrow();
        let _ = writeln!(
            out,
            "PIC interrupts acknowledged: {} (spurious {})",
            pic.acknowledged, pic.spurious
        );
        for (cpu, lapic) in self.lapics.iter().enumerate() {
            let l = lapic.stats();
            let _ = writeln!(
                out,
                "cpu{cpu} local APIC: interrupts taken {} (spurious {}), NMIs {}, timer {}, IPIs sent {} received {}, SMI/ExtINT messages not delivered {}",
                l.accepted, l.spurious, l.nmis, l.timer, l.ipis_sent, l.ipis_received, l.not_delivered
            );
        }
        if let Some(io) = &self.ioapic {
            let io = io.borrow();
            let pins: Vec<String> = io
                .sent()
                .iter()
                .enumerate()
                .filter(|(_, n)| **n != 0)
                .map(|(pin, n)| format!("pin {pin}: {n}"))
                .collect();
            let _ = writeln!(out, "I/O APIC messages: [{}]", pins.join(", "));
        }
        if let Some(hpet) = &self.hpet {
            let fired = hpet.borrow().fired();
            let _ = writeln!(out, "HPET interrupts by timer: {fired:?}");
        }
        for (name, channel) in ["primary", "secondary"].iter().zip(&self.ide) {
            let s = channel.borrow().stats();
            if s.commands != 0 {
                let _ = writeln!(
                    out,
                    "IDE {name}: {} commands, {} sectors read, {} written, {} flushes, {} errors, {} bus-master transfers ({} failed)",
                    s.commands, s.sectors_read, s.sectors_written, s.flushes, s.errors,
                    s.dma_transfers, s.dma_errors
                );
            }
        }
        for (i, v) in self.virtio.iter().enumerate() {
            let v = v.borrow();
            let (t, b) = (v.stats, v.device.stats);
            let _ = writeln!(
                out,
                "virtio-blk {i}: {} notifications, {} requests (reads {}, {} bytes; writes {}, {} bytes; flushes {}, discards {}, write-zeroes {}; errors {}, unsupported {}, malformed {}), {} interrupts ({} by MSI-X)",
                t.notifications, t.chains, b.reads, b.read_bytes, b.writes, b.written_bytes,
                b.flushes, b.discards, b.write_zeroes, b.errors, b.unsupported, b.malformed,
                t.interrupts, v.msi_sent()
            );
        }
        let fw = self.fw_cfg.borrow().stats;
        if fw.selects != 0 {
            let _ = writeln!(
                out,
                "fw_cfg: {} selects, {} bytes through the port, {} DMA transfers ({} bytes, {} errors)",
                fw.selects, fw.port_bytes, fw.dma_transfers, fw.dma_bytes, fw.dma_errors
            );
        }
        if self.msi.stray() != 0 {
            let _ = writeln!(
                out,
                "MSI writes outside the APIC window: {}",
                self.msi.stray()
            );
        }
        let _ = writeln!(out, "serial bytes out: {}", self.uart.borrow().bytes_out());
        let codes: Vec<String> = post.recent().iter().map(|c| format!("{c:02x}")).collect();
        let _ = writeln!(
            out,
            "POST codes (port 0x80): {} writes, last: [{}]",
            post.writes(),
            codes.join(" ")
        );
        let mut unknown: Vec<String> = self
            .unknown_ports
            .iter()
            .map(|(p, s)| format!("{p:#06x} (r{} w{})", s.reads, s.writes))
            .collect();
        if unknown.len() > 24 {
            let more = unknown.len() - 24;
            unknown.truncate(24);
            unknown.push(format!("... {more} more"));
        }
        let _ = writeln!(
            out,
            "unassigned ports: {} [{}]",
            self.unknown_ports.len(),
            unknown.join(", ")
        );
        let _ = writeln!(out, "unassigned MMIO accesses: {}", self.unknown_mmio);
    }
}

/// The serial sink's writer: the UART cannot report a failed write to the guest, so the
/// first failure (a full disk, `/dev/full`, a closed pipe) is said once on stderr, and
/// the output goes on being attempted.
struct ReportFirstError<W> {
    inner: W,
    reported: bool,
}

impl<W: Write> ReportFirstError<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            reported: false,
        }
    }

    fn check<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            if !std::mem::replace(&mut self.reported, true) {
                eprintln!("gantry: serial output: {e}; the guest's output is being lost");
            }
        }
        r
    }
}

impl<W: Write> Write for ReportFirstError<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.check(r)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.check(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_devices::clock::ManualClock;

    fn cmos(board: &mut Board, index: u8) -> u8 {
        board.pio_write(0x70, &[index]);
        let mut v = [0u8];
        board.pio_read(0x71, &mut v);
        v[0]
    }

    /// The boot order where SeaBIOS (and the Bochs BIOS before it) reads it: the first two
    /// devices in CMOS 0x3D, the third in 0x38's high nibble.
    #[test]
    fn the_boot_order_is_in_cmos() {
        for (order, b3d, b38) in [("cad", 0x12, 0x30), ("dc", 0x23, 0x00), ("n", 0x04, 0x00)] {
            let cfg = BoardConfig {
                boot_order: order.into(),
                ..BoardConfig::bare(16 << 20)
            };
            let mut b =
                Board::new(cfg, Rc::new(ManualClock::new(0)), HostConsole::none()).expect("board");
            assert_eq!(
                (cmos(&mut b, 0x3D), cmos(&mut b, 0x38)),
                (b3d, b38),
                "{order}"
            );
        }
        assert!(check_boot_order("cx").is_err());
        assert!(check_boot_order("cc").is_err());
        assert!(check_boot_order("").is_err());
        assert!(check_boot_order("acdn").is_err());
    }
}
