//! The messages local APICs and the I/O APIC send one another (the APIC bus of the P6, the
//! system bus since): a delivery mode, a vector, a trigger mode and a destination. The
//! board carries them; each local APIC says whether a destination names it.

/// The delivery mode field of an ICR, a redirection table entry or an LVT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
    ExtInt,
}

impl DeliveryMode {
    /// Bits 8-10 of an ICR, LVT or redirection entry; `None` for the reserved encodings.
    pub fn from_bits(bits: u32) -> Option<Self> {
        Some(match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => return None,
        })
    }
}

/// Whom a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An APIC ID; all ones (0xFF in xAPIC mode, 0xFFFF_FFFF in x2APIC mode) is everyone.
    Physical(u32),
    /// A logical destination matched against each APIC's LDR (and DFR in xAPIC mode).
    Logical(u32),
    /// The ICR's shorthands, relative to the sender.
    ToSelf,
    All,
    AllButSelf,
}

/// One interrupt message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub dest: Destination,
    pub mode: DeliveryMode,
    pub vector: u8,
    /// Level-triggered (the receiving APIC sets TMR and broadcasts its EOI).
    pub level: bool,
}

/// What a local APIC or the I/O APIC hands the board to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outgoing {
    Interrupt(Message),
    /// An EOI of a level-triggered vector, for the I/O APIC's remote IRR.
    Eoi(u8),
}
