//! Requests from devices to the board: reset, power-off, the debug-exit port, and the A20
//! gate. Devices raise them; the run loop acts on them at the next exit.

use std::cell::Cell;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemEvent {
    /// Reset requested (i8042 0xFE, port 0x92 bit 0, port 0xCF9). Triple faults are
    /// reported by the CPU, not by a device.
    Reset { source: &'static str },
    /// ACPI soft-off through PM1a_CNT.
    PowerOff,
    /// A value written to the isa-debug-exit port.
    DebugExit(u32),
}

#[derive(Debug)]
pub struct SystemSignals {
    event: Cell<Option<SystemEvent>>,
    a20: Cell<bool>,
}

impl Default for SystemSignals {
    fn default() -> Self {
        Self {
            event: Cell::new(None),
            a20: Cell::new(true),
        }
    }
}

impl SystemSignals {
    /// The first event raised wins until the board takes it.
    pub fn raise(&self, event: SystemEvent) {
        if self.event.get().is_none() {
            self.event.set(Some(event));
        }
    }
    pub fn take(&self) -> Option<SystemEvent> {
        self.event.take()
    }
    pub fn pending(&self) -> bool {
        self.event.get().is_some()
    }
    pub fn a20(&self) -> bool {
        self.a20.get()
    }
    pub fn set_a20(&self, on: bool) {
        self.a20.set(on);
    }
}
