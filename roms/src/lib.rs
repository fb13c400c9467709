//! Firmware images built with Gantry itself, at build time, from the sources in this
//! folder (see `demo/guest.rs`). No external assembler is involved: the build script
//! assembles with iced-x86's `code_asm`.

/// The embedded demo guest: a 64 KiB ROM that starts at the reset vector, goes from real
/// mode to protected mode to long mode, reports what it finds on COM1 (CPUID, memory size
/// from CMOS, the RTC time, a delay timed by PIT interrupts through the PIC) and powers off
/// through the ACPI PM block.
pub static DEMO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.bin"));

/// The demo's last line before it powers off; tests wait for it.
pub const DEMO_LAST_LINE: &str = "demo: all checks done, powering off";

#[cfg(test)]
mod tests {
    #[test]
    fn demo_rom_is_64k_with_a_reset_vector() {
        assert_eq!(super::DEMO.len(), 0x1_0000);
        // A near JMP at F000:FFF0.
        assert_eq!(super::DEMO[0xFFF0], 0xE9);
    }
}
