//! The architectural state of one x86 CPU, laid out `#[repr(C)]` so that generated code can
//! address fields by offset (`std::mem::offset_of!`, never hand-written numbers).

use std::mem::offset_of;

use crate::vendor::FlatSegmentTop;

/// Segment register indices, in x86 encoding order (the `sreg` field of ModRM).
/// RFLAGS bit 1, which always reads as 1.
pub const RFLAGS_FIXED: u64 = 0x2;
/// The invalid-opcode exception's vector (#UD): what an instruction Gantry does not
/// implement raises, and what a block without a terminator (a lifter bug) ends in.
pub const UD_VECTOR: u8 = 6;
pub const NMI_VECTOR: u8 = 2;

pub const ES: usize = 0;
pub const CS: usize = 1;
pub const SS: usize = 2;
pub const DS: usize = 3;
pub const FS: usize = 4;
pub const GS: usize = 5;

pub const RAX: usize = 0;
pub const RCX: usize = 1;
pub const RDX: usize = 2;
pub const RBX: usize = 3;
pub const RSP: usize = 4;
pub const RBP: usize = 5;
pub const RSI: usize = 6;
pub const RDI: usize = 7;

// RFLAGS bits.
pub const CF: u64 = 1 << 0;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const TF: u64 = 1 << 8;
pub const IF: u64 = 1 << 9;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
pub const IOPL: u64 = 3 << 12;
pub const NT: u64 = 1 << 14;
pub const RF: u64 = 1 << 16;
pub const VM: u64 = 1 << 17;
pub const AC: u64 = 1 << 18;
pub const VIF: u64 = 1 << 19;
pub const VIP: u64 = 1 << 20;
pub const ID: u64 = 1 << 21;
/// Every RFLAGS bit that exists; an image loaded whole (a TSS, IRET into VM86) keeps
/// only these.
pub const RFLAGS_DEFINED: u64 =
    ARITH_FLAGS | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID;
/// The six arithmetic flags, kept lazily (see [`crate::flags`]).
pub const ARITH_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_EM: u64 = 1 << 2;
pub const CR0_TS: u64 = 1 << 3;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_AM: u64 = 1 << 18;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_VME: u64 = 1 << 0;
pub const CR4_PVI: u64 = 1 << 1;
pub const CR4_TSD: u64 = 1 << 2;
pub const CR4_DE: u64 = 1 << 3;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_MCE: u64 = 1 << 6;
pub const CR4_PGE: u64 = 1 << 7;
pub const CR4_PCE: u64 = 1 << 8;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
pub const CR4_UMIP: u64 = 1 << 11;
pub const CR4_FSGSBASE: u64 = 1 << 16;
pub const CR4_OSXSAVE: u64 = 1 << 18;
pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

/// Access-rights bits of a segment cache, in the layout of VMX's "access rights" field:
/// type (3:0), S (4), DPL (6:5), P (7), AVL (12), L (13), D/B (14), G (15).
pub mod attr {
    pub const TYPE: u16 = 0x000F;
    pub const S: u16 = 1 << 4;
    pub const DPL_SHIFT: u16 = 5;
    pub const P: u16 = 1 << 7;
    pub const AVL: u16 = 1 << 12;
    pub const L: u16 = 1 << 13;
    pub const DB: u16 = 1 << 14;
    pub const G: u16 = 1 << 15;
    /// Code segment (type bit 3 with S set).
    pub const CODE: u16 = 1 << 3;
    /// A data segment's type bits: writable, expand-down.
    pub const WRITABLE: u16 = 1 << 1;
    pub const EXPAND_DOWN: u16 = 1 << 2;
    /// A segment whose attributes masked by `FAST_MASK` are `FAST` (present, data,
    /// writable, expand-up) allows any access whose last byte is within its limit, in
    /// every mode ([`super::CpuState::segment_fault`]); generated code checks that much
    /// inline and leaves every other case to `segment_fault`.
    pub const FAST_MASK: u16 = P | CODE | WRITABLE | EXPAND_DOWN;
    pub const FAST: u16 = P | WRITABLE;
}

