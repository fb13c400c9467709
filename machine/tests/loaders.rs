//! Loaders against real and hand-built images: Debian's stock bzImage (boot_params fields,
//! placement, page tables), an ELF kernel with a PVH note, and a multiboot ELF.

use gantry_frontend::state::{CS, DS, EFER_LMA};
use gantry_machine::boot::entry::{BOOT_CS, RAX, RBX, RSI};
use gantry_machine::boot::{bzimage, load_kernel, KernelImage, LoadError};
use gantry_machine::e820::{memory_map, E820_RAM};
use gantry_machine::layout::*;
use gantry_machine::memory::GuestMemory;

fn cstr_at(mem: &GuestMemory, gpa: u64) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    for i in 0..4096 {
        mem.read(gpa + i, &mut b).unwrap();
        if b[0] == 0 {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

fn read_vec(mem: &GuestMemory, gpa: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read(gpa, &mut v).unwrap();
    v
}

/// Debian's kernel and initramfs from roms/fetch-debian-guest.sh; skipped (with a line
/// saying so) when not fetched, except in CI, where the test command fetches them first.
fn debian_guest() -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../roms/guests");
    let read = |n: &str| std::fs::read(format!("{dir}/{n}"));
    match (read("vmlinuz"), read("initramfs.cpio.gz")) {
        (Ok(k), Ok(i)) => Some((k, i)),
        (Err(e), _) | (_, Err(e)) => {
            if std::env::var_os("CI").is_some() {
                panic!("{dir}: {e} (CI runs roms/fetch-debian-guest.sh first)");
            }
            eprintln!("SKIP: Debian guest not fetched ({e}); run roms/fetch-debian-guest.sh");
            None
        }
    }
}

#[test]
fn debian_bzimage_boot_params() {
    let Some((kernel, initrd)) = debian_guest() else {
        return;
    };
    let cmdline = "console=ttyS0 nolapic noapic gantry_cmd=\"uname -a\"";
    let mut mem = GuestMemory::new(512 << 20, None).unwrap();
    let loaded = load_kernel(
        &mut mem,
        &KernelImage {
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline,
            local_apics: 0,
        },
    )
    .unwrap();
    assert_eq!(loaded.format, "Linux bzImage (64-bit boot protocol)");

    // Entry: 64-bit mode at startup_64, RSI = zero page, flat __BOOT_CS, paging via our tables.
    let e = &loaded.entry;
    assert_eq!(e.rip, 0x10_0200);
    assert_eq!(e.gpr[RSI], BOOT_INFO);
    assert!(e.efer & EFER_LMA != 0 && e.seg[CS].long() && !e.seg[CS].db());
    assert_eq!((e.seg[CS].selector, e.seg[DS].selector), (BOOT_CS, 0x18));
    assert_eq!(e.cr3, BOOT_PML4);
    assert_eq!(mem.read_u64(BOOT_GDT + 16).unwrap(), 0x00AF_9B00_0000_FFFF);

    let p = bzimage::read_boot_params(&mem).unwrap();
    let hdr = p.hdr();
    let file_hdr = bzimage::parse_header(&kernel).unwrap();
    assert_eq!({ hdr.version }, { file_hdr.version });
    assert!({ hdr.version } >= 0x020C);
    assert_eq!(hdr.type_of_loader, 0xFF);
    assert_eq!({ hdr.code32_start }, 0x10_0000);
    assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE);
    assert_eq!(cstr_at(&mem, CMDLINE), cmdline);

    // The protected-mode kernel is at 1 MiB, byte for byte.
    let setup = (file_hdr.setup_sects as usize + 1) * 512;
    assert_eq!(read_vec(&mem, 0x10_0000, 4096), kernel[setup..setup + 4096]);
    let tail = kernel.len() - 4096;
    assert_eq!(
        read_vec(&mem, 0x10_0000 + (tail - setup) as u64, 4096),
        kernel[tail..]
    );

    // The initrd: page-aligned, above the kernel's init_size, below initrd_addr_max.
    let (start, size) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64);
    assert_eq!(size, initrd.len() as u64);
    assert_eq!(start % 4096, 0);
    assert!(start >= 0x10_0000 + { hdr.init_size } as u64);
    assert!(start + size <= { hdr.initrd_addr_max } as u64 + 1);
    assert!(start + size <= mem.low_ram_end());
    assert_eq!(read_vec(&mem, start, initrd.len()), initrd);
    assert_eq!(loaded.initrd, Some((start, start + size)));

    // E820 in the zero page matches the machine's map.
    let map = memory_map(&mem, 0);
    let e820 = p.e820();
    assert_eq!(e820.len(), map.len());
    for (z, m) in e820.iter().zip(&map) {
        assert_eq!((z.addr, z.size, z.kind), (m.addr, m.size, m.kind));
    }
    let ram_above_1m: u64 = map
        .iter()
        .filter(|e| e.kind == E820_RAM && e.addr >= HIGH_MEMORY_START)
        .map(|e| e.size)
        .sum();
    assert_eq!(ram_above_1m, (512 << 20) - HIGH_MEMORY_START);

    // ACPI: the RSDP the zero page names is where OSes also search for it.
    assert_eq!(p.acpi_rsdp_addr(), ACPI_TABLES);
    assert_eq!(read_vec(&mem, ACPI_TABLES, 8), b"RSD PTR ");

    // Identity paging covers the kernel, the zero page and the initrd.
    let pml4 = mem.read_u64(BOOT_PML4).unwrap();
    assert_eq!(pml4 & !0xFFF, BOOT_PDPT);
    for addr in [0x10_0000u64, BOOT_INFO, start, 0xFFFF_F000] {
        let pdpt = mem.read_u64(BOOT_PDPT + (addr >> 30) * 8).unwrap();
        let pde = mem
            .read_u64((pdpt & !0xFFF) + ((addr >> 21) & 511) * 8)
            .unwrap();
        assert_eq!(pde & 0x81, 0x81, "2 MiB page present at {addr:#x}");
        assert_eq!(pde & !0x1F_FFFF & 0xF_FFFF_FFFF_F000, addr & !0x1F_FFFF);
    }
}

