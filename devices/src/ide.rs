//! An ATA channel of the PIIX3's IDE function as legacy ports see it (command block at
//! 0x1F0/0x170, control at 0x3F6/0x376, IRQ 14/15): up to two hard disks, PIO transfers
//! (IDENTIFY DEVICE, READ/WRITE SECTORS and MULTIPLE in CHS, LBA28 and LBA48, FLUSH CACHE,
//! SET FEATURES, READ VERIFY, READ NATIVE MAX, the power and diagnostic commands), the
//! software reset and its signatures. The task file is shared by the two drives, as on the
//! cable; the selected one answers, and an absent one reads status 0, as QEMU's.
//!
//! Not yet: bus-master DMA (IDENTIFY offers none, so Linux's ata_piix uses PIO) and
//! ATAPI; a channel's absent drive is no device at all.

use crate::block::{SharedImage, SECTOR};
use crate::bus::BusDevice;
use crate::irq::IrqLine;

pub const PRIMARY_COMMAND: u16 = 0x1F0;
pub const PRIMARY_CONTROL: u16 = 0x3F6;
pub const SECONDARY_COMMAND: u16 = 0x170;
pub const SECONDARY_CONTROL: u16 = 0x376;
/// The bus offset the control port is registered at (the command block takes 0-7).
pub const CONTROL_OFFSET: u64 = 8;

const BSY: u8 = 0x80;
const DRDY: u8 = 0x40;
const DSC: u8 = 0x10;
const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;

const ABRT: u8 = 0x04;
const IDNF: u8 = 0x10;
const UNC: u8 = 0x40;

const CONTROL_NIEN: u8 = 0x02;
const CONTROL_SRST: u8 = 0x04;
const CONTROL_HOB: u8 = 0x80;

/// The most sectors READ/WRITE MULTIPLE move per interrupt.
const MAX_MULTIPLE: u16 = 16;
// The geometry IDENTIFY reports for CHS addressing.
const HEADS: u64 = 16;
const SECTORS_PER_TRACK: u64 = 63;

/// One hard disk on the channel.
pub struct Drive {
    image: SharedImage,
    sectors: u64,
    /// Sectors a READ/WRITE MULTIPLE block holds (SET MULTIPLE MODE; 0: not set).
    multiple: u16,
    write_cache: bool,
    serial: String,
}

impl Drive {
    pub fn new(image: SharedImage, serial: &str) -> Self {
        let sectors = image.borrow().size() / SECTOR;
        Self {
            image,
            sectors,
            multiple: MAX_MULTIPLE,
            write_cache: true,
            serial: serial.to_string(),
        }
    }

    /// Writes what the guest wrote through to the host (FLUSH CACHE, and every write
    /// while the guest has turned the write cache off).
    fn flush(&mut self) -> std::io::Result<()> {
        self.image.borrow_mut().flush()
    }

