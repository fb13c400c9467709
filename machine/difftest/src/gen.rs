//! Random test cases: short instruction streams encoded with iced-x86 over a chosen set,
//! random operands and initial states biased towards the values that break emulators.
//!
//! A case is a pure function of (seed, index), so any case a run reports can be made again
//! from the two numbers alone.

use iced_x86::{
    Code, CpuidFeature, Decoder, DecoderOptions, Encoder, FlowControl, Instruction, MemoryOperand,
    Mnemonic, OpCodeOperandKind as K, Register,
};

use super::flagmask;
use super::layout::{data_addr, DATA_SIZE, MAX_SNIPPET};
use super::{Case, DataInit, Mode};

/// SplitMix64: small, fast, and good enough for test generation; no crate needed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Which instructions a run draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    Integer,
    /// The SSE and SSE2 instructions Gantry's CPU implements ([`gantry_frontend::sse`]),
    /// on XMM registers, general registers and memory.
    Sse,
    /// The x87 instructions Gantry's CPU implements
    /// ([`gantry_frontend::lift::x87_implemented`]): control and status, FILD, no
    /// arithmetic.
    X87,
    /// All of them, mixed in the same snippets.
    All,
}

impl Set {
    pub fn name(self) -> &'static str {
        match self {
            Set::Integer => "integer",
            Set::Sse => "SSE",
            Set::X87 => "x87",
            Set::All => "integer, SSE and x87",
        }
    }

    fn integer(self) -> bool {
        matches!(self, Set::Integer | Set::All)
    }

    fn sse(self) -> bool {
        matches!(self, Set::Sse | Set::All)
    }

    fn x87(self) -> bool {
        matches!(self, Set::X87 | Set::All)
    }
}

/// The CPUID features whose instructions Gantry's CPU model claims (machine/src/cpu/
/// cpuid.rs) and that the integer set covers. Instructions of other features are not
/// generated: the host may run them, but a guest must not expect them from Gantry.
const INTEGER_FEATURES: &[CpuidFeature] = &[
    CpuidFeature::INTEL8086,
    CpuidFeature::INTEL186,
    CpuidFeature::INTEL286,
    CpuidFeature::INTEL386,
    CpuidFeature::INTEL486,
    CpuidFeature::X64,
    CpuidFeature::CMOV,
    CpuidFeature::CX8,
    CpuidFeature::CMPXCHG16B,
    CpuidFeature::POPCNT,
    CpuidFeature::LZCNT,
    CpuidFeature::MULTIBYTENOP,
    CpuidFeature::PAUSE,
];

/// Integer instructions left out of the generated set, and why.
const EXCLUDED: &[(Mnemonic, &str)] = &[
    // Their answers are the CPU model's, not semantics: Gantry's differ from the host's by
    // design.
    (Mnemonic::Cpuid, "CPU model"),
    (Mnemonic::Rdtsc, "time"),
    (Mnemonic::Rdtscp, "time"),
    (Mnemonic::Rdpmc, "counters"),
    // POPF can set TF and AC (alignment checks are not modelled yet).
    (Mnemonic::Popf, "TF/AC"),
    (Mnemonic::Popfd, "TF/AC"),
    (Mnemonic::Popfq, "TF/AC"),
    // The host's GDT/LDT and UMIP policy are the host kernel's, not the sandbox guest's.
    (Mnemonic::Lar, "descriptor tables"),
    (Mnemonic::Lsl, "descriptor tables"),
    (Mnemonic::Verr, "descriptor tables"),
    (Mnemonic::Verw, "descriptor tables"),
    (Mnemonic::Sgdt, "UMIP"),
    (Mnemonic::Sidt, "UMIP"),
    (Mnemonic::Sldt, "UMIP"),
    (Mnemonic::Str, "UMIP"),
    (Mnemonic::Smsw, "UMIP"),
    // Segment loads: selectors name the host's GDT on one side, the guest's on the other.
    (Mnemonic::Lds, "segment load"),
    (Mnemonic::Les, "segment load"),
    (Mnemonic::Lfs, "segment load"),
    (Mnemonic::Lgs, "segment load"),
    (Mnemonic::Lss, "segment load"),
    // WAIT alone: the x87 set makes it as part of its WAIT forms (FINIT, FSTSW...).
    (Mnemonic::Wait, "x87"),
];

