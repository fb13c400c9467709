//! QEMU's firmware configuration device (fw_cfg, docs/specs/fw_cfg.rst in QEMU): how the
//! machine hands firmware what it cannot probe (the RAM map, the CPU count, the ACPI
//! tables and how to link them, boot settings). A selector port (0x510, 16-bit), a data
//! port (0x511, bytes) and the DMA interface (0x514, big-endian address of a control
//! structure in guest memory). SeaBIOS reads it all; Gantry's items are read-only.

use std::rc::Rc;

use vm_memory::{Bytes, GuestAddress};

use crate::bus::BusDevice;
use crate::dma::DmaMemory;

pub const PORT: u16 = 0x510;
/// Selector (0), data (1), DMA address high (4) and low (8) halves.
pub const PORT_LEN: u64 = 12;

pub const SIGNATURE: u16 = 0x00;
pub const ID: u16 = 0x01;
pub const RAM_SIZE: u16 = 0x03;
pub const NB_CPUS: u16 = 0x05;
pub const MAX_CPUS: u16 = 0x0F;
pub const FILE_DIR: u16 = 0x19;
/// Files get selectors from here on, in the order they were added.
const FILE_FIRST: u16 = 0x20;

/// ID bits: the port interface, and DMA.
const ID_TRADITIONAL: u32 = 1;
const ID_DMA: u32 = 2;

/// DMA control bits.
const DMA_ERROR: u32 = 0x01;
const DMA_READ: u32 = 0x02;
const DMA_SKIP: u32 = 0x04;
const DMA_SELECT: u32 = 0x08;
const DMA_WRITE: u32 = 0x10;
/// "QEMU CFG" in big-endian, read back from the DMA address register.
const DMA_SIGNATURE: u64 = 0x5145_4D55_2043_4647;

#[derive(Default, Debug, Clone, Copy)]
pub struct FwCfgStats {
    pub selects: u64,
    pub port_bytes: u64,
    pub dma_transfers: u64,
    pub dma_bytes: u64,
    pub dma_errors: u64,
}

pub struct FwCfg {
    items: Vec<(u16, Vec<u8>)>,
    files: Vec<(String, u16)>,
    selected: Option<usize>,
    offset: usize,
    dma_address: u64,
    mem: Option<Rc<DmaMemory>>,
    pub stats: FwCfgStats,
}

impl FwCfg {
    /// A device with the signature and ID items; DMA when it has guest memory to reach.
    pub fn new(mem: Option<Rc<DmaMemory>>) -> Self {
        let id = ID_TRADITIONAL | if mem.is_some() { ID_DMA } else { 0 };
        let mut f = Self {
            items: Vec::new(),
            files: Vec::new(),
            selected: None,
            offset: 0,
            dma_address: 0,
            mem,
            stats: FwCfgStats::default(),
        };
        f.add(SIGNATURE, b"QEMU".to_vec());
        f.add(ID, id.to_le_bytes().to_vec());
        f.rebuild_directory();
        f
    }

    /// Sets item `key` (little-endian integers, as QEMU's numbered items are).
    pub fn add(&mut self, key: u16, data: Vec<u8>) {
        match self.items.iter_mut().find(|(k, _)| *k == key) {
            Some((_, d)) => *d = data,
            None => self.items.push((key, data)),
        }
    }

