//! The Intel 8254 programmable interval timer at 0x40-0x43, and the PC's system control
//! port B (0x61): channel 2's gate, the speaker enable, the refresh toggle and OUT2.
//!
//! Counters are not stepped: each channel remembers when it was loaded and derives its
//! count and output from the clock, so reading costs nothing and no host timer ticks while
//! the guest idles. Channel 0's OUT drives IRQ0; its rising edges are the timer deadlines
//! this device puts on the board's queue.

use std::rc::Rc;

use crate::bus::BusDevice;
use crate::clock::Clock;
use crate::irq::IrqLine;
use crate::Timed;

pub const PIT_HZ: u64 = 1_193_182;

fn ns_to_ticks(ns: u64) -> u64 {
    (ns as u128 * PIT_HZ as u128 / 1_000_000_000) as u64
}

/// First clock time (ns) at which `ticks` ticks have elapsed since time 0.
fn ticks_to_ns(ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000_000).div_ceil(PIT_HZ as u128) as u64
}

fn from_bcd(v: u16) -> u32 {
    let mut out = 0u32;
    for shift in [12, 8, 4, 0] {
        out = out * 10 + ((v >> shift) & 0xF).min(9) as u32;
    }
    out
}

fn to_bcd(v: u32) -> u16 {
    let v = v % 10000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Access {
    #[default]
    Lsb = 1,
    Msb = 2,
    Word = 3,
}

#[derive(Clone, Debug, Default)]
struct Channel {
    mode: u8,
    access: Access,
    bcd: bool,
    gate: bool,
    /// The initial count as programmed (binary), 0 meaning the maximum.
    reload: u32,
    /// Tick count (since clock 0) at which counting from `start_count` began; None while
    /// the channel waits for a count or (modes 1, 5) for a gate trigger.
    start_tick: Option<u64>,
    start_count: u32,
    /// Mode 0/4 with gate low: the count frozen at the moment the gate fell.
    frozen: Option<u32>,
    null_count: bool,
    write_lsb_next: bool,
    write_low: u8,
    read_msb_next: bool,
    latched: Option<(u16, Access, bool)>,
    status_latched: Option<u8>,
    /// Rising edges of OUT already reported (channel 0).
    edges_reported: u64,
}

impl Channel {
    fn modulus(&self) -> u32 {
        match (self.reload, self.bcd) {
            (0, false) => 0x10000,
            (0, true) => 10000,
            (n, _) => n,
        }
    }

    fn elapsed(&self, now_tick: u64) -> Option<u64> {
        if self.frozen.is_some() {
            return None;
        }
        self.start_tick.map(|s| now_tick.saturating_sub(s))
    }

    /// Counter value (binary) as the hardware would show it.
    fn count(&self, now_tick: u64) -> u32 {
        if let Some(f) = self.frozen {
            return f;
        }
        let n = self.modulus() as u64;
        let Some(d) = self.elapsed(now_tick) else {
            return self.start_count;
        };
        let wrap = if self.bcd { 10000 } else { 0x10000 };
        match self.mode {
            // One-shot modes keep decrementing through zero and wrap.
            0 | 1 | 4 | 5 => ((self.start_count as u64 + wrap - d % wrap) % wrap) as u32,
            // Mode 3 counts down by two each clock.
            3 => {
                let half = d % n * 2 % n;
                ((n - half) % wrap) as u32
            }
            _ => {
                let c = (n - d % n) % n;
                (if c == 0 { n } else { c }) as u32 % wrap as u32
            }
        }
    }

    fn out(&self, now_tick: u64) -> bool {
        let n = self.modulus() as u64;
        match (self.mode, self.elapsed(now_tick)) {
            // Mode 0: low from the control word until terminal count.
            (0, None) => false,
            (0, Some(d)) => d >= self.start_count as u64,
            // Mode 1: high until triggered, low until terminal count.
            (1, None) => true,
            (1, Some(d)) => d >= self.start_count as u64,
            // Modes 2/3 with the gate low: output high.
            (2, Some(d)) => d % n != n - 1,
            (3, Some(d)) => d % n < n.div_ceil(2),
            (4 | 5, Some(d)) => d != self.start_count as u64,
            _ => true,
        }
    }

    /// Tick of the `k`-th (1-based) rising edge of OUT after counting started, relative to
    /// `start_tick`; None if OUT rises no more.
    fn rising_edge(&self, k: u64) -> Option<u64> {
        let n = self.modulus() as u64;
        match self.mode {
            0 | 1 if k == 1 => Some(self.start_count as u64),
            4 | 5 if k == 1 => Some(self.start_count as u64 + 1),
            2 | 3 => Some(k * n),
            _ => None,
        }
    }

    fn load(&mut self, value: u32, now_tick: u64) {
        self.reload = if self.bcd {
            from_bcd(value as u16)
        } else {
            value
        };
        self.start_count = self.modulus();
        self.null_count = false;
        self.frozen = None;
        self.edges_reported = 0;
        // Modes 1 and 5 wait for a gate trigger; the others start counting (if gated on).
        self.start_tick = match self.mode {
            1 | 5 => None,
            _ if !self.gate => None,
            _ => Some(now_tick),
        };
    }

    fn set_gate(&mut self, gate: bool, now_tick: u64) {
        let rising = gate && !self.gate;
        let falling = !gate && self.gate;
        self.gate = gate;
        if self.null_count {
            return;
        }
        match self.mode {
            0 | 4 => {
                if falling {
                    self.frozen = Some(self.count(now_tick));
                } else if rising {
                    if let Some(f) = self.frozen.take() {
                        let elapsed_before = self.start_count - f;
                        self.start_tick = Some(now_tick.saturating_sub(elapsed_before as u64));
                    } else if self.start_tick.is_none() {
                        self.start_tick = Some(now_tick);
                    }
                }
            }
            1 | 5 if rising => {
                self.start_count = self.modulus();
                self.start_tick = Some(now_tick);
                self.edges_reported = 0;
            }
            2 | 3 => {
                if falling {
                    self.start_tick = None;
                } else if rising {
                    self.start_tick = Some(now_tick);
                    self.edges_reported = 0;
                }
            }
            _ => {}
        }
    }

    fn status(&self, now_tick: u64) -> u8 {
        (self.out(now_tick) as u8) << 7
            | (self.null_count as u8) << 6
            | (self.access as u8) << 4
            | self.mode << 1
            | self.bcd as u8
    }

    fn latch_count(&mut self, now_tick: u64) {
        if self.latched.is_none() {
            let c = self.count(now_tick);
            let c = if self.bcd { to_bcd(c) } else { c as u16 };
            self.latched = Some((c, self.access, true));
        }
    }

    fn read(&mut self, now_tick: u64) -> u8 {
        if let Some(s) = self.status_latched.take() {
            return s;
        }
        if let Some((value, access, lsb_next)) = self.latched {
            return match access {
                Access::Lsb => {
                    self.latched = None;
                    value as u8
                }
                Access::Msb => {
                    self.latched = None;
                    (value >> 8) as u8
                }
                Access::Word if lsb_next => {
                    self.latched = Some((value, access, false));
                    value as u8
                }
                Access::Word => {
                    self.latched = None;
                    (value >> 8) as u8
                }
            };
        }
        let c = self.count(now_tick);
        let c = if self.bcd { to_bcd(c) } else { c as u16 };
        match self.access {
            Access::Lsb => c as u8,
            Access::Msb => (c >> 8) as u8,
            Access::Word => {
                let msb = self.read_msb_next;
                self.read_msb_next = !msb;
                if msb {
                    (c >> 8) as u8
                } else {
                    c as u8
                }
            }
        }
    }

    fn write(&mut self, val: u8, now_tick: u64) {
        match self.access {
            Access::Lsb => self.load(val as u32, now_tick),
            Access::Msb => self.load((val as u32) << 8, now_tick),
            Access::Word => {
                if self.write_lsb_next {
                    self.write_low = val;
                    self.write_lsb_next = false;
                    // Mode 0: writing the first byte stops the count.
                    if self.mode == 0 {
                        self.start_tick = None;
                        self.null_count = true;
                    }
                } else {
                    self.write_lsb_next = true;
                    self.load(self.write_low as u32 | (val as u32) << 8, now_tick);
                }
            }
        }
    }

    fn control(&mut self, val: u8) {
        let access = match (val >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        let mode = match (val >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        self.access = access;
        self.mode = mode;
        self.bcd = val & 1 != 0;
        self.write_lsb_next = true;
        self.read_msb_next = false;
        self.latched = None;
        self.null_count = true;
        self.start_tick = None;
        self.frozen = None;
    }
}

/// The 8254 with its three channels: 0 drives IRQ0, 1 is the legacy refresh timer, 2 feeds
/// the speaker and is gated by port 0x61.
pub struct Pit {
    channels: [Channel; 3],
    clock: Rc<dyn Clock>,
    irq0: IrqLine,
    speaker_data: bool,
}

impl Pit {
    pub fn new(clock: Rc<dyn Clock>, irq0: IrqLine) -> Self {
        let mut channels: [Channel; 3] = Default::default();
        channels[0].gate = true;
        channels[1].gate = true;
        for c in &mut channels {
            c.write_lsb_next = true;
        }
        Self {
            channels,
            clock,
            irq0,
            speaker_data: false,
        }
    }

    fn now_tick(&self) -> u64 {
        ns_to_ticks(self.clock.now_ns())
    }

    /// Raises IRQ0 for every rising edge of channel 0's OUT up to `now_tick` (coalesced:
    /// edges missed while the host was busy count once, as lost ticks on real hardware).
    fn update_irq(&mut self, now_tick: u64) {
        let ch = &mut self.channels[0];
        let Some(start) = ch.start_tick.filter(|_| ch.frozen.is_none()) else {
            return;
        };
        let mut fired = false;
        while let Some(edge) = ch.rising_edge(ch.edges_reported + 1) {
            if start + edge > now_tick {
                break;
            }
            fired = true;
            // Skip to the last elapsed edge in one step for periodic modes.
            let n = ch.modulus() as u64;
            if matches!(ch.mode, 2 | 3) {
                ch.edges_reported = (now_tick - start) / n;
            } else {
                ch.edges_reported += 1;
            }
        }
        if fired {
            self.irq0.pulse();
        }
    }

    fn write_control(&mut self, val: u8, now_tick: u64) {
        let sel = (val >> 6) as usize;
        if sel == 3 {
            // Read-back command: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if val & (2 << i) == 0 {
                    continue;
                }
                if val & 0x10 == 0 && ch.status_latched.is_none() {
                    ch.status_latched = Some(ch.status(now_tick));
                }
                if val & 0x20 == 0 {
                    ch.latch_count(now_tick);
                }
            }
            return;
        }
        let ch = &mut self.channels[sel];
        if (val >> 4) & 3 == 0 {
            ch.latch_count(now_tick);
        } else {
            ch.control(val);
        }
    }

    fn port61(&self, now_tick: u64) -> u8 {
        let ch2 = &self.channels[2];
        // The refresh request bit toggles every 15.085 us (18 PIT ticks).
        let refresh = (now_tick / 18) & 1 != 0;
        (ch2.gate as u8)
            | (self.speaker_data as u8) << 1
            | (refresh as u8) << 4
            | (ch2.out(now_tick) as u8) << 5
    }

    /// Counter value of a channel (for tests and `--stats`).
    pub fn count(&self, channel: usize) -> u32 {
        self.channels[channel].count(self.now_tick())
    }
}

/// Offset at which port 0x61 reaches the PIT (0x40 + 0x21): register the PIT at 0x40 (4
/// ports) and at 0x61 with this offset.
pub const PORT61_OFFSET: u64 = 0x21;

impl BusDevice for Pit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.now_tick();
        self.update_irq(now);
        data[0] = match offset {
            0..=2 => self.channels[offset as usize].read(now),
            0x21 => self.port61(now),
            _ => 0xFF, // the control word register is write-only
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let now = self.now_tick();
        self.update_irq(now);
        match offset {
            0..=2 => self.channels[offset as usize].write(data[0], now),
            3 => self.write_control(data[0], now),
            0x21 => {
                self.speaker_data = data[0] & 2 != 0;
                self.channels[2].set_gate(data[0] & 1 != 0, now);
            }
            _ => {}
        }
    }
}