#[test]
fn debian_bzimage_command_line_limit() {
    let Some((kernel, _)) = debian_guest() else {
        return;
    };
    let max = bzimage::parse_header(&kernel).unwrap().cmdline_size as usize;
    let mut mem = GuestMemory::new(256 << 20, None).unwrap();
    let long = "x".repeat(max + 1);
    let err = load_kernel(
        &mut mem,
        &KernelImage {
            kernel: &kernel,
            initrd: None,
            cmdline: &long,
            local_apics: 0,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, LoadError::Unsupported(ref m) if m.contains("command line")),
        "{err}"
    );
    let ok = "y".repeat(max);
    load_kernel(
        &mut mem,
        &KernelImage {
            kernel: &kernel,
            initrd: None,
            cmdline: &ok,
            local_apics: 0,
        },
    )
    .unwrap();
}

/// A minimal ELF64 executable: one PT_LOAD at physical 16 MiB (virtual high, as vmlinux),
/// with a bss tail, and a PT_NOTE holding a Xen PHYS32_ENTRY note.
fn pvh_elf(entry: u32) -> Vec<u8> {
    let mut f = vec![0u8; 0x1100];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little-endian
    f[6] = 1;
    let w16 = |f: &mut Vec<u8>, o: usize, v: u16| f[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let w32 = |f: &mut Vec<u8>, o: usize, v: u32| f[o..o + 4].copy_from_slice(&v.to_le_bytes());
    let w64 = |f: &mut Vec<u8>, o: usize, v: u64| f[o..o + 8].copy_from_slice(&v.to_le_bytes());
    w16(&mut f, 16, 2); // ET_EXEC
    w16(&mut f, 18, 62); // EM_X86_64
    w32(&mut f, 20, 1);
    w64(&mut f, 24, 0xFFFF_FFFF_8100_0000);
    w64(&mut f, 32, 64); // e_phoff
    w16(&mut f, 52, 64);
    w16(&mut f, 54, 56);
    w16(&mut f, 56, 2);
    w16(&mut f, 58, 64);
    // PT_LOAD
    let ph = 64;
    w32(&mut f, ph, 1);
    w32(&mut f, ph + 4, 5);
    w64(&mut f, ph + 8, 0x1000);
    w64(&mut f, ph + 16, 0xFFFF_FFFF_8100_0000);
    w64(&mut f, ph + 24, 0x100_0000);
    w64(&mut f, ph + 32, 0x100);
    w64(&mut f, ph + 40, 0x3000);
    w64(&mut f, ph + 48, 0x1000);
    // PT_NOTE
    let note = 0x200;
    let ph = 64 + 56;
    w32(&mut f, ph, 4);
    w64(&mut f, ph + 8, note as u64);
    w64(&mut f, ph + 32, 20);
    w64(&mut f, ph + 40, 20);
    w64(&mut f, ph + 48, 4);
    w32(&mut f, note, 4);
    w32(&mut f, note + 4, 4);
    w32(&mut f, note + 8, 18);
    f[note + 12..note + 16].copy_from_slice(b"Xen\0");
    w32(&mut f, note + 16, entry);
    for (i, b) in f[0x1000..0x1100].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

#[test]
fn pvh_elf_start_info() {
    let elf = pvh_elf(0x100_0040);
    let mut mem = GuestMemory::new(64 << 20, None).unwrap();
    // Dirty the bss so that zeroing is observable.
    mem.write(0x100_0100, &[0xAA; 0x100]).unwrap();
    let initrd = b"INITRD-BYTES".repeat(100);
    let loaded = load_kernel(
        &mut mem,
        &KernelImage {
            kernel: &elf,
            initrd: Some(&initrd),
            cmdline: "console=ttyS0",
            local_apics: 0,
        },
    )
    .unwrap();
    assert_eq!(loaded.format, "ELF with PVH entry");
    let e = &loaded.entry;
    assert_eq!(e.rip, 0x100_0040);
    let info_at = e.gpr[RBX];
    assert!(
        (0x500..0x9_FC00).contains(&info_at),
        "start info in conventional memory: {info_at:#x}"
    );
    assert!(
        e.seg[CS].db() && !e.seg[CS].long() && e.cr0 & 1 == 1 && e.cr0 >> 31 == 0,
        "flat 32-bit, no paging"
    );
    assert_eq!(read_vec(&mem, 0x100_0000, 4), [0, 1, 2, 3]);
    assert_eq!(
        read_vec(&mem, 0x100_0100, 0x100),
        vec![0u8; 0x100],
        "bss zeroed"
    );

    let info = read_vec(&mem, info_at, 56);
    let u32_at = |o: usize| u32::from_le_bytes(info[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(info[o..o + 8].try_into().unwrap());
    assert_eq!(u32_at(0), 0x336E_C578, "magic");
    assert_eq!(u32_at(4), 1, "version");
    assert_eq!(u32_at(12), 1, "nr_modules");
    assert_eq!(cstr_at(&mem, u64_at(24)), "console=ttyS0");
    let modlist = u64_at(16);
    let (mstart, msize) = (
        mem.read_u64(modlist).unwrap(),
        mem.read_u64(modlist + 8).unwrap(),
    );
    assert_eq!(msize, initrd.len() as u64);
    assert!(mstart >= 0x100_3000, "module above the loaded image");
    assert_eq!(read_vec(&mem, mstart, initrd.len()), initrd);
    assert_eq!(read_vec(&mem, u64_at(32), 8), b"RSD PTR ", "rsdp_paddr");
    let (map_at, entries) = (u64_at(40), u32_at(48));
    let map = memory_map(&mem, 0);
    assert_eq!(entries as usize, map.len());
    for (i, m) in map.iter().enumerate() {
        let at = map_at + i as u64 * 24;
        assert_eq!(mem.read_u64(at).unwrap(), m.addr);
        assert_eq!(mem.read_u64(at + 8).unwrap(), m.size);
        assert_eq!(mem.read_u32(at + 16).unwrap(), m.kind);
    }
}

#[test]
fn elf_without_pvh_note_is_refused() {
    let mut elf = pvh_elf(0x100_0040);
    elf[0x200 + 8] = 17; // another Xen note type
    let err = refusal(&elf, 64 << 20);
    assert!(err.to_string().contains("PVH entry note"), "{err}");
    // A segment that would not fit in RAM.
    let elf = pvh_elf(0x100_0040);
    let err = refusal(&elf, 8 << 20);
    assert!(matches!(err, LoadError::TooBig(_)), "{err}");
}

/// ELF32 multiboot kernel without address fields: loaded by program headers, entry
/// translated from virtual to physical.
#[test]
fn multiboot_elf_by_program_headers() {
    let mut f = vec![0u8; 0x1100];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 1; // 32-bit
    f[5] = 1;
    f[6] = 1;
    let w16 = |f: &mut Vec<u8>, o: usize, v: u16| f[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let w32 = |f: &mut Vec<u8>, o: usize, v: u32| f[o..o + 4].copy_from_slice(&v.to_le_bytes());
    w16(&mut f, 16, 2);
    w16(&mut f, 18, 3); // EM_386
    w32(&mut f, 20, 1);
    w32(&mut f, 24, 0xC010_0010); // virtual entry
    w32(&mut f, 28, 52);
    w16(&mut f, 40, 52);
    w16(&mut f, 42, 32);
    w16(&mut f, 44, 1);
    w16(&mut f, 46, 40);
    let ph = 52;
    w32(&mut f, ph, 1);
    w32(&mut f, ph + 4, 0x1000);
    w32(&mut f, ph + 8, 0xC010_0000);
    w32(&mut f, ph + 12, 0x10_0000);
    w32(&mut f, ph + 16, 0x100);
    w32(&mut f, ph + 20, 0x2000);
    w32(&mut f, ph + 24, 5);
    w32(&mut f, ph + 28, 0x1000);
    // Multiboot header at the start of the segment (file offset 0x1000 < 8 KiB).
    let (magic, flags) = (0x1BAD_B002u32, 0x3u32);
    w32(&mut f, 0x1000, magic);
    w32(&mut f, 0x1004, flags);
    w32(&mut f, 0x1008, 0u32.wrapping_sub(magic + flags));
    let mut mem = GuestMemory::new(32 << 20, None).unwrap();
    let loaded = load_kernel(
        &mut mem,
        &KernelImage {
            kernel: &f,
            initrd: Some(b"module-0"),
            cmdline: "root=/dev/null",
            local_apics: 0,
        },
    )
    .unwrap();
    assert_eq!(loaded.format, "multiboot");
    let e = &loaded.entry;
    assert_eq!(e.rip, 0x10_0010);
    assert_eq!(e.gpr[RAX], 0x2BAD_B002);
    let info = e.gpr[RBX];
    assert!(
        (0x500..0x9_FC00).contains(&info),
        "multiboot information in conventional memory: {info:#x}"
    );
    let flags = mem.read_u32(info).unwrap();
    assert_eq!(
        flags & 0x24D,
        0x24D,
        "mem, cmdline, mods, mmap, loader name"
    );
    assert_eq!(mem.read_u32(info + 4).unwrap(), 640);
    assert_eq!(mem.read_u32(info + 8).unwrap(), (32 << 10) - 1024);
    assert_eq!(
        cstr_at(&mem, mem.read_u32(info + 16).unwrap() as u64),
        "root=/dev/null"
    );
    assert_eq!(mem.read_u32(info + 20).unwrap(), 1);
    let mods = mem.read_u32(info + 24).unwrap() as u64;
    let (ms, me) = (
        mem.read_u32(mods).unwrap() as u64,
        mem.read_u32(mods + 4).unwrap() as u64,
    );
    assert_eq!(ms, 0x10_2000, "page-aligned after the image and its bss");
    assert_eq!(read_vec(&mem, ms, (me - ms) as usize), b"module-0");
    assert_eq!(
        cstr_at(&mem, mem.read_u32(info + 64).unwrap() as u64),
        "gantry"
    );
    // mmap: 24-byte records (size field 20) matching E820.
    let (len, at) = (
        mem.read_u32(info + 44).unwrap(),
        mem.read_u32(info + 48).unwrap() as u64,
    );
    assert_eq!(len as usize, memory_map(&mem, 0).len() * 24);
    assert_eq!(mem.read_u32(at).unwrap(), 20);
}

#[test]
fn multiboot_with_bad_checksum_is_not_multiboot() {
    let mut k = vec![0u8; 64];
    k[..4].copy_from_slice(&0x1BAD_B002u32.to_le_bytes());
    k[4..8].copy_from_slice(&0x10000u32.to_le_bytes());
    k[8..12].copy_from_slice(&1u32.to_le_bytes());
    let err = refusal(&k, 16 << 20);
    assert!(matches!(err, LoadError::UnknownFormat), "{err}");
}

#[test]
fn multiboot_requiring_unknown_features_is_refused() {
    let mut k = vec![0u8; 64];
    let (magic, flags) = (0x1BAD_B002u32, 0x0001_0008u32);
    k[..4].copy_from_slice(&magic.to_le_bytes());
    k[4..8].copy_from_slice(&flags.to_le_bytes());
    k[8..12].copy_from_slice(&0u32.wrapping_sub(magic.wrapping_add(flags)).to_le_bytes());
    let err = refusal(&k, 16 << 20);
    assert!(err.to_string().contains("requires features 0x8"), "{err}");
}

/// A multiboot kernel (address fields) of `len` bytes at `load`, its bss up to `bss_end`.
fn multiboot_at(load: u32, len: usize, bss_end: u32) -> Vec<u8> {
    let mut k = vec![0x90u8; len];
    let (magic, flags) = (0x1BAD_B002u32, 0x0001_0002u32);
    let fields = [
        magic,
        flags,
        0u32.wrapping_sub(magic.wrapping_add(flags)),
        load,
        load,
        0,
        bss_end,
        load + 32,
    ];
    for (i, v) in fields.iter().enumerate() {
        k[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    k
}

/// The multiboot loader's tables (and PVH's, through the same placer) go around the
/// kernel's image and module, wherever the kernel is linked.
#[test]
fn multiboot_tables_stay_off_a_low_kernel_and_its_module() {
    let k = multiboot_at(0x500, 0x8000, 0);
    let mut mem = GuestMemory::new(16 << 20, None).unwrap();
    let loaded = load_kernel(
        &mut mem,
        &KernelImage {
            kernel: &k,
            initrd: Some(&[0x5A; 0x3000]),
            cmdline: "low",
            local_apics: 0,
        },
    )
    .unwrap();
    assert_eq!(
        read_vec(&mem, 0x500 + 32, 0x8000 - 32),
        k[32..],
        "the image"
    );
    let (ms, me) = loaded.initrd.unwrap();
    assert_eq!((ms, me), (0x9000, 0xC000), "the module after it");
    assert_eq!(read_vec(&mem, ms, 0x3000), vec![0x5A; 0x3000]);
    let e = &loaded.entry;
    let info = e.gpr[RBX];
    let taken = [(0x500, 0x8500), (ms, me)];
    let outside = |a: u64, len: u64| {
        a >= 0x500 && a + len <= 0x9_FC00 && taken.iter().all(|&(s, e)| a + len <= s || a >= e)
    };
    assert!(outside(info, 88), "info at {info:#x}");
    assert!(outside(e.gdtr.base, 8), "GDT at {:#x}", e.gdtr.base);
    assert!(outside(e.gpr[4] - 16, 16), "stack at {:#x}", e.gpr[4]);
    for (field, len) in [(16, 4), (24, 16), (48, 24), (64, 7)] {
        let at = mem.read_u32(info + field).unwrap() as u64;
        assert!(outside(at, len), "info field {field} points at {at:#x}");
    }
    assert_eq!(
        cstr_at(&mem, mem.read_u32(info + 16).unwrap() as u64),
        "low"
    );
}

/// An image and bss covering all of conventional memory leave no room: a one-line error
/// naming what did not fit.
#[test]
fn a_kernel_covering_conventional_memory_leaves_no_room_for_the_tables() {
    let k = multiboot_at(0x500, 0x1000, 0x9_FC00);
    let err = refusal(&k, 16 << 20);
    assert!(matches!(err, LoadError::NoRoom("the GDT")), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
}

/// Why loading `kernel` (no initrd, an empty command line) into `ram` bytes of RAM fails.
fn refusal(kernel: &[u8], ram: u64) -> LoadError {
    let mut mem = GuestMemory::new(ram, None).unwrap();
    load_kernel(
        &mut mem,
        &KernelImage {
            kernel,
            initrd: None,
            cmdline: "",
            local_apics: 0,
        },
    )
    .unwrap_err()
}
