//! A local APIC as on Intel's P6 and later and AMD's K8 and later: the xAPIC register page
//! (memory-mapped at IA32_APIC_BASE) and the same registers as x2APIC MSRs 0x800-0x8FF;
//! IRR/ISR/TMR with the task- and processor-priority rules, EOI (with its broadcast to the
//! I/O APIC for level-triggered vectors), the LVT, the error status register, the ICR's
//! IPIs, and the timer in one-shot, periodic and TSC-deadline modes.
//!
//! The APIC knows nothing of CPUs: the board asks it whether an interrupt is pending and
//! acknowledges one for the CPU it belongs to, carries what it sends ([`LocalApic::drain`])
//! and tells it about messages for it ([`LocalApic::receive`]). The PIC's INTR reaches the
//! CPU through LINT0 in ExtINT mode (the PC's virtual wire), or straight when the APIC is
//! disabled in IA32_APIC_BASE.
//!
//! The timer counts the machine clock at 1 GHz (as QEMU's APIC bus), divided as the
//! divide configuration register says; counts are derived from the clock, never stepped.
//! Not modelled: SMI, the thermal and performance counter LVT sources (nothing drives
//! them), LINT1 (nothing is wired to it), focus processor checking, directed EOI.

use std::rc::Rc;

use crate::apic_bus::{DeliveryMode, Destination, Message, Outgoing};
use crate::clock::Clock;
use crate::Timed;

pub const LAPIC_DEFAULT_BASE: u64 = 0xFEE0_0000;
/// The xAPIC register page's size.
pub const LAPIC_PAGE: u64 = 0x1000;
/// The x2APIC MSR range.
pub const X2APIC_MSR_FIRST: u32 = 0x800;
pub const X2APIC_MSR_LAST: u32 = 0x8FF;

const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_EN: u64 = 1 << 11;
/// Base address bits 12-39 (a 40-bit physical address space, as CPUID 0x80000008 says).
const BASE_ADDR: u64 = 0xFF_FFFF_F000;

/// Version 0x14 (an integrated APIC), six LVT entries.
const VERSION: u32 = 0x14 | (5 << 16);

// Register numbers: xAPIC offset >> 4, x2APIC MSR - 0x800.
const REG_ID: u32 = 0x02;
const REG_VERSION: u32 = 0x03;
const REG_TPR: u32 = 0x08;
const REG_APR: u32 = 0x09;
const REG_PPR: u32 = 0x0A;
const REG_EOI: u32 = 0x0B;
const REG_RRD: u32 = 0x0C;
const REG_LDR: u32 = 0x0D;
const REG_DFR: u32 = 0x0E;
const REG_SVR: u32 = 0x0F;
const REG_ISR: u32 = 0x10;
const REG_TMR: u32 = 0x18;
const REG_IRR: u32 = 0x20;
const REG_ESR: u32 = 0x28;
const REG_ICR_LOW: u32 = 0x30;
const REG_ICR_HIGH: u32 = 0x31;
const REG_LVT_TIMER: u32 = 0x32;
const REG_LVT_LAST: u32 = 0x37;
const REG_TIMER_INITIAL: u32 = 0x38;
const REG_TIMER_CURRENT: u32 = 0x39;
const REG_TIMER_DIVIDE: u32 = 0x3E;
const REG_SELF_IPI: u32 = 0x3F;

// LVT entries, in register order.
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_ERROR: usize = 5;
const LVT_MASKED: u32 = 1 << 16;
/// The bits software may write in each LVT entry: vector, delivery mode (not the timer's
/// or the error entry's), polarity and trigger (LINT0/1), mask, timer mode.
const LVT_WRITABLE: [u32; 6] = [
    0x0006_00FF,
    0x0001_07FF,
    0x0001_07FF,
    0x0001_A7FF,
    0x0001_A7FF,
    0x0001_00FF,
];
const TIMER_PERIODIC: u32 = 1 << 17;
const TIMER_TSC_DEADLINE: u32 = 2 << 17;
const TIMER_MODE: u32 = 3 << 17;

const SVR_ENABLE: u32 = 1 << 8;
/// Vector, software enable, focus checking (bit 9; accepted, not acted on).
const SVR_WRITABLE: u32 = 0x3FF;

