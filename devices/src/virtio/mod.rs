//! Virtio 1.x devices on PCI (the modern interface only: Linux, SeaBIOS and every current
//! driver speak it). [`VirtioPci`] is the transport: the capabilities that point a driver
//! at the registers in BAR 0 (common configuration, ISR, device configuration,
//! notifications), MSI-X in BAR 1, INTx otherwise; the split virtqueues themselves are
//! rust-vmm's `virtio-queue` over [`DmaMemory`]. A device ([`VirtioDevice`]) only
//! handles one descriptor chain at a time.
//!
//! Requests are handled when the driver notifies, on the CPU's thread, and complete
//! before the notifying write returns (as the IDE controller's PIO does): no I/O thread.

pub mod blk;

use std::rc::Rc;

use virtio_queue::{DescriptorChain, Queue, QueueT};

use crate::dma::DmaMemory;
use crate::irq::SharedIrqLine;
use crate::msix::{MsiOutbox, MsiX};
use crate::pci::{BarKind, ConfigSpace, PciFunction};

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_NEEDS_RESET: u8 = 0x40;
const NO_VECTOR: u16 = 0xFFFF;

/// Where the register blocks lie in BAR 0, a page each.
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const BAR0_SIZE: u32 = 0x4000;
/// Each queue's notification register is this far from the previous one.
const NOTIFY_MULTIPLIER: u32 = 4;
/// MSI-X table and pending bits in BAR 1.
const MSIX_TABLE: u32 = 0;
const MSIX_PBA: u32 = 0x800;
const BAR1_SIZE: u32 = 0x1000;

/// The virtio PCI capability types.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
const CAP_VENDOR: u8 = 0x09;

/// The memory devices reach guest RAM through.
pub type Chain<'a> = DescriptorChain<&'a DmaMemory>;

