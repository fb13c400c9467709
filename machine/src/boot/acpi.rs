//! Minimal ACPI tables for guests booted without firmware: RSDP, RSDT, FADT (pointing at
//! the PM block at 0x600), FACS and a DSDT holding only the \_S5 sleep package, so that a
//! guest's `poweroff` writes SLP_EN to PM1a_CNT and the run ends.

use crate::layout::ACPI_TABLES;
use crate::memory::{GuestMemory, MemoryError};
use gantry_devices::acpi_pm::PM_BASE;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

fn header(sig: &[u8; 4], len: usize, revision: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(sig);
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.push(revision);
    h.push(0); // checksum, filled in last
    h.extend_from_slice(b"GANTRY");
    h.extend_from_slice(b"GANTRYPC");
    h.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    h.extend_from_slice(b"GNTR");
    h.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    h
}

fn finish(mut t: Vec<u8>) -> Vec<u8> {
    t[9] = checksum(&t);
    t
}

fn put_u32(t: &mut [u8], off: usize, v: u32) {
    t[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes the tables at [`ACPI_TABLES`] and returns the RSDP's address.
pub fn write_tables(mem: &mut GuestMemory) -> Result<u64, MemoryError> {
    let rsdp_at = ACPI_TABLES;
    let rsdt_at = rsdp_at + 0x40;
    let fadt_at = rsdt_at + 0x40;
    let facs_at = fadt_at + 0x100; // 64-byte aligned
    let dsdt_at = facs_at + 0x40;

    // DSDT: Name (_S5, Package (4) {0, 0, 0, 0}) -- SLP_TYP 0 is S5 on the PM block.
    let aml = [
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
    ];
    let mut dsdt = header(b"DSDT", 36 + aml.len(), 1);
    dsdt.extend_from_slice(&aml);
    let dsdt = finish(dsdt);

    let mut facs = vec![0u8; 64];
    facs[0..4].copy_from_slice(b"FACS");
    put_u32(&mut facs, 4, 64);

    let mut fadt = header(b"FACP", 116, 1);
    fadt.resize(116, 0);
    put_u32(&mut fadt, 36, facs_at as u32);
    put_u32(&mut fadt, 40, dsdt_at as u32);
    fadt[46..48].copy_from_slice(&9u16.to_le_bytes()); // SCI_INT
    put_u32(&mut fadt, 48, 0); // SMI_CMD 0: always in ACPI mode
    put_u32(&mut fadt, 56, PM_BASE as u32); // PM1a_EVT_BLK
    put_u32(&mut fadt, 64, PM_BASE as u32 + 4); // PM1a_CNT_BLK
    put_u32(&mut fadt, 76, PM_BASE as u32 + 8); // PM_TMR_BLK
    fadt[88] = 4; // PM1_EVT_LEN
    fadt[89] = 2; // PM1_CNT_LEN
    fadt[91] = 4; // PM_TMR_LEN
    fadt[96..98].copy_from_slice(&0x0FFFu16.to_le_bytes()); // no C2
    fadt[98..100].copy_from_slice(&0x0FFFu16.to_le_bytes()); // no C3
    fadt[108] = 0x32; // CENTURY byte in CMOS
    fadt[109..111].copy_from_slice(&0x0003u16.to_le_bytes()); // legacy devices, 8042
                                                              // WBINVD works, C1 supported, power button is a control method (none present).
    put_u32(&mut fadt, 112, 1 | 1 << 2 | 1 << 4 | 1 << 5);
    let fadt = finish(fadt);

    let mut rsdt = header(b"RSDT", 40, 1);
    rsdt.extend_from_slice(&(fadt_at as u32).to_le_bytes());
    let rsdt = finish(rsdt);

    let mut rsdp = Vec::with_capacity(20);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(b"GANTRY");
    rsdp.push(0); // revision 0: ACPI 1.0, RSDT only
    rsdp.extend_from_slice(&(rsdt_at as u32).to_le_bytes());
    rsdp[8] = checksum(&rsdp);

    mem.write(rsdp_at, &rsdp)?;
    mem.write(rsdt_at, &rsdt)?;
    mem.write(fadt_at, &fadt)?;
    mem.write(facs_at, &facs)?;
    mem.write(dsdt_at, &dsdt)?;
    Ok(rsdp_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_checksum_to_zero() {
        let mut mem = GuestMemory::new(16 << 20, None).unwrap();
        let rsdp = write_tables(&mut mem).unwrap();
        let mut b = [0u8; 20];
        mem.read(rsdp, &mut b).unwrap();
        assert_eq!(&b[..8], b"RSD PTR ");
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        let rsdt = u32::from_le_bytes(b[16..20].try_into().unwrap()) as u64;
        for (addr, sig) in [(rsdt, b"RSDT"), (rsdt + 0x40, b"FACP")] {
            let len = mem.read_u32(addr + 4).unwrap() as usize;
            let mut t = vec![0u8; len];
            mem.read(addr, &mut t).unwrap();
            assert_eq!(&t[..4], sig);
            assert_eq!(t.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0, "{sig:?}");
        }
    }
}