// Error status bits.
const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// An MSR access the APIC refuses: the CPU raises #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneralProtection;

/// What the CPU takes when it acknowledges an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acknowledged {
    /// A vector from the APIC (possibly the spurious vector).
    Vector(u8),
    /// The PIC's INTA cycle answers (ExtINT, or the APIC is disabled).
    Pic,
}

/// Counters for `--stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LapicStats {
    pub timer: u64,
    pub ipis_sent: u64,
    pub ipis_received: u64,
    pub accepted: u64,
    pub spurious: u64,
    pub nmis: u64,
    /// SMI and ExtINT messages this APIC received (the CPU side of them is not modelled).
    pub not_delivered: u64,
}

/// What INIT and start-up messages ask of the CPU, taken by its run loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartupSignals {
    pub init: bool,
    /// The last start-up IPI's vector since the CPU last looked.
    pub sipi: Option<u8>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Timer {
    initial: u32,
    /// The divide configuration register (bits 0, 1, 3).
    divide: u32,
    /// Clock time the current count was last `initial` (the count was loaded, or a period
    /// began before the divisor changed).
    start: u64,
    /// When the next interrupt is due.
    next: Option<u64>,
    /// IA32_TSC_DEADLINE as the guest wrote it (0: disarmed).
    tsc_deadline: u64,
}

impl Timer {
    fn divisor(&self) -> u64 {
        let shift = (self.divide & 3) | ((self.divide >> 1) & 4);
        1 << ((shift + 1) & 7)
    }

    fn period(&self) -> u64 {
        u64::from(self.initial) * self.divisor()
    }

    fn current(&self, now: u64, periodic: bool) -> u32 {
        if self.initial == 0 {
            return 0;
        }
        let ticks = now.saturating_sub(self.start) / self.divisor();
        if periodic {
            self.initial - (ticks % u64::from(self.initial)) as u32
        } else {
            u64::from(self.initial).saturating_sub(ticks) as u32
        }
    }
}

pub struct LocalApic {
    id: u32,
    base: u64,
    clock: Rc<dyn Clock>,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    irr: [u32; 8],
    isr: [u32; 8],
    tmr: [u32; 8],
    /// Whether any IRR bit is set: the CPU asks at every block boundary.
    irr_any: bool,
    esr: u32,
    esr_pending: u32,
    icr: u64,
    lvt: [u32; 6],
    timer: Timer,
    outbox: Vec<Outgoing>,
    startup: StartupSignals,
    /// An NMI message waits for the CPU.
    nmi: bool,
    stats: LapicStats,
}

fn vector_bit(regs: &[u32; 8], v: u8) -> bool {
    regs[usize::from(v >> 5)] & (1 << (v & 31)) != 0
}

fn set_vector_bit(regs: &mut [u32; 8], v: u8, on: bool) {
    let word = &mut regs[usize::from(v >> 5)];
    if on {
        *word |= 1 << (v & 31);
    } else {
        *word &= !(1 << (v & 31));
    }
}

fn highest(regs: &[u32; 8]) -> Option<u8> {
    (0..8)
        .rev()
        .find(|&i| regs[i] != 0)
        .map(|i| (i * 32 + 31 - regs[i].leading_zeros() as usize) as u8)
}

impl LocalApic {
    /// The APIC of the CPU with APIC ID `id`, as at power-up; `bsp` for the bootstrap
    /// processor's.
    pub fn new(id: u32, bsp: bool, clock: Rc<dyn Clock>) -> Self {
        let mut apic = Self {
            id,
            base: LAPIC_DEFAULT_BASE | BASE_EN | if bsp { BASE_BSP } else { 0 },
            clock,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            irr: [0; 8],
            isr: [0; 8],
            tmr: [0; 8],
            irr_any: false,
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [0; 6],
            timer: Timer::default(),
            outbox: Vec::new(),
            startup: StartupSignals::default(),
            nmi: false,
            stats: LapicStats::default(),
        };
        apic.reset_registers();
        if bsp {
            // The PIC's interrupts reach the BSP through LINT0 from the start, as QEMU's
            // APIC does: a PC's firmware programs LINT0 as ExtINT before any OS runs, and
            // guests booted without firmware (a kernel, a test kernel) expect the 8259s to
            // work as they found them.
            apic.lvt[LVT_LINT0] = 7 << 8;
        }
        apic
    }

