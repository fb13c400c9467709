//! The HPET (IA-PC High Precision Event Timers, revision 1.0a) at 0xFED00000: a 64-bit
//! main counter at 100 MHz (a 10 ns period) and three comparators, each one-shot or (timer
//! 0) periodic, in 32- or 64-bit mode, edge- or level-triggered, routed to an I/O APIC
//! input (GSIs 20-23, as on Intel's ICH) or, in legacy replacement mode, timer 0 to IRQ0
//! and timer 1 to IRQ8 in place of the PIT and the RTC.
//!
//! As the PIT, the counter is derived from the clock, never stepped. Not modelled: FSB
//! (MSI) delivery, which no timer claims to support.

use std::rc::Rc;

use crate::bus::BusDevice;
use crate::clock::Clock;
use crate::irq::{IrqLine, IrqWires, HPET_LEGACY_IRQ0, HPET_LEGACY_IRQ8};
use crate::Timed;

pub const HPET_BASE: u64 = 0xFED0_0000;
pub const HPET_LEN: u64 = 0x400;
pub const HPET_TIMERS: usize = 3;
/// The counter's period in femtoseconds (10 ns).
pub const PERIOD_FS: u64 = 10_000_000;
const PERIOD_NS: u64 = 10;
/// The GSIs a timer may be routed to (INT_ROUTE_CAP).
const ROUTES: u32 = 0x00F0_0000;

/// GCAP_ID's low half: revision 1, three timers, a 64-bit counter, legacy replacement
/// capable, vendor 0x8086 (as QEMU's). The ACPI HPET table repeats it.
pub const CAPABILITIES: u32 =
    1 | ((HPET_TIMERS as u32 - 1) << 8) | (1 << 13) | (1 << 15) | (0x8086 << 16);

const CONF_ENABLE: u64 = 1 << 0;
const CONF_LEGACY: u64 = 1 << 1;

// Timer configuration bits.
const TN_LEVEL: u64 = 1 << 1;
const TN_ENABLE: u64 = 1 << 2;
const TN_PERIODIC: u64 = 1 << 3;
const TN_PERIODIC_CAP: u64 = 1 << 4;
const TN_SIZE_64: u64 = 1 << 5;
const TN_SET_VALUE: u64 = 1 << 6;
const TN_32BIT: u64 = 1 << 8;
const TN_ROUTE: u64 = 0x1F << 9;
const TN_WRITABLE: u64 = TN_LEVEL | TN_ENABLE | TN_PERIODIC | TN_SET_VALUE | TN_32BIT | TN_ROUTE;

#[derive(Clone, Copy, Debug, Default)]
struct Timer {
    config: u64,
    comparator: u64,
    /// What a periodic timer adds to its comparator at each match.
    period: u64,
    /// The counter value from which the next match is looked for: a comparator matches
    /// once as the counter passes it, not again until the counter wraps.
    from: u64,
}

pub struct Hpet {
    clock: Rc<dyn Clock>,
    wires: Rc<IrqWires>,
    /// IRQ lines: the legacy replacement outputs, and the GSIs a timer may be routed to.
    legacy: [IrqLine; 2],
    gsi: Vec<IrqLine>,
    config: u64,
    /// The counter's value at `since` (clock ns); it runs only while enabled.
    counter_at: u64,
    since: u64,
    timers: [Timer; HPET_TIMERS],
    /// Level-triggered interrupts asserted and not yet cleared (GINTR_STA).
    status: u64,
    /// Interrupts raised, per timer, for `--stats`.
    fired: [u64; HPET_TIMERS],
}

impl Hpet {
    pub fn new(clock: Rc<dyn Clock>, wires: Rc<IrqWires>) -> Self {
        let mut timers = [Timer::default(); HPET_TIMERS];
        for (i, t) in timers.iter_mut().enumerate() {
            t.config = TN_SIZE_64 | u64::from(ROUTES) << 32;
            if i == 0 {
                t.config |= TN_PERIODIC_CAP;
            }
            t.comparator = u64::MAX;
        }
        Self {
            legacy: [wires.line(HPET_LEGACY_IRQ0), wires.line(HPET_LEGACY_IRQ8)],
            gsi: (0..24).map(|g| wires.line(g)).collect(),
            wires,
            clock,
            config: 0,
            counter_at: 0,
            since: 0,
            timers,
            status: 0,
            fired: [0; HPET_TIMERS],
        }
    }

    pub fn fired(&self) -> [u64; HPET_TIMERS] {
        self.fired
    }

    fn enabled(&self) -> bool {
        self.config & CONF_ENABLE != 0
    }

    fn counter(&self, now: u64) -> u64 {
        if self.enabled() {
            self.counter_at
                .wrapping_add(now.saturating_sub(self.since) / PERIOD_NS)
        } else {
            self.counter_at
        }
    }

