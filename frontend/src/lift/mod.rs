//! The lifter: x86 instructions (decoded by iced-x86) into Gantry's IR, one basic block at
//! a time. This is the one place where x86 semantics are written down; the interpreter and
//! the JIT only execute what it produces.

mod alu;
mod builder;
mod control;
mod operands;
mod simd;
mod string;
mod system;

pub use system::x87_implemented;

use std::cell::RefCell;

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind};

pub use builder::Builder;

use crate::ir::*;
use crate::state::{ARITH_FLAGS, CF, OF, UD_VECTOR};
use crate::vendor::Vendor;

/// What the translation of a block depends on besides the bytes: the code-segment mode and
/// the CPU model's vendor. (The machine's block cache keys on these together with the
/// physical address.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode {
    /// Default operand/address size: 16, 32 or 64.
    pub code_bits: u32,
    /// Stack width (SS.B, or 64 in 64-bit mode).
    pub stack_bits: u32,
    pub mode64: bool,
    /// Whose silicon the undefined flags follow.
    pub vendor: Vendor,
}

impl Mode {
    /// 64-bit mode on `vendor`'s model.
    pub const fn long64(vendor: Vendor) -> Self {
        Self {
            code_bits: 64,
            stack_bits: 64,
            mode64: true,
            vendor,
        }
    }
}

/// An x86 exception raised while translating (a fault fetching code, or #UD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchFault {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// CR2 for a page fault.
    pub address: u64,
}

/// Supplies code bytes by linear address.
pub trait CodeSource {
    /// Copies the bytes from `linear` up to the end of its page (at most `buf.len()`) into
    /// `buf`, returning how many; faults as an instruction fetch there would.
    fn fetch(&mut self, linear: u64, buf: &mut [u8]) -> Result<usize, FetchFault>;
}

/// Code from a byte slice at linear address `at`, for tests, benchmarks and tools: a fetch
/// past its end faults as on a page that is not present.
pub struct CodeBytes<'a> {
    pub at: u64,
    pub bytes: &'a [u8],
}

impl CodeSource for CodeBytes<'_> {
    fn fetch(&mut self, linear: u64, buf: &mut [u8]) -> Result<usize, FetchFault> {
        let off = linear.wrapping_sub(self.at) as usize;
        let n = buf.len().min(self.bytes.len().saturating_sub(off));
        if n == 0 {
            return Err(FetchFault {
                vector: 14,
                error_code: Some(0x10),
                address: linear,
            });
        }
        buf[..n].copy_from_slice(&self.bytes[off..off + n]);
        Ok(n)
    }
}

pub const MAX_BLOCK_INSNS: u32 = 64;
const PAGE: u64 = 4096;

/// How many conditional branches a block goes on past, into their not-taken side, with
/// the taken side a side exit ([`Inst::ExitIf`]) instead of the block's end. One: the
/// Debian boot runs 645 million blocks instead of 775 million, in 0.94x the time; a
/// second or third side exit gained nothing more, and a block going on past every branch
/// (up to its length limit) cost the compile thread 2.7 times the time a block, which the
/// kernel's part of the boot, waiting for its code, lost again.
const SIDE_EXITS: u32 = 1;

pub(crate) struct Lift<'a> {
    pub b: &'a mut Builder,
    pub ins: &'a Instruction,
    pub mode: Mode,
    /// Set when an operand was not of a kind the lowering expected; the instruction is
    /// then replaced by the #UD path instead of being lifted wrongly (the lifter must not
    /// panic on anything a guest can encode).
    pub failed: bool,
    /// The last segment check emitted for this instruction (segment, address, bytes,
    /// write): the store of a read-modify-write repeats its load's check, which the IR
    /// then need not make twice (IR within an instruction is straight-line).
    pub last_seg_check: Option<(usize, Val, u32, bool)>,
    /// The arithmetic flags (RFLAGS bits) the block's next instruction sets without
    /// reading them first and without a way to fault before it does
    /// ([`flags_overwritten`]): this instruction's values of them are never seen. Looked
    /// at only for the instructions that use it (0 otherwise).
    pub next_overwrites: u64,
}