    /// The register state of power-up and INIT (the ID and the base stay).
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xFFFF_FFFF;
        self.svr = 0xFF;
        self.irr = [0; 8];
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr_any = false;
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [LVT_MASKED; 6];
        self.timer = Timer::default();
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn stats(&self) -> LapicStats {
        self.stats
    }

    /// CR8: the task priority's class.
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr >> 4)
    }

    pub fn set_cr8(&mut self, v: u64) {
        self.tpr = ((v & 0xF) << 4) as u8;
    }

    /// Enabled in IA32_APIC_BASE (CPUID.1:EDX.APIC follows it).
    pub fn hw_enabled(&self) -> bool {
        self.base & BASE_EN != 0
    }

    pub fn x2apic(&self) -> bool {
        self.base & (BASE_EN | BASE_EXTD) == BASE_EN | BASE_EXTD
    }

    fn sw_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// Where the xAPIC register page is decoded; `None` when the APIC is disabled or in
    /// x2APIC mode (whose registers are MSRs only).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.hw_enabled() && !self.x2apic()).then_some(self.base & BASE_ADDR)
    }

    pub fn base_msr(&self) -> u64 {
        self.base
    }

    /// A write to IA32_APIC_BASE; `Err` for what raises #GP: reserved bits, x2APIC mode
    /// without the enable bit, leaving x2APIC mode other than by disabling, entering it
    /// from disabled.
    pub fn set_base_msr(&mut self, v: u64) -> Result<(), GeneralProtection> {
        if v & !(BASE_ADDR | BASE_EN | BASE_EXTD | BASE_BSP) != 0 {
            return Err(GeneralProtection);
        }
        let (en, extd) = (v & BASE_EN != 0, v & BASE_EXTD != 0);
        let valid = match (en, extd) {
            (false, true) => false,
            (true, false) => !self.x2apic(),
            (true, true) => self.hw_enabled(),
            (false, false) => true,
        };
        if !valid {
            return Err(GeneralProtection);
        }
        let was_enabled = self.hw_enabled();
        let entering_x2apic = extd && !self.x2apic();
        self.base = (v & !BASE_BSP) | (self.base & BASE_BSP);
        if was_enabled && !en {
            self.reset_registers();
        }
        if entering_x2apic {
            // The logical ID is derived from the APIC ID in x2APIC mode.
            self.ldr = ((self.id >> 4) << 16) | (1 << (self.id & 15));
        }
        Ok(())
    }

    fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The highest requested vector whose priority class is above the processor's.
    fn deliverable(&self) -> Option<u8> {
        if !self.irr_any {
            return None;
        }
        highest(&self.irr).filter(|v| v >> 4 > self.ppr() >> 4)
    }

    fn extint_through_lint0(&self) -> bool {
        let lint0 = self.lvt[LVT_LINT0];
        lint0 & LVT_MASKED == 0 && (lint0 >> 8) & 7 == 7
    }

    /// Whether the CPU has an interrupt to take, given the PIC's INTR output.
    pub fn has_interrupt(&self, pic_int: bool) -> bool {
        if !self.hw_enabled() {
            return pic_int;
        }
        self.deliverable().is_some() || (pic_int && self.extint_through_lint0())
    }

    /// The CPU takes an interrupt: the highest deliverable vector moves from IRR to ISR;
    /// else the PIC answers through LINT0; else (the request went away) the spurious
    /// vector, which sets no ISR bit.
    pub fn acknowledge(&mut self, pic_int: bool) -> Acknowledged {
        if !self.hw_enabled() {
            return Acknowledged::Pic;
        }
        if let Some(v) = self.deliverable() {
            set_vector_bit(&mut self.irr, v, false);
            self.irr_any = self.irr.iter().any(|w| *w != 0);
            set_vector_bit(&mut self.isr, v, true);
            self.stats.accepted += 1;
            return Acknowledged::Vector(v);
        }
        if pic_int && self.extint_through_lint0() {
            return Acknowledged::Pic;
        }
        self.stats.spurious += 1;
        Acknowledged::Vector(self.svr as u8)
    }

    /// Requests `vector` (fixed delivery), as the APIC's own sources and received messages
    /// do.
    fn accept(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.set_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        set_vector_bit(&mut self.irr, vector, true);
        set_vector_bit(&mut self.tmr, vector, level);
        self.irr_any = true;
    }

    fn set_error(&mut self, bit: u32) {
        let new = self.esr_pending & bit == 0;
        self.esr_pending |= bit;
        let lvt = self.lvt[LVT_ERROR];
        if new && lvt & LVT_MASKED == 0 && lvt as u8 >= 16 {
            self.accept(lvt as u8, false);
        }
    }

    /// Whether a message's destination names this APIC (the shorthands are the board's:
    /// they depend on who sent the message).
    pub fn is_destination(&self, dest: Destination) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        let x2 = self.x2apic();
        match dest {
            Destination::Physical(d) => {
                let broadcast = if x2 { 0xFFFF_FFFF } else { 0xFF };
                d == broadcast || d == self.id || (!x2 && d & 0xFF == 0xFF)
            }
            Destination::Logical(d) if x2 => {
                d == 0xFFFF_FFFF || (d >> 16 == self.ldr >> 16 && d & self.ldr & 0xFFFF != 0)
            }
            Destination::Logical(d) => {
                let (d, ldr) = (d as u8, (self.ldr >> 24) as u8);
                if d == 0xFF {
                    true
                } else if self.dfr >> 28 == 0xF {
                    d & ldr != 0
                } else {
                    d >> 4 == ldr >> 4 && d & ldr & 0xF != 0
                }
            }
            Destination::ToSelf | Destination::All | Destination::AllButSelf => true,
        }
    }

    /// The priority lowest-priority delivery arbitrates on.
    pub fn arbitration_priority(&self) -> u8 {
        self.tpr
    }

    /// A message for this APIC.
    pub fn receive(&mut self, m: &Message, ipi: bool) {
        self.stats.ipis_received += ipi as u64;
        match m.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if self.sw_enabled() {
                    self.accept(m.vector, m.level);
                }
            }
            DeliveryMode::Init => {
                // INIT puts the APIC in its power-up state (but its ID and base) too.
                self.reset_registers();
                self.startup = StartupSignals {
                    init: true,
                    sipi: None,
                };
            }
            DeliveryMode::StartUp => self.startup.sipi = Some(m.vector),
            DeliveryMode::Nmi => self.nmi = true,
            DeliveryMode::Smi | DeliveryMode::ExtInt => self.stats.not_delivered += 1,
        }
    }

    /// Whether an NMI waits for the CPU (it is not masked by IF or the priorities).
    pub fn nmi_pending(&self) -> bool {
        self.nmi
    }

    /// The CPU takes the NMI.
    pub fn take_nmi(&mut self) -> bool {
        let taken = std::mem::take(&mut self.nmi);
        self.stats.nmis += taken as u64;
        taken
    }

    /// INIT and start-up messages received since the last call.
    pub fn take_startup(&mut self) -> StartupSignals {
        std::mem::take(&mut self.startup)
    }

    pub fn has_startup(&self) -> bool {
        self.startup != StartupSignals::default()
    }

    /// What the APIC has sent since the last call: IPIs and EOI broadcasts.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Outgoing> {
        self.outbox.drain(..)
    }

    pub fn has_outgoing(&self) -> bool {
        !self.outbox.is_empty()
    }

    fn eoi(&mut self) {
        if let Some(v) = highest(&self.isr) {
            set_vector_bit(&mut self.isr, v, false);
            if vector_bit(&self.tmr, v) {
                self.outbox.push(Outgoing::Eoi(v));
            }
        }
    }

    fn send_ipi(&mut self) {
        let low = self.icr as u32;
        let Some(mode) = DeliveryMode::from_bits(low >> 8) else {
            return;
        };
        let vector = low as u8;
        let level = low & (1 << 15) != 0;
        let assert = low & (1 << 14) != 0;
        if mode == DeliveryMode::Init && level && !assert {
            // INIT level de-assert: the P6's arbitration ID synchronization, a no-op since
            // the Pentium 4.
            return;
        }
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.set_error(ESR_SEND_ILLEGAL_VECTOR);
            return;
        }
        let field = if self.x2apic() {
            (self.icr >> 32) as u32
        } else {
            (self.icr >> 56) as u32
        };
        let dest = match (low >> 18) & 3 {
            0 if low & (1 << 11) != 0 => Destination::Logical(field),
            0 => Destination::Physical(field),
            1 => Destination::ToSelf,
            2 => Destination::All,
            _ => Destination::AllButSelf,
        };
        self.stats.ipis_sent += 1;
        self.outbox.push(Outgoing::Interrupt(Message {
            dest,
            mode,
            vector,
            level: level && mode == DeliveryMode::Fixed,
        }));
    }

    fn periodic(&self) -> bool {
        self.lvt[LVT_TIMER] & TIMER_MODE == TIMER_PERIODIC
    }

    fn tsc_deadline_mode(&self) -> bool {
        self.lvt[LVT_TIMER] & TIMER_MODE == TIMER_TSC_DEADLINE
    }

    fn write_lvt(&mut self, i: usize, v: u32) {
        let old = self.lvt[i];
        let mut v = v & LVT_WRITABLE[i];
        if i == LVT_TIMER && v & TIMER_MODE == 3 << 17 {
            // The reserved timer mode: kept as one-shot.
            v &= !TIMER_MODE;
        }
        if !self.sw_enabled() {
            v |= LVT_MASKED;
        }
        self.lvt[i] = v | (old & !LVT_WRITABLE[i] & (1 << 14));
        if i == LVT_TIMER && (old ^ v) & TIMER_TSC_DEADLINE != 0 {
            // Entering or leaving TSC-deadline mode disarms the timer.
            self.timer = Timer {
                divide: self.timer.divide,
                ..Timer::default()
            };
        } else if i == LVT_TIMER && (old ^ v) & TIMER_PERIODIC != 0 {
            self.rearm(self.clock.now_ns());
        }
    }

    /// Recomputes when the count next reaches zero, counting from `start`.
    fn rearm(&mut self, now: u64) {
        let periodic = self.periodic();
        let t = &mut self.timer;
        if t.initial == 0 {
            t.next = None;
            return;
        }
        let period = t.period();
        let first = t.start + period;
        t.next = if first > now {
            Some(first)
        } else if periodic {
            Some(first + ((now - first) / period + 1) * period)
        } else {
            None
        };
    }

    /// IA32_TSC_DEADLINE as the guest last wrote it (0 once it has fired).
    pub fn tsc_deadline(&self) -> u64 {
        if self.tsc_deadline_mode() {
            self.timer.tsc_deadline
        } else {
            0
        }
    }

    /// A write of IA32_TSC_DEADLINE, `at_ns` being the clock time the TSC reaches it
    /// (the CPU knows its TSC's offset). Ignored outside TSC-deadline mode.
    pub fn set_tsc_deadline(&mut self, tsc: u64, at_ns: u64) {
        if !self.tsc_deadline_mode() {
            return;
        }
        self.timer.tsc_deadline = tsc;
        self.timer.next = (tsc != 0).then_some(at_ns);
    }

    /// Reads register `reg` (xAPIC offset >> 4); `None` where x2APIC raises #GP.
    fn read_reg(&mut self, reg: u32) -> Option<u32> {
        let x2 = self.x2apic();
        Some(match reg {
            REG_ID if x2 => self.id,
            REG_ID => self.id << 24,
            REG_VERSION => VERSION,
            REG_TPR => u32::from(self.tpr),
            REG_APR if !x2 => 0,
            REG_PPR => u32::from(self.ppr()),
            REG_EOI | REG_RRD if !x2 => 0,
            REG_LDR => self.ldr,
            REG_DFR if !x2 => self.dfr,
            REG_SVR => self.svr,
            REG_ISR..=0x17 => self.isr[(reg - REG_ISR) as usize],
            REG_TMR..=0x1F => self.tmr[(reg - REG_TMR) as usize],
            REG_IRR..=0x27 => self.irr[(reg - REG_IRR) as usize],
            REG_ESR => self.esr,
            REG_ICR_LOW => self.icr as u32,
            REG_ICR_HIGH if !x2 => (self.icr >> 32) as u32,
            REG_LVT_TIMER..=REG_LVT_LAST => self.lvt[(reg - REG_LVT_TIMER) as usize],
            REG_TIMER_INITIAL => self.timer.initial,
            REG_TIMER_CURRENT => {
                if self.tsc_deadline_mode() {
                    0
                } else {
                    self.timer.current(self.clock.now_ns(), self.periodic())
                }
            }
            REG_TIMER_DIVIDE => self.timer.divide,
            _ if x2 => return None,
            _ => {
                self.set_error(ESR_ILLEGAL_REGISTER);
                0
            }
        })
    }

    /// Writes register `reg`; `Err` where x2APIC raises #GP (read-only and reserved
    /// registers, a non-zero EOI or ESR write).
    fn write_reg(&mut self, reg: u32, v: u32) -> Result<(), GeneralProtection> {
        let x2 = self.x2apic();
        match reg {
            REG_ID if !x2 => self.id = v >> 24,
            REG_TPR => self.tpr = v as u8,
            REG_EOI | REG_ESR if x2 && v != 0 => return Err(GeneralProtection),
            REG_EOI => self.eoi(),
            REG_LDR if !x2 => self.ldr = v & 0xFF00_0000,
            REG_DFR if !x2 => self.dfr = v | 0x0FFF_FFFF,
            REG_SVR => {
                self.svr = v & SVR_WRITABLE;
                if !self.sw_enabled() {
                    for e in &mut self.lvt {
                        *e |= LVT_MASKED;
                    }
                }
            }
            REG_ESR => self.esr = std::mem::take(&mut self.esr_pending),
            REG_ICR_LOW if !x2 => {
                self.icr = (self.icr & !0xFFFF_FFFF) | u64::from(v & !(1 << 12));
                self.send_ipi();
            }
            REG_ICR_HIGH if !x2 => self.icr = (self.icr & 0xFFFF_FFFF) | u64::from(v) << 32,
            REG_LVT_TIMER..=REG_LVT_LAST => self.write_lvt((reg - REG_LVT_TIMER) as usize, v),
            REG_TIMER_INITIAL => {
                if !self.tsc_deadline_mode() {
                    let now = self.clock.now_ns();
                    self.timer.initial = v;
                    self.timer.start = now;
                    self.rearm(now);
                }
            }
            REG_TIMER_DIVIDE => {
                let now = self.clock.now_ns();
                let periodic = self.periodic();
                let count = self.timer.current(now, periodic);
                self.timer.divide = v & 0xB;
                if self.timer.initial != 0 && count != 0 {
                    // Go on from the current count at the new rate.
                    let done = u64::from(self.timer.initial - count) * self.timer.divisor();
                    self.timer.start = now - done.min(now);
                    self.rearm(now);
                }
            }
            REG_SELF_IPI if x2 => {
                self.stats.ipis_sent += 1;
                self.accept(v as u8, false);
            }
            REG_VERSION | REG_APR | REG_PPR | REG_RRD | REG_ISR..=0x27 | REG_TIMER_CURRENT
                if !x2 => {}
            _ if x2 => return Err(GeneralProtection),
            _ => self.set_error(ESR_ILLEGAL_REGISTER),
        }
        Ok(())
    }

    /// An access to the xAPIC page at `offset`. Registers are 32 bits wide on 16-byte
    /// boundaries; narrower reads see part of one, other writes are dropped.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        let within = (offset & 0xF) as usize;
        let v = if within < 4 {
            self.read_reg((offset >> 4) as u32 & 0xFF).unwrap_or(0)
        } else {
            0
        };
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(within + i).copied().unwrap_or(0);
        }
    }

    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        if offset & 0xF != 0 || data.len() < 4 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let _ = self.write_reg((offset >> 4) as u32 & 0xFF, v);
    }

    /// RDMSR of an x2APIC register; `None` raises #GP (also outside x2APIC mode).
    pub fn read_msr(&mut self, msr: u32) -> Option<u64> {
        if !self.x2apic() || !(X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr) {
            return None;
        }
        let reg = msr - X2APIC_MSR_FIRST;
        if reg == REG_ICR_LOW {
            return Some(self.icr);
        }
        if reg == REG_SELF_IPI {
            return None;
        }
        self.read_reg(reg).map(u64::from)
    }

    /// WRMSR of an x2APIC register; `Err` raises #GP.
    pub fn write_msr(&mut self, msr: u32, v: u64) -> Result<(), GeneralProtection> {
        if !self.x2apic() || !(X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr) {
            return Err(GeneralProtection);
        }
        let reg = msr - X2APIC_MSR_FIRST;
        if reg == REG_ICR_LOW {
            self.icr = v & !(1 << 12);
            self.send_ipi();
            return Ok(());
        }
        if v >> 32 != 0 {
            return Err(GeneralProtection);
        }
        self.write_reg(reg, v as u32)
    }
}