/// A segment register with its hidden descriptor cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    /// Byte-granular limit (already scaled when G is set).
    pub limit: u32,
    pub selector: u16,
    pub attr: u16,
}

impl Segment {
    pub fn dpl(&self) -> u8 {
        ((self.attr >> attr::DPL_SHIFT) & 3) as u8
    }
    pub fn present(&self) -> bool {
        self.attr & attr::P != 0
    }
    pub fn db(&self) -> bool {
        self.attr & attr::DB != 0
    }
    pub fn long(&self) -> bool {
        self.attr & attr::L != 0
    }
    /// A real-mode (or VM86) segment: base = selector * 16, 64 KiB, read/write data.
    pub fn real(selector: u16, attr_code: bool) -> Self {
        Self {
            base: (selector as u64) << 4,
            limit: 0xFFFF,
            selector,
            attr: attr::P | attr::S | if attr_code { 0xB } else { 0x3 },
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u32,
}

/// The MSRs the modes and the boot of common guests need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Msrs {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub pat: u64,
    pub tsc_aux: u64,
    pub misc_enable: u64,
    pub apic_base: u64,
    pub mtrr_def_type: u64,
    /// The AMD model's HWCR and NB_CFG (0xC0010015, 0xC001001F).
    pub amd_hwcr: u64,
    pub amd_nb_cfg: u64,
    pub mtrr_fixed: [u64; 11],
    pub mtrr_var: [u64; 16],
}

/// x87/MMX/SSE state in the FXSAVE layout (Intel SDM vol. 1, table 10-2).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FxState {
    pub bytes: [u8; 512],
}

impl Default for FxState {
    fn default() -> Self {
        let mut fx = Self { bytes: [0u8; 512] };
        fx.set_fcw(FCW_INIT);
        fx.set_mxcsr(MXCSR_RESET);
        fx
    }
}

/// MXCSR at reset: all SIMD exceptions masked, round to nearest.
pub const MXCSR_RESET: u32 = 0x1F80;
/// The x87 control word after FNINIT: all exceptions masked, 64-bit precision, round to
/// nearest.
pub const FCW_INIT: u16 = 0x037F;

/// The x87 control word as FLDCW (or FXRSTOR's image) leaves it: bit 6 reads as 1, bits 7
/// and 13-15 as 0; the masks, precision and rounding control and bit 12 (the 287's
/// infinity control, now inert) as loaded.
pub fn fcw_loaded(v: u16) -> u16 {
    (v & 0x1F3F) | 0x0040
}

impl FxState {
    /// The image's size in bytes.
    pub const SIZE: usize = 512;
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    /// The abridged tag word (one bit per register, 1 = valid).
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST0: usize = 32;
    pub const XMM0: usize = 160;