/// How the instruction left the block.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Fall through to the next instruction.
    Next,
    /// A terminator was emitted.
    End,
}

/// Translates the block starting at `start` (an offset in CS, i.e. RIP), fetching from
/// linear `cs_base + rip`. Code fetch faults on the first instruction are returned; later
/// ones end the block before the instruction, which then faults as the first of its own
/// block.
pub fn translate(
    src: &mut dyn CodeSource,
    start: u64,
    cs_base: u64,
    mode: Mode,
) -> Result<Block, FetchFault> {
    translate_with(src, start, cs_base, mode, &Limits::default())
}

/// Where blocks must end besides the architectural reasons: a debugger's breakpoints (a
/// block stops before one, so the run loop sees the breakpoint's address at a block start)
/// and single-instruction blocks for stepping and watchpoints.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_insns: u32,
    /// Linear addresses, sorted.
    pub stop_before: Vec<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_insns: MAX_BLOCK_INSNS,
            stop_before: Vec::new(),
        }
    }
}

/// [`translate`] with a debugger's [`Limits`].
pub fn translate_with(
    src: &mut dyn CodeSource,
    start: u64,
    cs_base: u64,
    mode: Mode,
    limits: &Limits,
) -> Result<Block, FetchFault> {
    thread_local! {
        /// The builder's buffers, sized for the longest block, kept from one block to the
        /// next: allocating and freeing them for each block was most of the lifter's calls
        /// of `malloc` (a few kilobytes each, past its caches).
        static BUILDER: RefCell<Builder> = RefCell::new(Builder::default());
    }
    BUILDER.with_borrow_mut(|b| {
        b.clear();
        lift_block(b, src, start, cs_base, mode, limits)
    })
}

