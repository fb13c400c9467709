//! The registers gdb sees, and the target description that tells gdb their layout.
//!
//! Written here rather than taken from gdbstub_arch: its x86 descriptions are fixed per
//! Rust type (one for 32-bit, one for 64-bit), have no 16-bit variant, and carry neither
//! FS/GS bases nor control registers. Gantry picks the description from the CPU's mode
//! when gdb connects (gdb reads it once per connection), and one table below drives both
//! the XML and the byte layout of the `g`/`G` packets, so they cannot disagree.
//!
//! In the 16-bit description (real mode, virtual-8086 mode, 16-bit protected-mode code)
//! gdb's `$pc` is the linear address CS.base + IP, not IP: gdb knows nothing of segments,
//! and with the linear address `x/i $pc`, `break *0x7c00` and stepping all see the code
//! where it is. The segment registers and `monitor info registers` give CS and IP apart.

use gantry_frontend::flags;
use gantry_frontend::state::{self as st, CpuState};

/// Which description a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    X86_64,
    I386,
    I8086,
}

impl Layout {
    /// The description for the CPU's current mode.
    pub fn for_state(s: &CpuState) -> Self {
        if s.long_mode() && s.seg[st::CS].long() {
            Layout::X86_64
        } else if s.code_bits() == 32 {
            Layout::I386
        } else {
            Layout::I8086
        }
    }

    fn architecture(self) -> &'static str {
        match self {
            Layout::X86_64 => "i386:x86-64",
            Layout::I386 => "i386",
            Layout::I8086 => "i8086",
        }
    }

    fn wide(self) -> bool {
        self == Layout::X86_64
    }
}

/// A register: where it comes from in [`CpuState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    Gpr(usize),
    Pc,
    Eflags,
    Sel(usize),
    St(usize),
    /// An x87 control/status word: byte offset and size in the FXSAVE image.
    Fx(usize, usize),
    /// The x87 tag word, which FXSAVE abridges to one bit per register.
    Ftag,
    Fop,
    Xmm(usize),
    Mxcsr,
    FsBase,
    GsBase,
    Cr(u8),
    Efer,
}

#[derive(Clone, Copy, Debug)]
struct Reg {
    name: &'static str,
    bits: u32,
    ty: &'static str,
    src: Src,
}

const FEATURE_CORE: &str = "org.gnu.gdb.i386.core";
const FEATURE_SSE: &str = "org.gnu.gdb.i386.sse";
const FEATURE_SEGMENTS: &str = "org.gnu.gdb.i386.segments";
const FEATURE_SYSTEM: &str = "org.gantry.x86.system";

const GPR64: [(&str, usize); 16] = [
    ("rax", st::RAX),
    ("rbx", st::RBX),
    ("rcx", st::RCX),
    ("rdx", st::RDX),
    ("rsi", st::RSI),
    ("rdi", st::RDI),
    ("rbp", st::RBP),
    ("rsp", st::RSP),
    ("r8", 8),
    ("r9", 9),
    ("r10", 10),
    ("r11", 11),
    ("r12", 12),
    ("r13", 13),
    ("r14", 14),
    ("r15", 15),
];
const GPR32: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
const SEGS: [(&str, usize); 6] = [
    ("cs", st::CS),
    ("ss", st::SS),
    ("ds", st::DS),
    ("es", st::ES),
    ("fs", st::FS),
    ("gs", st::GS),
];
const ST: [&str; 8] = ["st0", "st1", "st2", "st3", "st4", "st5", "st6", "st7"];
const XMM: [&str; 16] = [
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
    "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
];