/// Forms whose defined behaviour differs between vendors (`Vendor::popa_fault`,
/// `Vendor::movsxd16_read`): generated only on a host whose generation the model's rules
/// were measured on, like the undefined flags (see `flagmask::Policy`).
const VENDOR_FORMS: &[(Code, &str)] = &[
    (
        Code::Popaw,
        "POPA faulting midway: AMD CPUs keep the registers already popped",
    ),
    (Code::Popad, "as POPA"),
    (
        Code::Movsxd_r16_rm16,
        "MOVSXD with a 16-bit operand: the SDM reads a word, AMD CPUs read a doubleword",
    ),
];

/// The features of the SSE set (with the integer features, which some of its forms also
/// list, such as 64-bit MOVQ's X64).
const SSE_FEATURES: &[CpuidFeature] = &[CpuidFeature::SSE, CpuidFeature::SSE2];

/// A legacy-encoded instruction form that exists in `mode`.
fn in_mode(code: Code, mode: Mode) -> bool {
    let op = code.op_code();
    let in_mode = match mode {
        Mode::B64 => op.mode64() && op.long_mode(),
        Mode::B32 => op.mode32() && op.compatibility_mode(),
        Mode::B16 => op.mode16() && op.compatibility_mode(),
        Mode::Real => op.mode16() && op.real_mode(),
        Mode::Pm16 => op.mode16() && op.protected_mode(),
        Mode::Pm32 => op.mode32() && op.protected_mode(),
    };
    op.is_instruction() && in_mode && op.encoding() == iced_x86::EncodingKind::Legacy
}

/// Legacy-encoded, user-level forms that run in `mode`.
fn candidate(code: Code, mode: Mode) -> bool {
    let op = code.op_code();
    in_mode(code, mode)
        && op.cpl3()
        && !op.is_privileged()
        && !op.is_input_output()
        && !op.is_reserved_nop()
        && code.flow_control() == FlowControl::Next
        && !EXCLUDED.iter().any(|(m, _)| *m == code.mnemonic())
        && (flagmask::policy().measured || !VENDOR_FORMS.iter().any(|(c, _)| *c == code))
        && !code.is_string_instruction()
        && op.op_kinds().iter().all(|&k| supported_operand(k))
}

fn is_integer_form(code: Code) -> bool {
    code.cpuid_features()
        .iter()
        .all(|f| INTEGER_FEATURES.contains(f))
}

/// An SSE or SSE2 form on XMM registers (not MMX registers), whether or not Gantry
/// implements it.
fn is_sse_form(code: Code) -> bool {
    let features = code.cpuid_features();
    features.iter().any(|f| SSE_FEATURES.contains(f))
        && features
            .iter()
            .all(|f| SSE_FEATURES.contains(f) || INTEGER_FEATURES.contains(f))
        && code
            .op_code()
            .op_kinds()
            .iter()
            .any(|k| matches!(k, K::xmm_reg | K::xmm_rm | K::xmm_or_mem))
}

/// An x87 form, whether or not Gantry implements it.
fn is_x87_form(code: Code) -> bool {
    let features = code.cpuid_features();
    let x87 = |f: &CpuidFeature| {
        matches!(
            f,
            CpuidFeature::FPU | CpuidFeature::FPU287 | CpuidFeature::FPU387
        )
    };
    features.iter().any(x87)
        && features
            .iter()
            .all(|f| x87(f) || INTEGER_FEATURES.contains(f))
}

/// The instruction forms of `set` that can run at CPL 3 in `mode`.
fn forms(mode: Mode, set: Set) -> Vec<Code> {
    Code::values()
        .filter(|&code| {
            candidate(code, mode)
                && ((set.integer() && is_integer_form(code))
                    || (set.sse()
                        && is_sse_form(code)
                        && gantry_frontend::sse_op::SseOp::of(code.mnemonic()).is_some())
                    || (set.x87()
                        && is_x87_form(code)
                        && gantry_frontend::lift::x87_implemented(code.mnemonic())))
        })
        .collect()
}

