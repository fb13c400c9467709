//! MSI-X (PCI 3.0, 6.8.2): a function's table of message addresses and data, which it
//! writes to the local APICs' address window instead of asserting INTx. Gantry's devices
//! do not write those messages into memory: the table entry is decoded into an APIC bus
//! [`Message`] and posted to an [`MsiOutbox`] the board carries, as the chipset turns a
//! write to 0xFEExxxxx into one.

use std::cell::RefCell;
use std::rc::Rc;

use crate::apic_bus::{DeliveryMode, Destination, Message};
use crate::pci::ConfigSpace;

pub const CAPABILITY_ID: u8 = 0x11;
const ENTRY: usize = 16;
const VECTOR_MASKED: u32 = 1;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;

/// Messages the devices sent, for the board to deliver.
#[derive(Debug, Default)]
pub struct MsiOutbox {
    messages: RefCell<Vec<Message>>,
    /// Messages whose address was not the APICs' window (dropped, and counted).
    stray: std::cell::Cell<u64>,
}

impl MsiOutbox {
    pub fn new() -> Rc<Self> {
        Rc::default()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.borrow().is_empty()
    }

    pub fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.messages.borrow_mut())
    }

    pub fn stray(&self) -> u64 {
        self.stray.get()
    }

    /// Posts the message an MSI write of `data` to `address` makes.
    pub fn send(&self, address: u64, data: u32) {
        match decode(address, data) {
            Some(m) => self.messages.borrow_mut().push(m),
            None => self.stray.set(self.stray.get() + 1),
        }
    }
}

/// The message an MSI address/data pair stands for (SDM vol. 3, 11.11): the destination
/// ID in address bits 19:12, logical destination mode in bit 2; the vector, delivery mode
/// and trigger mode in the data. `None` outside the 0xFEExxxxx window or for a reserved
/// delivery mode.
pub fn decode(address: u64, data: u32) -> Option<Message> {
    if address >> 20 != 0xFEE {
        return None;
    }
    let id = ((address >> 12) & 0xFF) as u32;
    let dest = if address & 4 != 0 {
        Destination::Logical(id)
    } else {
        Destination::Physical(id)
    };
    Some(Message {
        dest,
        mode: DeliveryMode::from_bits(data >> 8)?,
        vector: data as u8,
        level: data & (1 << 15) != 0,
    })
}

/// A function's MSI-X state: the table (in a BAR), the pending bits, and the enable and
/// function mask bits of its capability's message control register.
pub struct MsiX {
    table: Vec<[u32; 4]>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    /// Where the capability is in configuration space.
    cap: usize,
    outbox: Rc<MsiOutbox>,
    pub sent: u64,
}

impl MsiX {
    /// Adds the capability to `config` for a table of `vectors` entries at `table_offset`
    /// in BAR `bar` and the pending bits at `pba_offset` in the same BAR.
    pub fn new(
        config: &mut ConfigSpace,
        vectors: u16,
        bar: u8,
        table_offset: u32,
        pba_offset: u32,
        outbox: Rc<MsiOutbox>,
    ) -> Self {
        let mut body = Vec::new();
        body.extend_from_slice(&(vectors - 1).to_le_bytes());
        body.extend_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        body.extend_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        let cap = config.add_capability(CAPABILITY_ID, &body);
        // Message control: enable and function mask are the writable bits.
        config.set_writable(cap + 3, 1);
        let mut m = Self {
            table: vec![[0, 0, 0, VECTOR_MASKED]; vectors as usize],
            pending: vec![false; vectors as usize],
            enabled: false,
            function_masked: false,
            cap,
            outbox,
            sent: 0,
        };
        m.config_written(config);
        m
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Takes the message control register's bits after a configuration write; keeps only
    /// its two writable bits.
    pub fn config_written(&mut self, config: &mut ConfigSpace) {
        let control = config.get_u16(self.cap + 2);
        let keep = (control & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK)) >> 8;
        config.set(
            self.cap + 3,
            keep as u8 | ((self.table.len() - 1) >> 8) as u8,
        );
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.deliver_pending();
    }

    /// Signals vector `v` (pending while it or the function is masked). Returns false
    /// for a vector past the table.
    pub fn notify(&mut self, v: u16) -> bool {
        let v = v as usize;
        if v >= self.table.len() {
            return false;
        }
        if self.function_masked || self.table[v][3] & VECTOR_MASKED != 0 {
            self.pending[v] = true;
        } else {
            self.send(v);
        }
        true
    }

    fn send(&mut self, v: usize) {
        let [lo, hi, data, _] = self.table[v];
        self.outbox.send(u64::from(hi) << 32 | u64::from(lo), data);
        self.sent += 1;
    }

    fn deliver_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for v in 0..self.table.len() {
            if self.pending[v] && self.table[v][3] & VECTOR_MASKED == 0 {
                self.pending[v] = false;
                self.send(v);
            }
        }
    }

    /// Reads the table at `offset` (dword or qword accesses, as the specification allows).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let dw = offset as usize / 4 + i;
            let v = self
                .table
                .get(dw / 4)
                .map_or(0, |e| e[dw % 4])
                .to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        if offset as usize / ENTRY >= self.table.len() || !data.len().is_multiple_of(4) {
            return;
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let dw = offset as usize / 4 + i;
            if let Some(e) = self.table.get_mut(dw / 4) {
                let mut b = [0u8; 4];
                b.copy_from_slice(chunk);
                e[dw % 4] = u32::from_le_bytes(b);
            }
        }
        self.deliver_pending();
    }

    /// The pending bit array.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            *b = (0..8).fold(0u8, |acc, bit| {
                acc | (u8::from(self.pending.get(first + bit).copied().unwrap_or(false)) << bit)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_messages() {
        let m = decode(0xFEE0_1000, 0x0000_0041).unwrap();
        assert_eq!(m.dest, Destination::Physical(1));
        assert_eq!(
            (m.vector, m.mode, m.level),
            (0x41, DeliveryMode::Fixed, false)
        );
        let m = decode(0xFEE0_2004, 0x0000_8131).unwrap();
        assert_eq!(m.dest, Destination::Logical(2));
        assert_eq!((m.mode, m.level), (DeliveryMode::LowestPriority, true));
        assert!(
            decode(0x1000, 0x41).is_none(),
            "a write to RAM is no interrupt"
        );
    }

    #[test]
    fn masked_vectors_pend_until_unmasked() {
        let mut c = ConfigSpace::new(0x1AF4, 0x1042, 0, 0);
        let out = MsiOutbox::new();
        let mut m = MsiX::new(&mut c, 2, 1, 0, 0x800, out.clone());
        assert_eq!(c.get(0x34), 0x40);
        assert_eq!(c.get(0x40), CAPABILITY_ID);
        assert_eq!(c.get_u16(0x42), 1, "table size - 1");
        // Enable through the capability as a driver does.
        c.write(0x43, &[0x80]);
        m.config_written(&mut c);
        assert!(m.enabled());
        m.table_write(16, &0xFEE0_0000u32.to_le_bytes());
        m.table_write(24, &0x31u32.to_le_bytes());
        m.notify(1);
        assert!(out.is_empty(), "still masked");
        let mut pba = [0u8];
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 2);
        m.table_write(28, &0u32.to_le_bytes());
        let sent = out.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].vector, 0x31);
        m.notify(1);
        assert_eq!(out.take().len(), 1);
        assert!(!m.notify(2), "past the table");
    }
}