/// The registers of a layout, grouped by feature, in gdb's register-number order.
fn features(layout: Layout) -> Vec<(&'static str, Vec<Reg>)> {
    let wide = layout.wide();
    let reg = |name, bits, ty, src| Reg {
        name,
        bits,
        ty,
        src,
    };
    let mut core = Vec::new();
    if wide {
        for (name, i) in GPR64 {
            let ty = match i {
                st::RSP | st::RBP => "data_ptr",
                _ => "int64",
            };
            core.push(reg(name, 64, ty, Src::Gpr(i)));
        }
        core.push(reg("rip", 64, "code_ptr", Src::Pc));
    } else {
        for (i, name) in GPR32.iter().enumerate() {
            let ty = match i {
                st::RSP | st::RBP => "data_ptr",
                _ => "int32",
            };
            core.push(reg(name, 32, ty, Src::Gpr(i)));
        }
        core.push(reg("eip", 32, "code_ptr", Src::Pc));
    }
    core.push(reg("eflags", 32, "i386_eflags", Src::Eflags));
    for (name, i) in SEGS {
        core.push(reg(name, 32, "int32", Src::Sel(i)));
    }
    for (i, name) in ST.iter().enumerate() {
        core.push(reg(name, 80, "i387_ext", Src::St(i)));
    }
    core.push(reg("fctrl", 32, "int", Src::Fx(0, 2)));
    core.push(reg("fstat", 32, "int", Src::Fx(2, 2)));
    core.push(reg("ftag", 32, "int", Src::Ftag));
    core.push(reg("fiseg", 32, "int", Src::Fx(12, 2)));
    core.push(reg("fioff", 32, "int", Src::Fx(8, 4)));
    core.push(reg("foseg", 32, "int", Src::Fx(20, 2)));
    core.push(reg("fooff", 32, "int", Src::Fx(16, 4)));
    core.push(reg("fop", 32, "int", Src::Fop));

    let xmm_count = if wide { 16 } else { 8 };
    let mut sse: Vec<Reg> = XMM[..xmm_count]
        .iter()
        .enumerate()
        .map(|(i, name)| reg(name, 128, "vec128", Src::Xmm(i)))
        .collect();
    sse.push(reg("mxcsr", 32, "i386_mxcsr", Src::Mxcsr));

    let cr_bits = if wide { 64 } else { 32 };
    let system = vec![
        reg("cr0", cr_bits, "int", Src::Cr(0)),
        reg("cr2", cr_bits, "int", Src::Cr(2)),
        reg("cr3", cr_bits, "int", Src::Cr(3)),
        reg("cr4", cr_bits, "int", Src::Cr(4)),
        reg("cr8", cr_bits, "int", Src::Cr(8)),
        reg("efer", 64, "int", Src::Efer),
    ];

    let mut out = vec![(FEATURE_CORE, core), (FEATURE_SSE, sse)];
    if wide {
        out.push((
            FEATURE_SEGMENTS,
            vec![
                reg("fs_base", 64, "int", Src::FsBase),
                reg("gs_base", 64, "int", Src::GsBase),
            ],
        ));
    }
    out.push((FEATURE_SYSTEM, system));
    out
}

const EFLAGS_FIELDS: [(&str, u32); 17] = [
    ("CF", 0),
    ("", 1),
    ("PF", 2),
    ("AF", 4),
    ("ZF", 6),
    ("SF", 7),
    ("TF", 8),
    ("IF", 9),
    ("DF", 10),
    ("OF", 11),
    ("NT", 14),
    ("RF", 16),
    ("VM", 17),
    ("AC", 18),
    ("VIF", 19),
    ("VIP", 20),
    ("ID", 21),
];
const MXCSR_FIELDS: [(&str, u32); 16] = [
    ("IE", 0),
    ("DE", 1),
    ("ZE", 2),
    ("OE", 3),
    ("UE", 4),
    ("PE", 5),
    ("DAZ", 6),
    ("IM", 7),
    ("DM", 8),
    ("ZM", 9),
    ("OM", 10),
    ("UM", 11),
    ("PM", 12),
    ("FZ", 15),
    ("RC0", 13),
    ("RC1", 14),
];