/// The forms of `set` in this mode that Gantry does not implement (they raise #UD,
/// counted), so not generated, for the report's header: "38 SSE/SSE2 and 84 x87".
pub fn unimplemented_forms(mode: Mode, set: Set) -> Option<String> {
    let sse = Code::values()
        .filter(|&code| {
            candidate(code, mode)
                && is_sse_form(code)
                && gantry_frontend::sse_op::SseOp::of(code.mnemonic()).is_none()
        })
        .count();
    // The arithmetic forms' stack-register operands are not ones the generators fill
    // in, so these are counted among all the mode's x87 forms.
    let x87 = Code::values()
        .filter(|&code| {
            in_mode(code, mode)
                && is_x87_form(code)
                && !gantry_frontend::lift::x87_implemented(code.mnemonic())
        })
        .count();
    let parts: Vec<String> = [(set.sse(), sse, "SSE/SSE2"), (set.x87(), x87, "x87")]
        .into_iter()
        .filter(|&(wanted, n, _)| wanted && n > 0)
        .map(|(_, n, name)| format!("{n} {name}"))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" and "))
}

fn supported_operand(k: K) -> bool {
    matches!(
        k,
        K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::r64_or_mem
            | K::r8_reg
            | K::r8_opcode
            | K::r16_reg
            | K::r16_rm
            | K::r16_opcode
            | K::r32_reg
            | K::r32_rm
            | K::r32_opcode
            | K::r64_reg
            | K::r64_rm
            | K::r64_opcode
            | K::mem
            | K::al
            | K::cl
            | K::ax
            | K::dx
            | K::eax
            | K::rax
            | K::imm8
            | K::imm8_const_1
            | K::imm8sex16
            | K::imm8sex32
            | K::imm8sex64
            | K::imm16
            | K::imm32
            | K::imm32sex64
            | K::imm64
            | K::seg_rBX_al
            | K::xmm_reg
            | K::xmm_rm
            | K::xmm_or_mem
    )
}

const GPR64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// Values that sit on the boundaries arithmetic gets wrong.
const EDGES: [u64; 18] = [
    0,
    1,
    2,
    !0,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    0xFFFF_FFFF_0000_0000,
    0x0000_0001_0000_0001,
];

/// Shift and rotate counts and other small immediates worth hitting exactly.
const SMALL_EDGES: [u64; 16] = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 0xFF];

fn edge_value(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0..=2 => rng.pick(&EDGES),
        3 => rng.pick(&SMALL_EDGES),
        4 => rng.next_u64() & 0xFFFF_FFFF,
        5 => rng.next_u64() & 0xFF,
        _ => rng.next_u64(),
    }
}

/// Makes test cases for one mode and set.
pub struct Generator {
    mode: Mode,
    cpl: u8,
    set: Set,
    forms: Vec<Code>,
    seed: u64,
}

/// The registers a case dedicates to addressing: their values point into the data pages.
struct Plan {
    gpr: [u64; 16],
    /// Registers holding the data pages' address plus an offset, usable as bases.
    bases: Vec<usize>,
    /// A register holding a small value (0..64), usable as an index.
    index: Option<usize>,
}

impl Generator {
    pub fn new(mode: Mode, set: Set, seed: u64) -> Self {
        Self {
            mode,
            cpl: mode.default_cpl(),
            set,
            forms: forms(mode, set),
            seed,
        }
    }

    /// The same cases at CPL 0 (the same user-level instructions, now able to reach the
    /// sandbox kernel's pages). Real-mode code is at CPL 0 already.
    pub fn at_cpl0(self) -> Self {
        Self { cpl: 0, ..self }
    }

    /// How many instruction forms the set has in this mode.
    pub fn form_count(&self) -> usize {
        self.forms.len()
    }

