//! The CPU model Gantry's emulated CPU presents: what CPUID answers. Features are those
//! the lifter implements, plus FPU/SSE/SSE2, which a 64-bit kernel requires to boot at
//! all: their state instructions (FXSAVE, LDMXCSR, ...) and SSE2's integer, move and
//! double-precision instructions are implemented; x87 arithmetic, single precision and
//! the packed conversions are not yet and raise #UD (counted).

pub const VENDOR: &[u8; 12] = b"GenuineIntel";
/// Family 6, model 0x3A, stepping 9 (an Ivy Bridge signature: well known to OSes).
pub const SIGNATURE: u32 = 0x0003_06A9;
const BRAND: &[u8; 48] = b"Gantry emulated x86-64 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

// CPUID.1:EDX
const FPU: u32 = 1 << 0;
const PSE: u32 = 1 << 3;
const TSC: u32 = 1 << 4;
const MSR: u32 = 1 << 5;
const PAE: u32 = 1 << 6;
const CX8: u32 = 1 << 8;
const SEP: u32 = 1 << 11;
const PGE: u32 = 1 << 13;
const CMOV: u32 = 1 << 15;
const PAT: u32 = 1 << 16;
const PSE36: u32 = 1 << 17;
const CLFSH: u32 = 1 << 19;
const FXSR: u32 = 1 << 24;
const SSE: u32 = 1 << 25;
const SSE2: u32 = 1 << 26;
// CPUID.1:ECX
const CX16: u32 = 1 << 13;
const POPCNT: u32 = 1 << 23;
// CPUID.80000001
const SYSCALL: u32 = 1 << 11;
const NX: u32 = 1 << 20;
const RDTSCP: u32 = 1 << 27;
const LM: u32 = 1 << 29;
const LAHF_LM: u32 = 1 << 0;
const ABM: u32 = 1 << 5;

/// (eax, ebx, ecx, edx) for a leaf and subleaf.
pub fn cpuid(leaf: u32, _subleaf: u32) -> [u32; 4] {
    let w = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    match leaf {
        0 => [1, w(&VENDOR[0..4]), w(&VENDOR[8..12]), w(&VENDOR[4..8])],
        1 => [
            SIGNATURE,
            // CLFLUSH line size 8 (x8 = 64 bytes), one logical processor.
            (8 << 8) | (1 << 16),
            CX16 | POPCNT,
            FPU | PSE
                | TSC
                | MSR
                | PAE
                | CX8
                | SEP
                | PGE
                | CMOV
                | PAT
                | PSE36
                | CLFSH
                | FXSR
                | SSE
                | SSE2,
        ],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        0x8000_0001 => [0, 0, LAHF_LM | ABM, SYSCALL | NX | RDTSCP | LM],
        0x8000_0002..=0x8000_0004 => {
            let i = (leaf - 0x8000_0002) as usize * 16;
            [
                w(&BRAND[i..]),
                w(&BRAND[i + 4..]),
                w(&BRAND[i + 8..]),
                w(&BRAND[i + 12..]),
            ]
        }
        // 40-bit physical, 48-bit linear addresses.
        0x8000_0008 => [0x3028, 0, 0, 0],
        // Leaves above the maximum answer as the highest basic leaf does (Intel).
        _ if leaf < 0x8000_0000 => cpuid(1, 0).map(|_| 0),
        _ => [0, 0, 0, 0],
    }
}