    fn identify(&self) -> [u8; 512] {
        let mut w = [0u16; 256];
        let cylinders = (self.sectors / (HEADS * SECTORS_PER_TRACK)).min(16383) as u16;
        let lba28 = self.sectors.min(0x0FFF_FFFF) as u32;
        w[0] = 0x0040; // fixed disk
        w[1] = cylinders;
        w[3] = HEADS as u16;
        w[6] = SECTORS_PER_TRACK as u16;
        put_string(&mut w[10..20], &self.serial);
        put_string(&mut w[23..27], env!("CARGO_PKG_VERSION"));
        put_string(&mut w[27..47], "GANTRY HARDDISK");
        w[47] = 0x8000 | MAX_MULTIPLE;
        w[49] = 1 << 9; // LBA; no DMA
        w[53] = 0x0006; // words 64-70 and 88 valid
        w[54] = cylinders;
        w[55] = HEADS as u16;
        w[56] = SECTORS_PER_TRACK as u16;
        let chs = u32::from(cylinders) * (HEADS * SECTORS_PER_TRACK) as u32;
        w[57] = chs as u16;
        w[58] = (chs >> 16) as u16;
        w[59] = if self.multiple != 0 {
            0x100 | self.multiple
        } else {
            0
        };
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        w[64] = 0x0003; // PIO modes 3 and 4
        w[65] = 120;
        w[66] = 120;
        w[67] = 120;
        w[68] = 120;
        w[80] = 0x00F0; // ATA/ATAPI-4 to -7
        w[82] = 1 << 5; // write cache
        w[83] = 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10; // FLUSH CACHE (EXT), LBA48
        w[84] = 1 << 14;
        w[85] = if self.write_cache { 1 << 5 } else { 0 };
        w[86] = 1 << 13 | 1 << 12 | 1 << 10;
        w[87] = 1 << 14;
        for (i, word) in w[100..104].iter_mut().enumerate() {
            *word = (self.sectors >> (16 * i)) as u16;
        }
        let mut out = [0u8; 512];
        for (i, word) in w.iter().enumerate() {
            out[2 * i..2 * i + 2].copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

/// ATA strings: space-padded, two characters a word, the first in the high byte.
fn put_string(words: &mut [u16], s: &str) {
    let mut bytes = s.bytes().chain(std::iter::repeat(b' '));
    for w in words {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = u16::from(hi) << 8 | u16::from(lo);
    }
}

/// A PIO data transfer in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transfer {
    None,
    /// To the host: the buffer holds data; `lba` and `remaining` are what follows it.
    In {
        lba: u64,
        remaining: u64,
        block: u64,
    },
    /// From the host: the buffer fills; then it is written at `lba`.
    Out {
        lba: u64,
        remaining: u64,
        block: u64,
    },
}

/// Counters for `--stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdeStats {
    pub commands: u64,
    pub sectors_read: u64,
    pub sectors_written: u64,
    pub flushes: u64,
    pub errors: u64,
}

pub struct IdeChannel {
    drives: [Option<Drive>; 2],
    selected: usize,
    // The task file: the latest value written and, for LBA48, the one before it.
    features: [u8; 2],
    count: [u8; 2],
    lba_low: [u8; 2],
    lba_mid: [u8; 2],
    lba_high: [u8; 2],
    device: u8,
    control: u8,
    status: u8,
    error: u8,
    buffer: Vec<u8>,
    pos: usize,
    transfer: Transfer,
    intrq: bool,
    irq: IrqLine,
    stats: IdeStats,
}

impl IdeChannel {
    pub fn new(master: Option<Drive>, slave: Option<Drive>, irq: IrqLine) -> Self {
        let mut c = Self {
            drives: [master, slave],
            selected: 0,
            features: [0; 2],
            count: [0; 2],
            lba_low: [0; 2],
            lba_mid: [0; 2],
            lba_high: [0; 2],
            device: 0,
            control: 0,
            status: 0,
            error: 0,
            buffer: Vec::new(),
            pos: 0,
            transfer: Transfer::None,
            intrq: false,
            irq,
            stats: IdeStats::default(),
        };
        c.reset();
        c
    }

    pub fn stats(&self) -> IdeStats {
        self.stats
    }

    fn empty(&self) -> bool {
        self.drives.iter().all(Option::is_none)
    }

    fn drive(&mut self) -> Option<&mut Drive> {
        self.drives[self.selected].as_mut()
    }

    /// Power-up and software reset: the signature of an ATA device in the task file,
    /// diagnostics passed.
    fn reset(&mut self) {
        self.selected = 0;
        self.device = 0;
        self.count = [1, 0];
        self.lba_low = [1, 0];
        self.lba_mid = [0; 2];
        self.lba_high = [0; 2];
        self.error = 1;
        self.status = if self.drives[0].is_some() {
            DRDY | DSC
        } else {
            0
        };
        self.transfer = Transfer::None;
        self.buffer.clear();
        self.pos = 0;
        self.set_intrq(false);
    }

    fn set_intrq(&mut self, on: bool) {
        self.intrq = on;
        self.irq
            .set_level(on && self.control & CONTROL_NIEN == 0 && !self.empty());
    }