    /// Case number `index` of this generator's seed.
    pub fn case(&self, index: u64) -> Case {
        let mut rng = Rng::new(self.seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        loop {
            if let Some(case) = self.try_case(&mut rng) {
                return case;
            }
        }
    }

    fn try_case(&self, rng: &mut Rng) -> Option<Case> {
        let plan = self.plan(rng);
        let count = match rng.below(100) {
            0..=59 => 1,
            60..=84 => 2,
            _ => 3 + rng.below(2),
        };
        let mut code = Vec::new();
        let mut gpr = plan.gpr;
        for n in 0..count {
            let bytes = if rng.chance(8) {
                self.string_op(rng, &mut gpr)
            } else {
                let (bytes, cl_count) = self.instruction(rng, &plan)?;
                if cl_count {
                    // Only the first instruction sees RCX as planned.
                    if n > 0 {
                        return None;
                    }
                    gpr[1] = (gpr[1] & !0x1F) | rng.below(17);
                }
                bytes
            };
            code.extend(bytes);
        }
        if code.len() > MAX_SNIPPET {
            return None;
        }
        let rflags = random_flags(rng);
        let data = DataInit::Seed(rng.next_u64());
        // Drawn last, and only for sets with SSE: integer cases stay what they were.
        let xmm = if self.set.sse() {
            std::array::from_fn(|_| xmm_value(rng))
        } else {
            [0; 16]
        };
        let case = Case {
            mode: self.mode,
            code,
            gpr,
            rflags,
            xmm,
            data,
            cpl: self.cpl,
        };
        // A case whose instructions read a flag an earlier one left undefined (and the
        // table masks) would compare noise: make another.
        if flagmask::reads_masked_flag(&case) {
            return None;
        }
        Some(case)
    }

    fn regs(&self) -> usize {
        match self.mode {
            Mode::B64 => 16,
            _ => 8,
        }
    }

    fn plan(&self, rng: &mut Rng) -> Plan {
        let mut gpr = [0u64; 16];
        for g in gpr.iter_mut() {
            *g = edge_value(rng);
        }
        let data = data_addr(self.mode);
        // The stack: inside the data pages, usually aligned, sometimes near an end.
        gpr[4] = (data + data_offset(rng)) & if rng.chance(90) { !7 } else { !0 };
        if self.mode.bits() == 16 && rng.chance(30) {
            // A 16-bit stack uses SP alone: ESP's upper half must not matter.
            gpr[4] |= rng.next_u64() << 16;
        }
        let candidates: Vec<usize> = (0..self.regs()).filter(|&r| r != 4).collect();
        let mut bases = Vec::new();
        for _ in 0..1 + rng.below(2) {
            let r = rng.pick(&candidates);
            if !bases.contains(&r) {
                gpr[r] = data + rng.below(DATA_SIZE as u64);
                bases.push(r);
            }
        }
        let index = if rng.chance(50) {
            let r = rng.pick(&candidates);
            (!bases.contains(&r)).then(|| {
                gpr[r] = rng.below(64);
                r
            })
        } else {
            None
        };
        Plan { gpr, bases, index }
    }

    /// One instruction's bytes, and whether its count in CL must be kept in 0..=16.
    fn instruction(&self, rng: &mut Rng, plan: &Plan) -> Option<(Vec<u8>, bool)> {
        let code = rng.pick(&self.forms);
        let op = code.op_code();
        // 16-bit SHLD/SHRD with a count above 16: the SDM leaves the result undefined and
        // CPUs differ (AMD rotates the source in), so counts stay within 0..=16.
        let double_shift16 =
            matches!(code.mnemonic(), Mnemonic::Shld | Mnemonic::Shrd) && op.operand_size() == 16;
        let mut instr = Instruction::new();
        instr.set_code(code);
        let mut has_mem = false;
        // SSE's 16-byte operands must be aligned (most forms fault otherwise): mostly
        // aligned, sometimes not.
        let align = if op.memory_size().size() == 16 && rng.chance(85) {
            16
        } else {
            1
        };
        for (i, &kind) in op.op_kinds().iter().enumerate() {
            let i = i as u32;
            match kind {
                K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem | K::xmm_or_mem => {
                    if rng.chance(40) {
                        self.set_memory(rng, plan, &mut instr, i, align)?;
                        has_mem = true;
                    } else {
                        set_register(&mut instr, i, self.register(rng, kind));
                    }
                }
                K::mem => {
                    self.set_memory(rng, plan, &mut instr, i, align)?;
                    has_mem = true;
                }
                K::seg_rBX_al => {
                    instr.set_op_kind(i, iced_x86::OpKind::Memory);
                    instr.set_memory_base(match self.mode {
                        Mode::B64 => Register::RBX,
                        Mode::B32 | Mode::Pm32 => Register::EBX,
                        Mode::B16 | Mode::Real | Mode::Pm16 => Register::BX,
                    });
                }
                K::al => set_register(&mut instr, i, Register::AL),
                K::cl => set_register(&mut instr, i, Register::CL),
                K::ax => set_register(&mut instr, i, Register::AX),
                K::dx => set_register(&mut instr, i, Register::DX),
                K::eax => set_register(&mut instr, i, Register::EAX),
                K::rax => set_register(&mut instr, i, Register::RAX),
                K::imm8_const_1 => {
                    instr.set_op_kind(i, iced_x86::OpKind::Immediate8);
                    instr.set_immediate8(1);
                }
                K::imm8 | K::imm8sex16 | K::imm8sex32 | K::imm8sex64 => {
                    let v = if rng.chance(50) {
                        rng.pick(&SMALL_EDGES)
                    } else {
                        edge_value(rng)
                    };
                    instr.set_op_kind(
                        i,
                        match kind {
                            K::imm8 => iced_x86::OpKind::Immediate8,
                            K::imm8sex16 => iced_x86::OpKind::Immediate8to16,
                            K::imm8sex32 => iced_x86::OpKind::Immediate8to32,
                            _ => iced_x86::OpKind::Immediate8to64,
                        },
                    );
                    // ENTER's second operand is the second immediate.
                    if i == 1 && code.mnemonic() == Mnemonic::Enter {
                        instr.set_op_kind(i, iced_x86::OpKind::Immediate8_2nd);
                        instr.set_immediate8_2nd(v as u8 & 7);
                    } else if double_shift16 {
                        instr.set_immediate8((v % 17) as u8);
                    } else {
                        instr.set_immediate8(v as u8);
                    }
                }
                K::imm16 => {
                    instr.set_op_kind(i, iced_x86::OpKind::Immediate16);
                    let v = edge_value(rng) as u16;
                    // ENTER's frame size: keep the frame inside the data pages.
                    let v = if code.mnemonic() == Mnemonic::Enter {
                        v & 0x1F
                    } else {
                        v
                    };
                    instr.set_immediate16(v);
                }
                K::imm32 => {
                    instr.set_op_kind(i, iced_x86::OpKind::Immediate32);
                    instr.set_immediate32(edge_value(rng) as u32);
                }
                K::imm32sex64 => {
                    instr.set_op_kind(i, iced_x86::OpKind::Immediate32to64);
                    instr.set_immediate32(edge_value(rng) as u32);
                }
                K::imm64 => {
                    instr.set_op_kind(i, iced_x86::OpKind::Immediate64);
                    instr.set_immediate64(edge_value(rng));
                }
                _ => set_register(&mut instr, i, self.register(rng, kind)),
            }
        }
        if has_mem && op.can_use_lock_prefix() && rng.chance(20) {
            instr.set_has_lock_prefix(true);
        }
        let mut enc = Encoder::new(self.mode.bits());
        enc.encode(&instr, 0).ok()?;
        let cl_count = double_shift16 && op.op_kinds().contains(&K::cl);
        Some((enc.take_buffer(), cl_count))
    }

    /// A register operand of the size `kind` names.
    fn register(&self, rng: &mut Rng, kind: K) -> Register {
        let r = rng.below(self.regs() as u64) as usize;
        let full = GPR64[r];
        match kind {
            K::xmm_reg | K::xmm_rm | K::xmm_or_mem => Register::XMM0 + r as u32,
            K::r8_reg | K::r8_opcode | K::r8_or_mem => {
                // AH..BH exist only without REX; the encoder refuses mixes, the case is
                // then made again.
                if self.mode != Mode::B64 || rng.chance(25) {
                    rng.pick(&[
                        Register::AL,
                        Register::CL,
                        Register::DL,
                        Register::BL,
                        Register::AH,
                        Register::CH,
                        Register::DH,
                        Register::BH,
                    ])
                } else {
                    byte_of(full)
                }
            }
            K::r16_reg | K::r16_rm | K::r16_opcode | K::r16_or_mem => word_of(full),
            K::r32_reg | K::r32_rm | K::r32_opcode | K::r32_or_mem => dword_of(full),
            _ => full,
        }
    }

    fn set_memory(
        &self,
        rng: &mut Rng,
        plan: &Plan,
        instr: &mut Instruction,
        op: u32,
        align: i64,
    ) -> Option<()> {
        // Where the access should land: anywhere in the data pages, or straddling the page
        // boundary inside them, or hanging off either end (a #PF at the exact byte).
        let target = match rng.below(20) {
            0..=1 => 0x1000 + rng.below(16) as i64 - 8,
            2 => DATA_SIZE as i64 + rng.below(16) as i64 - 8,
            3 => rng.below(16) as i64 - 8,
            _ => rng.below(DATA_SIZE as u64) as i64,
        } & !(align - 1);
        // 16-bit code mostly uses 16-bit addressing, which has forms of its own.
        let addr32 = match self.mode {
            _ if self.mode.bits() == 16 && rng.chance(80) => {
                return self.set_memory16(rng, plan, instr, op, target)
            }
            Mode::B64 => rng.chance(10),
            _ => true,
        };
        let use_rsp = plan.bases.is_empty() || rng.chance(15);
        let base_reg = if use_rsp { 4 } else { rng.pick(&plan.bases) };
        let (index_reg, scale) = match plan.index {
            Some(r) if rng.chance(40) => (Some(r), rng.pick(&[1u32, 2, 4, 8])),
            _ => (None, 1),
        };
        // Wrapping: a 16-bit stack pointer may carry random upper bits (the encoder then
        // refuses the displacement and the case is made again).
        let base_value = plan.gpr[base_reg] as i64;
        let index_value = index_reg.map_or(0, |r| plan.gpr[r] as i64 * scale as i64);
        let displ = (data_addr(self.mode) as i64 + target)
            .wrapping_sub(base_value)
            .wrapping_sub(index_value);
        let name = |r: usize| {
            if addr32 {
                dword_of(GPR64[r])
            } else {
                GPR64[r]
            }
        };
        let mem = MemoryOperand::new(
            name(base_reg),
            index_reg.map_or(Register::None, name),
            scale,
            displ,
            1,
            false,
            Register::None,
        );
        instr.set_op_kind(op, iced_x86::OpKind::Memory);
        instr.set_memory_base(mem.base);
        instr.set_memory_index(mem.index);
        instr.set_memory_index_scale(mem.scale);
        instr.set_memory_displacement64(mem.displacement as u64);
        instr.set_memory_displ_size(if i8::try_from(displ).is_ok() { 1 } else { 4 });
        Some(())
    }

    /// A memory operand with 16-bit addressing ([BX+SI], [BP], [disp16]...) at `target`
    /// bytes from the data pages, or at the end of the segment. The effective address wraps
    /// at 64 KiB, so the displacement reaches the target whatever the registers hold.
    fn set_memory16(
        &self,
        rng: &mut Rng,
        plan: &Plan,
        instr: &mut Instruction,
        op: u32,
        target: i64,
    ) -> Option<()> {
        use Register::{BP, BX, DI, SI};
        const FORMS: [(Register, Register); 9] = [
            (BX, SI),
            (BX, DI),
            (BP, SI),
            (BP, DI),
            (SI, Register::None),
            (DI, Register::None),
            (BP, Register::None),
            (BX, Register::None),
            (Register::None, Register::None),
        ];
        let (base, index) = rng.pick(&FORMS);
        let value = |r: Register| match r {
            Register::None => 0,
            r => (plan.gpr[r as usize - Register::AX as usize] & 0xFFFF) as i64,
        };
        // Sometimes the last bytes below 64 KiB: a word there runs past the limit (#GP),
        // a byte there is within it (and unmapped: #PF).
        let offset = if rng.chance(5) {
            0x1_0000 - rng.below(4) as i64
        } else {
            data_addr(self.mode) as i64 + target
        };
        let displ = (offset - value(base) - value(index)) as u16;
        instr.set_op_kind(op, iced_x86::OpKind::Memory);
        instr.set_memory_base(base);
        instr.set_memory_index(index);
        instr.set_memory_index_scale(1);
        if base == Register::None && index == Register::None {
            instr.set_memory_displacement64(displ as u64);
            instr.set_memory_displ_size(2);
        } else {
            instr.set_memory_displacement64(displ as i16 as i64 as u64);
            instr.set_memory_displ_size(if i8::try_from(displ as i16).is_ok() {
                1
            } else {
                2
            });
        }
        Some(())
    }

    /// MOVS/CMPS/STOS/LODS/SCAS of any size with or without a REP prefix, RSI and RDI
    /// pointing into the data pages and a small count in RCX (DF comes from the flags).
    fn string_op(&self, rng: &mut Rng, gpr: &mut [u64; 16]) -> Vec<u8> {
        let mut bytes = Vec::new();
        match rng.below(4) {
            0 => bytes.push(0xF3),
            1 => bytes.push(0xF2),
            _ => {}
        }
        if rng.chance(25) {
            bytes.push(0x66);
        }
        // The other address size: 32-bit in 64-bit code, 32-bit in 16-bit code.
        let addr_override = self.mode.bits() != 32 && rng.chance(10);
        if addr_override {
            bytes.push(0x67);
        }
        if self.mode == Mode::B64 && rng.chance(30) {
            bytes.push(0x48);
        }
        bytes.push(rng.pick(&[0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF]));
        let data = data_addr(self.mode);
        gpr[6] = data + data_offset(rng);
        gpr[7] = data + data_offset(rng);
        if self.mode.bits() == 16 && !addr_override && rng.chance(30) {
            // 16-bit addressing uses SI and DI alone.
            gpr[6] |= rng.next_u64() << 16;
            gpr[7] |= rng.next_u64() << 16;
        }
        // Small counts; at most 16 so a 16-bit SHLD/SHRD by CL stays defined.
        gpr[1] = if rng.chance(15) { 0 } else { rng.below(17) };
        bytes
    }
}

/// An offset into the data pages, biased towards the page boundary and the ends.
fn data_offset(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => 0x1000 + rng.below(32) - 16,
        1 => rng.below(32),
        2 => DATA_SIZE as u64 - rng.below(32) - 1,
        _ => rng.below(DATA_SIZE as u64),
    }
}

