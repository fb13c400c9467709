//! Guest memory as devices that read and write it see it (virtio queues and buffers, IDE
//! bus-master transfers): rust-vmm's `vm-memory` over the machine's own RAM mapping, so
//! that `virtio-queue` works on it as in Firecracker or cloud-hypervisor.
//!
//! What a device writes is logged through vm-memory's dirty-tracking hook (its
//! [`Bitmap`] trait), in guest-physical ranges: the emulated CPU must drop what it
//! translated from memory a device overwrote, as it does for the guest's own stores. Under
//! KVM nothing is cached, and the log is left off.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use vm_memory::bitmap::{Bitmap, BitmapSlice, WithBitmapSlice};
use vm_memory::GuestMemoryMmap;

/// Guest RAM for devices.
pub type DmaMemory = GuestMemoryMmap<WriteLog>;

/// The guest-physical ranges devices wrote since the last [`DmaLog::take`].
#[derive(Debug, Default)]
pub struct DmaLog {
    enabled: Cell<bool>,
    ranges: RefCell<Vec<(u64, u64)>>,
}

impl DmaLog {
    pub fn new(enabled: bool) -> Rc<Self> {
        Rc::new(Self {
            enabled: Cell::new(enabled),
            ranges: RefCell::default(),
        })
    }

    fn note(&self, gpa: u64, len: u64) {
        if !self.enabled.get() || len == 0 {
            return;
        }
        let mut r = self.ranges.borrow_mut();
        // A buffer is written in pieces, one after the other: one range for all.
        match r.last_mut() {
            Some((start, l)) if *start + *l == gpa => *l += len,
            _ => r.push((gpa, len)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.borrow().is_empty()
    }

    /// The ranges written, `(gpa, len)`, oldest first.
    pub fn take(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.ranges.borrow_mut())
    }
}

/// vm-memory's dirty bitmap for one region (or a slice of one), reporting to a [`DmaLog`]
/// in guest-physical addresses.
#[derive(Clone, Debug, Default)]
pub struct WriteLog {
    log: Option<Rc<DmaLog>>,
    /// The guest-physical address of offset 0.
    base: u64,
}

impl WriteLog {
    pub fn new(log: Rc<DmaLog>, base: u64) -> Self {
        Self {
            log: Some(log),
            base,
        }
    }
}

impl WithBitmapSlice<'_> for WriteLog {
    type S = Self;
}

impl BitmapSlice for WriteLog {}

impl Bitmap for WriteLog {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if let Some(log) = &self.log {
            log.note(self.base + offset as u64, len as u64);
        }
    }

    /// Only the log's consumer asks what was written.
    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, offset: usize) -> Self {
        Self {
            log: self.log.clone(),
            base: self.base + offset as u64,
        }
    }
}

/// Guest memory of `len` bytes at guest-physical `base` over `backing` (resized to hold
/// it page-aligned), for device tests; writes are logged to `log`.
#[cfg(test)]
pub(crate) fn test_memory(
    backing: &mut Vec<u8>,
    len: usize,
    base: u64,
    log: Rc<DmaLog>,
) -> DmaMemory {
    backing.resize(len + 0x1000, 0);
    let skip = backing.as_ptr().align_offset(0x1000);
    let ptr = backing[skip..].as_mut_ptr();
    // SAFETY: `len` bytes from `ptr` lie in `backing`, which the caller keeps alive (and
    // does not move) as long as the memory.
    let region = unsafe {
        vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(len, WriteLog::new(log, base))
            .with_raw_mmap_pointer(ptr)
            .build()
    }
    .expect("a test region");
    DmaMemory::from_regions(vec![vm_memory::GuestRegionMmap::new(
        region,
        vm_memory::GuestAddress(base),
    )
    .expect("in range")])
    .expect("one region")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn writes_are_logged_in_guest_physical_addresses() {
        let log = DmaLog::new(true);
        let mut backing = Vec::new();
        let mem = test_memory(&mut backing, 0x4000, 0x10_0000, log.clone());
        mem.write_slice(&[1, 2, 3], GuestAddress(0x10_1000))
            .unwrap();
        mem.write_slice(&[4], GuestAddress(0x10_1003)).unwrap();
        mem.write_obj(7u32, GuestAddress(0x10_2000)).unwrap();
        assert_eq!(log.take(), vec![(0x10_1000, 4), (0x10_2000, 4)]);
        assert!(log.is_empty());
        let skip = backing.as_ptr().align_offset(0x1000);
        assert_eq!(backing[skip + 0x1001], 2);
    }
}