impl Timed for Pit {
    fn next_deadline(&self) -> Option<u64> {
        let ch = &self.channels[0];
        let start = ch.start_tick.filter(|_| ch.frozen.is_none())?;
        let edge = ch.rising_edge(ch.edges_reported + 1)?;
        Some(ticks_to_ns(start + edge))
    }

    fn on_timer(&mut self, now: u64) {
        self.update_irq(ns_to_ticks(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::irq::IrqWires;

    struct Rig {
        clock: Rc<ManualClock>,
        wires: Rc<IrqWires>,
        pit: Pit,
    }

    fn rig() -> Rig {
        let clock = Rc::new(ManualClock::new(0));
        let wires = IrqWires::new();
        let pit = Pit::new(clock.clone(), wires.line(0));
        Rig { clock, wires, pit }
    }

    fn out(p: &mut Pit, port: u64, v: u8) {
        p.write(port, &[v]);
    }
    fn inb(p: &mut Pit, port: u64) -> u8 {
        let mut d = [0];
        p.read(port, &mut d);
        d[0]
    }
    fn at_tick(r: &Rig, t: u64) {
        r.clock.set(ticks_to_ns(t));
    }
    fn read_latched(p: &mut Pit, ch: u8) -> u16 {
        out(p, 3, ch << 6); // counter latch
        let lo = inb(p, ch as u64) as u16;
        lo | (inb(p, ch as u64) as u16) << 8
    }

    #[test]
    fn mode2_rate_generator_counts_and_interrupts() {
        let mut r = rig();
        out(&mut r.pit, 3, 0x34); // ch0, lsb/msb, mode 2
        out(&mut r.pit, 0, 100);
        out(&mut r.pit, 0, 0);
        at_tick(&r, 30);
        assert_eq!(read_latched(&mut r.pit, 0), 70);
        assert_eq!(r.pit.next_deadline(), Some(ticks_to_ns(100)));
        at_tick(&r, 100);
        r.pit.on_timer(r.clock.now_ns());
        assert_eq!(r.wires.take_rising(), 1);
        assert_eq!(r.pit.next_deadline(), Some(ticks_to_ns(200)));
        assert_eq!(read_latched(&mut r.pit, 0), 100);
        // Several periods missed: one coalesced edge, next deadline after now.
        at_tick(&r, 555);
        r.pit.on_timer(r.clock.now_ns());
        assert_eq!(r.wires.take_rising(), 1);
        assert_eq!(r.pit.next_deadline(), Some(ticks_to_ns(600)));
        assert_eq!(read_latched(&mut r.pit, 0), 45);
    }

    #[test]
    fn mode0_interrupt_on_terminal_count_then_wraps() {
        let mut r = rig();
        out(&mut r.pit, 3, 0x30); // ch0, lsb/msb, mode 0
        out(&mut r.pit, 3, 0xE2); // read-back status ch0
        assert_eq!(inb(&mut r.pit, 0) & 0xC0, 0x40, "OUT low, null count");
        out(&mut r.pit, 0, 0x10);
        out(&mut r.pit, 0, 0x00);
        at_tick(&r, 15);
        assert_eq!(read_latched(&mut r.pit, 0), 1);
        out(&mut r.pit, 3, 0xE2);
        assert_eq!(inb(&mut r.pit, 0) & 0xC0, 0x00, "OUT low, count valid");
        at_tick(&r, 16);
        r.pit.on_timer(r.clock.now_ns());
        assert_eq!(r.wires.take_rising(), 1);
        assert_eq!(r.pit.next_deadline(), None, "one-shot");
        at_tick(&r, 18);
        assert_eq!(read_latched(&mut r.pit, 0), 0xFFFE);
        out(&mut r.pit, 3, 0xE2);
        assert_eq!(inb(&mut r.pit, 0) & 0x80, 0x80, "OUT high after TC");
    }

    #[test]
    fn mode3_square_wave_counts_by_two() {
        let mut r = rig();
        out(&mut r.pit, 3, 0x36);
        out(&mut r.pit, 0, 10);
        out(&mut r.pit, 0, 0);
        at_tick(&r, 2);
        assert_eq!(read_latched(&mut r.pit, 0), 6);
        out(&mut r.pit, 3, 0xE2);
        assert_eq!(inb(&mut r.pit, 0) >> 7, 1, "high in first half");
        at_tick(&r, 7);
        out(&mut r.pit, 3, 0xE2);
        assert_eq!(inb(&mut r.pit, 0) >> 7, 0, "low in second half");
        assert_eq!(r.pit.next_deadline(), Some(ticks_to_ns(10)));
    }

    #[test]
    fn lsb_only_msb_only_and_word_reads() {
        let mut r = rig();
        out(&mut r.pit, 3, 0x94); // ch2, lsb only, mode 2
        out(&mut r.pit, 0x21, 1); // gate on
        out(&mut r.pit, 2, 50);
        at_tick(&r, 10);
        assert_eq!(inb(&mut r.pit, 2), 40);
        out(&mut r.pit, 3, 0xA4); // ch2, msb only, mode 2
        out(&mut r.pit, 2, 0x02); // count 0x200
        at_tick(&r, 10 + 0x100);
        assert_eq!(inb(&mut r.pit, 2), 0x01);
        // Unlatched word reads alternate lsb/msb.
        out(&mut r.pit, 3, 0xB4);
        out(&mut r.pit, 2, 0x00);
        out(&mut r.pit, 2, 0x10);
        at_tick(&r, 10 + 0x100 + 0x10);
        assert_eq!(inb(&mut r.pit, 2), 0xF0);
        assert_eq!(inb(&mut r.pit, 2), 0x0F);
    }

    #[test]
    fn latch_holds_value_until_read() {
        let mut r = rig();
        out(&mut r.pit, 3, 0x34);
        out(&mut r.pit, 0, 0);
        out(&mut r.pit, 0, 0); // 65536
        at_tick(&r, 1000);
        out(&mut r.pit, 3, 0x00);
        at_tick(&r, 2000);
        out(&mut r.pit, 3, 0x00); // a second latch before reading is ignored
        let lo = inb(&mut r.pit, 0) as u32;
        let hi = inb(&mut r.pit, 0) as u32;
        assert_eq!(lo | hi << 8, 65536 - 1000);
    }

    #[test]
    fn channel2_gate_and_out_on_port61() {
        // The sequence Linux's PIT TSC calibration uses: gate low, mode 0, count, gate high,
        // then poll OUT2 in port 0x61 bit 5.
        let mut r = rig();
        out(&mut r.pit, 0x21, 0x00);
        out(&mut r.pit, 3, 0xB0);
        out(&mut r.pit, 2, 100);
        out(&mut r.pit, 2, 0);
        at_tick(&r, 500);
        assert_eq!(inb(&mut r.pit, 0x21) & 0x21, 0x00, "gate low: not counting");
        out(&mut r.pit, 0x21, 0x01);
        at_tick(&r, 599);
        assert_eq!(inb(&mut r.pit, 0x21) & 0x20, 0);
        at_tick(&r, 600);
        assert_eq!(inb(&mut r.pit, 0x21) & 0x21, 0x21);
        // Speaker data bit reads back; refresh toggles.
        out(&mut r.pit, 0x21, 0x03);
        let a = inb(&mut r.pit, 0x21) & 0x10;
        at_tick(&r, 618);
        let b = inb(&mut r.pit, 0x21) & 0x10;
        assert_ne!(a, b);
        assert_eq!(inb(&mut r.pit, 0x21) & 3, 3);
    }

    #[test]
    fn mode4_strobe_and_mode1_gate_trigger() {
        let mut r = rig();
        out(&mut r.pit, 3, 0x38); // ch0 mode 4
        out(&mut r.pit, 0, 20);
        out(&mut r.pit, 0, 0);
        assert_eq!(r.pit.next_deadline(), Some(ticks_to_ns(21)));
        at_tick(&r, 20);
        out(&mut r.pit, 3, 0xE2);
        assert_eq!(inb(&mut r.pit, 0) >> 7, 0, "strobe low at TC");
        at_tick(&r, 21);
        r.pit.on_timer(r.clock.now_ns());
        assert_eq!(r.wires.take_rising(), 1);
        // Mode 1 on channel 2: waits for a gate rising edge.
        out(&mut r.pit, 0x21, 0);
        out(&mut r.pit, 3, 0xB2);
        out(&mut r.pit, 2, 10);
        out(&mut r.pit, 2, 0);
        at_tick(&r, 40);
        assert_eq!(inb(&mut r.pit, 0x21) & 0x20, 0x20, "high until triggered");
        out(&mut r.pit, 0x21, 1);
        at_tick(&r, 45);
        assert_eq!(inb(&mut r.pit, 0x21) & 0x20, 0, "low while counting");
        assert_eq!(read_latched(&mut r.pit, 2), 5);
        at_tick(&r, 50);
        assert_eq!(inb(&mut r.pit, 0x21) & 0x20, 0x20);
    }

    #[test]
    fn bcd_counting() {
        let mut r = rig();
        out(&mut r.pit, 3, 0x35); // ch0 lsb/msb mode 2 BCD
        out(&mut r.pit, 0, 0x00);
        out(&mut r.pit, 0, 0x10); // 1000 decimal
        at_tick(&r, 1);
        assert_eq!(read_latched(&mut r.pit, 0), 0x0999);
        assert_eq!(r.pit.next_deadline(), Some(ticks_to_ns(1000)));
    }
}