/// The target description (`target.xml`) for a layout.
pub fn target_xml(layout: Layout) -> String {
    let mut x = String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n<target version=\"1.0\">\n");
    x += &format!("<architecture>{}</architecture>\n", layout.architecture());
    // Bare metal: no OS ABI (gdb would otherwise assume its default, GNU/Linux).
    x += "<osabi>none</osabi>\n";
    for (feature, regs) in features(layout) {
        x += &format!("<feature name=\"{feature}\">\n");
        if feature == FEATURE_CORE {
            x += &flags_xml("i386_eflags", &EFLAGS_FIELDS);
        }
        if feature == FEATURE_SSE {
            x += concat!(
                "<vector id=\"v4f\" type=\"ieee_single\" count=\"4\"/>\n",
                "<vector id=\"v2d\" type=\"ieee_double\" count=\"2\"/>\n",
                "<vector id=\"v16i8\" type=\"int8\" count=\"16\"/>\n",
                "<vector id=\"v8i16\" type=\"int16\" count=\"8\"/>\n",
                "<vector id=\"v4i32\" type=\"int32\" count=\"4\"/>\n",
                "<vector id=\"v2i64\" type=\"int64\" count=\"2\"/>\n",
                "<union id=\"vec128\"><field name=\"v4_float\" type=\"v4f\"/>",
                "<field name=\"v2_double\" type=\"v2d\"/><field name=\"v16_int8\" type=\"v16i8\"/>",
                "<field name=\"v8_int16\" type=\"v8i16\"/><field name=\"v4_int32\" type=\"v4i32\"/>",
                "<field name=\"v2_int64\" type=\"v2i64\"/><field name=\"uint128\" type=\"uint128\"/>",
                "</union>\n"
            );
            x += &flags_xml("i386_mxcsr", &MXCSR_FIELDS);
        }
        for r in regs {
            let group = match r.src {
                Src::St(_) | Src::Fx(..) | Src::Ftag | Src::Fop => " group=\"float\"",
                Src::Xmm(_) | Src::Mxcsr => " group=\"vector\"",
                Src::Cr(_) | Src::Efer => " group=\"system\"",
                _ => "",
            };
            x += &format!(
                "<reg name=\"{}\" bitsize=\"{}\" type=\"{}\"{group}/>\n",
                r.name, r.bits, r.ty
            );
        }
        x += "</feature>\n";
    }
    x += "</target>\n";
    x
}

fn flags_xml(id: &str, fields: &[(&str, u32)]) -> String {
    let mut x = format!("<flags id=\"{id}\" size=\"4\">\n");
    for (name, bit) in fields {
        x += &format!("<field name=\"{name}\" start=\"{bit}\" end=\"{bit}\"/>\n");
    }
    x += "</flags>\n";
    x
}

/// The `g` packet's bytes for `s` in `layout`.
pub fn serialize(layout: Layout, s: &CpuState) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    for (_, regs) in features(layout) {
        for r in regs {
            let bytes = (r.bits / 8) as usize;
            match r.src {
                Src::St(i) => out.extend_from_slice(&s.fx.bytes[32 + 16 * i..32 + 16 * i + 10]),
                Src::Xmm(i) => out.extend_from_slice(&s.fx.bytes[160 + 16 * i..176 + 16 * i]),
                src => out.extend_from_slice(&read(layout, s, src).to_le_bytes()[..bytes]),
            }
        }
    }
    out
}