fn lift_block(
    b: &mut Builder,
    src: &mut dyn CodeSource,
    start: u64,
    cs_base: u64,
    mode: Mode,
    limits: &Limits,
) -> Result<Block, FetchFault> {
    let max_insns = limits.max_insns.clamp(1, MAX_BLOCK_INSNS);
    let mut rip = start;
    let mut count = 0u32;
    let ip_mask = ip_mask(mode);
    let linear = |ip: u64| {
        let l = cs_base.wrapping_add(ip);
        if mode.mode64 {
            l
        } else {
            l & 0xFFFF_FFFF
        }
    };
    let start_page = linear(start) / PAGE;
    let at_breakpoint = |ip: u64| {
        !limits.stop_before.is_empty() && limits.stop_before.binary_search(&linear(ip)).is_ok()
    };
    // The instructions lifted so far, which a direct JMP is not followed back into.
    let mut lifted = Vec::new();
    let mut side_exits = SIDE_EXITS;
    loop {
        let ins = match decode_at(src, rip, linear(rip), mode) {
            Ok(i) => i,
            Err(f) if count == 0 => return Err(f),
            Err(_) => {
                b.push(Inst::Exit {
                    next: rip,
                    why: ExitWhy::Continue,
                });
                break;
            }
        };
        let Some(ins) = ins else {
            // Undecodable: #UD at this instruction (as a one-instruction tail).
            b.push(Inst::Mark { rip, len: 1 });
            b.push(Inst::Raise { vector: UD_VECTOR });
            count += 1;
            break;
        };
        b.push(Inst::Mark {
            rip,
            len: ins.len() as u8,
        });
        count += 1;
        lifted.push(rip);
        let last_byte = linear(rip + ins.len() as u64 - 1);
        // A direct JMP within the page goes on into its target in the same block (a
        // superblock): the JMP itself does nothing else. Not to the block's start, which
        // stays an exit so that the block is a loop, nor into what the block has lifted.
        let follow = match ins.mnemonic() {
            Mnemonic::Jmp
                if matches!(
                    ins.op0_kind(),
                    OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
                ) =>
            {
                let target = ins.near_branch_target() & ip_mask;
                (target != start
                    && linear(target) / PAGE == start_page
                    && !lifted.contains(&target))
                .then_some(target)
            }
            _ => None,
        };
        // The next instruction, for one that changes only some flags (from the whole of
        // RFLAGS) and whose flags the next may overwrite: looked at when it will be in
        // this block (the checks below that end a block, with this instruction counted)
        // and decodes.
        let next_overwrites = match ins.mnemonic() {
            Mnemonic::Rol
            | Mnemonic::Ror
            | Mnemonic::Bt
            | Mnemonic::Bts
            | Mnemonic::Btr
            | Mnemonic::Btc
            | Mnemonic::Bsf
            | Mnemonic::Bsr
            | Mnemonic::Mul
            | Mnemonic::Imul
                if follow.is_none() =>
            {
                // Past instructions that neither touch the flags nor can fault, to the
                // first that does either: MD5's rotations are followed by a MOV, then
                // an ADD.
                let (mut next, mut last, mut ahead) = (ins.next_ip() & ip_mask, last_byte, 0);
                loop {
                    let in_block = count + ahead < max_insns
                        && linear(next) / PAGE == start_page
                        && last / PAGE == start_page
                        && !at_breakpoint(next);
                    let j = match decode_at(src, next, linear(next), mode) {
                        Ok(Some(j)) if in_block => j,
                        _ => break 0,
                    };
                    if ahead == LOOK_AHEAD || !leaves_flags(&j) {
                        break flags_overwritten(&j);
                    }
                    last = linear(next + j.len() as u64 - 1);
                    next = j.next_ip() & ip_mask;
                    ahead += 1;
                }
            }
            _ => 0,
        };
        let flow = match follow {
            Some(_) => Flow::Next,
            None => lift_one(b, &ins, mode, next_overwrites),
        };
        rip = follow.unwrap_or(ins.next_ip() & ip_mask);
        if flow == Flow::End {
            if side_exits == 0 || !side_exit(&mut b.insts, rip) {
                break;
            }
            side_exits -= 1;
        }
        let crosses = linear(rip) / PAGE != start_page || last_byte / PAGE != start_page;
        if count >= max_insns || crosses || at_breakpoint(rip) {
            b.push(Inst::Exit {
                next: rip,
                why: ExitWhy::Continue,
            });
            break;
        }
    }
    // Moved out into vectors of the block's size, leaving the buffers for the next.
    let mut insts = Vec::with_capacity(b.insts.len());
    insts.append(&mut b.insts);
    Ok(Block {
        start,
        // Where lifting stopped, from the start (with JMPs followed, not the code's
        // extent: the pages the code is on are what the fetch recorded).
        len: (rip.wrapping_sub(start)) as u32,
        guest_insns: count,
        insts,
        vals: b.vals.as_slice().into(),
    })
}

/// Turns the block's last op, a conditional branch whose not-taken side is `next`, into an
/// exit to its taken side alone, so that lifting goes on at `next` ([`SIDE_EXITS`]);
/// whether it was one. The branch's condition decides the same way either form.
fn side_exit(insts: &mut [Inst], next: u64) -> bool {
    let Some(last) = insts.last_mut() else {
        return false;
    };
    let Inst::Branch {
        cond,
        taken,
        not_taken,
    } = *last
    else {
        return false;
    };
    if not_taken != next {
        return false;
    }
    *last = Inst::ExitIf { cond, next: taken };
    true
}

fn ip_mask(mode: Mode) -> u64 {
    match mode.code_bits {
        64 => !0,
        32 => 0xFFFF_FFFF,
        _ => 0xFFFF,
    }
}

/// Decodes one instruction at IP `rip`, whose bytes are at `linear`. Returns None for
/// invalid encodings.
fn decode_at(
    src: &mut dyn CodeSource,
    rip: u64,
    linear: u64,
    mode: Mode,
) -> Result<Option<Instruction>, FetchFault> {
    let mut buf = [0u8; 15];
    let n = src.fetch(linear, &mut buf)?;
    let mut have = n;
    loop {
        let mut dec = Decoder::with_ip(mode.code_bits, &buf[..have], rip, DecoderOptions::NONE);
        let ins = dec.decode();
        match dec.last_error() {
            DecoderError::None => return Ok(Some(ins)),
            DecoderError::NoMoreBytes if have < 15 => {
                // The instruction continues on the next page.
                let more = src.fetch(linear + have as u64, &mut buf[have..])?;
                if more == 0 {
                    return Ok(None);
                }
                have += more;
            }
            _ => return Ok(None),
        }
    }
}

