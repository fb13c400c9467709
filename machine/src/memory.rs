//! Guest physical memory: one anonymous mapping for RAM and one for the firmware ROM,
//! arranged into the PC's regions. Everything that touches guest memory from the host side
//! (loaders, the KVM slot table, the softmmu) goes through [`GuestMemory`].

use memmap2::{MmapMut, MmapOptions};

use crate::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {size} bytes of guest RAM: {source}")]
    Allocate { size: u64, source: std::io::Error },
    #[error("guest range {gpa:#x}+{len:#x} is not RAM")]
    NotRam { gpa: u64, len: u64 },
    #[error("guest range {gpa:#x}+{len:#x} is not backed by memory")]
    Unbacked { gpa: u64, len: u64 },
    #[error("guest RAM for devices: {0}")]
    Dma(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Offset into the RAM mapping.
    Ram(u64),
    /// Offset into the ROM mapping; guest writes are discarded.
    Rom(u64),
    /// Offset into the RAM mapping, read-only: the BIOS area's shadow RAM once firmware
    /// has write-protected it (guest writes are discarded).
    ShadowRo(u64),
}

/// A page of guest memory as the host sees it.
#[derive(Clone, Copy, Debug)]
pub struct HostPage {
    pub ptr: *mut u8,
    /// Its index among RAM's pages; `None` for ROM.
    pub ram_page: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub gpa: u64,
    pub len: u64,
    pub backing: Backing,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.gpa + self.len
    }
    /// Read-only to the guest: ROM, or shadow RAM write-protected.
    pub fn is_rom(&self) -> bool {
        matches!(self.backing, Backing::Rom(_) | Backing::ShadowRo(_))
    }
}

pub struct GuestMemory {
    ram: MmapMut,
    rom: Option<MmapMut>,
    ram_size: u64,
    regions: Vec<Region>,
    /// With firmware: what the chipset's PAM registers make of 0xC0000-0xFFFFF.
    shadow: [Shadow; PAM_SEGMENTS],
}

/// What one segment of 0xC0000-0xFFFFF shows, as the i440FX's PAM registers say (a
/// register's nibble per segment: bit 0 reads from RAM, bit 1 writes to RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shadow {
    /// Reads and writes go to the bus: the firmware ROM's mirror where there is one.
    Pci,
    /// Reads come from the shadow RAM, writes are dropped.
    ReadOnly,
    /// Reads come from the bus, writes go to RAM. Modelled as [`Shadow::Pci`] (writes
    /// dropped): no firmware Gantry runs uses this mode.
    WriteOnly,
    ReadWrite,
}

/// The PAM segments: twelve of 16 KiB from 0xC0000 (PAM1-6, two each), then 0xF0000-
/// 0xFFFFF (PAM0's high nibble).
pub const PAM_SEGMENTS: usize = 13;
const SHADOW_START: u64 = 0xC_0000;

fn pam_segment(i: usize) -> (u64, u64) {
    if i < 12 {
        (SHADOW_START + i as u64 * 0x4000, 0x4000)
    } else {
        (0xF_0000, 0x1_0000)
    }
}

/// The segments' modes from PAM0-PAM6 (configuration bytes 0x59-0x5F of the host bridge).
pub fn decode_pam(pam: [u8; 7]) -> [Shadow; PAM_SEGMENTS] {
    let mode = |nibble: u8| match nibble & 3 {
        0 => Shadow::Pci,
        1 => Shadow::ReadOnly,
        2 => Shadow::WriteOnly,
        _ => Shadow::ReadWrite,
    };
    let mut out = [Shadow::Pci; PAM_SEGMENTS];
    for (i, seg) in out.iter_mut().take(12).enumerate() {
        let reg = pam[1 + i / 2];
        *seg = mode(if i % 2 == 0 { reg } else { reg >> 4 });
    }
    out[12] = mode(pam[0] >> 4);
    out
}

