//! An ATA channel of the PIIX3's IDE function as legacy ports see it (command block at
//! 0x1F0/0x170, control at 0x3F6/0x376, IRQ 14/15): up to two hard disks, PIO transfers
//! (IDENTIFY DEVICE, READ/WRITE SECTORS and MULTIPLE in CHS, LBA28 and LBA48, FLUSH CACHE,
//! SET FEATURES, READ VERIFY, READ NATIVE MAX, the power and diagnostic commands), the
//! software reset and its signatures. The task file is shared by the two drives, as on the
//! cable; the selected one answers, and an absent one reads status 0, as QEMU's.
//!
//! Bus-master DMA (the PIIX's, as in Intel's 82371 datasheet): READ/WRITE DMA (EXT) move
//! their sectors through the physical region descriptor table the driver points the
//! channel's bus-master registers at (BAR 4 of the IDE function, [`Piix3Ide`]), once both
//! the command and the start bit are given, whichever comes first. Multiword DMA modes
//! 0-2, as the PIIX3 does (no Ultra DMA).
//!
//! An empty ATAPI CD-ROM drive ([`Device::EmptyCdrom`]) answers the PACKET commands a
//! driver probes with (IDENTIFY PACKET DEVICE, INQUIRY, TEST UNIT READY, REQUEST SENSE,
//! GET CONFIGURATION, ...) by PIO, and every medium access with "medium not present".
//! A channel's absent drive is no device at all.

use std::cell::RefCell;
use std::rc::Rc;

use vm_memory::{Bytes, GuestAddress};

use crate::block::{SharedImage, SECTOR};
use crate::bus::BusDevice;
use crate::dma::DmaMemory;
use crate::irq::IrqLine;
use crate::pci::{BarKind, ConfigSpace, PciFunction};

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
    /// The multiword DMA mode SET FEATURES selected.
    mwdma: Option<u8>,
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
            mwdma: None,
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
        w[49] = 1 << 9 | 1 << 8; // LBA, DMA
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
        // Multiword DMA modes 0-2, and the one selected.
        w[63] = 0x0007 | self.mwdma.map_or(0, |m| 0x100 << m);
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

/// What sits at a position on the cable.
pub enum Device {
    Disk(Drive),
    /// An ATAPI CD/DVD-ROM drive with no disc in it, as QEMU's PC has on the secondary
    /// master unless told otherwise: drivers find the drive, and every medium access is
    /// answered "medium not present".
    EmptyCdrom,
}

/// ATAPI's interrupt reason bits, in the sector count register.
const REASON_COMMAND: u8 = 0x01;
const REASON_TO_HOST: u8 = 0x02;
/// SCSI sense keys and codes an empty drive answers with.
const SENSE_NOT_READY: u8 = 0x02;
const SENSE_ILLEGAL_REQUEST: u8 = 0x05;
const ASC_MEDIUM_NOT_PRESENT: u8 = 0x3A;
const ASC_INVALID_OPCODE: u8 = 0x20;
const ASC_INVALID_FIELD: u8 = 0x24;

