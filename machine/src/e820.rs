//! The BIOS memory map (INT 15h E820) as handed to Linux, PVH and multiboot guests.

use crate::layout::*;
use crate::memory::GuestMemory;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
pub const E820_ACPI: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub fn memory_map(mem: &GuestMemory, firmware_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START.min(mem.ram_size()),
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: CONVENTIONAL_END - EBDA_START,
            kind: E820_RESERVED,
        },
        // The BIOS area: firmware, or the ACPI tables a loader puts there.
        E820Entry {
            addr: ISA_ROM_END - ISA_ROM_WINDOW,
            size: ISA_ROM_WINDOW,
            kind: E820_RESERVED,
        },
    ];
    if mem.low_ram_end() > HIGH_MEMORY_START {
        map.push(E820Entry {
            addr: HIGH_MEMORY_START,
            size: mem.low_ram_end() - HIGH_MEMORY_START,
            kind: E820_RAM,
        });
    }
    if firmware_size > 0 {
        map.push(E820Entry {
            addr: FOUR_GIB - firmware_size,
            size: firmware_size,
            kind: E820_RESERVED,
        });
    }
    if mem.high_ram_size() > 0 {
        map.push(E820Entry {
            addr: FOUR_GIB,
            size: mem.high_ram_size(),
            kind: E820_RAM,
        });
    }
    map
}