    /// The line timer `i` drives now.
    fn line(&self, i: usize) -> Option<&IrqLine> {
        if self.config & CONF_LEGACY != 0 && i < 2 {
            return Some(&self.legacy[i]);
        }
        let route = ((self.timers[i].config & TN_ROUTE) >> 9) as usize;
        (ROUTES & (1 << route) != 0).then(|| &self.gsi[route])
    }

    /// The counter value at which timer `i` next matches, if it is armed.
    fn next_match(&self, i: usize) -> Option<u64> {
        let t = &self.timers[i];
        if !self.enabled() || t.config & TN_ENABLE == 0 {
            return None;
        }
        if t.config & TN_32BIT != 0 {
            let mut at = (t.from & !0xFFFF_FFFF) | (t.comparator & 0xFFFF_FFFF);
            if at < t.from {
                at += 1 << 32;
            }
            Some(at)
        } else {
            // The 64-bit counter does not wrap in a machine's life.
            (t.comparator >= t.from).then_some(t.comparator)
        }
    }

    /// Timer `i` looks for its next match from the counter's value now.
    fn rearm(&mut self, i: usize) {
        self.timers[i].from = self.counter(self.clock.now_ns());
    }

    fn fire(&mut self, i: usize) {
        self.fired[i] += 1;
        let level = self.timers[i].config & TN_LEVEL != 0;
        if level {
            self.status |= 1 << i;
        }
        if let Some(line) = self.line(i) {
            if level {
                line.set_level(true);
            } else {
                line.pulse();
            }
        }
    }

    /// Drops the lines of level-triggered timers whose status is clear.
    fn update_levels(&self) {
        for i in 0..HPET_TIMERS {
            if self.timers[i].config & TN_LEVEL != 0 && self.status & (1 << i) == 0 {
                if let Some(line) = self.line(i) {
                    line.set_level(false);
                }
            }
        }
    }

