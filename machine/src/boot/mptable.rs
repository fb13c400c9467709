//! The Intel MultiProcessor Specification (1.4) tables, for guests that look for them
//! rather than for ACPI's MADT (Linux with `acpi=off`, older OSes, test suites): the
//! floating pointer in the BIOS area and a configuration table describing the same board
//! as the MADT: the CPUs' local APICs, the ISA bus, the I/O APIC with the ISA IRQs on its
//! pins (IRQ0 on pin 2), and every CPU's LINT0 as ExtINT and LINT1 as NMI.

use gantry_devices::ioapic::IOAPIC_BASE;
use gantry_devices::lapic::LAPIC_DEFAULT_BASE;

use crate::memory::{GuestMemory, MemoryError};

/// Where the floating pointer goes: the start of the BIOS ROM area (0xF0000-0xFFFFF),
/// one of the three places the specification has OSes search; the table follows it.
pub const MP_FLOATING_POINTER: u64 = 0xF_0000;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The configuration table for `cpus` CPUs (APIC IDs 0..cpus) and the I/O APIC (ID
/// `cpus`), with its header.
fn config_table(cpus: u32) -> Vec<u8> {
    let ioapic_id = cpus as u8;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus {
        // Processor: APIC ID and version, enabled (and the BSP), no CPUID signature or
        // features (OSes read CPUID themselves).
        let flags = 1 | if id == 0 { 2 } else { 0 };
        entries.extend_from_slice(&[0, id as u8, 0x14, flags]);
        entries.extend_from_slice(&[0; 16]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // I/O APIC: ID, version 0x11, enabled, address.
    entries.extend_from_slice(&[2, ioapic_id, 0x11, 1]);
    entries.extend_from_slice(&(IOAPIC_BASE as u32).to_le_bytes());
    count += 1;
    for irq in (0u8..16).filter(|&i| i != 2) {
        // I/O interrupt: INT, polarity and trigger as the bus says, ISA IRQ -> pin.
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, pin]);
        count += 1;
    }
    // Local interrupts on every CPU (0xFF): ExtINT on LINT0, NMI on LINT1.
    for (kind, lint) in [(3u8, 0u8), (1, 1)] {
        entries.extend_from_slice(&[4, kind, 0, 0, 0, 0, 0xFF, lint]);
        count += 1;
    }
    let mut t = Vec::with_capacity(44 + entries.len());
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    t.push(4); // specification revision 1.4
    t.push(0); // checksum, below
    t.extend_from_slice(b"GANTRY  ");
    t.extend_from_slice(b"GANTRYPC    ");
    t.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    t.extend_from_slice(&0u16.to_le_bytes());
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&(LAPIC_DEFAULT_BASE as u32).to_le_bytes());
    t.extend_from_slice(&[0; 4]); // no extended table
    t.extend_from_slice(&entries);
    t[7] = checksum(&t);
    t
}

/// Writes the floating pointer and the configuration table for `cpus` CPUs.
pub fn write_tables(mem: &mut GuestMemory, cpus: u32) -> Result<(), MemoryError> {
    let table_at = MP_FLOATING_POINTER + 16;
    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_at as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4);
    fp.push(0); // checksum, below
                // Feature bytes: a configuration table is present (byte 1 = 0); no IMCR, so the
                // PIC is in virtual wire mode through LINT0 (byte 2 bit 7 clear).
    fp.extend_from_slice(&[0; 5]);
    fp[10] = checksum(&fp);
    mem.write(MP_FLOATING_POINTER, &fp)?;
    mem.write(table_at, &config_table(cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_checksum_to_zero_and_count_their_entries() {
        let mut mem = GuestMemory::new(16 << 20, None).unwrap();
        write_tables(&mut mem, 4).unwrap();
        let mut fp = [0u8; 16];
        mem.read(MP_FLOATING_POINTER, &mut fp).unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(fp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let at = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        let mut head = [0u8; 44];
        mem.read(at, &mut head).unwrap();
        let len = u16::from_le_bytes([head[4], head[5]]) as usize;
        let mut t = vec![0u8; len];
        mem.read(at, &mut t).unwrap();
        assert_eq!(&t[..4], b"PCMP");
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // 4 processors, the bus, the I/O APIC, 15 ISA IRQs, 2 local interrupts.
        assert_eq!(u16::from_le_bytes([t[34], t[35]]), 4 + 1 + 1 + 15 + 2);
        assert_eq!(len, 44 + 4 * 20 + 8 * (1 + 1 + 15 + 2));
    }
}