/// Applies a `G` packet's bytes to `s`. Segment selectors change only in real and
/// virtual-8086 mode (where the selector is the whole story); elsewhere a changed selector
/// is refused, since loading a descriptor behind the guest's back is not a debugger's job.
pub fn deserialize(layout: Layout, s: &mut CpuState, bytes: &[u8]) -> Result<(), Refused> {
    let mut off = 0usize;
    let mut new = s.clone();
    for (_, regs) in features(layout) {
        for r in regs {
            let n = (r.bits / 8) as usize;
            let field = bytes
                .get(off..off + n)
                .ok_or(Refused("register packet too short"))?;
            off += n;
            match r.src {
                Src::St(i) => new.fx.bytes[32 + 16 * i..32 + 16 * i + 10].copy_from_slice(field),
                Src::Xmm(i) => new.fx.bytes[160 + 16 * i..176 + 16 * i].copy_from_slice(field),
                src => {
                    let mut v = [0u8; 8];
                    v[..n].copy_from_slice(field);
                    write(layout, &mut new, src, u64::from_le_bytes(v))?;
                }
            }
        }
    }
    *s = new;
    Ok(())
}

fn fx_u(s: &CpuState, off: usize, n: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(&s.fx.bytes[off..off + n]);
    u64::from_le_bytes(v)
}

/// What gdb sees as the program counter: the linear address in the 16-bit description.
pub fn pc(layout: Layout, s: &CpuState) -> u64 {
    if layout == Layout::I8086 {
        s.linear_rip()
    } else {
        s.rip
    }
}

fn read(layout: Layout, s: &CpuState, src: Src) -> u64 {
    match src {
        Src::Gpr(i) => s.gpr[i],
        Src::Pc => pc(layout, s),
        Src::Eflags => flags::rflags(s),
        Src::Sel(i) => s.seg[i].selector as u64,
        Src::Fx(off, n) => fx_u(s, off, n),
        Src::Ftag => {
            // Abridged (1 = valid) to full (00 valid, 11 empty), per physical register.
            let abridged = s.fx.bytes[4];
            (0..8)
                .map(|i| {
                    if abridged >> i & 1 != 0 {
                        0
                    } else {
                        3u64 << (2 * i)
                    }
                })
                .sum()
        }
        Src::Fop => fx_u(s, 6, 2) & 0x7FF,
        Src::Mxcsr => fx_u(s, 24, 4),
        Src::FsBase => s.seg[st::FS].base,
        Src::GsBase => s.seg[st::GS].base,
        Src::Cr(0) => s.cr0,
        Src::Cr(2) => s.cr2,
        Src::Cr(3) => s.cr3,
        Src::Cr(4) => s.cr4,
        Src::Cr(_) => s.cr8,
        Src::Efer => s.efer,
        Src::St(_) | Src::Xmm(_) => 0,
    }
}

/// Why gdb's register write was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub &'static str);

