//! Motorola MC146818 real-time clock and CMOS RAM behind ports 0x70 (index, bit 7 masks
//! NMI) and 0x71 (data).
//!
//! Time is the clock's wall-clock epoch plus elapsed clock time plus whatever offset the
//! guest set. Flags (PF, AF, UF) are derived from the clock when register C is read; timer
//! deadlines are scheduled only for interrupts the guest enabled.

use std::rc::Rc;

use crate::bus::BusDevice;
use crate::clock::Clock;
use crate::irq::IrqLine;
use crate::Timed;

pub const REG_SECONDS: u8 = 0x00;
pub const REG_SECONDS_ALARM: u8 = 0x01;
pub const REG_MINUTES: u8 = 0x02;
pub const REG_MINUTES_ALARM: u8 = 0x03;
pub const REG_HOURS: u8 = 0x04;
pub const REG_HOURS_ALARM: u8 = 0x05;
pub const REG_WEEKDAY: u8 = 0x06;
pub const REG_DAY: u8 = 0x07;
pub const REG_MONTH: u8 = 0x08;
pub const REG_YEAR: u8 = 0x09;
pub const REG_A: u8 = 0x0A;
pub const REG_B: u8 = 0x0B;
pub const REG_C: u8 = 0x0C;
pub const REG_D: u8 = 0x0D;
pub const REG_CENTURY: u8 = 0x32;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;

const NS: u64 = 1_000_000_000;
/// The update cycle: UIP is set for 244 us before each second's update.
const UIP_NS: u64 = 244_000;

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Sunday.
    pub weekday: u32,
}

impl DateTime {
    /// Civil date from seconds since 1970-01-01 (proleptic Gregorian).
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86400);
        let rem = secs.rem_euclid(86400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + (month <= 2) as i64;
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    pub fn to_unix(&self) -> i64 {
        let y = self.year - (self.month <= 2) as i64;
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = self.month as i64;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + self.day as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86400 + self.hour as i64 * 3600 + self.minute as i64 * 60 + self.second as i64
    }
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10 % 10) << 4) | (v % 10)) as u8
}
fn from_bcd(v: u8) -> u32 {
    (v >> 4) as u32 * 10 + (v & 0xF) as u32
}

/// What survives a reset of the machine: the battery-backed RAM and the time the guest set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmosState {
    pub ram: [u8; 128],
    pub offset_ns: i128,
}

pub struct Rtc {
    ram: [u8; 128],
    index: u8,
    nmi_masked: bool,
    clock: Rc<dyn Clock>,
    irq: IrqLine,
    /// Guest wall time minus host wall time, in ns (changed when the guest sets the time).
    offset_ns: i128,
    /// Guest wall time (ns) when register C was last read: flags cover events after it.
    flags_since: u64,
    /// Pending flags already computed but not yet read.
    c_flags: u8,
}