/// IDENTIFY PACKET DEVICE of the empty CD-ROM drive.
fn identify_packet() -> [u8; 512] {
    let mut w = [0u16; 256];
    // ATAPI, CD-ROM (5), removable, DRQ within 50 us of PACKET, 12-byte packets.
    w[0] = 0x85C0;
    put_string(&mut w[10..20], "GANTRYCD0001");
    put_string(&mut w[23..27], env!("CARGO_PKG_VERSION"));
    put_string(&mut w[27..47], "GANTRY DVD-ROM");
    w[49] = 1 << 9; // LBA; PIO packets only
    w[53] = 0x0002; // words 64-70 valid
    w[64] = 0x0003; // PIO modes 3 and 4
    w[65] = 120;
    w[66] = 120;
    w[67] = 120;
    w[68] = 120;
    w[80] = 0x00F0; // ATA/ATAPI-4 to -7
    w[82] = 1 << 4 | 1 << 14; // PACKET feature set
    w[85] = 1 << 4 | 1 << 14;
    let mut out = [0u8; 512];
    for (i, word) in w.iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// What an empty drive answers a SCSI command (MMC) with: data, or a check condition's
/// sense key, ASC and ASCQ.
fn empty_cdrom_reply(cdb: &[u8; 12], sense: (u8, u8, u8)) -> Result<Vec<u8>, (u8, u8, u8)> {
    let be16 = |i: usize| usize::from(u16::from_be_bytes([cdb[i], cdb[i + 1]]));
    let not_ready = (SENSE_NOT_READY, ASC_MEDIUM_NOT_PRESENT, 0);
    let reply = match cdb[0] {
        // TEST UNIT READY, READ CAPACITY, READ(10)/(12), READ TOC, READ SUB-CHANNEL, READ
        // DISC INFORMATION, READ CD, SEEK: no medium.
        0x00 | 0x25 | 0x28 | 0xA8 | 0x43 | 0x42 | 0x51 | 0xBE | 0x2B => return Err(not_ready),
        // REQUEST SENSE: the last check condition's, in fixed format.
        0x03 => {
            let mut r = vec![0u8; 18];
            r[0] = 0x70;
            r[2] = sense.0;
            r[7] = 10;
            r[12] = sense.1;
            r[13] = sense.2;
            r.truncate(usize::from(cdb[4]));
            return Ok(r);
        }
        // INQUIRY (standard data only).
        0x12 if cdb[1] & 1 == 0 => {
            let mut r = vec![0u8; 36];
            r[0] = 0x05; // CD/DVD device
            r[1] = 0x80; // removable
            r[2] = 0x05; // SPC-3
            r[3] = 0x32; // ATAPI, response format 2
            r[4] = 31;
            r[8..16].copy_from_slice(b"GANTRY  ");
            r[16..32].copy_from_slice(b"DVD-ROM         ");
            let mut rev = [b' '; 4];
            for (d, s) in rev.iter_mut().zip(env!("CARGO_PKG_VERSION").bytes()) {
                *d = s;
            }
            r[32..36].copy_from_slice(&rev);
            r.truncate(be16(3));
            return Ok(r);
        }
        0x12 => return Err((SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD, 0)),
        // START STOP UNIT (eject included: nothing to eject), PREVENT ALLOW MEDIUM
        // REMOVAL.
        0x1B | 0x1E => Vec::new(),
        // GET CONFIGURATION: the feature header alone, current profile 0 (no medium).
        0x46 => {
            let mut r = vec![0u8; 8];
            r[3] = 4;
            r.truncate(be16(7));
            return Ok(r);
        }
        _ => return Err((SENSE_ILLEGAL_REQUEST, ASC_INVALID_OPCODE, 0)),
    };
    Ok(reply)
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
    /// ATAPI: the 12-byte command packet is being written.
    Packet,
    /// ATAPI: the packet's reply is being read.
    PacketIn,
}

/// Counters for `--stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdeStats {
    pub commands: u64,
    pub sectors_read: u64,
    pub sectors_written: u64,
    pub flushes: u64,
    pub errors: u64,
    /// Bus-master transfers, and those that failed (a PRD table too short, guest memory
    /// that is not RAM).
    pub dma_transfers: u64,
    pub dma_errors: u64,
}

/// The bus-master registers' bits (82371 datasheet, BMICx and BMISx).
const BM_START: u8 = 0x01;
/// Set: the controller writes memory (an ATA read).
const BM_TO_MEMORY: u8 = 0x08;
const BM_ACTIVE: u8 = 0x01;
const BM_ERROR: u8 = 0x02;
const BM_INTERRUPT: u8 = 0x04;
/// The drive-capable bits software sets, kept as written.
const BM_CAPABLE: u8 = 0x60;
/// A PRD entry's end-of-table flag, in its last byte.
const PRD_EOT: u16 = 0x8000;

/// A DMA command waiting for the start bit, or the start bit waiting for a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DmaCommand {
    lba: u64,
    count: u64,
    to_memory: bool,
}

#[derive(Default)]
struct BusMaster {
    command: u8,
    status: u8,
    prd_table: u32,
}

pub struct IdeChannel {
    drives: [Option<Device>; 2],
    /// The empty CD-ROM drive's sense data, for REQUEST SENSE.
    sense: (u8, u8, u8),
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
    bm: BusMaster,
    dma: Option<DmaCommand>,
    /// Guest memory for bus-master transfers (none: DMA commands are refused).
    mem: Option<Rc<DmaMemory>>,
}

