//! virtio-blk (virtio 1.2, 5.2): reads, writes, flushes, the device ID string, discard and
//! write-zeroes, on one request queue, onto an [`Image`].

use std::io::{Read, Write};

use virtio_queue::{Reader, Writer};

use super::{Chain, VirtioDevice, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use crate::block::{SharedImage, SECTOR};
use crate::dma::DmaMemory;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const QUEUE_SIZE: u16 = 256;
/// The most a discard or write-zeroes request may cover, in sectors, and the most
/// segments it may have.
const MAX_RANGE_SECTORS: u32 = 0x3F_FFFF;
const MAX_RANGE_SEGMENTS: u32 = 1;
const WRITE_ZEROES_UNMAP: u32 = 1;
/// Data moves between the image and guest memory in pieces this large, whatever the
/// request's size.
const CHUNK: usize = 128 << 10;
const ID_BYTES: usize = 20;

#[derive(Default, Debug, Clone, Copy)]
pub struct BlkStats {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub errors: u64,
    pub unsupported: u64,
    /// Chains without room for a status byte (the driver's fault).
    pub malformed: u64,
}

pub struct Blk {
    image: SharedImage,
    read_only: bool,
    serial: String,
    buf: Vec<u8>,
    pub stats: BlkStats,
}

impl Blk {
    pub fn new(image: SharedImage, read_only: bool, serial: &str) -> Self {
        Self {
            image,
            read_only,
            serial: serial.to_string(),
            buf: vec![0; CHUNK],
            stats: BlkStats::default(),
        }
    }

    fn sectors(&self) -> u64 {
        self.image.borrow().size() / SECTOR
    }

    /// Whether `count` sectors at `sector` lie on the disk.
    fn inside(&self, sector: u64, count: u64) -> bool {
        sector
            .checked_add(count)
            .is_some_and(|end| end <= self.sectors())
    }

    fn read(&mut self, sector: u64, data: &mut Writer<'_, crate::dma::WriteLog>) -> u8 {
        let len = data.available_bytes() as u64;
        if !len.is_multiple_of(SECTOR) || !self.inside(sector, len / SECTOR) {
            return S_IOERR;
        }
        let mut at = sector * SECTOR;
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            let buf = &mut self.buf[..n];
            if self.image.borrow_mut().read_at(at, buf).is_err() || data.write_all(buf).is_err() {
                return S_IOERR;
            }
            at += n as u64;
            left -= n;
        }
        self.stats.reads += 1;
        self.stats.read_bytes += len;
        S_OK
    }

    fn write(&mut self, sector: u64, data: &mut Reader<'_, crate::dma::WriteLog>) -> u8 {
        let len = data.available_bytes() as u64;
        if self.read_only || !len.is_multiple_of(SECTOR) || !self.inside(sector, len / SECTOR) {
            return S_IOERR;
        }
        let mut at = sector * SECTOR;
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            let buf = &mut self.buf[..n];
            if data.read_exact(buf).is_err() || self.image.borrow_mut().write_at(at, buf).is_err() {
                return S_IOERR;
            }
            at += n as u64;
            left -= n;
        }
        self.stats.writes += 1;
        self.stats.written_bytes += len;
        S_OK
    }

    /// Discard and write-zeroes: segments of (sector, sectors, flags).
    fn ranges(&mut self, kind: u32, data: &mut Reader<'_, crate::dma::WriteLog>) -> u8 {
        if self.read_only {
            return S_IOERR;
        }
        let segments = data.available_bytes() / 16;
        if segments == 0 || segments > MAX_RANGE_SEGMENTS as usize {
            return S_UNSUPP;
        }
        for _ in 0..segments {
            let mut seg = [0u8; 16];
            if data.read_exact(&mut seg).is_err() {
                return S_IOERR;
            }
            let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
            let count = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
            let allowed = if kind == T_DISCARD {
                0
            } else {
                WRITE_ZEROES_UNMAP
            };
            if flags & !allowed != 0 || count > MAX_RANGE_SECTORS {
                return S_UNSUPP;
            }
            if !self.inside(sector, count.into()) {
                return S_IOERR;
            }
            let (at, len) = (sector * SECTOR, u64::from(count) * SECTOR);
            let mut image = self.image.borrow_mut();
            let done = if kind == T_DISCARD {
                self.stats.discards += 1;
                image.discard(at, len)
            } else {
                self.stats.write_zeroes += 1;
                image.write_zeroes(at, len)
            };
            if done.is_err() {
                return S_IOERR;
            }
        }
        S_OK
    }

    fn request(
        &mut self,
        header: &[u8; 16],
        reader: &mut Reader<'_, crate::dma::WriteLog>,
        data: &mut Writer<'_, crate::dma::WriteLog>,
    ) -> u8 {
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        match kind {
            T_IN => self.read(sector, data),
            T_OUT => self.write(sector, reader),
            T_FLUSH => {
                self.stats.flushes += 1;
                match self.image.borrow_mut().flush() {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let s = self.serial.as_bytes();
                id[..s.len().min(ID_BYTES)].copy_from_slice(&s[..s.len().min(ID_BYTES)]);
                let n = data.available_bytes().min(ID_BYTES);
                match data.write_all(&id[..n]) {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            T_DISCARD | T_WRITE_ZEROES => self.ranges(kind, reader),
            _ => {
                self.stats.unsupported += 1;
                S_UNSUPP
            }
        }
    }
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u16 {
        2
    }

    /// Mass storage, SCSI controller: what QEMU's virtio-blk shows.
    fn pci_class(&self) -> u32 {
        0x01_00_00
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH;
        if self.read_only {
            f |= F_RO;
        } else {
            f |= F_DISCARD | F_WRITE_ZEROES;
        }
        f
    }

    fn queue_count(&self) -> usize {
        1
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 60];
        let mut put = |off: usize, v: &[u8]| c[off..off + v.len()].copy_from_slice(v);
        put(0, &self.sectors().to_le_bytes());
        // seg_max: a chain has the header and the status besides its data.
        put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes());
        put(20, &(SECTOR as u32).to_le_bytes());
        put(34, &1u16.to_le_bytes());
        put(36, &MAX_RANGE_SECTORS.to_le_bytes());
        put(40, &MAX_RANGE_SEGMENTS.to_le_bytes());
        put(44, &1u32.to_le_bytes());
        put(48, &MAX_RANGE_SECTORS.to_le_bytes());
        put(52, &MAX_RANGE_SEGMENTS.to_le_bytes());
        put(56, &[1]);
        let o = offset as usize;
        for (i, d) in data.iter_mut().enumerate() {
            *d = c.get(o + i).copied().unwrap_or(0);
        }
    }

    fn handle(&mut self, _queue: usize, chain: Chain<'_>, mem: &DmaMemory) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) =
            (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
        else {
            self.stats.malformed += 1;
            return 0;
        };
        let room = writer.available_bytes();
        let Some(mut status) = room
            .checked_sub(1)
            .and_then(|data| writer.split_at(data).ok())
        else {
            self.stats.malformed += 1;
            return 0;
        };
        let mut header = [0u8; 16];
        let s = if reader.read_exact(&mut header).is_ok() {
            self.request(&header, &mut reader, &mut writer)
        } else {
            S_IOERR
        };
        if s == S_IOERR {
            self.stats.errors += 1;
        }
        if status.write_all(&[s]).is_err() {
            self.stats.malformed += 1;
        }
        (writer.bytes_written() + 1) as u32
    }
}