    fn latch(reg: &mut [u8; 2], v: u8) {
        reg[1] = reg[0];
        reg[0] = v;
    }

    fn status(&self) -> u8 {
        if self.empty() {
            0xFF
        } else if self.drives[self.selected].is_none() {
            0
        } else {
            self.status
        }
    }

    fn lba28(&self) -> u64 {
        if self.device & 0x40 != 0 {
            u64::from(self.device & 0x0F) << 24
                | u64::from(self.lba_high[0]) << 16
                | u64::from(self.lba_mid[0]) << 8
                | u64::from(self.lba_low[0])
        } else {
            // CHS: cylinder in LBA mid/high, head in the device register, sector from 1.
            let cylinder = u64::from(self.lba_high[0]) << 8 | u64::from(self.lba_mid[0]);
            let head = u64::from(self.device & 0x0F);
            let sector = u64::from(self.lba_low[0]);
            ((cylinder * HEADS + head) * SECTORS_PER_TRACK + sector).wrapping_sub(1)
        }
    }

    fn lba48(&self) -> u64 {
        let bytes = [
            self.lba_low[0],
            self.lba_mid[0],
            self.lba_high[0],
            self.lba_low[1],
            self.lba_mid[1],
            self.lba_high[1],
        ];
        bytes
            .iter()
            .enumerate()
            .fold(0, |a, (i, b)| a | u64::from(*b) << (8 * i))
    }

    fn count28(&self) -> u64 {
        match self.count[0] {
            0 => 256,
            n => u64::from(n),
        }
    }

    fn count48(&self) -> u64 {
        match u64::from(self.count[1]) << 8 | u64::from(self.count[0]) {
            0 => 65536,
            n => n,
        }
    }

    fn abort(&mut self, error: u8) {
        self.stats.errors += 1;
        self.error = error;
        self.status = DRDY | DSC | ERR;
        self.transfer = Transfer::None;
        self.set_intrq(true);
    }

    fn done(&mut self) {
        self.status = DRDY | DSC;
        self.transfer = Transfer::None;
        self.set_intrq(true);
    }