/// Doubles that arithmetic, comparison and conversion get wrong: signed zeros, ties,
/// infinities, quiet and signalling NaNs (with and without payloads), denormals, the
/// extremes of the normal range, and the integer conversion limits.
const F64_EDGES: [u64; 26] = [
    0x0000_0000_0000_0000, // 0.0
    0x8000_0000_0000_0000, // -0.0
    0x3FF0_0000_0000_0000, // 1.0
    0xBFF0_0000_0000_0000, // -1.0
    0x3FE0_0000_0000_0000, // 0.5
    0x3FF8_0000_0000_0000, // 1.5
    0x4004_0000_0000_0000, // 2.5
    0xC004_0000_0000_0000, // -2.5
    0x3FB9_9999_9999_999A, // 0.1
    0x7FF0_0000_0000_0000, // +inf
    0xFFF0_0000_0000_0000, // -inf
    0x7FF8_0000_0000_0000, // QNaN
    0xFFF8_0000_0000_0000, // the default NaN
    0x7FF8_0000_0000_1234, // QNaN with a payload
    0x7FF0_0000_0000_0001, // SNaN
    0xFFF4_0000_0000_5678, // SNaN, negative, with a payload
    0x0000_0000_0000_0001, // the smallest denormal
    0x000F_FFFF_FFFF_FFFF, // the largest denormal
    0x0010_0000_0000_0000, // the smallest normal
    0x7FEF_FFFF_FFFF_FFFF, // the largest finite
    0x43E0_0000_0000_0000, // 2^63
    0xC3E0_0000_0000_0000, // -2^63
    0x41E0_0000_0000_0000, // 2^31
    0xC1E0_0000_0020_0000, // -2^31 - 1
    0x4340_0000_0000_0001, // 2^53 + 2: past the exactly representable integers
    0x3CB0_0000_0000_0000, // 2^-52
];