    fn read_register(&self, reg: u64) -> u64 {
        let now = self.clock.now_ns();
        match reg {
            0x000 => u64::from(CAPABILITIES) | PERIOD_FS << 32,
            0x010 => self.config,
            0x020 => self.status,
            0x0F0 => self.counter(now),
            0x100..=0x15F => {
                let t = &self.timers[((reg - 0x100) / 0x20) as usize];
                match reg & 0x1F {
                    0x00 => t.config,
                    0x08 => t.comparator,
                    _ => 0,
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u64, v: u64, mask: u64) {
        let merge = |old: u64| (old & !mask) | (v & mask);
        let now = self.clock.now_ns();
        match reg {
            0x010 => {
                let counter = self.counter(now);
                let new = merge(self.config) & (CONF_ENABLE | CONF_LEGACY);
                // Lines move when legacy replacement changes: drop the old ones.
                for i in 0..2 {
                    if let Some(line) = self.line(i) {
                        line.set_level(false);
                    }
                }
                self.config = new;
                self.counter_at = counter;
                self.since = now;
                for i in 0..HPET_TIMERS {
                    self.timers[i].from = counter;
                }
                self.wires.set_legacy_replacement(new & CONF_LEGACY != 0);
                self.update_levels();
            }
            0x020 => {
                self.status &= !(v & mask);
                self.update_levels();
            }
            0x0F0 => {
                // Writable while halted (software should not write it while running).
                self.counter_at = merge(self.counter(now));
                self.since = now;
                for i in 0..HPET_TIMERS {
                    self.timers[i].from = self.counter_at;
                }
            }
            0x100..=0x15F => {
                let i = ((reg - 0x100) / 0x20) as usize;
                match reg & 0x1F {
                    0x00 => {
                        let writable = if i == 0 {
                            TN_WRITABLE
                        } else {
                            TN_WRITABLE & !TN_PERIODIC
                        };
                        if let Some(line) = self.line(i) {
                            line.set_level(false);
                        }
                        let t = &mut self.timers[i];
                        t.config = (t.config & !writable) | (merge(t.config) & writable);
                        if t.config & TN_32BIT != 0 {
                            t.comparator &= 0xFFFF_FFFF;
                        }
                        self.rearm(i);
                        self.update_levels();
                        let level = self.timers[i].config & TN_LEVEL != 0;
                        if level && self.status & (1 << i) != 0 {
                            if let Some(line) = self.line(i) {
                                line.set_level(true);
                            }
                        }
                    }
                    0x08 => {
                        let t = &mut self.timers[i];
                        let mut value = merge(t.comparator);
                        if t.config & TN_32BIT != 0 {
                            value &= 0xFFFF_FFFF;
                        }
                        let periodic = t.config & TN_PERIODIC != 0;
                        if !periodic || t.config & TN_SET_VALUE != 0 {
                            t.comparator = value;
                        }
                        if periodic {
                            t.period = merge(t.period) & (u64::MAX >> 1);
                        }
                        t.config &= !TN_SET_VALUE;
                        self.rearm(i);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for Hpet {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.read_register(offset & !7) >> ((offset & 7) * 8);
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let shift = (offset & 7) * 8;
        if data.len() + (offset & 7) as usize > 8 {
            return;
        }
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(bytes) << shift;
        let mask = (u64::MAX >> (64 - 8 * data.len() as u64)) << shift;
        self.write_register(offset & !7, v, mask);
    }

    fn wide_access(&self) -> bool {
        true
    }
}

impl Timed for Hpet {
    fn next_deadline(&self) -> Option<u64> {
        // The clock time the counter reaches the match (the counter runs: next_match
        // says None while it is halted).
        (0..HPET_TIMERS)
            .filter_map(|i| self.next_match(i))
            .map(|at| {
                self.since
                    .saturating_add(at.wrapping_sub(self.counter_at).saturating_mul(PERIOD_NS))
            })
            .min()
    }

    fn on_timer(&mut self, now: u64) {
        let counter = self.counter(now);
        for i in 0..HPET_TIMERS {
            let Some(at) = self.next_match(i).filter(|&at| at <= counter) else {
                continue;
            };
            self.fire(i);
            let t = &mut self.timers[i];
            t.from = at + 1;
            if t.config & TN_PERIODIC != 0 && t.period != 0 {
                // Periods that passed unserviced are one interrupt; the comparator keeps
                // its grid.
                let behind = (counter - at) / t.period + 1;
                t.comparator = at.wrapping_add(behind * t.period);
                if t.config & TN_32BIT != 0 {
                    t.comparator &= 0xFFFF_FFFF;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn rig() -> (Hpet, Rc<ManualClock>, Rc<IrqWires>) {
        let clock = Rc::new(ManualClock::new(0));
        let wires = IrqWires::new();
        (Hpet::new(clock.clone(), wires.clone()), clock, wires)
    }

    fn write(h: &mut Hpet, off: u64, v: u64) {
        h.write(off, &v.to_le_bytes());
    }

    fn read(h: &mut Hpet, off: u64) -> u64 {
        let mut b = [0u8; 8];
        h.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    #[test]
    fn counter_runs_at_100_mhz_while_enabled() {
        let (mut h, clock, _) = rig();
        assert_eq!(read(&mut h, 0) >> 32, PERIOD_FS);
        assert_eq!(read(&mut h, 0) as u32, CAPABILITIES);
        clock.set(1_000);
        assert_eq!(read(&mut h, 0xF0), 0, "halted");
        write(&mut h, 0x10, 1);
        clock.set(2_000);
        assert_eq!(read(&mut h, 0xF0), 100);
        write(&mut h, 0x10, 0);
        clock.set(9_000);
        assert_eq!(read(&mut h, 0xF0), 100);
    }

    #[test]
    fn legacy_periodic_timer_0_drives_irq0_in_place_of_the_pit() {
        let (mut h, clock, wires) = rig();
        // Periodic with the value-set protocol: the first write is the comparator, the
        // second the period.
        write(&mut h, 0x100, TN_ENABLE | TN_PERIODIC | TN_SET_VALUE);
        write(&mut h, 0x108, 1000);
        write(&mut h, 0x108, 1000);
        write(&mut h, 0x10, CONF_ENABLE | CONF_LEGACY);
        wires.take_rising();
        assert_eq!(h.next_deadline(), Some(10_000));
        clock.set(10_000);
        h.on_timer(10_000);
        assert_eq!(wires.take_rising() & 1, 1, "IRQ0 from timer 0");
        assert_eq!(h.next_deadline(), Some(20_000));
        // Three periods late: one interrupt, the grid kept.
        clock.set(45_000);
        h.on_timer(45_000);
        assert_eq!(h.fired()[0], 2);
        assert_eq!(h.next_deadline(), Some(50_000));
        // The PIT's IRQ0 does not reach the controllers in legacy replacement mode.
        wires.take_rising();
        wires.line(0).pulse();
        assert_eq!(wires.take_rising() & 1, 0);
    }

    #[test]
    fn one_shot_level_timer_on_a_gsi_holds_until_status_cleared() {
        let (mut h, clock, wires) = rig();
        write(&mut h, 0x10, CONF_ENABLE);
        write(&mut h, 0x120, TN_ENABLE | TN_LEVEL | 21 << 9);
        write(&mut h, 0x128, 50);
        clock.set(500);
        h.on_timer(500);
        assert_ne!(wires.levels() & (1 << 21), 0);
        assert_eq!(read(&mut h, 0x20), 2);
        clock.set(5_000);
        h.on_timer(5_000);
        assert_eq!(h.fired()[1], 1, "a one-shot comparator matches once");
        write(&mut h, 0x20, 2);
        assert_eq!(wires.levels() & (1 << 21), 0);
    }
}