/// How many instructions that leave the flags alone ([`leaves_flags`]) the look for the
/// next one that sets them passes.
const LOOK_AHEAD: u32 = 3;

/// Whether `j` neither reads nor writes the flags and cannot fault: a MOV (or MOVZX,
/// MOVSX) between general registers or of an immediate, an LEA (which reads no memory),
/// NOT, BSWAP. (A MOV to a segment or control register can fault.)
fn leaves_flags(j: &Instruction) -> bool {
    let registers = (0..j.op_count()).all(|n| match j.op_kind(n) {
        OpKind::Register => j.op_register(n).is_gpr(),
        k => matches!(
            k,
            OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64
        ),
    });
    if j.has_lock_prefix() {
        return false;
    }
    match j.mnemonic() {
        Mnemonic::Lea => true,
        Mnemonic::Mov
        | Mnemonic::Movzx
        | Mnemonic::Movsx
        | Mnemonic::Movsxd
        | Mnemonic::Not
        | Mnemonic::Bswap => registers,
        _ => false,
    }
}

/// The arithmetic flags `j` sets without reading them, when it has no memory operand and
/// no form of it can fault (no LOCK, which is #UD without memory): those it leaves to no
/// one else. A shift or rotation by CL, or by an immediate that masks to 0, changes no
/// flag when its count is 0, and sets none here.
fn flags_overwritten(j: &Instruction) -> u64 {
    let operands_ok = (0..j.op_count()).all(|n| {
        matches!(
            j.op_kind(n),
            OpKind::Register
                | OpKind::Immediate8
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate32to64
        )
    });
    if !operands_ok || j.has_lock_prefix() {
        return 0;
    }
    let counted = || {
        let mask = if j.op0_register().size() == 8 { 63 } else { 31 };
        j.op_count() == 2 && j.op1_kind() == OpKind::Immediate8 && j.immediate8() & mask != 0
    };
    match j.mnemonic() {
        Mnemonic::Add
        | Mnemonic::Sub
        | Mnemonic::And
        | Mnemonic::Or
        | Mnemonic::Xor
        | Mnemonic::Cmp
        | Mnemonic::Test
        | Mnemonic::Neg => ARITH_FLAGS,
        Mnemonic::Rol | Mnemonic::Ror if counted() => CF | OF,
        _ => 0,
    }
}

fn lift_one(b: &mut Builder, ins: &Instruction, mode: Mode, next_overwrites: u64) -> Flow {
    let start = b.insts.len();
    let mut l = Lift {
        b,
        ins,
        mode,
        failed: false,
        last_seg_check: None,
        next_overwrites,
    };
    let flow = l
        .alu()
        .or_else(|| l.control())
        .or_else(|| l.string())
        .or_else(|| l.simd())
        .or_else(|| l.system());
    match flow {
        Some(f) if !l.failed => f,
        _ => {
            // Drop the partial lowering; values it defined stay allocated but unused, and
            // nothing it cached may be reused.
            l.b.insts.truncate(start);
            l.b.reset_caches();
            l.unimplemented()
        }
    }
}

impl Lift<'_> {
    /// The next instruction's address (for pushes of return addresses and the like).
    pub fn next_ip(&self) -> u64 {
        self.ins.next_ip() & ip_mask(self.mode)
    }

    /// #UD, counted and logged by the machine's helper.
    pub fn unimplemented(&mut self) -> Flow {
        let code = self.ins.code() as u64;
        self.b.call_k(Helper::Unimplemented, &[code]);
        self.b.push(Inst::Raise { vector: UD_VECTOR });
        Flow::End
    }

    /// Ends the block after this instruction so the run loop looks again (mode, IF, ...).
    pub fn exit_sync(&mut self) -> Flow {
        let next = self.next_ip();
        self.b.push(Inst::Exit {
            next,
            why: ExitWhy::Sync,
        });
        Flow::End
    }
}