/// The regions of a PC with `ram_size` bytes of RAM and a firmware ROM of `rom_len` bytes
/// (0: none) whose BIOS area shows what `shadow` says.
fn layout(ram_size: u64, rom_len: u64, shadow: &[Shadow; PAM_SEGMENTS]) -> Vec<Region> {
    let mut regions = vec![Region {
        gpa: 0,
        len: ram_size.min(CONVENTIONAL_END),
        backing: Backing::Ram(0),
    }];
    let mirror = rom_len.min(ISA_ROM_WINDOW);
    if mirror == 0 && ram_size > ISA_ROM_END {
        // Without firmware, the BIOS area 0xE0000-0xFFFFF is RAM, where loaders put the
        // tables a BIOS would provide (ACPI).
        regions.push(Region {
            gpa: ISA_ROM_END - ISA_ROM_WINDOW,
            len: ISA_ROM_WINDOW,
            backing: Backing::Ram(ISA_ROM_END - ISA_ROM_WINDOW),
        });
    }
    if mirror > 0 {
        // The RAM mapping holds 0xC0000-0xFFFFF at the same offsets, for shadowing.
        let has_shadow_ram = ram_size > ISA_ROM_END;
        for (i, mode) in shadow.iter().enumerate() {
            let (gpa, len) = pam_segment(i);
            let backing = match mode {
                Shadow::ReadWrite if has_shadow_ram => Some(Backing::Ram(gpa)),
                Shadow::ReadOnly if has_shadow_ram => Some(Backing::ShadowRo(gpa)),
                _ if gpa >= ISA_ROM_END - mirror => {
                    Some(Backing::Rom(rom_len - (ISA_ROM_END - gpa)))
                }
                _ => None,
            };
            if let Some(backing) = backing {
                regions.push(Region { gpa, len, backing });
            }
        }
        regions.push(Region {
            gpa: FOUR_GIB - rom_len,
            len: rom_len,
            backing: Backing::Rom(0),
        });
    }
    if ram_size > ISA_ROM_END {
        let low_end = ram_size.min(LOW_RAM_MAX);
        regions.push(Region {
            gpa: HIGH_MEMORY_START,
            len: low_end - HIGH_MEMORY_START,
            backing: Backing::Ram(HIGH_MEMORY_START),
        });
        if ram_size > LOW_RAM_MAX {
            regions.push(Region {
                gpa: FOUR_GIB,
                len: ram_size - LOW_RAM_MAX,
                backing: Backing::Ram(LOW_RAM_MAX),
            });
        }
    }
    regions.sort_by_key(|r| r.gpa);
    // One region for neighbours that continue each other's backing (the PAM segments
    // showing one ROM mirror or one stretch of shadow RAM): fewer KVM memory slots.
    let mut merged: Vec<Region> = Vec::with_capacity(regions.len());
    for r in regions {
        if let Some(last) = merged.last_mut() {
            let continues = match (last.backing, r.backing) {
                (Backing::Ram(a), Backing::Ram(b))
                | (Backing::Rom(a), Backing::Rom(b))
                | (Backing::ShadowRo(a), Backing::ShadowRo(b)) => a + last.len == b,
                _ => false,
            };
            if continues && last.end() == r.gpa {
                last.len += r.len;
                continue;
            }
        }
        merged.push(r);
    }
    merged
}

impl GuestMemory {
    /// RAM of `ram_size` bytes laid out as on a PC (conventional memory, the legacy hole,
    /// extended memory up to [`LOW_RAM_MAX`], the rest above 4 GiB) and, if given, a firmware
    /// image mapped to end at 4 GiB with its last 128 KiB mirrored below 1 MiB.
    pub fn new(ram_size: u64, firmware: Option<&[u8]>) -> Result<Self, MemoryError> {
        let ram = MmapOptions::new()
            .len(ram_size as usize)
            .map_anon()
            .map_err(|source| MemoryError::Allocate {
                size: ram_size,
                source,
            })?;
        let rom = match firmware {
            Some(image) => {
                let mut m = MmapOptions::new()
                    .len(image.len())
                    .map_anon()
                    .map_err(|source| MemoryError::Allocate {
                        size: image.len() as u64,
                        source,
                    })?;
                m.copy_from_slice(image);
                Some(m)
            }
            None => None,
        };
        let rom_len = rom.as_ref().map_or(0, |r| r.len() as u64);
        let shadow = [Shadow::Pci; PAM_SEGMENTS];
        let regions = layout(ram_size, rom_len, &shadow);
        Ok(Self {
            ram,
            rom,
            ram_size,
            regions,
            shadow,
        })
    }

    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// End of RAM below 4 GiB.
    pub fn low_ram_end(&self) -> u64 {
        self.ram_size.min(LOW_RAM_MAX)
    }