/// An XMM register's initial value: doubles from [`F64_EDGES`], lanes of integer edge
/// values, all zeros or all ones, or random bits.
fn xmm_value(rng: &mut Rng) -> u128 {
    let half = |rng: &mut Rng| -> u64 {
        match rng.below(4) {
            0 | 1 => rng.pick(&F64_EDGES),
            // A random finite double between 2^-4 and 2^5: inexact sums and
            // products.
            2 => (0x3FB0 + rng.below(0x90)) << 48 | rng.next_u64() >> 16,
            _ => rng.next_u64(),
        }
    };
    match rng.below(8) {
        0..=2 => half(rng) as u128 | (half(rng) as u128) << 64,
        3 | 4 => {
            let bits = rng.pick(&[8u32, 16, 32, 64]);
            let mut v = 0u128;
            for lane in 0..128 / bits {
                let mask = if bits == 64 { !0 } else { (1u64 << bits) - 1 };
                let e = match rng.below(4) {
                    0 => 0,
                    1 => mask,
                    2 => 1u64 << (bits - 1),
                    _ => edge_value(rng),
                };
                v |= ((e & mask) as u128) << (lane * bits);
            }
            v
        }
        5 => rng.pick(&[0, u128::MAX]),
        _ => rng.next_u64() as u128 | (rng.next_u64() as u128) << 64,
    }
}