fn write(layout: Layout, s: &mut CpuState, src: Src, v: u64) -> Result<(), Refused> {
    let low32 = |old: u64| {
        if layout.wide() {
            v
        } else {
            (old & !0xFFFF_FFFF) | v
        }
    };
    match src {
        Src::Gpr(i) => s.gpr[i] = low32(s.gpr[i]),
        Src::Pc if layout == Layout::I8086 => {
            let ip = v.wrapping_sub(s.seg[st::CS].base) & 0xFFFF_FFFF;
            s.rip = if s.code_bits() == 16 { ip & 0xFFFF } else { ip };
        }
        Src::Pc => s.rip = low32(s.rip),
        Src::Eflags => {
            // Every defined flag but VM, whose change is a mode switch the CPU makes
            // itself (IRET, task switch); reserved bits as the CPU keeps them (bit 1 set).
            const WRITABLE: u64 = st::RFLAGS_DEFINED & !st::VM;
            let old = flags::rflags(s);
            flags::set_rflags(s, (v & WRITABLE) | (old & !WRITABLE) | 2);
        }
        Src::Sel(i) => {
            let sel = v as u16;
            if sel != s.seg[i].selector {
                if s.protected() && !s.v86() {
                    return Err(Refused(
                        "segment selectors change only in real and virtual-8086 mode",
                    ));
                }
                s.seg[i].selector = sel;
                s.seg[i].base = (sel as u64) << 4;
            }
        }
        Src::Fx(off, n) => s.fx.bytes[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]),
        Src::Ftag => {
            s.fx.bytes[4] = (0..8)
                .filter(|i| (v >> (2 * i)) & 3 != 3)
                .map(|i| 1u8 << i)
                .sum();
        }
        Src::Fop => s.fx.bytes[6..8].copy_from_slice(&((v & 0x7FF) as u16).to_le_bytes()),
        Src::Mxcsr => s.fx.bytes[24..28].copy_from_slice(&(v as u32 & 0xFFFF).to_le_bytes()),
        Src::FsBase => s.seg[st::FS].base = v,
        Src::GsBase => s.seg[st::GS].base = v,
        // Control registers and EFER are shown, not written: changing them means mode
        // and paging changes the CPU must make itself (MOV CR checks), so gdb's writes of
        // an unchanged value pass and others are refused.
        Src::Cr(_) | Src::Efer => {
            let old = read(layout, s, src);
            let cmp = if layout.wide() || src == Src::Efer {
                old
            } else {
                old & 0xFFFF_FFFF
            };
            if v != cmp {
                return Err(Refused("control registers and EFER are read-only"));
            }
        }
        Src::St(_) | Src::Xmm(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_and_match_their_description() {
        let mut s = CpuState::reset();
        s.gpr[st::RAX] = 0x1122_3344_5566_7788;
        s.gpr[st::RSP] = 0x7C00;
        s.rip = 0x1234;
        // Flags held as RFLAGS rather than lazily, as a register write leaves them.
        flags::set_rflags(&mut s, 0x246);
        for layout in [Layout::X86_64, Layout::I386, Layout::I8086] {
            let bytes = serialize(layout, &s);
            let bits: u32 = features(layout)
                .iter()
                .flat_map(|(_, r)| r.iter().map(|r| r.bits))
                .sum();
            assert_eq!(bytes.len() * 8, bits as usize, "{layout:?}");
            let xml = target_xml(layout);
            assert_eq!(
                xml.matches("<reg ").count(),
                features(layout).iter().map(|f| f.1.len()).sum::<usize>()
            );
            let mut back = s.clone();
            deserialize(layout, &mut back, &bytes).expect("own bytes apply");
            assert_eq!(back, s, "{layout:?}");
        }
    }

    #[test]
    fn real_mode_pc_is_linear() {
        let s = CpuState::reset(); // F000:FFF0, CS.base FFFF0000
        let bytes = serialize(Layout::I8086, &s);
        let eip = u32::from_le_bytes(bytes[32..36].try_into().unwrap());
        assert_eq!(eip, 0xFFFF_FFF0);
        let mut t = s.clone();
        let mut b = bytes.clone();
        b[32..36].copy_from_slice(&0xFFFF_0010u32.to_le_bytes());
        deserialize(Layout::I8086, &mut t, &b).unwrap();
        assert_eq!(t.rip, 0x10);
    }

    #[test]
    fn protected_mode_selectors_and_control_registers_are_not_written() {
        let mut s = CpuState::reset();
        s.cr0 |= st::CR0_PE;
        s.seg[st::CS].attr |= st::attr::DB;
        let mut b = serialize(Layout::I386, &s);
        // cs is the 11th register (after 8 GPRs, eip, eflags).
        b[40] ^= 8;
        assert!(deserialize(Layout::I386, &mut s.clone(), &b).is_err());
    }

    #[test]
    fn eflags_writes_cannot_switch_to_virtual_8086_mode() {
        let s = CpuState::reset();
        let mut b = serialize(Layout::I8086, &s);
        // eflags is the 10th register (after 8 GPRs and eip).
        b[36..40].copy_from_slice(&((st::VM | st::CF | st::ZF) as u32).to_le_bytes());
        let mut t = s.clone();
        deserialize(Layout::I8086, &mut t, &b).expect("eflags write applies");
        assert_eq!(flags::rflags(&t), st::CF | st::ZF | 2);
        assert!(!t.v86());
    }
}