impl Timed for LocalApic {
    fn next_deadline(&self) -> Option<u64> {
        self.timer.next
    }

    fn on_timer(&mut self, now: u64) {
        let Some(due) = self.timer.next.filter(|&t| t <= now) else {
            return;
        };
        self.stats.timer += 1;
        let lvt = self.lvt[LVT_TIMER];
        if lvt & LVT_MASKED == 0 {
            self.accept(lvt as u8, false);
        }
        self.timer.next = if self.periodic() && self.timer.initial != 0 {
            // Periods that passed unserviced are one interrupt, as one IRR bit holds.
            let period = self.timer.period();
            Some(due + ((now - due) / period + 1) * period)
        } else {
            self.timer.tsc_deadline = 0;
            None
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn apic() -> (LocalApic, Rc<ManualClock>) {
        let clock = Rc::new(ManualClock::new(0));
        (LocalApic::new(0, true, clock.clone()), clock)
    }

    fn write(a: &mut LocalApic, off: u64, v: u32) {
        a.mmio_write(off, &v.to_le_bytes());
    }

    fn read(a: &mut LocalApic, off: u64) -> u32 {
        let mut b = [0u8; 4];
        a.mmio_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn fixed(vector: u8) -> Message {
        Message {
            dest: Destination::Physical(0),
            mode: DeliveryMode::Fixed,
            vector,
            level: false,
        }
    }

    #[test]
    fn priority_rules_hold_lower_classes_until_eoi() {
        let (mut a, _) = apic();
        write(&mut a, 0xF0, 0x1FF);
        a.receive(&fixed(0x41), false);
        assert_eq!(a.acknowledge(false), Acknowledged::Vector(0x41));
        // Same class as the one in service: held.
        a.receive(&fixed(0x45), false);
        assert!(!a.has_interrupt(false));
        // A higher class nests.
        a.receive(&fixed(0x61), false);
        assert_eq!(a.acknowledge(false), Acknowledged::Vector(0x61));
        assert_eq!(read(&mut a, 0xA0), 0x60, "PPR");
        write(&mut a, 0xB0, 0);
        assert!(!a.has_interrupt(false), "0x41 still in service");
        write(&mut a, 0xB0, 0);
        assert_eq!(a.acknowledge(false), Acknowledged::Vector(0x45));
        // TPR masks a class and below.
        write(&mut a, 0xB0, 0);
        write(&mut a, 0x80, 0x50);
        a.receive(&fixed(0x52), false);
        assert!(!a.has_interrupt(false));
        write(&mut a, 0x80, 0x40);
        assert!(a.has_interrupt(false));
    }

    #[test]
    fn level_triggered_eoi_is_broadcast() {
        let (mut a, _) = apic();
        write(&mut a, 0xF0, 0x1FF);
        a.receive(
            &Message {
                level: true,
                ..fixed(0x30)
            },
            false,
        );
        assert_eq!(a.acknowledge(false), Acknowledged::Vector(0x30));
        write(&mut a, 0xB0, 0);
        assert_eq!(a.drain().collect::<Vec<_>>(), vec![Outgoing::Eoi(0x30)]);
    }

    #[test]
    fn the_pic_reaches_the_cpu_through_lint0_or_past_a_disabled_apic() {
        let (mut a, _) = apic();
        assert!(a.has_interrupt(true));
        assert_eq!(a.acknowledge(true), Acknowledged::Pic);
        write(&mut a, 0xF0, 0x1FF);
        write(&mut a, 0x350, 1 << 16);
        assert!(!a.has_interrupt(true), "LINT0 masked");
        a.set_base_msr(LAPIC_DEFAULT_BASE).unwrap();
        assert!(
            a.has_interrupt(true),
            "APIC disabled: the PIC's INTR goes straight"
        );
        assert_eq!(a.mmio_base(), None);
    }

    #[test]
    fn one_shot_periodic_and_deadline_timers() {
        let (mut a, clock) = apic();
        write(&mut a, 0xF0, 0x1FF);
        write(&mut a, 0x3E0, 0x3); // divide by 16
        write(&mut a, 0x320, 0x40);
        write(&mut a, 0x380, 1000);
        assert_eq!(a.next_deadline(), Some(16_000));
        clock.set(8_000);
        assert_eq!(read(&mut a, 0x390), 500);
        clock.set(16_000);
        a.on_timer(16_000);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(read(&mut a, 0x390), 0);
        assert_eq!(a.acknowledge(false), Acknowledged::Vector(0x40));
        write(&mut a, 0xB0, 0);

        write(&mut a, 0x320, 0x40 | TIMER_PERIODIC);
        write(&mut a, 0x380, 100);
        assert_eq!(a.next_deadline(), Some(16_000 + 1_600));
        // Three periods late: one interrupt, the next on the period's grid.
        clock.set(16_000 + 5_000);
        a.on_timer(clock.now_ns());
        assert_eq!(a.next_deadline(), Some(16_000 + 4 * 1_600));
        assert_eq!(a.stats().timer, 2);

        write(&mut a, 0x320, 0x40 | TIMER_TSC_DEADLINE);
        assert_eq!(a.next_deadline(), None, "a mode change disarms");
        write(&mut a, 0x380, 100);
        assert_eq!(a.next_deadline(), None, "the initial count is ignored");
        a.set_tsc_deadline(777, 30_000);
        assert_eq!((a.next_deadline(), a.tsc_deadline()), (Some(30_000), 777));
        a.on_timer(30_000);
        assert_eq!((a.next_deadline(), a.tsc_deadline()), (None, 0));
    }

    #[test]
    fn x2apic_mode_has_msrs_and_no_page() {
        let (mut a, _) = apic();
        assert_eq!(a.read_msr(0x802), None, "#GP in xAPIC mode");
        let base = a.base_msr();
        assert!(a.set_base_msr(base & !BASE_EN | BASE_EXTD).is_err());
        a.set_base_msr(base | BASE_EXTD).unwrap();
        assert_eq!(a.mmio_base(), None);
        assert_eq!(a.read_msr(0x802), Some(0));
        assert_eq!(a.read_msr(0x80D), Some(1), "LDR from the ID");
        assert!(a.write_msr(0x80D, 5).is_err(), "LDR is read-only");
        assert!(
            a.set_base_msr(base).is_err(),
            "back to xAPIC only through disabled"
        );
        a.write_msr(0x80F, 0x1FF).unwrap();
        a.write_msr(0x83F, 0x99).unwrap();
        assert_eq!(a.acknowledge(false), Acknowledged::Vector(0x99));
        a.write_msr(0x830, 0x5_0000_00EE | (1 << 14)).unwrap();
        let sent: Vec<_> = a.drain().collect();
        assert_eq!(
            sent,
            vec![Outgoing::Interrupt(Message {
                dest: Destination::Physical(5),
                mode: DeliveryMode::Fixed,
                vector: 0xEE,
                level: false
            })]
        );
    }

    #[test]
    fn logical_destinations_flat_and_cluster() {
        let (mut a, _) = apic();
        write(&mut a, 0xD0, 0x0400_0000);
        assert!(a.is_destination(Destination::Logical(0x0C)));
        assert!(!a.is_destination(Destination::Logical(0x03)));
        write(&mut a, 0xE0, 0x0FFF_FFFF);
        write(&mut a, 0xD0, 0x2100_0000);
        assert!(a.is_destination(Destination::Logical(0x23)));
        assert!(!a.is_destination(Destination::Logical(0x13)));
    }
}