/// The six arithmetic flags and DF: all clear, all set, or random.
fn random_flags(rng: &mut Rng) -> u64 {
    const ALL: u64 = 0x0CD5 | 0x400;
    match rng.below(8) {
        0 => 0,
        1 => ALL,
        _ => rng.next_u64() & ALL & if rng.chance(70) { !0x400 } else { !0 },
    }
}

fn set_register(instr: &mut Instruction, op: u32, r: Register) {
    instr.set_op_kind(op, iced_x86::OpKind::Register);
    instr.set_op_register(op, r);
}

fn byte_of(r: Register) -> Register {
    let i = r as u32 - Register::RAX as u32;
    [
        Register::AL,
        Register::CL,
        Register::DL,
        Register::BL,
        Register::SPL,
        Register::BPL,
        Register::SIL,
        Register::DIL,
        Register::R8L,
        Register::R9L,
        Register::R10L,
        Register::R11L,
        Register::R12L,
        Register::R13L,
        Register::R14L,
        Register::R15L,
    ][i as usize]
}

fn word_of(r: Register) -> Register {
    Register::AX + (r as u32 - Register::RAX as u32)
}

fn dword_of(r: Register) -> Register {
    Register::EAX + (r as u32 - Register::RAX as u32)
}

/// The instructions of a snippet, decoded.
pub fn decode(case: &Case) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(
        case.mode.bits(),
        &case.code,
        super::layout::code_ip(case.mode),
        DecoderOptions::NONE,
    );
    let mut out = Vec::new();
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 16-bit code gets both address sizes: 16-bit forms ([BX+SI], [BP], [disp16]...)
    /// and, by prefix, 32-bit ones; and its memory operands land on the data pages or at
    /// the segment's end, whatever the registers' upper halves hold.
    #[test]
    fn sixteen_bit_cases_use_both_address_sizes() {
        let g = Generator::new(Mode::B16, Set::Integer, 3);
        let (mut addr16, mut addr32, mut on_target) = (0, 0, 0);
        for i in 0..2000 {
            let case = g.case(i);
            let Some(first) = decode(&case).into_iter().next() else {
                continue;
            };
            if first.op_count() == 0
                || !(0..first.op_count()).any(|n| first.op_kind(n) == iced_x86::OpKind::Memory)
                || first.is_string_instruction()
                || first.mnemonic() == Mnemonic::Xlatb
            {
                continue;
            }
            let reg = |r: Register| match r {
                Register::None => 0,
                r => case.gpr[r.full_register() as usize - Register::RAX as usize],
            };
            let base = first.memory_base();
            if base.is_gpr32() || first.memory_index().is_gpr32() {
                addr32 += 1;
                continue;
            }
            addr16 += 1;
            // Only the first instruction sees the registers as planned.
            let ea = reg(base)
                .wrapping_add(reg(first.memory_index()))
                .wrapping_add(first.memory_displacement64())
                & 0xFFFF;
            let data = data_addr(Mode::B16);
            if (data - 16..data + DATA_SIZE as u64 + 16).contains(&ea) || ea >= 0xFFFC {
                on_target += 1;
            }
        }
        assert!(
            addr16 > 100 && addr32 > 20,
            "16-bit {addr16}, 32-bit {addr32}"
        );
        // BT-family register offsets move the address; everything else hits its target.
        assert!(
            on_target * 10 >= addr16 * 9,
            "{on_target} of {addr16} on target"
        );
    }
}
