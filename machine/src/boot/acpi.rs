//! Minimal ACPI tables, written in place for guests booted without firmware or handed to
//! firmware through fw_cfg with the commands that place them: RSDP, RSDT, FADT (pointing at
//! the PM block at 0x600), FACS and a DSDT holding only the \_S5 sleep package, so that a
//! guest's `poweroff` writes SLP_EN to PM1a_CNT and the run ends; and, on a board with
//! APICs, the MADT that describes them and the HPET table.

use crate::layout::{ACPI_TABLES, LOW_RAM_MAX};
use crate::memory::{GuestMemory, MemoryError};
use gantry_devices::acpi_pm::PM_BASE;
use gantry_devices::hpet::{CAPABILITIES as HPET_CAPABILITIES, HPET_BASE};
use gantry_devices::ioapic::IOAPIC_BASE;
use gantry_devices::lapic::LAPIC_DEFAULT_BASE;

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

/// The MADT of a PC with `cpus` local APICs (IDs 0..cpus, processor UIDs the same), the
/// I/O APIC after them (GSIs 0-23), ISA IRQ0 on GSI 2 and the SCI (IRQ 9) level-triggered
/// active-high as on QEMU's PC, and every CPU's LINT1 wired to NMI.
fn madt(cpus: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(LAPIC_DEFAULT_BASE as u32).to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: there are 8259s too
    for id in 0..cpus {
        // Processor local APIC: UID, APIC ID, enabled.
        body.extend_from_slice(&[0, 8, id as u8, id as u8]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: ID, reserved, address, GSI base.
    body.extend_from_slice(&[1, 12, cpus as u8, 0]);
    body.extend_from_slice(&(IOAPIC_BASE as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source overrides: bus 0 (ISA), IRQ, GSI, flags (MPS INTI).
    for (irq, gsi, flags) in [(0u8, 2u32, 0u16), (9, 9, 0x000D)] {
        body.extend_from_slice(&[2, 10, 0, irq]);
        body.extend_from_slice(&gsi.to_le_bytes());
        body.extend_from_slice(&flags.to_le_bytes());
    }
    // Local APIC NMI: all processors, flags, LINT1.
    body.extend_from_slice(&[4, 6, 0xFF, 0, 0, 1]);
    let mut t = header(b"APIC", 36 + body.len(), 1);
    t.extend_from_slice(&body);
    finish(t)
}

/// The HPET table: the event timer block's ID (its capabilities' low half), its address,
/// HPET number 0, a minimum periodic tick of 128 counts, no page protection.
fn hpet_table() -> Vec<u8> {
    let mut t = header(b"HPET", 56, 1);
    t.extend_from_slice(&HPET_CAPABILITIES.to_le_bytes());
    // Generic address: system memory, 64 bits wide, offset 0, access size undefined.
    t.extend_from_slice(&[0, 64, 0, 0]);
    t.extend_from_slice(&HPET_BASE.to_le_bytes());
    t.push(0);
    t.extend_from_slice(&128u16.to_le_bytes());
    t.push(0);
    finish(t)
}

/// The DSDT's definitions: the \_S5 sleep package (SLP_TYP 0 is S5 on the PM block), and
/// the PCI host bridge (PNP0A03) with the windows its buses decode, through which an OS
/// finds the PCI devices when it takes the platform from ACPI: buses 0-255, the I/O ports
/// but the configuration mechanism's, the legacy VGA window and the PCI hole between low
/// RAM's top and the I/O APIC, and how its slots' interrupt pins are routed (`_PRT`).
fn dsdt_body() -> Vec<u8> {
    use super::aml::*;
    use gantry_devices::pci::PciHost;
    let crs = [
        word_space(2, 0, 0xFF),
        word_space(1, 0, 0x0CF7),
        word_space(1, 0x0D00, 0xFFFF),
        dword_memory(0xA_0000, 0xB_FFFF),
        dword_memory(LOW_RAM_MAX as u32, IOAPIC_BASE as u32 - 1),
        end_tag(),
    ]
    .concat();
    // Every slot's INTA#-INTD# (the address is the slot in the high word, any function)
    // on the ISA IRQ its PIRQ line is routed to: the board routes them before the kernel
    // starts, as firmware does, so the table can name the IRQs themselves (GSIs, which
    // an OS then drives level-triggered, active-low, as PCI's interrupts are).
    let prt: Vec<Vec<u8>> = (1..32u8)
        .flat_map(|slot| {
            (0..4u8).map(move |pin| {
                package(&[
                    integer(u64::from(slot) << 16 | 0xFFFF),
                    integer(pin.into()),
                    integer(0),
                    integer(PciHost::routed_irq(slot, pin + 1).into()),
                ])
            })
        })
        .collect();
    [
        name(
            "_S5_",
            package(&[integer(0), integer(0), integer(0), integer(0)]),
        ),
        scope(
            "\\_SB_",
            &[device(
                "PCI0",
                &[
                    name("_HID", eisa_id("PNP0A03")),
                    name("_UID", integer(0)),
                    name("_CRS", buffer(&crs)),
                    name("_PRT", package(&prt)),
                ],
            )],
        ),
    ]
    .concat()
}

/// The ACPI tables as two blobs, the RSDP and the rest (RSDT, FADT, FACS, HPET, MADT,
/// DSDT at fixed offsets), built for the rest to sit at `base`, with where each holds a
/// pointer into the tables blob and a checksum: so that they can be written in place
/// ([`write_tables`]) or handed to firmware to place and link ([`table_loader`]).
struct Blobs {
    rsdp: Vec<u8>,
    tables: Vec<u8>,
    /// 32-bit pointers to offsets in `tables`: (in the RSDP?, offset).
    pointers: Vec<(bool, u32)>,
    /// Tables in `tables`: start and length (the checksum is at start + 9).
    checksummed: Vec<(u32, u32)>,
}

const RSDT_AT: u64 = 0;
const FADT_AT: u64 = 0x40;
/// 64-byte aligned, as the FACS must be.
const FACS_AT: u64 = 0x140;
const HPET_AT: u64 = 0x180;
const MADT_AT: u64 = 0x1C0;
/// The MADT of 64 CPUs takes 594 bytes.
const DSDT_AT: u64 = MADT_AT + 0x300;
const RSDP_LEN: usize = 20;

fn build(cpus: u32, base: u64) -> Blobs {
    let mut pointers = Vec::new();
    let mut checksummed = Vec::new();
    let aml = dsdt_body();
    let mut dsdt = header(b"DSDT", 36 + aml.len(), 1);
    dsdt.extend_from_slice(&aml);
    let dsdt = finish(dsdt);

    let mut facs = vec![0u8; 64];
    facs[0..4].copy_from_slice(b"FACS");
    put_u32(&mut facs, 4, 64);

    let mut fadt = header(b"FACP", 116, 1);
    fadt.resize(116, 0);
    put_u32(&mut fadt, 36, (base + FACS_AT) as u32);
    put_u32(&mut fadt, 40, (base + DSDT_AT) as u32);
    pointers.extend([(false, FADT_AT as u32 + 36), (false, FADT_AT as u32 + 40)]);
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

    let mut tables = vec![0u8; DSDT_AT as usize + dsdt.len()];
    let mut place = |at: u64, t: &[u8], sum: bool| {
        tables[at as usize..at as usize + t.len()].copy_from_slice(t);
        if sum {
            checksummed.push((at as u32, t.len() as u32));
        }
    };
    place(FADT_AT, &fadt, true);
    place(FACS_AT, &facs, false);
    place(DSDT_AT, &dsdt, true);
    let mut entries = vec![FADT_AT];
    if cpus > 0 {
        place(MADT_AT, &madt(cpus), true);
        place(HPET_AT, &hpet_table(), true);
        entries.extend([MADT_AT, HPET_AT]);
    }
    let mut rsdt = header(b"RSDT", 36 + 4 * entries.len(), 1);
    for (i, e) in entries.iter().enumerate() {
        rsdt.extend_from_slice(&((base + e) as u32).to_le_bytes());
        pointers.push((false, RSDT_AT as u32 + 36 + 4 * i as u32));
    }
    place(RSDT_AT, &finish(rsdt), true);

    let mut rsdp = Vec::with_capacity(RSDP_LEN);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(b"GANTRY");
    rsdp.push(0); // revision 0: ACPI 1.0, RSDT only
    rsdp.extend_from_slice(&((base + RSDT_AT) as u32).to_le_bytes());
    rsdp[8] = checksum(&rsdp);
    pointers.push((true, 16));
    Blobs {
        rsdp,
        tables,
        pointers,
        checksummed,
    }
}

/// Writes the tables at [`ACPI_TABLES`] and returns the RSDP's address. `cpus` is how many
/// local APICs the board has (with none, there is no MADT).
pub fn write_tables(mem: &mut GuestMemory, cpus: u32) -> Result<u64, MemoryError> {
    let rsdp_at = ACPI_TABLES;
    let tables_at = rsdp_at + 0x40;
    let b = build(cpus, tables_at);
    mem.write(rsdp_at, &b.rsdp)?;
    mem.write(tables_at, &b.tables)?;
    Ok(rsdp_at)
}

/// fw_cfg's names for the tables and the commands that link them.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
pub const TABLES_FILE: &str = "etc/acpi/tables";
pub const LOADER_FILE: &str = "etc/table-loader";

/// The tables for firmware to place, as QEMU hands them to SeaBIOS through fw_cfg: the
/// RSDP (to go in the BIOS area, where OSes search for it), the other tables (anywhere in
/// high memory), and the loader script that allocates both, adds the tables' address to
/// each pointer and fixes each checksum (QEMU's hw/acpi/bios-linker-loader.c format:
/// 128-byte commands). Returns (rsdp, tables, loader).
pub fn table_loader(cpus: u32) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    const ALLOCATE: u32 = 1;
    const ADD_POINTER: u32 = 2;
    const ADD_CHECKSUM: u32 = 3;
    const ZONE_HIGH: u8 = 1;
    const ZONE_FSEG: u8 = 2;
    fn name(n: &str) -> [u8; 56] {
        let mut b = [0u8; 56];
        b[..n.len()].copy_from_slice(n.as_bytes());
        b
    }
    fn command(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut c = kind.to_le_bytes().to_vec();
        c.extend_from_slice(body);
        c.resize(128, 0);
        c
    }
    let b = build(cpus, 0);
    let mut loader = Vec::new();
    for (file, align, zone) in [(RSDP_FILE, 16u32, ZONE_FSEG), (TABLES_FILE, 64, ZONE_HIGH)] {
        let body = [&name(file)[..], &align.to_le_bytes(), &[zone]].concat();
        loader.extend(command(ALLOCATE, &body));
    }
    for (in_rsdp, offset) in &b.pointers {
        let dest = if *in_rsdp { RSDP_FILE } else { TABLES_FILE };
        let body = [
            &name(dest)[..],
            &name(TABLES_FILE),
            &offset.to_le_bytes(),
            &[4],
        ]
        .concat();
        loader.extend(command(ADD_POINTER, &body));
    }
    let sums = b
        .checksummed
        .iter()
        .map(|(start, len)| (TABLES_FILE, *start, *len))
        .chain([(RSDP_FILE, 0, RSDP_LEN as u32)]);
    for (file, start, len) in sums {
        let checksum_at = if file == RSDP_FILE { 8 } else { start + 9 };
        let body = [
            &name(file)[..],
            &checksum_at.to_le_bytes(),
            &start.to_le_bytes(),
            &len.to_le_bytes(),
        ]
        .concat();
        loader.extend(command(ADD_CHECKSUM, &body));
    }
    (b.rsdp, b.tables, loader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_checksum_to_zero() {
        let mut mem = GuestMemory::new(16 << 20, None).unwrap();
        let rsdp = write_tables(&mut mem, 4).unwrap();
        let mut b = [0u8; 20];
        mem.read(rsdp, &mut b).unwrap();
        assert_eq!(&b[..8], b"RSD PTR ");
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        let rsdt = u32::from_le_bytes(b[16..20].try_into().unwrap()) as u64;
        assert_eq!(mem.read_u32(rsdt + 4).unwrap(), 48, "FADT, MADT, HPET");
        let madt = mem.read_u32(rsdt + 40).unwrap() as u64;
        let hpet = mem.read_u32(rsdt + 44).unwrap() as u64;
        for (addr, sig) in [
            (rsdt, b"RSDT"),
            (rsdt + 0x40, b"FACP"),
            (madt, b"APIC"),
            (hpet, b"HPET"),
        ] {
            let len = mem.read_u32(addr + 4).unwrap() as usize;
            let mut t = vec![0u8; len];
            mem.read(addr, &mut t).unwrap();
            assert_eq!(&t[..4], sig);
            assert_eq!(t.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0, "{sig:?}");
        }
    }

    /// The loader script, run as SeaBIOS runs it (the tables placed at an address of its
    /// choosing, pointers added to, checksums fixed), gives tables that checksum and point
    /// where they were put.
    #[test]
    fn the_loader_script_links_the_tables() {
        let (rsdp, tables, loader) = table_loader(2);
        // The two files, indexed as the commands name them.
        let mut files = [rsdp, tables];
        let index = |f: &str| usize::from(f != RSDP_FILE);
        assert_eq!(loader.len() % 128, 0);
        let at: u32 = 0x7FF_0000;
        for c in loader.chunks(128) {
            let word = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
            let file = |o: usize| {
                let n = &c[o..o + 56];
                String::from_utf8_lossy(&n[..n.iter().position(|b| *b == 0).unwrap()]).to_string()
            };
            match word(0) {
                1 => assert!([RSDP_FILE, TABLES_FILE].contains(&file(4).as_str())),
                2 => {
                    assert_eq!(file(60), TABLES_FILE);
                    let off = word(116) as usize;
                    let d = &mut files[index(&file(4))];
                    let v = u32::from_le_bytes(d[off..off + 4].try_into().unwrap()) + at;
                    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
                }
                3 => {
                    let (sum_at, start, len) =
                        (word(60) as usize, word(64) as usize, word(68) as usize);
                    let d = &mut files[index(&file(4))];
                    let s = d[start..start + len]
                        .iter()
                        .fold(0u8, |a, b| a.wrapping_add(*b));
                    d[sum_at] = d[sum_at].wrapping_sub(s);
                }
                other => panic!("command {other}"),
            }
        }
        let [rsdp, tables] = files;
        let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
        assert_eq!(sum(&rsdp), 0);
        let rsdt = u32::from_le_bytes(rsdp[16..20].try_into().unwrap()) - at;
        assert_eq!(rsdt, 0);
        let entries = &tables[36..48];
        for e in entries.chunks(4) {
            let t = (u32::from_le_bytes(e.try_into().unwrap()) - at) as usize;
            let len = u32::from_le_bytes(tables[t + 4..t + 8].try_into().unwrap()) as usize;
            assert_eq!(sum(&tables[t..t + len]), 0, "{:?}", &tables[t..t + 4]);
        }
        let dsdt = u32::from_le_bytes(tables[0x40 + 40..0x40 + 44].try_into().unwrap()) - at;
        assert_eq!(&tables[dsdt as usize..dsdt as usize + 4], b"DSDT");
    }
}