    fn command(&mut self, cmd: u8) {
        let Some(drive) = self.drive() else {
            return;
        };
        let (sectors, multiple) = (drive.sectors, u64::from(drive.multiple.max(1)));
        let identify = (cmd == 0xEC).then(|| drive.identify());
        self.stats.commands += 1;
        self.error = 0;
        match cmd {
            0xEC => {
                self.buffer = identify.map_or_else(Vec::new, |d| d.to_vec());
                self.pos = 0;
                self.transfer = Transfer::In {
                    lba: 0,
                    remaining: 0,
                    block: 1,
                };
                self.status = DRDY | DSC | DRQ;
                self.set_intrq(true);
            }
            0x20 | 0x21 | 0x24 | 0xC4 | 0x29 | 0x30 | 0x31 | 0x34 | 0xC5 | 0x39 => {
                let ext = matches!(cmd, 0x24 | 0x29 | 0x34 | 0x39);
                let (lba, count) = if ext {
                    (self.lba48(), self.count48())
                } else {
                    (self.lba28(), self.count28())
                };
                let block = if matches!(cmd, 0xC4 | 0x29 | 0xC5 | 0x39) {
                    multiple
                } else {
                    1
                };
                if lba.checked_add(count).is_none_or(|end| end > sectors) {
                    return self.abort(IDNF | ABRT);
                }
                if matches!(cmd, 0x20 | 0x21 | 0x24 | 0xC4 | 0x29) {
                    self.transfer = Transfer::In {
                        lba,
                        remaining: count,
                        block,
                    };
                    self.next_in_block();
                } else {
                    self.transfer = Transfer::Out {
                        lba,
                        remaining: count,
                        block,
                    };
                    self.buffer = vec![0; (block.min(count) * SECTOR) as usize];
                    self.pos = 0;
                    // PIO out: the first block is asked for without an interrupt.
                    self.status = DRDY | DSC | DRQ;
                }
            }
            0xC6 => {
                let n = u16::from(self.count[0]);
                if n == 0 || n > MAX_MULTIPLE || !n.is_power_of_two() {
                    return self.abort(ABRT);
                }
                if let Some(d) = self.drive() {
                    d.multiple = n;
                }
                self.done();
            }
            0xE7 | 0xEA => {
                self.stats.flushes += 1;
                match self.drive().map(Drive::flush) {
                    Some(Err(_)) => self.abort(ABRT),
                    _ => self.done(),
                }
            }
            0xEF => match self.features[0] {
                0x02 | 0x82 => {
                    let on = self.features[0] == 0x02;
                    if let Some(d) = self.drive() {
                        d.write_cache = on;
                    }
                    self.done();
                }
                // Transfer mode: PIO modes only (IDENTIFY offers no DMA).
                0x03 if self.count[0] & 0xF8 <= 0x08 => self.done(),
                0x03 => self.abort(ABRT),
                // Features Gantry has nothing behind (read look-ahead, defaults on reset).
                0x55 | 0xAA | 0x66 | 0xCC => self.done(),
                _ => self.abort(ABRT),
            },
            0x40..=0x42 => {
                let (lba, count) = if cmd == 0x42 {
                    (self.lba48(), self.count48())
                } else {
                    (self.lba28(), self.count28())
                };
                if lba.checked_add(count).is_none_or(|end| end > sectors) {
                    return self.abort(IDNF | ABRT);
                }
                self.done();
            }
            0xF8 => {
                let max = (sectors.max(1) - 1).min(0x0FFF_FFFF);
                self.lba_low[0] = max as u8;
                self.lba_mid[0] = (max >> 8) as u8;
                self.lba_high[0] = (max >> 16) as u8;
                self.device = (self.device & 0xF0) | ((max >> 24) as u8 & 0x0F);
                self.done();
            }
            0x27 => {
                let max = sectors.max(1) - 1;
                self.lba_low = [max as u8, (max >> 24) as u8];
                self.lba_mid = [(max >> 8) as u8, (max >> 32) as u8];
                self.lba_high = [(max >> 16) as u8, (max >> 40) as u8];
                self.done();
            }
            0x10..=0x1F | 0x91 | 0xE0..=0xE4 | 0xE6 => self.done(),
            0xE5 => {
                self.count[0] = 0xFF; // active or idle
                self.done();
            }
            0x90 => {
                self.reset();
                self.set_intrq(true);
            }
            _ => self.abort(ABRT),
        }
    }

    /// Reads the next block of a PIO-in command into the buffer, or ends it.
    fn next_in_block(&mut self) {
        let Transfer::In {
            lba,
            remaining,
            block,
        } = self.transfer
        else {
            return;
        };
        if remaining == 0 {
            // The last block of a read was taken: no interrupt follows it.
            self.status = DRDY | DSC;
            self.transfer = Transfer::None;
            return;
        }
        let n = block.min(remaining);
        let mut data = vec![0; (n * SECTOR) as usize];
        let Some(drive) = self.drive() else {
            return;
        };
        if drive
            .image
            .borrow_mut()
            .read_at(lba * SECTOR, &mut data)
            .is_err()
        {
            return self.abort(UNC | ABRT);
        }
        self.stats.sectors_read += n;
        self.buffer = data;
        self.pos = 0;
        self.transfer = Transfer::In {
            lba: lba + n,
            remaining: remaining - n,
            block,
        };
        self.status = DRDY | DSC | DRQ;
        self.set_intrq(true);
    }