impl Rtc {
    pub fn new(clock: Rc<dyn Clock>, irq: IrqLine) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A as usize] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        ram[REG_B as usize] = B_24H;
        ram[REG_D as usize] = 0x80; // valid RAM and time
        let mut rtc = Self {
            ram,
            index: 0,
            nmi_masked: false,
            clock,
            irq,
            offset_ns: 0,
            flags_since: 0,
            c_flags: 0,
        };
        rtc.flags_since = rtc.guest_ns();
        rtc
    }

    /// Stores a CMOS byte (memory sizes and the like, set by the board before boot).
    pub fn set_cmos(&mut self, index: u8, value: u8) {
        if let Some(b) = self.ram.get_mut(index as usize) {
            *b = value;
        }
    }

    pub fn cmos(&self, index: u8) -> u8 {
        self.ram.get(index as usize).copied().unwrap_or(0xFF)
    }

    /// The battery-backed state, to carry over a machine reset.
    pub fn save(&self) -> CmosState {
        CmosState {
            ram: self.ram,
            offset_ns: self.offset_ns,
        }
    }

    /// Restores battery-backed state saved before a reset. Register C (pending flags) and
    /// D (valid RAM) come back as after power-up.
    pub fn restore(&mut self, state: &CmosState) {
        self.ram = state.ram;
        self.ram[REG_C as usize] = 0;
        self.ram[REG_D as usize] = 0x80;
        self.offset_ns = state.offset_ns;
        self.c_flags = 0;
        self.flags_since = self.guest_ns();
    }

    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// Guest wall time in ns since the Unix epoch.
    fn guest_ns(&self) -> u64 {
        let host = self.clock.epoch_unix_ns() as i128 + self.clock.now_ns() as i128;
        (host + self.offset_ns).max(0) as u64
    }

    fn binary(&self) -> bool {
        self.ram[REG_B as usize] & B_DM_BINARY != 0
    }

    fn encode(&self, v: u32) -> u8 {
        if self.binary() {
            v as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.binary() {
            v as u32
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.ram[REG_B as usize] & B_24H != 0 {
            self.encode(hour)
        } else {
            let h12 = if hour.is_multiple_of(12) {
                12
            } else {
                hour % 12
            };
            self.encode(h12) | if hour >= 12 { 0x80 } else { 0 }
        }
    }

    fn decode_hour(&self, v: u8) -> u32 {
        if self.ram[REG_B as usize] & B_24H != 0 {
            self.decode(v)
        } else {
            let h = self.decode(v & 0x7F) % 12;
            h + if v & 0x80 != 0 { 12 } else { 0 }
        }
    }

    /// Writes the current time into the time registers (while SET is clear).
    fn latch_time(&mut self) {
        if self.ram[REG_B as usize] & B_SET != 0 {
            return;
        }
        let t = DateTime::from_unix((self.guest_ns() / NS) as i64);
        self.ram[REG_SECONDS as usize] = self.encode(t.second);
        self.ram[REG_MINUTES as usize] = self.encode(t.minute);
        self.ram[REG_HOURS as usize] = self.encode_hour(t.hour);
        self.ram[REG_WEEKDAY as usize] = self.encode(t.weekday + 1);
        self.ram[REG_DAY as usize] = self.encode(t.day);
        self.ram[REG_MONTH as usize] = self.encode(t.month);
        self.ram[REG_YEAR as usize] = self.encode((t.year.rem_euclid(100)) as u32);
        self.ram[REG_CENTURY as usize] = self.encode((t.year / 100) as u32);
    }

    /// Takes the guest's time registers as the new time (when SET is cleared).
    fn adopt_time(&mut self) {
        let r = |i: u8| self.ram[i as usize];
        let year = self.decode(r(REG_CENTURY)) as i64 * 100 + self.decode(r(REG_YEAR)) as i64;
        let t = DateTime {
            year,
            month: self.decode(r(REG_MONTH)).clamp(1, 12),
            day: self.decode(r(REG_DAY)).clamp(1, 31),
            hour: self.decode_hour(r(REG_HOURS)) % 24,
            minute: self.decode(r(REG_MINUTES)) % 60,
            second: self.decode(r(REG_SECONDS)) % 60,
            weekday: 0,
        };
        let want = t.to_unix() as i128 * NS as i128;
        let host = self.clock.epoch_unix_ns() as i128 + self.clock.now_ns() as i128;
        self.offset_ns = want - host;
        self.flags_since = self.guest_ns();
    }

    fn periodic_period_ns(&self) -> Option<u64> {
        let rate = self.ram[REG_A as usize] & 0x0F;
        let shift = match rate {
            0 => return None,
            1 | 2 => rate + 6,
            _ => rate - 1,
        };
        Some(((1u64 << shift) * NS) / 32768)
    }

    fn alarm_matches(&self, secs: u64) -> bool {
        let t = DateTime::from_unix(secs as i64);
        let ok = |alarm: u8, value: u32, is_hour: bool| {
            alarm & 0xC0 == 0xC0
                || if is_hour {
                    self.decode_hour(alarm) == value
                } else {
                    self.decode(alarm) == value
                }
        };
        ok(self.ram[REG_SECONDS_ALARM as usize], t.second, false)
            && ok(self.ram[REG_MINUTES_ALARM as usize], t.minute, false)
            && ok(self.ram[REG_HOURS_ALARM as usize], t.hour, true)
    }

    /// Folds events between `flags_since` and now into the C flags and the IRQ line.
    fn update_flags(&mut self) {
        let now = self.guest_ns();
        let since = self.flags_since;
        if now > since && self.ram[REG_B as usize] & B_SET == 0 {
            if let Some(p) = self.periodic_period_ns() {
                if now / p > since / p {
                    self.c_flags |= C_PF;
                }
            }
            if now / NS > since / NS {
                self.c_flags |= C_UF;
                // Alarm: any second boundary crossed whose time matches (at most a day's
                // worth are examined: the alarm pattern repeats daily).
                let first = since / NS + 1;
                let last = (now / NS).min(first + 86_400);
                if (first..=last).any(|s| self.alarm_matches(s)) {
                    self.c_flags |= C_AF;
                }
            }
            self.flags_since = now;
        }
        let enabled = self.ram[REG_B as usize] & (B_PIE | B_AIE | B_UIE);
        let irqf = self.c_flags & (enabled & 0x70) != 0;
        if irqf {
            self.c_flags |= C_IRQF;
        }
        self.irq.set_level(irqf);
    }

    fn read_reg(&mut self, index: u8) -> u8 {
        match index {
            REG_SECONDS..=REG_YEAR | REG_CENTURY => {
                if !matches!(
                    index,
                    REG_SECONDS_ALARM | REG_MINUTES_ALARM | REG_HOURS_ALARM
                ) {
                    self.latch_time();
                }
                self.ram[index as usize]
            }
            REG_A => {
                let ns = self.guest_ns() % NS;
                let uip = self.ram[REG_B as usize] & B_SET == 0 && ns >= NS - UIP_NS;
                (self.ram[REG_A as usize] & 0x7F) | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                self.update_flags();
                let v = self.c_flags;
                self.c_flags = 0;
                self.irq.set_level(false);
                v
            }
            REG_D => 0x80,
            i => self.ram[i as usize],
        }
    }

    fn write_reg(&mut self, index: u8, val: u8) {
        match index {
            REG_SECONDS..=REG_YEAR | REG_CENTURY => {
                let is_alarm = matches!(
                    index,
                    REG_SECONDS_ALARM | REG_MINUTES_ALARM | REG_HOURS_ALARM
                );
                if !is_alarm {
                    self.latch_time();
                }
                self.ram[index as usize] = val;
                if !is_alarm && self.ram[REG_B as usize] & B_SET == 0 {
                    self.adopt_time();
                }
            }
            REG_A => {
                self.update_flags();
                self.ram[REG_A as usize] = val & 0x7F;
            }
            REG_B => {
                self.update_flags();
                let was_set = self.ram[REG_B as usize] & B_SET != 0;
                if !was_set && val & B_SET != 0 {
                    self.latch_time();
                }
                // Changing the data mode re-encodes nothing: the guest rewrites the time.
                self.ram[REG_B as usize] = val;
                if was_set && val & B_SET == 0 {
                    self.adopt_time();
                }
                self.update_flags();
            }
            REG_C | REG_D => {} // read-only
            i => self.ram[i as usize] = val,
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data[0] = if offset == 0 {
            // The index register is write-only on the PC; reads float.
            0xFF
        } else {
            self.read_reg(self.index)
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.nmi_masked = data[0] & 0x80 != 0;
            self.index = data[0] & 0x7F;
        } else {
            self.write_reg(self.index, data[0]);
        }
    }
}

impl Timed for Rtc {
    fn next_deadline(&self) -> Option<u64> {
        let b = self.ram[REG_B as usize];
        if b & B_SET != 0 || self.c_flags & C_IRQF != 0 {
            // Nothing to raise while set, or while an interrupt is already unread.
            return None;
        }
        let g = self.guest_ns();
        let mut next: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(p) = self.periodic_period_ns() {
                next = Some((g / p + 1) * p);
            }
        }
        if b & (B_UIE | B_AIE) != 0 {
            let s = (g / NS + 1) * NS;
            next = Some(next.map_or(s, |n| n.min(s)));
        }
        // Convert guest wall time back to clock time.
        let delta = next?.saturating_sub(g);
        Some(self.clock.now_ns() + delta)
    }

    fn on_timer(&mut self, _now: u64) {
        self.update_flags();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::irq::IrqWires;

    // 2026-11-22 18:25:30 UTC, a Sunday.
    const EPOCH: u64 = 1_795_371_930 * NS;

    fn rig() -> (Rtc, Rc<ManualClock>, IrqLine) {
        let clock = Rc::new(ManualClock::new(EPOCH));
        let wires = IrqWires::new();
        let line = wires.line(8);
        (Rtc::new(clock.clone(), line.clone()), clock, line)
    }
    fn rd(r: &mut Rtc, i: u8) -> u8 {
        r.write(0, &[i]);
        let mut d = [0];
        r.read(1, &mut d);
        d[0]
    }
    fn wr(r: &mut Rtc, i: u8, v: u8) {
        r.write(0, &[i]);
        r.write(1, &[v]);
    }

    #[test]
    fn calendar_round_trips() {
        let t = DateTime::from_unix(1_795_371_930);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2026, 11, 22, 18, 25, 30, 0)
        );
        for s in [0i64, 951_782_400, 4_107_542_399, -86_400] {
            assert_eq!(DateTime::from_unix(s).to_unix(), s);
        }
        assert_eq!(DateTime::from_unix(951_782_400).day, 29, "2000-02-29");
    }

    #[test]
    fn bcd_time_and_12_hour_mode() {
        let (mut r, clock, _) = rig();
        assert_eq!(rd(&mut r, REG_SECONDS), 0x30);
        assert_eq!(rd(&mut r, REG_MINUTES), 0x25);
        assert_eq!(rd(&mut r, REG_HOURS), 0x18);
        assert_eq!(rd(&mut r, REG_DAY), 0x22);
        assert_eq!(rd(&mut r, REG_MONTH), 0x11);
        assert_eq!(rd(&mut r, REG_YEAR), 0x26);
        assert_eq!(rd(&mut r, REG_CENTURY), 0x20);
        assert_eq!(rd(&mut r, REG_WEEKDAY), 1);
        wr(&mut r, REG_B, B_DM_BINARY); // binary, 12-hour
        assert_eq!(rd(&mut r, REG_HOURS), 0x80 | 6);
        assert_eq!(rd(&mut r, REG_SECONDS), 30);
        clock.advance(2 * NS);
        assert_eq!(rd(&mut r, REG_SECONDS), 32);
        assert_eq!(rd(&mut r, REG_D), 0x80);
    }

    #[test]
    fn guest_sets_the_time() {
        let (mut r, clock, _) = rig();
        wr(&mut r, REG_B, B_SET | B_24H);
        wr(&mut r, REG_HOURS, 0x01);
        wr(&mut r, REG_MINUTES, 0x02);
        clock.advance(5 * NS);
        assert_eq!(rd(&mut r, REG_MINUTES), 0x02, "frozen while SET");
        wr(&mut r, REG_B, B_24H);
        clock.advance(3 * NS);
        assert_eq!(rd(&mut r, REG_HOURS), 0x01);
        assert_eq!(rd(&mut r, REG_MINUTES), 0x02);
        assert_eq!(rd(&mut r, REG_SECONDS), 0x33);
        assert_eq!(rd(&mut r, REG_DAY), 0x22);
    }

    #[test]
    fn update_in_progress_window() {
        let (mut r, clock, _) = rig();
        assert_eq!(rd(&mut r, REG_A) & A_UIP, 0);
        clock.advance(NS - UIP_NS);
        assert_eq!(rd(&mut r, REG_A) & A_UIP, A_UIP);
        assert_eq!(rd(&mut r, REG_A) & 0x7F, 0x26);
        clock.advance(UIP_NS);
        assert_eq!(rd(&mut r, REG_A) & A_UIP, 0);
    }

    #[test]
    fn periodic_interrupt_and_register_c() {
        let (mut r, clock, irq) = rig();
        wr(&mut r, REG_A, 0x2F); // 2 Hz
        wr(&mut r, REG_B, B_24H | B_PIE);
        let d = r.next_deadline().expect("periodic deadline");
        assert_eq!(d, NS / 2, "aligned to the half second");
        clock.set(d);
        r.on_timer(d);
        assert!(irq.is_high());
        assert_eq!(r.next_deadline(), None, "held until C is read");
        assert_eq!(rd(&mut r, REG_C), C_IRQF | C_PF);
        assert!(!irq.is_high());
        assert_eq!(rd(&mut r, REG_C), 0);
        clock.set(NS + NS / 4);
        assert_eq!(rd(&mut r, REG_C) & C_PF, C_PF, "PF set even when read late");
    }

    #[test]
    fn update_and_alarm_interrupts() {
        let (mut r, clock, irq) = rig();
        wr(&mut r, REG_SECONDS_ALARM, 0x32);
        wr(&mut r, REG_MINUTES_ALARM, 0xC0);
        wr(&mut r, REG_HOURS_ALARM, 0xC0);
        wr(&mut r, REG_B, B_24H | B_AIE);
        clock.set(NS);
        r.on_timer(NS);
        assert!(!irq.is_high(), "18:25:31 does not match :32");
        assert_eq!(
            rd(&mut r, REG_C),
            C_PF | C_UF,
            "flags set though not enabled"
        );
        clock.set(2 * NS);
        r.on_timer(2 * NS);
        assert!(irq.is_high());
        assert_eq!(rd(&mut r, REG_C), C_IRQF | C_PF | C_AF | C_UF);
    }

    #[test]
    fn state_survives_a_reset() {
        let (mut r, clock, _) = rig();
        wr(&mut r, 0x50, 0x5A);
        wr(&mut r, REG_B, B_SET | B_24H);
        wr(&mut r, REG_HOURS, 0x07);
        wr(&mut r, REG_B, B_24H);
        let saved = r.save();
        let wires = IrqWires::new();
        let mut fresh = Rtc::new(clock.clone(), wires.line(8));
        fresh.restore(&saved);
        assert_eq!(rd(&mut fresh, 0x50), 0x5A);
        assert_eq!(rd(&mut fresh, REG_HOURS), 0x07);
    }

    #[test]
    fn cmos_ram_and_nmi_mask() {
        let (mut r, _, _) = rig();
        r.set_cmos(0x34, 0xAB);
        assert_eq!(rd(&mut r, 0x34), 0xAB);
        wr(&mut r, 0x50, 0x12);
        assert_eq!(r.cmos(0x50), 0x12);
        r.write(0, &[0x80 | 0x10]);
        assert!(r.nmi_masked());
        r.write(0, &[0x10]);
        assert!(!r.nmi_masked());
    }
}
