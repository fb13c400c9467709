//! Where things live in the guest-physical address space of a Gantry PC.

/// Top of conventional memory (640 KiB); the EBDA sits just below it.
pub const CONVENTIONAL_END: u64 = 0xA_0000;
/// Start of the extended BIOS data area reported in E820.
pub const EBDA_START: u64 = 0x9_FC00;
/// The ISA ROM window below 1 MiB; the firmware's last 128 KiB appear here.
pub const ISA_ROM_END: u64 = 0x10_0000;
pub const ISA_ROM_WINDOW: u64 = 0x2_0000;
/// The start of the legacy VGA/option-ROM hole.
pub const LEGACY_HOLE_START: u64 = 0xA_0000;
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// RAM above this is moved above 4 GiB, leaving room for PCI MMIO, the firmware and the
/// local APIC/IOAPIC windows (as on QEMU's i440FX machine).
pub const LOW_RAM_MAX: u64 = 0xE000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// KVM's three-page TSS and identity-map page on Intel hosts, below the firmware window.
pub const KVM_IDENTITY_MAP: u64 = 0xFEFF_C000;
pub const KVM_TSS: u64 = 0xFEFF_D000;
/// The firmware image may be at most this large (it ends at 4 GiB).
pub const FIRMWARE_MAX: u64 = 16 << 20;

// The bzImage loader's scratch area, in conventional memory (a Linux kernel loads at
// 1 MiB or above). The multiboot and PVH loaders place theirs around the kernel's image
// instead (`boot::placer`), which may be linked anywhere.
/// The GDT a loader builds for protected- and long-mode entry.
pub const BOOT_GDT: u64 = 0x500;
/// Linux's zero page.
pub const BOOT_INFO: u64 = 0x7000;
/// Identity page tables for long-mode entry: PML4, PDPT, four page directories.
pub const BOOT_PML4: u64 = 0x9000;
pub const BOOT_PDPT: u64 = 0xA000;
pub const BOOT_PD: u64 = 0xB000;
/// The kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 0x1_0000;
/// The ACPI tables (RSDP must lie in the BIOS area searched by OSes).
pub const ACPI_TABLES: u64 = 0xE_0000;