    /// RAM above 4 GiB, in bytes.
    pub fn high_ram_size(&self) -> u64 {
        self.ram_size.saturating_sub(LOW_RAM_MAX)
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Applies the host bridge's PAM registers to the BIOS area (with firmware; without,
    /// the area stays RAM). Returns whether the map changed: whoever caches host
    /// addresses or translations of guest memory must then drop them.
    pub fn set_pam(&mut self, pam: [u8; 7]) -> bool {
        let shadow = decode_pam(pam);
        if shadow == self.shadow || self.rom.is_none() {
            return false;
        }
        self.shadow = shadow;
        let rom_len = self.rom.as_ref().map_or(0, |r| r.len() as u64);
        self.regions = layout(self.ram_size, rom_len, &shadow);
        true
    }

    pub fn region_at(&self, gpa: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.gpa <= gpa);
        let r = self.regions.get(i.checked_sub(1)?)?;
        (gpa < r.end()).then_some(r)
    }

    /// Host address of a region's first byte, for registering it with an accelerator.
    pub fn host_address(&self, region: &Region) -> *mut u8 {
        match (region.backing, &self.rom) {
            (Backing::Ram(off) | Backing::ShadowRo(off), _) => {
                self.ram.as_ptr().wrapping_add(off as usize) as *mut u8
            }
            (Backing::Rom(off), Some(rom)) => rom.as_ptr().wrapping_add(off as usize) as *mut u8,
            (Backing::Rom(_), None) => std::ptr::null_mut(),
        }
    }

    /// The host address of the 4 KiB page at `gpa` if one region of RAM or ROM holds all
    /// of it, with its index among RAM's pages (`None` for ROM). `None` for MMIO, holes
    /// and a page split between regions: those go through [`Self::read`] and the bus.
    pub fn host_page(&mut self, gpa: u64) -> Option<HostPage> {
        let page = gpa & !0xFFF;
        let r = *self.region_at(page)?;
        if page + 0x1000 > r.end() {
            return None;
        }
        let within = page - r.gpa;
        match (r.backing, &mut self.rom) {
            (Backing::Ram(off), _) => Some(HostPage {
                // In bounds: the region lies within the mapping.
                ptr: self.ram.as_mut_ptr().wrapping_add((off + within) as usize),
                ram_page: Some((off + within) >> 12),
            }),
            (Backing::Rom(off), Some(rom)) => Some(HostPage {
                ptr: rom.as_mut_ptr().wrapping_add((off + within) as usize),
                ram_page: None,
            }),
            // Read like ROM (no RAM page: writes never reach it through the TLB).
            (Backing::ShadowRo(off), _) => Some(HostPage {
                ptr: self.ram.as_mut_ptr().wrapping_add((off + within) as usize),
                ram_page: None,
            }),
            (Backing::Rom(_), None) => None,
        }
    }

