//! The Linux x86 boot protocol's setup header and zero page (`struct setup_header`,
//! `struct boot_params`), by the offsets of the kernel's Documentation/arch/x86/boot.rst
//! and zero-page.rst.
//!
//! Written here rather than taken from linux-loader's `bootparam`: those structs are built
//! only on x86 hosts, and Gantry's guests are x86 on every host. Fields are read and
//! written by offset in little-endian bytes, so nothing depends on the host's layout rules.

/// Where the setup header starts, in the kernel image and in the zero page.
pub const SETUP_HEADER: usize = 0x1F1;
/// Its length up to `kernel_info_offset` (boot protocol 2.15).
const SETUP_HEADER_LEN: usize = 0x26C - SETUP_HEADER;
pub const ZERO_PAGE_LEN: usize = 0x1000;

// Zero-page fields outside the setup header.
const ACPI_RSDP_ADDR: usize = 0x070;
const E820_ENTRIES: usize = 0x1E8;
const E820_TABLE: usize = 0x2D0;
const E820_ENTRY_LEN: usize = 20;
pub const E820_MAX: usize = 128;

/// The setup header's fields the loader reads or sets (offsets from the image's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    pub setup_sects: u8,
    pub syssize: u32,
    pub boot_flag: u16,
    pub header: u32,
    pub version: u16,
    pub type_of_loader: u8,
    pub loadflags: u8,
    pub code32_start: u32,
    pub ramdisk_image: u32,
    pub ramdisk_size: u32,
    pub cmd_line_ptr: u32,
    pub initrd_addr_max: u32,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub init_size: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl SetupHeader {
    /// The header in `image` (a kernel image or a zero page); `None` if it is cut short.
    pub fn read(image: &[u8]) -> Option<SetupHeader> {
        let b = image.get(..SETUP_HEADER + SETUP_HEADER_LEN)?;
        Some(SetupHeader {
            setup_sects: b[0x1F1],
            syssize: u32_at(b, 0x1F4),
            boot_flag: u16_at(b, 0x1FE),
            header: u32_at(b, 0x202),
            version: u16_at(b, 0x206),
            type_of_loader: b[0x210],
            loadflags: b[0x211],
            code32_start: u32_at(b, 0x214),
            ramdisk_image: u32_at(b, 0x218),
            ramdisk_size: u32_at(b, 0x21C),
            cmd_line_ptr: u32_at(b, 0x228),
            initrd_addr_max: u32_at(b, 0x22C),
            xloadflags: u16_at(b, 0x236),
            cmdline_size: u32_at(b, 0x238),
            init_size: u32_at(b, 0x260),
        })
    }

    /// Writes the fields a boot loader sets into a zero page that holds the image's header.
    fn write_loader_fields(&self, page: &mut [u8]) {
        page[0x210] = self.type_of_loader;
        page[0x214..0x218].copy_from_slice(&self.code32_start.to_le_bytes());
        page[0x218..0x21C].copy_from_slice(&self.ramdisk_image.to_le_bytes());
        page[0x21C..0x220].copy_from_slice(&self.ramdisk_size.to_le_bytes());
        page[0x228..0x22C].copy_from_slice(&self.cmd_line_ptr.to_le_bytes());
    }
}

/// One E820 entry as the zero page holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// A zero page (`struct boot_params`).
#[derive(Clone)]
pub struct ZeroPage(pub [u8; ZERO_PAGE_LEN]);

impl ZeroPage {
    /// A zero page holding the kernel image's setup header (as the boot protocol asks: the
    /// loader copies it from the image), with the loader's fields from `hdr`.
    pub fn new(image: &[u8], hdr: &SetupHeader) -> ZeroPage {
        let mut page = [0u8; ZERO_PAGE_LEN];
        let end = (SETUP_HEADER + SETUP_HEADER_LEN).min(image.len());
        if let Some(src) = image.get(SETUP_HEADER..end) {
            page[SETUP_HEADER..end].copy_from_slice(src);
        }
        hdr.write_loader_fields(&mut page);
        ZeroPage(page)
    }

    pub fn hdr(&self) -> SetupHeader {
        // The page is longer than the header: this cannot be cut short.
        SetupHeader::read(&self.0).unwrap_or_else(|| unreachable!())
    }

    pub fn set_acpi_rsdp_addr(&mut self, addr: u64) {
        self.0[ACPI_RSDP_ADDR..ACPI_RSDP_ADDR + 8].copy_from_slice(&addr.to_le_bytes());
    }

    /// Fills the E820 table; `false` if `map` has more entries than it can hold.
    pub fn set_e820(&mut self, map: &[E820Entry]) -> bool {
        if map.len() > E820_MAX {
            return false;
        }
        for (i, e) in map.iter().enumerate() {
            let at = E820_TABLE + i * E820_ENTRY_LEN;
            self.0[at..at + 8].copy_from_slice(&e.addr.to_le_bytes());
            self.0[at + 8..at + 16].copy_from_slice(&e.size.to_le_bytes());
            self.0[at + 16..at + 20].copy_from_slice(&e.kind.to_le_bytes());
        }
        self.0[E820_ENTRIES] = map.len() as u8;
        true
    }

    pub fn e820(&self) -> Vec<E820Entry> {
        (0..(self.0[E820_ENTRIES] as usize).min(E820_MAX))
            .map(|i| {
                let at = E820_TABLE + i * E820_ENTRY_LEN;
                let b = &self.0;
                E820Entry {
                    addr: u32_at(b, at) as u64 | (u32_at(b, at + 4) as u64) << 32,
                    size: u32_at(b, at + 8) as u64 | (u32_at(b, at + 12) as u64) << 32,
                    kind: u32_at(b, at + 16),
                }
            })
            .collect()
    }

    pub fn acpi_rsdp_addr(&self) -> u64 {
        let b = &self.0;
        u32_at(b, ACPI_RSDP_ADDR) as u64 | (u32_at(b, ACPI_RSDP_ADDR + 4) as u64) << 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_at_the_documented_offsets() {
        let mut image = vec![0u8; 0x1000];
        image[0x1F1] = 27;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        image[0x238..0x23C].copy_from_slice(&2047u32.to_le_bytes());
        let mut hdr = SetupHeader::read(&image).unwrap();
        assert_eq!(hdr.setup_sects, 27);
        assert_eq!(hdr.header, 0x5372_6448);
        assert_eq!((hdr.version, hdr.cmdline_size), (0x020F, 2047));
        hdr.type_of_loader = 0xFF;
        hdr.cmd_line_ptr = 0x2_0000;
        let mut page = ZeroPage::new(&image, &hdr);
        assert_eq!(page.0[0x210], 0xFF);
        assert_eq!(page.0[0x228..0x22C], 0x2_0000u32.to_le_bytes());
        assert_eq!(page.hdr(), hdr);
        let map = [
            E820Entry {
                addr: 0,
                size: 0x9_FC00,
                kind: 1,
            },
            E820Entry {
                addr: 0x10_0000,
                size: 1 << 32,
                kind: 1,
            },
        ];
        assert!(page.set_e820(&map));
        assert_eq!(page.0[0x1E8], 2);
        assert_eq!(
            page.0[0x2D0 + 20 + 8..0x2D0 + 20 + 16],
            (1u64 << 32).to_le_bytes()
        );
        assert_eq!(page.e820(), map);
        page.set_acpi_rsdp_addr(0xE_0000);
        assert_eq!(page.acpi_rsdp_addr(), 0xE_0000);
        assert!(!page.set_e820(&[map[0]; E820_MAX + 1]));
        assert!(SetupHeader::read(&image[..0x200]).is_none());
    }
}