    /// The buffer of a PIO-out command is full: writes it, asks for the next or ends.
    fn out_block_done(&mut self) {
        let Transfer::Out {
            lba,
            remaining,
            block,
        } = self.transfer
        else {
            return;
        };
        let data = std::mem::take(&mut self.buffer);
        let n = data.len() as u64 / SECTOR;
        let Some(drive) = self.drive() else {
            return;
        };
        let written = drive.image.borrow_mut().write_at(lba * SECTOR, &data);
        let flushed = if written.is_ok() && !drive.write_cache {
            drive.flush()
        } else {
            Ok(())
        };
        if written.is_err() || flushed.is_err() {
            return self.abort(ABRT);
        }
        self.stats.sectors_written += n;
        let remaining = remaining - n;
        if remaining == 0 {
            return self.done();
        }
        self.transfer = Transfer::Out {
            lba: lba + n,
            remaining,
            block,
        };
        self.buffer = vec![0; (block.min(remaining) * SECTOR) as usize];
        self.pos = 0;
        self.status = DRDY | DSC | DRQ;
        self.set_intrq(true);
    }

    fn read_data(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            *b = match self.transfer {
                Transfer::In { .. } if self.pos < self.buffer.len() => {
                    self.pos += 1;
                    self.buffer[self.pos - 1]
                }
                _ => 0xFF,
            };
        }
        if matches!(self.transfer, Transfer::In { .. }) && self.pos >= self.buffer.len() {
            self.next_in_block();
        }
    }

    fn write_data(&mut self, data: &[u8]) {
        if !matches!(self.transfer, Transfer::Out { .. }) {
            return;
        }
        for b in data {
            if self.pos < self.buffer.len() {
                self.buffer[self.pos] = *b;
                self.pos += 1;
            }
        }
        if self.pos >= self.buffer.len() {
            self.out_block_done();
        }
    }

    fn write_control(&mut self, v: u8) {
        let was = self.control;
        self.control = v;
        if v & CONTROL_SRST != 0 && was & CONTROL_SRST == 0 {
            self.status = BSY;
        } else if v & CONTROL_SRST == 0 && was & CONTROL_SRST != 0 {
            self.reset();
        }
        // nIEN gates the line at once.
        self.set_intrq(self.intrq);
    }
}

