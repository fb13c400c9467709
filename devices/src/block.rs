//! Disk images as the disk controllers see them: a size, and positioned reads, writes and
//! flushes in bytes. The machine opens them (formats, locks, options); the controllers
//! only move sectors.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

pub const SECTOR: u64 = 512;

/// An image a controller and the machine share: the machine keeps it open across guest
/// resets (its lock with it) and flushes it when the run ends.
pub type SharedImage = Rc<RefCell<Box<dyn Image>>>;

pub trait Image {
    /// The disk's size in bytes.
    fn size(&self) -> u64;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes the writes so far durable on the host (unless the image is opened so that
    /// they need not be: `cache=unsafe`).
    fn flush(&mut self) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read as zeros: by writing zeros, unless the format
    /// has something better.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = offset;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range overflows"))?;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.write_at(at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// The guest no longer needs `len` bytes at `offset`, which may then read as anything.
    /// A hint: an image that cannot free space keeps the data, which is correct.
    fn discard(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// How writes reach the host's disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// Through the host's page cache; a guest flush waits for fdatasync.
    Writeback,
    /// As writeback (Gantry does not open images with O_DIRECT); named for QEMU users.
    None,
    /// A guest flush returns at once: data reaches the disk when the host writes it back.
    Unsafe,
}

/// A raw image: the disk's bytes are the file's.
pub struct RawImage {
    file: File,
    size: u64,
    read_only: bool,
    cache: Cache,
}

impl RawImage {
    pub fn new(file: File, read_only: bool, cache: Cache) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            size,
            read_only,
            cache,
        })
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "access past the end of the disk",
            )),
        }
    }
}

impl Image for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            ));
        }
        self.check(offset, buf.len())?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only || self.cache == Cache::Unsafe {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// A hole reads as zeros: punching one frees the space too. Where the host's file
    /// system cannot, zeros are written.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.writable(offset, len)?;
        if punch_hole(&self.file, offset, len).is_ok() {
            return Ok(());
        }
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.writable(offset, len)?;
        // A file system without holes keeps the data: discard is a hint.
        let _ = punch_hole(&self.file, offset, len);
        Ok(())
    }
}

impl RawImage {
    fn writable(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            ));
        }
        self.check(offset, usize::try_from(len).unwrap_or(usize::MAX))
    }
}

/// Deallocates `len` bytes at `offset` of `file`, keeping its size.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    // SAFETY: fallocate on a descriptor this File owns; it touches no memory of ours.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An image in memory, for device tests.
pub struct MemImage {
    pub bytes: Vec<u8>,
}

impl Image for MemImage {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bytes.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let dst = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bytes.get_mut(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "past the end"))?;
        dst.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `--snapshot`: the disk as `base` holds it plus what the guest wrote since, which goes
/// to `overlay` (a temporary file, already unlinked) and is dropped at exit; `base` is
/// never written.
pub struct SnapshotImage {
    base: Box<dyn Image>,
    overlay: File,
    /// One bit per sector: written since the run began (then read from the overlay).
    written: Vec<u64>,
}

impl SnapshotImage {
    pub fn new(base: Box<dyn Image>, overlay: File) -> io::Result<Self> {
        overlay.set_len(base.size())?;
        let sectors = base.size().div_ceil(SECTOR);
        Ok(Self {
            base,
            overlay,
            written: vec![0; sectors.div_ceil(64) as usize],
        })
    }

    fn is_written(&self, sector: u64) -> bool {
        self.written[(sector / 64) as usize] & (1 << (sector % 64)) != 0
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        let aligned = offset.is_multiple_of(SECTOR) && (len as u64).is_multiple_of(SECTOR);
        let inside = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.base.size());
        if aligned && inside {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "access past the end of the disk or not in whole sectors",
            ))
        }
    }
}

impl Image for SnapshotImage {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        for (i, chunk) in buf.chunks_mut(SECTOR as usize).enumerate() {
            let at = offset + i as u64 * SECTOR;
            if self.is_written(at / SECTOR) {
                self.overlay.read_exact_at(chunk, at)?;
            } else {
                self.base.read_at(at, chunk)?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.overlay.write_all_at(buf, offset)?;
        for s in offset / SECTOR..(offset + buf.len() as u64) / SECTOR {
            self.written[(s / 64) as usize] |= 1 << (s % 64);
        }
        Ok(())
    }

    /// Nothing to make durable: the overlay is dropped at exit.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_its_writes_and_leaves_the_base_alone() {
        let base = MemImage {
            bytes: (0..4096u32).map(|i| (i / 512) as u8).collect(),
        };
        let overlay = tempfile_for_test();
        let mut snap = SnapshotImage::new(Box::new(base), overlay).unwrap();
        snap.write_at(1024, &[0xAA; 512]).unwrap();
        let mut buf = [0u8; 1536];
        snap.read_at(512, &mut buf).unwrap();
        assert_eq!((buf[0], buf[512], buf[1024]), (1, 0xAA, 3));
        assert!(snap.read_at(4096, &mut [0u8; 512]).is_err());
        assert!(
            snap.write_at(100, &[0u8; 512]).is_err(),
            "whole sectors only"
        );
    }

    fn tempfile_for_test() -> File {
        let path = std::env::temp_dir().join(format!("gantry-snap-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