impl IdeChannel {
    pub fn new(master: Option<Device>, slave: Option<Device>, irq: IrqLine) -> Self {
        let mut c = Self {
            drives: [master, slave],
            sense: (0, 0, 0),
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
            bm: BusMaster::default(),
            dma: None,
            mem: None,
        };
        c.reset();
        c
    }

    /// Lets the channel master the bus: READ/WRITE DMA reach guest memory through `mem`.
    pub fn with_dma(mut self, mem: Rc<DmaMemory>) -> Self {
        self.mem = Some(mem);
        self
    }

    pub fn stats(&self) -> IdeStats {
        self.stats
    }

    fn empty(&self) -> bool {
        self.drives.iter().all(Option::is_none)
    }

    /// The selected hard disk, if a hard disk is selected.
    fn drive(&mut self) -> Option<&mut Drive> {
        match self.drives[self.selected].as_mut() {
            Some(Device::Disk(d)) => Some(d),
            _ => None,
        }
    }

    fn atapi_selected(&self) -> bool {
        matches!(self.drives[self.selected], Some(Device::EmptyCdrom))
    }

    /// A device's signature in the task file: ATA's, or ATAPI's (LBA mid/high 14h/EBh).
    fn set_signature(&mut self, atapi: bool) {
        self.count = [1, 0];
        self.lba_low = [1, 0];
        (self.lba_mid, self.lba_high) = if atapi {
            ([0x14, 0], [0xEB, 0])
        } else {
            ([0; 2], [0; 2])
        };
    }

    /// Power-up and software reset: the signature of an ATA device in the task file,
    /// diagnostics passed.
    fn reset(&mut self) {
        self.selected = 0;
        self.device = 0;
        let atapi = matches!(self.drives[0], Some(Device::EmptyCdrom));
        self.set_signature(atapi);
        self.error = 1;
        // An ATAPI device leaves DRDY clear after reset (QEMU's does too).
        self.status = if self.drives[0].is_some() && !atapi {
            DRDY | DSC
        } else {
            0
        };
        self.transfer = Transfer::None;
        self.dma = None;
        self.buffer.clear();
        self.pos = 0;
        self.set_intrq(false);
    }

    fn set_intrq(&mut self, on: bool) {
        // The bus master notes every interrupt the drive raises (drivers ask it whose
        // interrupt it was).
        if on && !self.intrq {
            self.bm.status |= BM_INTERRUPT;
        }
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
        self.dma = None;
        self.set_intrq(true);
    }

    fn done(&mut self) {
        self.status = DRDY | DSC;
        self.transfer = Transfer::None;
        self.set_intrq(true);
    }