impl BusDevice for IdeChannel {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 {
            return self.read_data(data);
        }
        let hob = usize::from(self.control & CONTROL_HOB != 0);
        let v = if self.empty() {
            0xFF
        } else {
            match offset {
                1 => self.error,
                2 => self.count[hob],
                3 => self.lba_low[hob],
                4 => self.lba_mid[hob],
                5 => self.lba_high[hob],
                6 => self.device | 0xA0,
                7 => {
                    let s = self.status();
                    self.set_intrq(false);
                    s
                }
                CONTROL_OFFSET => self.status(),
                _ => 0xFF,
            }
        };
        data.fill(0);
        data[0] = v;
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            return self.write_data(data);
        }
        let v = data[0];
        // Writing the task file clears HOB (ATA-6).
        if (1..=6).contains(&offset) {
            self.control &= !CONTROL_HOB;
        }
        match offset {
            1 => Self::latch(&mut self.features, v),
            2 => Self::latch(&mut self.count, v),
            3 => Self::latch(&mut self.lba_low, v),
            4 => Self::latch(&mut self.lba_mid, v),
            5 => Self::latch(&mut self.lba_high, v),
            6 => {
                self.device = v & 0x5F;
                self.selected = usize::from(v & 0x10 != 0);
            }
            7 => self.command(v),
            CONTROL_OFFSET => self.write_control(v),
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
    use crate::block::MemImage;
    use crate::irq::IrqWires;
    use std::rc::Rc;

    fn channel(sectors: usize) -> (IdeChannel, Rc<IrqWires>) {
        let wires = IrqWires::new();
        let mut bytes = vec![0u8; sectors * 512];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i / 512) as u8;
        }
        let image: Box<dyn crate::block::Image> = Box::new(MemImage { bytes });
        let drive = Drive::new(Rc::new(std::cell::RefCell::new(image)), "GANTRY0001");
        (IdeChannel::new(Some(drive), None, wires.line(14)), wires)
    }

    fn out(c: &mut IdeChannel, reg: u64, v: u8) {
        c.write(reg, &[v]);
    }

    fn inb(c: &mut IdeChannel, reg: u64) -> u8 {
        let mut b = [0u8];
        c.read(reg, &mut b);
        b[0]
    }

    fn read_sector(c: &mut IdeChannel) -> Vec<u8> {
        let mut v = vec![0u8; 512];
        for chunk in v.chunks_mut(2) {
            c.read(0, chunk);
        }
        v
    }

    #[test]
    fn identify_reports_the_size_and_the_signature_says_ata() {
        let (mut c, wires) = channel(1000);
        assert_eq!((inb(&mut c, 2), inb(&mut c, 3), inb(&mut c, 4)), (1, 1, 0));
        out(&mut c, 7, 0xEC);
        assert!(wires.levels() & (1 << 14) != 0);
        assert_eq!(inb(&mut c, 7), DRDY | DSC | DRQ);
        assert_eq!(wires.levels() & (1 << 14), 0, "status read clears INTRQ");
        let id = read_sector(&mut c);
        let word = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
        assert_eq!(u32::from(word(60)) | u32::from(word(61)) << 16, 1000);
        assert_eq!(word(100), 1000);
        assert_eq!(&id[54..60], b"AGTNYR", "model, byte-swapped");
        assert_eq!(inb(&mut c, 7), DRDY | DSC);
    }

    #[test]
    fn lba28_and_lba48_reads_and_a_multiple_write() {
        let (mut c, _) = channel(300);
        // READ SECTORS, LBA28, 2 sectors from 5.
        out(&mut c, 2, 2);
        out(&mut c, 3, 5);
        out(&mut c, 4, 0);
        out(&mut c, 5, 0);
        out(&mut c, 6, 0xE0);
        out(&mut c, 7, 0x20);
        assert_eq!(read_sector(&mut c)[0], 5);
        assert_eq!(inb(&mut c, 7) & DRQ, DRQ);
        assert_eq!(read_sector(&mut c)[511], 6);
        assert_eq!(inb(&mut c, 7), DRDY | DSC);
        // READ SECTORS EXT at 260 (0x104): the high bytes first, then the low.
        for (reg, hi, lo) in [(2, 0, 1), (3, 0, 4), (4, 0, 1), (5, 0, 0)] {
            out(&mut c, reg, hi);
            out(&mut c, reg, lo);
        }
        out(&mut c, 6, 0x40);
        out(&mut c, 7, 0x24);
        assert_eq!(read_sector(&mut c)[0], 4, "sector 260 holds 260 as u8");
        // WRITE MULTIPLE of 3 sectors with blocks of 2.
        out(&mut c, 2, 2);
        out(&mut c, 7, 0xC6);
        assert_eq!(inb(&mut c, 7), DRDY | DSC);
        out(&mut c, 2, 3);
        out(&mut c, 3, 10);
        out(&mut c, 4, 0);
        out(&mut c, 5, 0);
        out(&mut c, 6, 0xE0);
        out(&mut c, 7, 0xC5);
        for _ in 0..3 * 128 {
            c.write(0, &0xABCD_EF01u32.to_le_bytes());
        }
        assert_eq!(inb(&mut c, 7), DRDY | DSC);
        assert_eq!(c.stats().sectors_written, 3);
        out(&mut c, 7, 0xE7);
        assert_eq!(inb(&mut c, 7), DRDY | DSC, "FLUSH CACHE");
        assert_eq!(c.stats().flushes, 1);
        out(&mut c, 2, 1);
        out(&mut c, 3, 12);
        out(&mut c, 7, 0x20);
        assert_eq!(&read_sector(&mut c)[..4], &[0x01, 0xEF, 0xCD, 0xAB]);
    }

    #[test]
    fn past_the_end_is_an_error_not_a_crash_and_the_absent_slave_reads_zero() {
        let (mut c, _) = channel(100);
        out(&mut c, 2, 2);
        out(&mut c, 3, 99);
        out(&mut c, 6, 0xE0);
        out(&mut c, 7, 0x20);
        assert_eq!(inb(&mut c, 7), DRDY | DSC | ERR);
        assert_eq!(inb(&mut c, 1), IDNF | ABRT);
        out(&mut c, 6, 0xF0);
        assert_eq!(inb(&mut c, 7), 0);
    }
}