    pub fn mxcsr(&self) -> u32 {
        let b = &self.bytes[Self::MXCSR..Self::MXCSR + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn fcw(&self) -> u16 {
        u16::from_le_bytes([self.bytes[Self::FCW], self.bytes[Self::FCW + 1]])
    }

    pub fn set_fcw(&mut self, v: u16) {
        self.bytes[Self::FCW..Self::FCW + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub fn set_mxcsr(&mut self, v: u32) {
        self.bytes[Self::MXCSR..Self::MXCSR + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// XMM register `i` (0..16) as its 16 bytes, little-endian.
    pub fn xmm(&self, i: usize) -> [u8; 16] {
        let o = Self::XMM0 + 16 * (i & 15);
        let mut x = [0u8; 16];
        x.copy_from_slice(&self.bytes[o..o + 16]);
        x
    }

    pub fn set_xmm(&mut self, i: usize, x: &[u8; 16]) {
        let o = Self::XMM0 + 16 * (i & 15);
        self.bytes[o..o + 16].copy_from_slice(x);
    }
}

/// Lazy arithmetic flags, as QEMU's cc_op/cc_src/cc_dst: the last flag-setting operation and
/// its operands; flags are computed only where read (see [`crate::flags`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LazyFlags {
    /// A [`crate::flags::CcOp`] as u32.
    pub op: u32,
    pub dst: u64,
    pub src: u64,
    pub aux: u64,
}

#[repr(C)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuState {
    pub gpr: [u64; 16],
    pub rip: u64,
    /// RFLAGS; while `cc.op` is not `Eflags`, its arithmetic flags are stale and the lazy
    /// state holds the truth.
    pub rflags: u64,
    pub cc: LazyFlags,
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescriptorTable,
    pub idtr: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub xcr0: u64,
    pub dr: [u64; 8],
    pub msr: Msrs,
    /// Added to the time base to give the TSC (WRMSR/TSC writes move it).
    pub tsc_offset: u64,
    pub fx: FxState,
    /// Address mask for the A20 gate (bit 20 cleared while the gate is off).
    pub a20_mask: u64,
    /// HLT executed; cleared by an interrupt.
    pub halted: bool,
    /// Interrupts are inhibited for one instruction (after STI, MOV SS, POP SS).
    pub interrupt_shadow: bool,
    /// An NMI's handler runs: further NMIs wait for the next IRET.
    pub nmi_blocked: bool,
    /// The current privilege level in protected mode. Kept explicitly (as QEMU's hflags
    /// do) rather than derived from CS or SS: during a privilege change (IRET, far RET,
    /// interrupt delivery) CS is loaded before SS, and checks on the new SS must see the
    /// new CPL. Updated wherever CS is loaded.
    pub cpl: u8,
    /// Not guest state: words a JIT's generated code shares with its calls out while it
    /// runs, kept here so that the code reaches them and the registers through one base
    /// (as QEMU keeps its exit request and TLB beside `env`).
    pub jit: JitScratch,
}

/// The JIT's words in [`CpuState::jit`]: what they hold is the JIT's business, and two
/// states compare equal whatever they hold.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct JitScratch(pub [u64; JIT_SCRATCH_WORDS]);

pub const JIT_SCRATCH_WORDS: usize = 24;

impl PartialEq for JitScratch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for JitScratch {}

impl std::fmt::Debug for JitScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JitScratch")
    }
}

impl Default for CpuState {
    fn default() -> Self {
        Self::reset()
    }
}

impl CpuState {
    /// The state after RESET (Intel SDM vol. 3, table 9-1).
    pub fn reset() -> Self {
        let mut seg = [Segment::real(0, false); 6];
        seg[CS] = Segment {
            base: 0xFFFF_0000,
            limit: 0xFFFF,
            selector: 0xF000,
            attr: attr::P | attr::S | 0xB,
        };
        let mut gpr = [0u64; 16];
        gpr[RDX] = 0x600;
        Self {
            gpr,
            rip: 0xFFF0,
            rflags: 0x2,
            cc: LazyFlags::default(),
            seg,
            ldtr: Segment {
                limit: 0xFFFF,
                attr: attr::P | 0x2,
                ..Default::default()
            },
            tr: Segment {
                limit: 0xFFFF,
                attr: attr::P | 0x3,
                ..Default::default()
            },
            gdtr: DescriptorTable {
                base: 0,
                limit: 0xFFFF,
            },
            idtr: DescriptorTable {
                base: 0,
                limit: 0xFFFF,
            },
            cr0: CR0_ET | CR0_CD | CR0_NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            xcr0: 1,
            dr: [0, 0, 0, 0, 0, 0, 0xFFFF_0FF0, 0x400],
            msr: Msrs {
                pat: 0x0007_0406_0007_0406,
                apic_base: 0,
                misc_enable: 1, // fast strings
                ..Default::default()
            },
            tsc_offset: 0,
            fx: FxState::default(),
            a20_mask: !0,
            halted: false,
            interrupt_shadow: false,
            nmi_blocked: false,
            cpl: 0,
            jit: JitScratch::default(),
        }
    }

    /// Current privilege level: 0 in real mode, 3 in virtual-8086 mode, else [`Self::cpl`]
    /// the field.
    pub fn cpl(&self) -> u8 {
        if self.cr0 & CR0_PE == 0 {
            0
        } else if self.rflags & VM != 0 {
            3
        } else {
            self.cpl
        }
    }

    pub fn protected(&self) -> bool {
        self.cr0 & CR0_PE != 0
    }

    /// The linear address of the next instruction, CS.base + RIP (RIP alone in 64-bit
    /// mode, where CS has no base).
    pub fn linear_rip(&self) -> u64 {
        if self.mode64() {
            self.rip
        } else {
            self.seg[CS].base.wrapping_add(self.rip) & 0xFFFF_FFFF
        }
    }
    /// The segment check of a data access outside 64-bit mode: `Some(vector)` (#SS for SS,
    /// #GP otherwise, error code 0) unless the `bytes` bytes at `linear` lie within
    /// segment `seg`'s limit and, in protected mode, its type allows the access (SDM vol. 3,
    /// 5.3 and 5.4). The offset is recovered from the linear address, which the lifter
    /// computed as base + offset wrapped to 32 bits. Real and virtual-8086 mode check the
    /// limit alone, as the cached descriptor left it (so "unreal mode" works). `top` is
    /// the CPU model's rule for an access past 4 GiB in a segment of limit 4 GiB - 1.
    pub fn segment_fault(
        &self,
        seg: usize,
        linear: u64,
        bytes: u32,
        write: bool,
        top: FlatSegmentTop,
    ) -> Option<u8> {
        let s = &self.seg[seg % 6];
        let offset = linear.wrapping_sub(s.base) & 0xFFFF_FFFF;
        let mut last = offset + bytes.max(1) as u64 - 1;
        if top == FlatSegmentTop::Wraps && s.limit == 0xFFFF_FFFF {
            last = offset;
        }
        let typ = s.attr & attr::TYPE;
        let ok = if !self.protected() || self.v86() {
            last <= s.limit as u64
        } else if !s.present() {
            // A null selector in a data segment register: any access faults.
            false
        } else if s.attr & attr::CODE != 0 {
            // Code segments are never writable, and readable only with R.
            !write && typ & 2 != 0 && last <= s.limit as u64
        } else if write && typ & 2 == 0 {
            false
        } else if typ & 4 != 0 {
            // Expand-down: valid offsets are above the limit, up to 64 KiB or 4 GiB (B).
            let top = if s.db() { 0xFFFF_FFFF } else { 0xFFFF };
            offset > s.limit as u64 && last <= top
        } else {
            last <= s.limit as u64
        };
        match (ok, seg == SS) {
            (true, _) => None,
            (false, true) => Some(12),
            (false, false) => Some(13),
        }
    }
    pub fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }
    /// 64-bit mode: long mode with CS.L.
    pub fn mode64(&self) -> bool {
        self.long_mode() && self.seg[CS].long()
    }
    pub fn v86(&self) -> bool {
        self.protected() && self.rflags & VM != 0
    }
    /// Default operand/address size of the code segment in bits: 16, 32 or 64.
    pub fn code_bits(&self) -> u32 {
        if self.mode64() {
            64
        } else if self.protected() && !self.v86() && self.seg[CS].db() {
            32
        } else {
            16
        }
    }
    /// Stack pointer width in bits (SS.B), 64 in 64-bit mode.
    pub fn stack_bits(&self) -> u32 {
        if self.mode64() {
            64
        } else if self.protected() && !self.v86() && self.seg[SS].db() {
            32
        } else {
            16
        }
    }
}

/// Offsets of CpuState fields for generated code and the IR's state locations.
pub mod off {
    use super::*;
    pub const GPR: usize = offset_of!(CpuState, gpr);
    pub const RIP: usize = offset_of!(CpuState, rip);
    pub const RFLAGS: usize = offset_of!(CpuState, rflags);
    pub const CC_OP: usize = offset_of!(CpuState, cc) + offset_of!(LazyFlags, op);
    pub const CC_DST: usize = offset_of!(CpuState, cc) + offset_of!(LazyFlags, dst);
    pub const CC_SRC: usize = offset_of!(CpuState, cc) + offset_of!(LazyFlags, src);
    pub const CC_AUX: usize = offset_of!(CpuState, cc) + offset_of!(LazyFlags, aux);
    pub const SEG: usize = offset_of!(CpuState, seg);
    pub const SEG_SIZE: usize = std::mem::size_of::<Segment>();
    pub const SEG_BASE: usize = offset_of!(Segment, base);
    pub const SEG_SELECTOR: usize = offset_of!(Segment, selector);
    pub const SEG_LIMIT: usize = offset_of!(Segment, limit);
    pub const SEG_ATTR: usize = offset_of!(Segment, attr);
    pub const JIT: usize = offset_of!(CpuState, jit);

