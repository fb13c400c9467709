//! The CPU model Gantry's emulated CPU presents: what CPUID answers. Features are those
//! the lifter implements, plus FPU/SSE/SSE2, which a 64-bit kernel requires to boot at
//! all: their state instructions (FXSAVE, LDMXCSR, ...) and SSE2's integer, move and
//! double-precision instructions are implemented; x87 arithmetic, single precision and
//! the packed conversions are not yet and raise #UD (counted). The vendor's identity
//! (vendor string, signature, brand) comes from [`Vendor`]; the features are the same for
//! both, since they are what the lifter implements.

pub use gantry_frontend::vendor::{family_of, Family, Vendor};

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
const APIC: u32 = 1 << 9;
const CLFSH: u32 = 1 << 19;
const FXSR: u32 = 1 << 24;
const SSE: u32 = 1 << 25;
const SSE2: u32 = 1 << 26;
// CPUID.1:ECX
const CX16: u32 = 1 << 13;
const X2APIC: u32 = 1 << 21;
const POPCNT: u32 = 1 << 23;
const TSC_DEADLINE: u32 = 1 << 24;
// CPUID.(7,0):EDX
const ARCH_CAPABILITIES: u32 = 1 << 29;
// CPUID.80000007:EDX
const INVARIANT_TSC: u32 = 1 << 8;
// CPUID.80000001
const SYSCALL: u32 = 1 << 11;
const NX: u32 = 1 << 20;
const RDTSCP: u32 = 1 << 27;
const LM: u32 = 1 << 29;
const LAHF_LM: u32 = 1 << 0;
const ABM: u32 = 1 << 5;

/// (eax, ebx, ecx, edx) for a leaf and subleaf of the `vendor`'s model, on a CPU whose
/// local APIC has ID `apic` (`None`: no APIC, or disabled in IA32_APIC_BASE).
pub fn cpuid(vendor: Vendor, apic: Option<u32>, leaf: u32, subleaf: u32) -> [u32; 4] {
    let w = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let id = vendor.cpuid_vendor();
    // The Intel model states its TSC's frequency in leaves 0x15 and 0x16 (AMD's parts have
    // no such leaves).
    let max_leaf = match vendor {
        Vendor::Intel => 0x16,
        Vendor::Amd => 7,
    };
    match leaf {
        0 => [max_leaf, w(&id[0..4]), w(&id[8..12]), w(&id[4..8])],
        1 => [
            vendor.signature(),
            // CLFLUSH line size 8 (x8 = 64 bytes), one logical processor, the initial APIC
            // ID.
            (8 << 8) | (1 << 16) | (apic.unwrap_or(0) << 24),
            CX16 | POPCNT
                | if apic.is_some() {
                    X2APIC | TSC_DEADLINE
                } else {
                    0
                },
            if apic.is_some() { APIC } else { 0 }
                | FPU
                | PSE
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
        // Leaves 2-6 (cache descriptors, cache parameters, MONITOR, power management)
        // describe nothing: all zero. Leaf 7 has one subleaf, whose only feature is
        // IA32_ARCH_CAPABILITIES (`helpers/msr.rs`), which says what the model is not
        // vulnerable to.
        7 if subleaf == 0 => [0, 0, 0, ARCH_CAPABILITIES],
        // The TSC and the local APIC's timer both count the machine's clock at 1 GHz
        // (`helpers/msr.rs`, `gantry_devices::lapic`): a 1 GHz "crystal" with a TSC ratio
        // of 1/1, as Linux reads them (it also takes the crystal for the APIC timer's
        // rate). Leaf 0x16: base, maximum and bus frequencies in MHz.
        0x15 if vendor == Vendor::Intel => [1, 1, 1_000_000_000, 0],
        0x16 if vendor == Vendor::Intel => [1000, 1000, 1000, 0],
        // The topology: one thread a core and one core a package (each CPU of `--smp` is a
        // package of its own, as QEMU's default), the x2APIC ID in EDX. Subleaf 0 is the
        // SMT level, 1 the core level, the rest invalid.
        0xB if vendor == Vendor::Intel => {
            let id = apic.unwrap_or(0);
            match subleaf {
                0 => [0, 1, 0x100, id],
                1 => [0, 1, 0x201, id],
                _ => [0, 0, subleaf & 0xFF, id],
            }
        }
        8..=0x14 if vendor == Vendor::Intel => [0, 0, 0, 0],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        0x8000_0001 => [0, 0, LAHF_LM | ABM, SYSCALL | NX | RDTSCP | LM],
        0x8000_0002..=0x8000_0004 => {
            let brand = vendor.brand();
            let i = (leaf - 0x8000_0002) as usize * 16;
            [
                w(&brand[i..]),
                w(&brand[i + 4..]),
                w(&brand[i + 8..]),
                w(&brand[i + 12..]),
            ]
        }
        // 40-bit physical, 48-bit linear addresses.
        0x8000_0008 => [0x3028, 0, 0, 0],
        // The TSC runs at one rate whatever the CPU's state: the machine's clock.
        0x8000_0007 => [0, 0, 0, INVARIANT_TSC],
        2..=7 | 0x8000_0005..=0x8000_0006 => [0, 0, 0, 0],
        // Leaves above the maximum: Intel CPUs answer as the highest basic leaf (with the
        // subleaf asked), AMD CPUs with zeros.
        _ => match vendor {
            Vendor::Intel => cpuid(vendor, apic, max_leaf, subleaf),
            Vendor::Amd => [0, 0, 0, 0],
        },
    }
}

/// The vendor of the CPU this process runs on, and its family; `None` off x86-64 or for a
/// vendor Gantry has no model of.
pub fn host() -> Option<(Vendor, Family)> {
    let (id, eax) = host_cpuid()?;
    let v = [Vendor::Intel, Vendor::Amd]
        .into_iter()
        .find(|v| v.cpuid_vendor() == &id)?;
    Some((v, family_of(eax)))
}

#[cfg(target_arch = "x86_64")]
fn host_cpuid() -> Option<([u8; 12], u32)> {
    use std::arch::x86_64::__cpuid;
    let (l0, l1) = (__cpuid(0), __cpuid(1));
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&l0.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&l0.edx.to_le_bytes());
    v[8..12].copy_from_slice(&l0.ecx.to_le_bytes());
    Some((v, l1.eax))
}

#[cfg(not(target_arch = "x86_64"))]
fn host_cpuid() -> Option<([u8; 12], u32)> {
    None
}
