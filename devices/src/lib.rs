//! PC devices for Gantry: the 8259A PIC pair, the local APICs and the 82093AA I/O APIC, 8254 PIT, HPET, 16550A UART, MC146818 RTC/CMOS,
//! i8042, PCI configuration mechanism #1 with an i440FX/PIIX3, the ACPI PM block, and the
//! debug ports.
//!
//! Devices here know nothing of CPUs or backends. They see port or MMIO accesses through a
//! [`bus::Bus`], drive interrupt request wires ([`irq::IrqLine`]), read time from a
//! [`clock::Clock`] the machine hands them, and ask the board for resets and power-off through
//! [`signals::SystemSignals`]. The same objects serve the emulated CPU and KVM.

pub mod acpi_pm;
pub mod apic_bus;
pub mod block;
pub mod bus;
pub mod clock;
pub mod debug_ports;
pub mod dma;
pub mod fw_cfg;
pub mod hpet;
pub mod i8042;
pub mod ide;
pub mod ioapic;
pub mod irq;
pub mod lapic;
pub mod msix;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod signals;
pub mod system_control;
pub mod uart;
pub mod virtio;

/// A device with time-driven behaviour (PIT, RTC). The board keeps these on its timer queue:
/// it asks each for its next deadline and calls [`Timed::on_timer`] once the clock passes it.
pub trait Timed {
    /// Clock time (ns) of the next event this device must act on, if any.
    fn next_deadline(&self) -> Option<u64>;
    /// Act on every event due at or before `now`.
    fn on_timer(&mut self, now: u64);
}