    pub const fn gpr(i: usize) -> usize {
        GPR + i * 8
    }
    pub const fn seg_base(s: usize) -> usize {
        SEG + s * SEG_SIZE + SEG_BASE
    }
    pub const fn seg_selector(s: usize) -> usize {
        SEG + s * SEG_SIZE + SEG_SELECTOR
    }
    pub const fn seg_limit(s: usize) -> usize {
        SEG + s * SEG_SIZE + SEG_LIMIT
    }
    pub const fn seg_attr(s: usize) -> usize {
        SEG + s * SEG_SIZE + SEG_ATTR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jit_words_are_not_compared_with_the_guest_state() {
        let a = CpuState::reset();
        let mut b = a.clone();
        b.jit.0[0] = 1;
        assert_eq!(a, b);
        b.gpr[RAX] = 1;
        assert_ne!(a, b);
    }

    #[test]
    fn reset_state_is_real_mode_at_the_reset_vector() {
        let s = CpuState::reset();
        assert_eq!(s.seg[CS].base + s.rip, 0xFFFF_FFF0);
        assert_eq!(s.code_bits(), 16);
        assert_eq!(s.cpl(), 0);
        assert_eq!(off::gpr(RSP), off::GPR + 32);
    }

    /// What generated code's inline segment check relies on: an access passing it never
    /// faults, whatever the mode, the segment or the vendor's rule.
    #[test]
    fn the_fast_segment_check_passes_only_accesses_that_do_not_fault() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let limits = [0, 0xFFF, 0xFFFF, 0xF_FFFF, 0xFFFF_FFFE, 0xFFFF_FFFF];
        let mut passed = 0;
        for _ in 0..200_000 {
            let r = next();
            let mut cpu = CpuState::reset();
            cpu.cr0 = r & CR0_PE;
            cpu.rflags |= (r >> 1) & VM;
            let seg = (r >> 20) as usize % 6;
            let s = &mut cpu.seg[seg];
            s.base = if r >> 23 & 1 != 0 {
                0
            } else {
                next() & 0xFFFF_FFFF
            };
            s.limit = if r >> 24 & 1 != 0 {
                limits[(r >> 25) as usize % limits.len()]
            } else {
                next() as u32
            };
            s.attr = next() as u16;
            if r >> 35 & 1 != 0 {
                s.attr = s.attr & !attr::FAST_MASK | attr::FAST;
            }
            let bytes = [1, 2, 4, 8, 10, 16][(r >> 28) as usize % 6];
            let write = r >> 31 & 1 != 0;
            let top = if r >> 32 & 1 != 0 {
                FlatSegmentTop::Wraps
            } else {
                FlatSegmentTop::Faults
            };
            let offset = match r >> 33 & 3 {
                0 => next() & 0xFFFF_FFFF,
                1 => u64::from(s.limit).saturating_sub(next() & 15),
                _ => next() & 0xFFFF,
            };
            let linear = (s.base + offset) & 0xFFFF_FFFF;
            let last = (linear.wrapping_sub(s.base) & 0xFFFF_FFFF) + bytes as u64 - 1;
            let fast = s.attr & attr::FAST_MASK == attr::FAST && last <= u64::from(s.limit);
            if fast {
                passed += 1;
                assert_eq!(
                    cpu.segment_fault(seg, linear, bytes, write, top),
                    None,
                    "{:?} seg {seg} at {linear:#x}, {bytes} bytes, cr0 {:#x}",
                    cpu.seg[seg],
                    cpu.cr0
                );
            }
        }
        assert!(passed > 20_000, "{passed} cases passed the fast check");
    }
}