    /// Guest RAM as devices reach it (vm-memory regions over this very mapping), their
    /// writes logged to `log`. The regions do not own the mapping: whoever holds the
    /// result must not outlive `self` (the board, which holds it, is dropped before the
    /// memory in [`crate::vm::Machine`]).
    pub fn dma_memory(
        &self,
        log: std::rc::Rc<gantry_devices::dma::DmaLog>,
    ) -> Result<gantry_devices::dma::DmaMemory, MemoryError> {
        use gantry_devices::dma::{DmaMemory, WriteLog};
        use vm_memory::mmap::MmapRegionBuilder;
        use vm_memory::{GuestAddress, GuestRegionMmap};
        let mut regions = Vec::new();
        // With firmware the BIOS area's shadow RAM is reached whatever the PAM registers
        // say (firmware has fw_cfg's DMA write its tables there once it made it writable).
        let shadow = (self.rom.is_some() && self.ram_size > ISA_ROM_END).then_some(Region {
            gpa: SHADOW_START,
            len: ISA_ROM_END - SHADOW_START,
            backing: Backing::Ram(SHADOW_START),
        });
        let mut ram: Vec<Region> = self
            .regions
            .iter()
            .filter(|r| matches!(r.backing, Backing::Ram(_)))
            .filter(|r| shadow.is_none() || !(SHADOW_START..ISA_ROM_END).contains(&r.gpa))
            .copied()
            .chain(shadow)
            .collect();
        ram.sort_by_key(|r| r.gpa);
        for r in &ram {
            let bitmap = WriteLog::new(log.clone(), r.gpa);
            // SAFETY: `host_address` points into the RAM mapping, which holds the whole
            // region (`r.len` bytes from there) and stays mapped as long as `self`; the
            // caller keeps the result no longer (see above). Access is single-threaded:
            // devices run on the CPU's thread, between guest instructions or KVM exits.
            let mapping = unsafe {
                MmapRegionBuilder::new_with_bitmap(r.len as usize, bitmap)
                    .with_raw_mmap_pointer(self.host_address(r))
                    .build()
            }
            .map_err(|e| MemoryError::Dma(e.to_string()))?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(r.gpa))
                .ok_or_else(|| MemoryError::Dma(format!("region at {:#x} overflows", r.gpa)))?;
            regions.push(region);
        }
        DmaMemory::from_regions(regions).map_err(|e| MemoryError::Dma(e.to_string()))
    }

    /// The index of the RAM page at `gpa` (its offset in the RAM mapping / 4 KiB), if
    /// `gpa` is RAM.
    pub fn ram_page(&self, gpa: u64) -> Option<u64> {
        self.ram_offset(gpa, 1).map(|off| off as u64 >> 12)
    }

    /// Where the mappings are, so that a holder of host addresses into them (the TLB)
    /// can tell it still looks at this memory.
    pub fn mapping_id(&self) -> [usize; 4] {
        let rom = self.rom.as_ref();
        [
            self.ram.as_ptr() as usize,
            self.ram.len(),
            rom.map_or(0, |r| r.as_ptr() as usize),
            rom.map_or(0, |r| r.len()),
        ]
    }

    /// Offset into the RAM mapping of `[gpa, gpa+len)` if it lies within one RAM region.
    fn ram_offset(&self, gpa: u64, len: u64) -> Option<usize> {
        let r = self.region_at(gpa)?;
        let end = gpa.checked_add(len)?;
        match r.backing {
            Backing::Ram(off) if end <= r.end() => Some((off + gpa - r.gpa) as usize),
            _ => None,
        }
    }

    /// Copies host data into guest RAM (loaders). ROM and holes are refused.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let len = data.len() as u64;
        let off = self
            .ram_offset(gpa, len)
            .ok_or(MemoryError::NotRam { gpa, len })?;
        self.ram[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Fills guest RAM with zeros.
    pub fn zero(&mut self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        let off = self
            .ram_offset(gpa, len)
            .ok_or(MemoryError::NotRam { gpa, len })?;
        self.ram[off..off + len as usize].fill(0);
        Ok(())
    }

    /// Reads guest memory (RAM or ROM) into `buf`, within one region.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        let unbacked = MemoryError::Unbacked { gpa, len };
        let r = self
            .region_at(gpa)
            .ok_or(MemoryError::Unbacked { gpa, len })?;
        if gpa.checked_add(len).is_none_or(|e| e > r.end()) {
            return Err(unbacked);
        }
        let within = (gpa - r.gpa) as usize;
        let src: &[u8] = match (r.backing, &self.rom) {
            (Backing::Ram(off) | Backing::ShadowRo(off), _) => &self.ram[off as usize + within..],
            (Backing::Rom(off), Some(rom)) => &rom[off as usize + within..],
            (Backing::Rom(_), None) => return Err(unbacked),
        };
        buf.copy_from_slice(&src[..buf.len()]);
        Ok(())
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write_u32(&mut self, gpa: u64, v: u32) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }

    pub fn write_u64(&mut self, gpa: u64, v: u64) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pc_layout_with_firmware() {
        let rom: Vec<u8> = (0..0x4_0000u32).map(|i| (i >> 12) as u8).collect();
        let m = GuestMemory::new(64 << 20, Some(&rom)).unwrap();
        let r: Vec<(u64, u64, bool)> = m
            .regions()
            .iter()
            .map(|r| (r.gpa, r.len, r.is_rom()))
            .collect();
        assert_eq!(
            r,
            vec![
                (0, 0xA_0000, false),
                (0xE_0000, 0x2_0000, true),
                (0x10_0000, (64 << 20) - 0x10_0000, false),
                (0xFFFC_0000, 0x4_0000, true),
            ]
        );
        // The mirror shows the ROM's last 128 KiB.
        let mut b = [0u8; 1];
        m.read(0xE_0000, &mut b).unwrap();
        assert_eq!(b[0], 0x20);
        m.read(0xFFFF_FFFF, &mut b).unwrap();
        assert_eq!(b[0], 0x3F);
        assert!(m.read(0xA_0000, &mut b).is_err(), "legacy hole");
    }

    /// The PAM registers as SeaBIOS sets them: shadow RAM read-write over the whole BIOS
    /// area (the C and D segments appear), then the F segment read-only.
    #[test]
    fn pam_registers_map_shadow_ram() {
        let rom: Vec<u8> = (0..0x4_0000u32).map(|i| (i >> 12) as u8).collect();
        let mut m = GuestMemory::new(64 << 20, Some(&rom)).unwrap();
        let mut b = [0u8; 1];
        assert!(m.read(0xC_0000, &mut b).is_err(), "nothing at C0000 yet");
        assert!(!m.set_pam([0; 7]), "power-up state: no change");
        assert!(m.set_pam([0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]));
        let shadow = m.region_at(0xC_0000).copied().unwrap();
        // (One region with the RAM above 1 MiB, which it continues.)
        assert_eq!(
            (shadow.gpa, shadow.end(), shadow.is_rom()),
            (0xC_0000, 64 << 20, false)
        );
        m.write(0xF_FFF0, &[0xEA]).unwrap();
        m.read(0xF_FFF0, &mut b).unwrap();
        assert_eq!(b[0], 0xEA, "RAM now");
        // F segment read-only: RAM still read, writes refused.
        assert!(m.set_pam([0x10, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]));
        m.read(0xF_FFF0, &mut b).unwrap();
        assert_eq!(b[0], 0xEA);
        assert!(m.write(0xF_FFF0, &[0]).is_err());
        assert!(m.region_at(0xF_0000).unwrap().is_rom());
        // Back to the ROM's mirror.
        assert!(m.set_pam([0; 7]));
        m.read(0xF_FFF0, &mut b).unwrap();
        assert_eq!(b[0], 0x3F);
        let modes = decode_pam([0x10, 0x31, 0, 0, 0, 0, 0x02]);
        assert_eq!(modes[0], Shadow::ReadOnly);
        assert_eq!(modes[1], Shadow::ReadWrite);
        assert_eq!(modes[11], Shadow::Pci);
        assert_eq!(modes[10], Shadow::WriteOnly);
        assert_eq!(modes[12], Shadow::ReadOnly);
    }

    #[test]
    fn large_memory_moves_above_4g_and_writes_are_checked() {
        let mut m = GuestMemory::new(LOW_RAM_MAX + (64 << 20), None).unwrap();
        assert_eq!(m.low_ram_end(), LOW_RAM_MAX);
        assert_eq!(m.high_ram_size(), 64 << 20);
        let last = m.regions().last().copied().unwrap();
        assert_eq!((last.gpa, last.len), (FOUR_GIB, 64 << 20));
        m.write(FOUR_GIB + 8, &[1, 2, 3]).unwrap();
        let mut b = [0u8; 3];
        m.read(FOUR_GIB + 8, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert!(
            m.write(LOW_RAM_MAX - 1, &[0, 0]).is_err(),
            "crosses into the hole"
        );
        assert!(m.write(0x9_FFFF, &[0, 0]).is_err());
        m.write(0xF_0000, &[1]).unwrap(); // BIOS area is RAM without firmware
    }
}