/// What a virtio device does: its type, features and configuration, and one request.
pub trait VirtioDevice {
    /// The virtio device ID (2: block).
    fn device_type(&self) -> u16;
    /// The PCI class code (class, subclass, prog-if) it shows.
    fn pci_class(&self) -> u32;
    /// The device's features, ring features included (the transport adds VERSION_1).
    fn features(&self) -> u64;
    fn queue_count(&self) -> usize;
    fn queue_max_size(&self) -> u16;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Handles one chain from queue `queue`; returns how many bytes it wrote into the
    /// chain's device-writable buffers.
    fn handle(&mut self, queue: usize, chain: Chain<'_>, mem: &DmaMemory) -> u32;
    /// The driver reset the device.
    fn reset(&mut self) {}
}

#[derive(Default, Debug, Clone, Copy)]
pub struct TransportStats {
    pub notifications: u64,
    pub chains: u64,
    pub interrupts: u64,
}

pub struct VirtioPci<D: VirtioDevice> {
    config: ConfigSpace,
    pub device: D,
    mem: Rc<DmaMemory>,
    queues: Vec<Queue>,
    queue_vectors: Vec<u16>,
    config_vector: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    isr: u8,
    intx: SharedIrqLine,
    msix: MsiX,
    /// Where the configuration access window's capability is.
    pci_cfg: usize,
    pub stats: TransportStats,
}

impl<D: VirtioDevice> VirtioPci<D> {
    pub fn new(device: D, mem: Rc<DmaMemory>, intx: SharedIrqLine, msi: Rc<MsiOutbox>) -> Self {
        let id = device.device_type();
        // A modern-only device: ID 0x1040 + type, revision 1.
        let mut config = ConfigSpace::new(0x1AF4, 0x1040 + id, device.pci_class() << 8 | 1, 0);
        config.set(0x2C, 0xF4); // subsystem vendor 1AF4
        config.set(0x2D, 0x1A);
        config.set(0x2E, 0x00); // subsystem 1100, as QEMU's modern devices
        config.set(0x2F, 0x11);
        config.add_bar(0, BarKind::Memory, BAR0_SIZE);
        config.add_bar(1, BarKind::Memory, BAR1_SIZE);
        config.set_interrupt_pin(1);
        let cap = |kind: u8, offset: u64, length: u32, extra: &[u8]| {
            let mut body = vec![16 + extra.len() as u8, kind, 0, 0, 0, 0];
            body.extend_from_slice(&(offset as u32).to_le_bytes());
            body.extend_from_slice(&length.to_le_bytes());
            body.extend_from_slice(extra);
            body
        };
        config.add_capability(CAP_VENDOR, &cap(CAP_COMMON, COMMON, 0x38, &[]));
        config.add_capability(CAP_VENDOR, &cap(CAP_ISR, ISR, 1, &[]));
        config.add_capability(CAP_VENDOR, &cap(CAP_DEVICE, DEVICE, 0x1000, &[]));
        let notify_len = device.queue_count() as u32 * NOTIFY_MULTIPLIER;
        config.add_capability(
            CAP_VENDOR,
            &cap(
                CAP_NOTIFY,
                NOTIFY,
                notify_len,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
        );
        // The configuration access window: BAR, offset and length, then the data, all
        // the driver's to write (firmware that cannot reach the BAR itself uses it).
        let pci_cfg = config.add_capability(CAP_VENDOR, &cap(CAP_PCI_CFG, 0, 0, &[0; 4]));
        config.set_writable(pci_cfg + 4, 1);
        config.set_writable(pci_cfg + 8, 12);
        let vectors = device.queue_count() as u16 + 1;
        let msix = MsiX::new(&mut config, vectors, 1, MSIX_TABLE, MSIX_PBA, msi);
        let queues = (0..device.queue_count())
            .map(|_| Queue::new(device.queue_max_size()))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_default();
        let n = queues.len();
        Self {
            config,
            device,
            mem,
            queues,
            queue_vectors: vec![NO_VECTOR; n],
            config_vector: NO_VECTOR,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            isr: 0,
            intx,
            msix,
            pci_cfg,
            stats: TransportStats::default(),
        }
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.config_vector = NO_VECTOR;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.status = 0;
        self.queue_select = 0;
        self.isr = 0;
        self.intx.set_level(false);
        self.device.reset();
    }

    fn selected_queue(&mut self) -> Option<(&mut Queue, &mut u16)> {
        let i = self.queue_select as usize;
        Some((self.queues.get_mut(i)?, self.queue_vectors.get_mut(i)?))
    }

    /// The common configuration structure as the driver reads it.
    fn common_bytes(&self) -> [u8; 0x38] {
        let mut b = [0u8; 0x38];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        let df = self.device_features();
        let df = match self.device_feature_select {
            0 => df as u32,
            1 => (df >> 32) as u32,
            _ => 0,
        };
        let drv = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(0x00, &self.device_feature_select.to_le_bytes());
        put(0x04, &df.to_le_bytes());
        put(0x08, &self.driver_feature_select.to_le_bytes());
        put(0x0C, &drv.to_le_bytes());
        put(0x10, &self.config_vector.to_le_bytes());
        put(0x12, &(self.queues.len() as u16).to_le_bytes());
        put(0x14, &[self.status, 0]);
        put(0x16, &self.queue_select.to_le_bytes());
        let i = self.queue_select as usize;
        if let (Some(q), Some(v)) = (self.queues.get(i), self.queue_vectors.get(i)) {
            put(0x18, &q.size().to_le_bytes());
            put(0x1A, &v.to_le_bytes());
            put(0x1C, &u16::from(q.ready()).to_le_bytes());
            put(0x1E, &(i as u16).to_le_bytes());
            put(0x20, &q.desc_table().to_le_bytes());
            put(0x28, &q.avail_ring().to_le_bytes());
            put(0x30, &q.used_ring().to_le_bytes());
        }
        b
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        // Queue addresses may be written as 32-bit halves or whole.
        let address = |half: u64| -> (Option<u32>, Option<u32>) {
            match (half, data.len()) {
                (0, 8) => (Some(v as u32), Some((v >> 32) as u32)),
                (0, 4) => (Some(v as u32), None),
                (4, 4) => (None, Some(v as u32)),
                _ => (None, None),
            }
        };
        let ready = |s: &Self| {
            s.queues
                .get(s.queue_select as usize)
                .is_some_and(|q| q.ready())
        };
        match offset {
            0x00 => self.device_feature_select = v as u32,
            0x08 => self.driver_feature_select = v as u32,
            0x0C if self.status & STATUS_FEATURES_OK == 0 => {
                let shift = match self.driver_feature_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.driver_features &= !(0xFFFF_FFFFu64 << shift);
                self.driver_features |= (v & 0xFFFF_FFFF) << shift;
            }
            0x10 => self.config_vector = v as u16,
            0x14 => self.write_status(v as u8),
            0x16 => self.queue_select = v as u16,
            0x18 if !ready(self) => {
                if let Some((q, _)) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            0x1A => {
                if let Some((_, vector)) = self.selected_queue() {
                    *vector = v as u16;
                }
            }
            0x1C if v as u16 == 1 => {
                let mem = self.mem.clone();
                if let Some((q, _)) = self.selected_queue() {
                    q.set_ready(true);
                    if !q.is_valid(&*mem) {
                        // Rings outside RAM or misaligned: the device cannot use them.
                        q.set_ready(false);
                        self.status |= STATUS_NEEDS_RESET;
                    }
                }
            }
            0x20 | 0x24 | 0x28 | 0x2C | 0x30 | 0x34 if !ready(self) => {
                let (lo, hi) = address(offset & 4);
                if let Some((q, _)) = self.selected_queue() {
                    match offset & !7 {
                        0x20 => q.set_desc_table_address(lo, hi),
                        0x28 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.device_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if ok {
                let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
                for q in &mut self.queues {
                    q.set_event_idx(event_idx);
                }
            } else {
                v &= !STATUS_FEATURES_OK;
            }
        }
        self.status = v | (self.status & STATUS_NEEDS_RESET);
    }

    /// The driver says queue `index` has new buffers.
    fn notify(&mut self, index: usize) {
        self.stats.notifications += 1;
        if self.status & STATUS_DRIVER_OK == 0 || !self.config.bus_master() {
            return;
        }
        let mem = self.mem.clone();
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let mut used_any = false;
        loop {
            if queue.disable_notification(&*mem).is_err() {
                break;
            }
            let mut popped = false;
            while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
                let head = chain.head_index();
                let len = self.device.handle(index, chain, &mem);
                self.stats.chains += 1;
                if queue.add_used(&*mem, head, len).is_err() {
                    self.status |= STATUS_NEEDS_RESET;
                    return;
                }
                used_any = true;
                popped = true;
            }
            // More may have come while notifications were off. An available index that
            // says so but yields no chain (more than a ring ahead) is the driver's error:
            // the device stops rather than spin.
            match queue.enable_notification(&*mem) {
                Ok(true) if popped => continue,
                Ok(true) => {
                    self.status |= STATUS_NEEDS_RESET;
                    break;
                }
                _ => break,
            }
        }
        if used_any && queue.needs_notification(&*mem).unwrap_or(true) {
            self.interrupt(index);
        }
    }

    fn interrupt(&mut self, index: usize) {
        self.stats.interrupts += 1;
        if self.msix.enabled() {
            let v = self.queue_vectors[index];
            if v != NO_VECTOR {
                self.msix.notify(v);
            }
        } else {
            self.isr |= 1;
            self.intx.set_level(true);
        }
    }

    pub fn msi_sent(&self) -> u64 {
        self.msix.sent
    }
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// If an access at `offset` of `len` bytes touches the configuration window's data,
    /// the BAR access it stands for: BAR, offset in it, and length (1, 2 or 4).
    fn window(&self, offset: usize, len: usize) -> Option<(usize, u64, usize)> {
        let data = self.pci_cfg + 16;
        if offset >= data + 4 || offset + len <= data {
            return None;
        }
        let word = |at: usize| {
            u32::from_le_bytes([
                self.config.get(at),
                self.config.get(at + 1),
                self.config.get(at + 2),
                self.config.get(at + 3),
            ])
        };
        let bar = usize::from(self.config.get(self.pci_cfg + 4));
        let length = word(self.pci_cfg + 12) as usize;
        (bar <= 5 && matches!(length, 1 | 2 | 4))
            .then(|| (bar, u64::from(word(self.pci_cfg + 8)), length))
    }
}

impl<D: VirtioDevice> PciFunction for VirtioPci<D> {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_written(&mut self, offset: usize, len: usize) {
        self.msix.config_written(&mut self.config);
        if let Some((bar, at, data)) = self.window(offset, len) {
            let bytes: Vec<u8> = (0..data)
                .map(|i| self.config.get(self.pci_cfg + 16 + i))
                .collect();
            self.bar_write(bar, at, &bytes);
        }
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if let Some((bar, at, n)) = self.window(offset, data.len()) {
            let mut bytes = vec![0u8; n];
            self.bar_read(bar, at, &mut bytes);
            for (i, b) in bytes.iter().enumerate() {
                self.config.set(self.pci_cfg + 16 + i, *b);
            }
        }
        self.config.read(offset, data);
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match (bar, offset) {
            (0, COMMON..ISR) => {
                let b = self.common_bytes();
                let o = (offset - COMMON) as usize;
                if let Some(src) = b.get(o..o + data.len()) {
                    data.copy_from_slice(src);
                }
            }
            // Reading the ISR acknowledges the interrupt.
            (0, ISR) => {
                data[0] = std::mem::take(&mut self.isr);
                self.intx.set_level(false);
            }
            (0, DEVICE..NOTIFY) => self.device.read_config(offset - DEVICE, data),
            (1, _) if offset >= u64::from(MSIX_PBA) => {
                self.msix.pba_read(offset - u64::from(MSIX_PBA), data)
            }
            (1, _) => self.msix.table_read(offset - u64::from(MSIX_TABLE), data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match (bar, offset) {
            (0, COMMON..ISR) => self.common_write(offset - COMMON, data),
            (0, NOTIFY..) => {
                let index = (offset - NOTIFY) / u64::from(NOTIFY_MULTIPLIER);
                self.notify(index as usize);
            }
            (1, _) if offset < u64::from(MSIX_PBA) => {
                self.msix.table_write(offset - u64::from(MSIX_TABLE), data)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemImage;
    use crate::dma::DmaLog;
    use crate::irq::IrqWires;
    use std::cell::RefCell;

    fn blk(backing: &mut Vec<u8>) -> VirtioPci<blk::Blk> {
        let mem = crate::dma::test_memory(backing, 0x1000, 0, DmaLog::new(false));
        let image: Box<dyn crate::block::Image> = Box::new(MemImage {
            bytes: vec![0; 8 * 512],
        });
        let device = blk::Blk::new(Rc::new(RefCell::new(image)), false, "T");
        let wires = IrqWires::new();
        VirtioPci::new(
            device,
            Rc::new(mem),
            wires.pirq_line(0, 0),
            MsiOutbox::new(),
        )
    }

    /// The configuration access window (VIRTIO_PCI_CAP_PCI_CFG): BAR 0's registers read
    /// and written through configuration space, as firmware that cannot reach the BAR
    /// does.
    #[test]
    fn the_pci_configuration_window_reaches_bar_0() {
        let mut backing = Vec::new();
        let mut v = blk(&mut backing);
        // Find the window's capability in the list.
        let mut cap = usize::from(v.config().get(0x34));
        while v.config().get(cap + 3) != CAP_PCI_CFG {
            cap = usize::from(v.config().get(cap + 1));
            assert_ne!(cap, 0, "no PCI_CFG capability");
        }
        let set = |v: &mut VirtioPci<blk::Blk>, offset: u32, len: u32| {
            v.config_mut().write(cap + 4, &[0]);
            v.config_mut().write(cap + 8, &offset.to_le_bytes());
            v.config_mut().write(cap + 12, &len.to_le_bytes());
        };
        // The capacity, from the device configuration.
        set(&mut v, DEVICE as u32, 4);
        let mut d = [0u8; 4];
        v.config_read(cap + 16, &mut d);
        assert_eq!(u32::from_le_bytes(d), 8, "sectors");
        // Device status written through the window, read back from the BAR.
        set(&mut v, 0x14, 1);
        v.config_mut().write(cap + 16, &[1]);
        v.config_written(cap + 16, 1);
        let mut s = [0u8];
        v.bar_read(0, 0x14, &mut s);
        assert_eq!(s[0], 1, "ACKNOWLEDGE");
    }
}