    /// Adds (or replaces) a named file.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) {
        let key = match self.files.iter().find(|(n, _)| n == name) {
            Some((_, k)) => *k,
            None => {
                let k = FILE_FIRST + self.files.len() as u16;
                self.files.push((name.to_string(), k));
                k
            }
        };
        self.add(key, data);
        self.rebuild_directory();
    }

    /// The file directory: a big-endian count, then per file its big-endian size and
    /// selector and a 56-byte name, sorted by name.
    fn rebuild_directory(&mut self) {
        let mut files = self.files.clone();
        files.sort();
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in &files {
            let size = self.item(*key).map_or(0, |d| d.len()) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; 56];
            let b = name.as_bytes();
            n[..b.len().min(55)].copy_from_slice(&b[..b.len().min(55)]);
            dir.extend_from_slice(&n);
        }
        self.add(FILE_DIR, dir);
    }

    fn item(&self, key: u16) -> Option<&[u8]> {
        self.items
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, d)| d.as_slice())
    }

    fn select(&mut self, key: u16) {
        self.stats.selects += 1;
        self.selected = self.items.iter().position(|(k, _)| *k == key);
        self.offset = 0;
    }

    /// The selected item's bytes from the current offset (empty past its end or with
    /// nothing selected: reads then return zeros).
    fn remaining(&self) -> &[u8] {
        self.selected
            .and_then(|i| self.items.get(i))
            .and_then(|(_, d)| d.get(self.offset..))
            .unwrap_or(&[])
    }

    /// Runs the DMA request whose control structure is at `at`: the control word (select,
    /// read, skip, write bits), a length and an address, big-endian. Afterwards the control
    /// word holds 0, or the error bit.
    fn dma(&mut self, at: u64) {
        let Some(mem) = self.mem.clone() else {
            return;
        };
        self.stats.dma_transfers += 1;
        let mut raw = [0u8; 16];
        if mem.read_slice(&mut raw, GuestAddress(at)).is_err() {
            self.stats.dma_errors += 1;
            return;
        }
        let control = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let length = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        let mut address = [0u8; 8];
        address.copy_from_slice(&raw[8..16]);
        let address = u64::from_be_bytes(address);
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let ok = if control & DMA_READ != 0 {
            let avail = self.remaining();
            let n = avail.len().min(length);
            let data = avail[..n].to_vec();
            self.offset += n;
            self.stats.dma_bytes += length as u64;
            // Past the item's end the guest reads zeros, written a page at a time (the
            // length is the guest's, up to 4 GiB).
            let mut ok = mem.write_slice(&data, GuestAddress(address)).is_ok();
            let zeros = [0u8; 4096];
            let mut at = n;
            while ok && at < length {
                let k = (length - at).min(zeros.len());
                ok = mem
                    .write_slice(&zeros[..k], GuestAddress(address.wrapping_add(at as u64)))
                    .is_ok();
                at += k;
            }
            ok
        } else if control & DMA_SKIP != 0 {
            self.offset = self.offset.saturating_add(length);
            true
        } else {
            // Writes: Gantry's items are read-only.
            control & DMA_WRITE == 0
        };
        let done: u32 = if ok { 0 } else { DMA_ERROR };
        if !ok {
            self.stats.dma_errors += 1;
        }
        let _ = mem.write_slice(&done.to_be_bytes(), GuestAddress(at));
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            1 => {
                for d in data.iter_mut() {
                    *d = self.remaining().first().copied().unwrap_or(0);
                    self.offset += 1;
                    self.stats.port_bytes += 1;
                }
            }
            4..=11 if self.mem.is_some() => {
                let sig = DMA_SIGNATURE.to_be_bytes();
                for (i, d) in data.iter_mut().enumerate() {
                    *d = sig.get(offset as usize - 4 + i).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        match (offset, n) {
            (0, 2) => self.select(u16::from_le_bytes([b[0], b[1]])),
            // The address is big-endian; writing its low half starts the transfer.
            (4, 4) => {
                let high = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                self.dma_address = u64::from(high) << 32;
            }
            (8, 4) => {
                let low = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let at = self.dma_address | u64::from(low);
                self.dma_address = 0;
                self.dma(at);
            }
            (4, 8) => {
                let at = u64::from_be_bytes(b);
                self.dma(at);
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

    fn read_item(f: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        f.write(0, &key.to_le_bytes());
        let mut out = vec![0u8; len];
        for b in out.iter_mut() {
            let mut d = [0u8];
            f.read(1, &mut d);
            *b = d[0];
        }
        out
    }

    #[test]
    fn items_and_files_through_the_ports() {
        let mut f = FwCfg::new(None);
        assert_eq!(read_item(&mut f, SIGNATURE, 4), b"QEMU");
        assert_eq!(
            read_item(&mut f, ID, 4),
            [1, 0, 0, 0],
            "no DMA without memory"
        );
        f.add_file("etc/b", vec![7, 8]);
        f.add_file("etc/a", vec![1, 2, 3]);
        let dir = read_item(&mut f, FILE_DIR, 4 + 2 * 64);
        assert_eq!(&dir[0..4], &[0, 0, 0, 2]);
        // Sorted by name: etc/a first, 3 bytes, selector 0x21.
        assert_eq!(&dir[4..8], &[0, 0, 0, 3]);
        assert_eq!(&dir[8..10], &[0, 0x21]);
        assert_eq!(&dir[12..17], b"etc/a");
        assert_eq!(
            read_item(&mut f, 0x21, 5),
            [1, 2, 3, 0, 0],
            "zeros past the end"
        );
    }
}