    fn command(&mut self, cmd: u8) {
        if self.atapi_selected() {
            return self.atapi_command(cmd);
        }
        let Some(drive) = self.drive() else {
            return;
        };
        let (sectors, multiple) = (drive.sectors, u64::from(drive.multiple.max(1)));
        let identify = (cmd == 0xEC).then(|| drive.identify());
        self.stats.commands += 1;
        self.error = 0;
        match cmd {
            0xEC => self.send_block(identify.map_or_else(Vec::new, |d| d.to_vec())),
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
            0xC8 | 0x25 | 0xCA | 0x35 => {
                let (lba, count) = if matches!(cmd, 0x25 | 0x35) {
                    (self.lba48(), self.count48())
                } else {
                    (self.lba28(), self.count28())
                };
                if self.mem.is_none() {
                    return self.abort(ABRT);
                }
                if lba.checked_add(count).is_none_or(|end| end > sectors) {
                    return self.abort(IDNF | ABRT);
                }
                self.dma = Some(DmaCommand {
                    lba,
                    count,
                    to_memory: matches!(cmd, 0xC8 | 0x25),
                });
                // Busy with the transfer until the bus master has run it.
                self.status = DRDY | DSC | DRQ;
                self.run_dma();
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
                // Transfer mode: PIO (default, or flow-control modes 0-4) or multiword
                // DMA 0-2.
                0x03 => match self.count[0] {
                    0x00..=0x01 | 0x08..=0x0C => self.done(),
                    m @ 0x20..=0x22 => {
                        if let Some(d) = self.drive() {
                            d.mwdma = Some(m & 7);
                        }
                        self.done();
                    }
                    _ => self.abort(ABRT),
                },
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

    /// A PIO-in command of one block the drive has at hand (the IDENTIFY data).
    fn send_block(&mut self, data: Vec<u8>) {
        self.buffer = data;
        self.pos = 0;
        self.transfer = Transfer::In {
            lba: 0,
            remaining: 0,
            block: 1,
        };
        self.status = DRDY | DSC | DRQ;
        self.set_intrq(true);
    }

    /// A command to the empty CD-ROM drive: the PACKET command set's own commands; ATA's
    /// IDENTIFY DEVICE is aborted with the ATAPI signature, as a driver probing the drive
    /// expects.
    fn atapi_command(&mut self, cmd: u8) {
        self.stats.commands += 1;
        self.error = 0;
        match cmd {
            0xA1 => self.send_block(identify_packet().to_vec()),
            0xA0 => {
                if self.features[0] & 1 != 0 {
                    // DMA packets: IDENTIFY PACKET DEVICE offers none.
                    return self.abort(ABRT);
                }
                self.buffer = Vec::with_capacity(12);
                self.pos = 0;
                self.transfer = Transfer::Packet;
                self.count[0] = REASON_COMMAND;
                self.status = DRDY | DSC | DRQ;
            }
            0x08 => {
                // DEVICE RESET.
                self.set_signature(true);
                self.status = 0;
                self.transfer = Transfer::None;
            }
            0x90 => {
                self.reset();
                self.set_intrq(true);
            }
            0xEC => {
                self.set_signature(true);
                self.abort(ABRT);
            }
            0xEF | 0xE0..=0xE6 | 0x00 => self.done(),
            _ => self.abort(ABRT),
        }
    }

    /// The command packet is in: answers it.
    fn run_packet(&mut self) {
        let mut cdb = [0u8; 12];
        cdb.copy_from_slice(&self.buffer[..12]);
        match empty_cdrom_reply(&cdb, self.sense) {
            Ok(reply) if !reply.is_empty() => {
                if cdb[0] == 0x03 {
                    self.sense = (0, 0, 0);
                }
                // The byte count the driver allows per DRQ block (0 means the most).
                let limit = match u16::from_le_bytes([self.lba_mid[0], self.lba_high[0]]) {
                    0 => 0xFFFE,
                    n => usize::from(n & !1),
                };
                let mut reply = reply;
                reply.truncate(limit.max(2));
                let n = reply.len() as u16;
                self.lba_mid[0] = n as u8;
                self.lba_high[0] = (n >> 8) as u8;
                self.buffer = reply;
                self.pos = 0;
                self.transfer = Transfer::PacketIn;
                self.count[0] = REASON_TO_HOST;
                self.status = DRDY | DSC | DRQ;
                self.set_intrq(true);
            }
            Ok(_) => self.packet_done(),
            Err((key, asc, ascq)) => {
                self.sense = (key, asc, ascq);
                self.transfer = Transfer::None;
                self.error = key << 4 | ABRT;
                self.count[0] = REASON_TO_HOST | REASON_COMMAND;
                self.status = DRDY | DSC | ERR;
                self.set_intrq(true);
            }
        }
    }

    /// A packet command ends: status phase.
    fn packet_done(&mut self) {
        self.transfer = Transfer::None;
        self.count[0] = REASON_TO_HOST | REASON_COMMAND;
        self.status = DRDY | DSC;
        self.set_intrq(true);
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
                Transfer::In { .. } | Transfer::PacketIn if self.pos < self.buffer.len() => {
                    self.pos += 1;
                    self.buffer[self.pos - 1]
                }
                _ => 0xFF,
            };
        }
        if self.pos >= self.buffer.len() {
            match self.transfer {
                Transfer::In { .. } => self.next_in_block(),
                Transfer::PacketIn => self.packet_done(),
                _ => {}
            }
        }
    }

    fn write_data(&mut self, data: &[u8]) {
        if self.transfer == Transfer::Packet {
            for b in data {
                if self.buffer.len() < 12 {
                    self.buffer.push(*b);
                }
            }
            if self.buffer.len() == 12 {
                self.run_packet();
            }
            return;
        }
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

    /// Runs the pending DMA command once the bus master has been started: the sectors
    /// go between the image and the buffers the PRD table lists, in order. At the end
    /// the drive interrupts; the bus master stays active if the table held more room than
    /// the transfer needed, and reports an error if it held less, as the PIIX does.
    fn run_dma(&mut self) {
        if self.bm.command & BM_START == 0 {
            return;
        }
        let (Some(cmd), Some(mem)) = (self.dma, self.mem.clone()) else {
            return;
        };
        if cmd.to_memory != (self.bm.command & BM_TO_MEMORY != 0) {
            // The direction the driver set disagrees with the command: nothing moves.
            return self.dma_failed();
        }
        self.dma = None;
        self.stats.dma_transfers += 1;
        let Some(drive) = self.drive() else {
            return;
        };
        let image = drive.image.clone();
        let write_through = !drive.write_cache;
        let mut offset = cmd.lba * SECTOR;
        let mut left = cmd.count * SECTOR;
        let mut entry = u64::from(self.bm.prd_table);
        let mut table_end = false;
        // A table lies within one 64 KiB page: at most this many entries.
        let mut entries_left = 0x1_0000 / 8;
        while left > 0 && !table_end {
            if entries_left == 0 {
                return self.dma_failed();
            }
            entries_left -= 1;
            let mut prd = [0u8; 8];
            if mem.read_slice(&mut prd, GuestAddress(entry)).is_err() {
                return self.dma_failed();
            }
            let addr = u32::from_le_bytes([prd[0], prd[1], prd[2], prd[3]]) & !1;
            let count = u16::from_le_bytes([prd[4], prd[5]]);
            let flags = u16::from_le_bytes([prd[6], prd[7]]);
            table_end = flags & PRD_EOT != 0;
            entry += 8;
            let room = if count == 0 {
                0x1_0000
            } else {
                u64::from(count & !1)
            };
            let n = room.min(left) as usize;
            let mut buf = vec![0u8; n];
            let moved = if cmd.to_memory {
                image.borrow_mut().read_at(offset, &mut buf).is_ok()
                    && mem.write_slice(&buf, GuestAddress(addr.into())).is_ok()
            } else {
                mem.read_slice(&mut buf, GuestAddress(addr.into())).is_ok()
                    && image.borrow_mut().write_at(offset, &buf).is_ok()
            };
            if !moved {
                return self.dma_failed();
            }
            offset += n as u64;
            left -= n as u64;
        }
        let sectors = cmd.count - left / SECTOR;
        if cmd.to_memory {
            self.stats.sectors_read += sectors;
        } else {
            self.stats.sectors_written += sectors;
            if write_through && image.borrow_mut().flush().is_err() {
                return self.dma_failed();
            }
        }
        if left > 0 {
            // The table ran out first.
            return self.dma_failed();
        }
        if table_end {
            self.bm.status &= !BM_ACTIVE;
        }
        self.done();
    }

    fn dma_failed(&mut self) {
        self.stats.dma_errors += 1;
        self.bm.status = (self.bm.status & !BM_ACTIVE) | BM_ERROR;
        self.abort(ABRT);
    }

    /// The channel's bus-master registers (8 bytes of BAR 4): command, status, and the
    /// PRD table's address.
    fn bm_read(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = match offset + i as u64 {
                0 => self.bm.command,
                2 => self.bm.status,
                o @ 4..=7 => (self.bm.prd_table >> (8 * (o - 4))) as u8,
                _ => 0,
            };
        }
    }

    fn bm_write(&mut self, offset: u64, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            match offset + i as u64 {
                0 => {
                    let was = self.bm.command;
                    self.bm.command = v & (BM_START | BM_TO_MEMORY);
                    if v & BM_START != 0 && was & BM_START == 0 {
                        self.bm.status |= BM_ACTIVE;
                    } else if v & BM_START == 0 {
                        // Stopping aborts what was not transferred.
                        self.bm.status &= !BM_ACTIVE;
                    }
                }
                2 => {
                    // Error and interrupt are cleared by writing ones.
                    let clear = v & (BM_ERROR | BM_INTERRUPT);
                    self.bm.status = (self.bm.status & !clear & !BM_CAPABLE) | (v & BM_CAPABLE);
                }
                o @ 4..=7 => {
                    let shift = 8 * (o - 4);
                    self.bm.prd_table =
                        (self.bm.prd_table & !(0xFF << shift)) | (u32::from(*v) << shift);
                    self.bm.prd_table &= !3;
                }
                _ => {}
            }
        }
        self.run_dma();
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

/// The PIIX3's IDE function (00:01.1, 8086:7010): both channels in legacy mode (their
/// ports and IRQs 14/15 are the ISA days', on the board's port bus), and the bus-master
/// registers in BAR 4, 16 I/O ports: the primary channel's, then the secondary's.
pub struct Piix3Ide {
    config: ConfigSpace,
    channels: [Rc<RefCell<IdeChannel>>; 2],
}

impl Piix3Ide {
    pub fn new(channels: [Rc<RefCell<IdeChannel>>; 2]) -> Self {
        // Mass storage, IDE, prog-if 0x80: legacy mode, bus-master capable.
        let mut config = ConfigSpace::new(0x8086, 0x7010, 0x0101_8000, 0x00);
        config.set(0x41, 0x80); // IDETIM primary: IDE decode enable
        config.set(0x43, 0x80); // IDETIM secondary
        config.set_writable(0x40, 8);
        config.add_bar(4, BarKind::Io, 16);
        Self { config, channels }
    }
}

impl PciFunction for Piix3Ide {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match (bar, self.channels.get((offset / 8) as usize)) {
            (4, Some(c)) => c.borrow().bm_read(offset % 8, data),
            _ => data.fill(0xFF),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let (4, Some(c)) = (bar, self.channels.get((offset / 8) as usize)) {
            let mut data = data.to_vec();
            if offset.is_multiple_of(8) && !self.config.bus_master() {
                // Only a bus master may reach memory: the start bit does not take.
                data[0] &= !BM_START;
            }
            c.borrow_mut().bm_write(offset % 8, &data);
        }
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
        (
            IdeChannel::new(Some(Device::Disk(drive)), None, wires.line(14)),
            wires,
        )
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

    /// Guest memory of `len` bytes at 0 for bus-master tests, over `backing`.
    fn dma_memory(backing: &mut Vec<u8>, len: usize) -> Rc<DmaMemory> {
        let log = crate::dma::DmaLog::new(false);
        Rc::new(crate::dma::test_memory(backing, len, 0, log))
    }

    fn prd(mem: &DmaMemory, at: u64, entries: &[(u32, u16, bool)]) {
        for (i, (addr, count, last)) in entries.iter().enumerate() {
            let flags: u16 = if *last { PRD_EOT } else { 0 };
            let e = [
                addr.to_le_bytes().to_vec(),
                count.to_le_bytes().to_vec(),
                flags.to_le_bytes().to_vec(),
            ]
            .concat();
            mem.write_slice(&e, GuestAddress(at + 8 * i as u64))
                .unwrap();
        }
    }

    /// READ DMA through a two-entry PRD table, WRITE DMA back from memory, and a table
    /// too short for the transfer: the bus master's status bits and the drive's.
    #[test]
    fn bus_master_dma_moves_sectors_through_the_prd_table() {
        let mut backing = Vec::new();
        let mem = dma_memory(&mut backing, 0x10000);
        let (c, wires) = channel(16);
        let mut c = c.with_dma(mem.clone());
        let ata = |c: &mut IdeChannel, cmd: u8, lba: u8, count: u8| {
            out(c, 6, 0xE0);
            out(c, 2, count);
            out(c, 3, lba);
            out(c, 4, 0);
            out(c, 5, 0);
            out(c, 7, cmd);
        };
        // Sectors 3-5 (1,536 bytes) into 0x2000 (1,024) and 0x5000 (512).
        prd(&mem, 0x1000, &[(0x2000, 1024, false), (0x5000, 512, true)]);
        c.bm_write(4, &0x1000u32.to_le_bytes());
        ata(&mut c, 0xC8, 3, 3);
        assert_eq!(
            inb(&mut c, CONTROL_OFFSET) & DRQ,
            DRQ,
            "waits for the start bit"
        );
        c.bm_write(0, &[BM_START | BM_TO_MEMORY]);
        let mut got = [0u8; 1];
        for (addr, sector) in [(0x2000u64, 3u8), (0x2200, 4), (0x5000, 5), (0x51FF, 5)] {
            mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
            assert_eq!(got[0], sector, "at {addr:#x}");
        }
        let mut st = [0u8];
        c.bm_read(2, &mut st);
        assert_eq!(st[0] & (BM_ACTIVE | BM_ERROR | BM_INTERRUPT), BM_INTERRUPT);
        assert_eq!(wires.levels() & 1 << 14, 1 << 14);
        assert_eq!(inb(&mut c, 7), DRDY | DSC);
        c.bm_write(2, &[BM_INTERRUPT]);
        c.bm_write(0, &[0]);

        // Write 0xAB from 0x8000 to sector 9, then read it back by PIO.
        mem.write_slice(&[0xAB; 512], GuestAddress(0x8000)).unwrap();
        prd(&mem, 0x1000, &[(0x8000, 512, true)]);
        ata(&mut c, 0xCA, 9, 1);
        c.bm_write(0, &[BM_START]);
        assert_eq!(c.stats().sectors_written, 1);
        c.bm_write(0, &[0]);
        ata(&mut c, 0x20, 9, 1);
        assert!(read_sector(&mut c).iter().all(|b| *b == 0xAB));

        // Two sectors, a table with room for one: an error, not a crash.
        prd(&mem, 0x1000, &[(0x2000, 512, true)]);
        c.bm_write(0, &[BM_START | BM_TO_MEMORY]);
        ata(&mut c, 0xC8, 0, 2);
        c.bm_read(2, &mut st);
        assert_eq!(st[0] & BM_ERROR, BM_ERROR);
        assert_eq!(inb(&mut c, 7) & ERR, ERR);
        assert_eq!(c.stats().dma_errors, 1);
    }

    /// Sends a 12-byte packet with PIO, the byte count limit 0x100; returns what the drive
    /// answered (the data it offered) and the final status.
    fn packet(c: &mut IdeChannel, cdb: [u8; 12]) -> (Vec<u8>, u8) {
        out(c, 1, 0);
        out(c, 4, 0x00);
        out(c, 5, 0x01);
        out(c, 7, 0xA0);
        assert_eq!(inb(c, 2) & 3, REASON_COMMAND, "waits for the packet");
        for pair in cdb.chunks(2) {
            c.write(0, pair);
        }
        let mut data = Vec::new();
        if inb(c, CONTROL_OFFSET) & DRQ != 0 {
            let n = usize::from(inb(c, 4)) | usize::from(inb(c, 5)) << 8;
            for _ in 0..n / 2 {
                let mut w = [0u8; 2];
                c.read(0, &mut w);
                data.extend_from_slice(&w);
            }
        }
        assert_eq!(
            inb(c, 2) & 3,
            REASON_TO_HOST | REASON_COMMAND,
            "status phase"
        );
        (data, inb(c, 7))
    }

    /// The empty CD-ROM drive as a driver probes it: the ATAPI signature, IDENTIFY DEVICE
    /// refused, IDENTIFY PACKET DEVICE, INQUIRY, then TEST UNIT READY failing with "medium
    /// not present", which REQUEST SENSE then reports.
    #[test]
    fn the_empty_cdrom_drive_says_no_medium() {
        let wires = IrqWires::new();
        let mut c = IdeChannel::new(Some(Device::EmptyCdrom), None, wires.line(15));
        assert_eq!((inb(&mut c, 4), inb(&mut c, 5)), (0x14, 0xEB));
        out(&mut c, 6, 0xA0);
        out(&mut c, 7, 0xEC);
        assert_eq!(inb(&mut c, 7) & ERR, ERR);
        assert_eq!(
            (inb(&mut c, 4), inb(&mut c, 5)),
            (0x14, 0xEB),
            "signature kept"
        );
        out(&mut c, 7, 0xA1);
        let id = read_sector(&mut c);
        assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x85C0);

        let (inquiry, status) = packet(&mut c, [0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(status & ERR, 0);
        assert_eq!(inquiry.len(), 36);
        assert_eq!(inquiry[0], 5, "CD/DVD");
        assert_eq!(&inquiry[8..14], b"GANTRY");

        let (none, status) = packet(&mut c, [0; 12]);
        assert!(none.is_empty());
        assert_eq!(status & ERR, ERR);
        assert_eq!(inb(&mut c, 1), SENSE_NOT_READY << 4 | ABRT);
        let (sense, _) = packet(&mut c, [0x03, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            (sense[2], sense[12]),
            (SENSE_NOT_READY, ASC_MEDIUM_NOT_PRESENT)
        );
        let (_, status) = packet(&mut c, [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(status & ERR, ERR, "READ(10) without a medium");
    }
}
