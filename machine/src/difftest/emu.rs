//! Gantry's side of a case: a sandbox guest, in long mode, that runs the snippet at CPL 3.
//!
//! The guest is what an x86-64 kernel gives a user process, reduced to the parts a snippet
//! can see: page tables mapping the code page (user, read-only, executable) and the data
//! pages (user, read/write, NX) at the [`layout`](super::layout) addresses and nothing
//! else user-accessible; 64-, 32- and 16-bit user code segments (the 16-bit one with a
//! 16-bit data segment for DS, ES and SS, as [`seg_base`] lays out); a TSS whose RSP0 takes
//! exceptions to a kernel stack; and an IDT whose 32 exception gates each lead to a
//! one-byte stub, `hlt`. The CPU stops at the stub's HLT (interrupts are off in an
//! interrupt gate); the stub's address names the vector, and the frame on the kernel stack
//! holds RIP, RFLAGS and RSP as of the event. The GPRs are untouched by delivery.
//!
//! Real-mode cases ([`Mode::Real`]) run in the same guest with paging and protection off:
//! the snippet's segments are based at [`REAL_BASE`], and the IVT sends each exception
//! vector to the same HLT stub; the real-mode frame (IP, CS, FLAGS) is on the snippet's
//! own stack.
//!
//! One guest serves all cases: each run resets the CPU state, rewrites the code and data
//! pages and drops the translations of the code page. The same guest ([`Sandbox`]) is what
//! the KVM oracle runs.

use std::rc::Rc;

use gantry_devices::clock::{Clock, ManualClock};
use gantry_frontend::flags::set_rflags;
use gantry_frontend::state::{
    attr, CpuState, DescriptorTable, Segment, CR0_AM, CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR0_WP,
    CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_PAE, CS, DS, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, ES, RSP,
    SS,
};

use super::layout::{
    code_ip, seg_base, CODE_SIZE, CODE_VA, DATA_SIZE, DATA_VA, END_MARKER, REAL_BASE, SEG16_LIMIT,
};
use super::{has_error_code, Case, Event, Final, Mode, RunError, Runner};
use crate::accel::CpuStop;
use crate::board::{Board, BoardConfig, SerialSink};
use crate::boot::EntryState;
use crate::console::HostConsole;
use crate::cpu::{state_from_entry, EmuCpu};
use crate::memory::GuestMemory;

// Guest-physical layout. The first 2 MiB are the kernel's, identity-mapped supervisor-only.
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
const GDT: u64 = 0x5000;
const IDT: u64 = 0x6000;
const TSS: u64 = 0x7000;
/// Stub v (an HLT) is at STUBS + 8 * v.
const STUBS: u64 = 0x8000;
const KSTACK_TOP: u64 = 0xF000;
const CODE_PHYS: u64 = 0x10_0000;
const RAM: u64 = 4 << 20;

const KERNEL_CS: u16 = 0x08;
const USER_CS32: u16 = 0x18 | 3;
const USER_DS: u16 = 0x20 | 3;
const USER_CS64: u16 = 0x28 | 3;
const TSS_SEL: u16 = 0x30;
const USER_CS16: u16 = 0x40 | 3;
const USER_DS16: u16 = 0x48 | 3;
const GDT_ENTRIES: usize = 10;

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 0x80;
const NX: u64 = 1 << 63;

/// The sandbox guest's memory, board and start state, whichever CPU runs it: Gantry's
/// emulated CPU here, or a KVM vCPU for the KVM oracle (`super::kvm`).
pub struct Sandbox {
    pub mem: GuestMemory,
    pub board: Board,
    start: CpuState,
    real_start: CpuState,
}

/// The bytes a real-mode case can reach: its 64 KiB segment and the 3 bytes a dword at
/// its last offset runs past it (with 32-bit addressing beyond the limit faulting).
const REAL_REACH: usize = 0x1_0000 + 3;

/// Where the case's code page is in guest-physical memory, and its data pages.
fn code_phys(mode: Mode) -> u64 {
    match mode {
        Mode::Real => REAL_BASE,
        _ => CODE_PHYS,
    }
}

fn data_phys(mode: Mode) -> u64 {
    code_phys(mode) + (DATA_VA - CODE_VA)
}

impl Sandbox {
    pub fn new() -> Result<Self, String> {
        let mut mem = GuestMemory::new(RAM, None).map_err(|e| e.to_string())?;
        build_kernel(&mut mem).map_err(|e| e.to_string())?;
        let clock: Rc<dyn Clock> = Rc::new(ManualClock::new(0));
        let board = Board::new(
            BoardConfig {
                ram_size: RAM,
                serial: SerialSink::None,
                debugcon_port: None,
                cmos: None,
            },
            clock,
            HostConsole::none(),
        )
        .map_err(|e| e.to_string())?;
        let entry = state_from_entry(&EntryState::long_mode(CODE_VA));
        Ok(Self {
            mem,
            board,
            start: user_state(entry),
            real_start: real_state(),
        })
    }

    /// Writes the case's code and data pages; returns the CPU state it starts from.
    pub fn load(&mut self, case: &Case) -> Result<CpuState, String> {
        let mut code = vec![0u8; CODE_SIZE];
        let n = case.code.len().min(CODE_SIZE - 1);
        code[..n].copy_from_slice(&case.code[..n]);
        code[n] = END_MARKER;
        let data = case.data.bytes();
        let fail = |e: crate::memory::MemoryError| format!("sandbox memory: {e}");
        if case.mode == Mode::Real {
            // Nothing pages the rest of the segment out: it starts as zeros every time.
            self.mem
                .write(REAL_BASE, &[0u8; REAL_REACH])
                .map_err(fail)?;
        }
        self.mem
            .write(code_phys(case.mode), &code)
            .and_then(|_| self.mem.write(data_phys(case.mode), &data))
            .map_err(fail)?;
        let mut st = if case.mode == Mode::Real {
            self.real_start.clone()
        } else {
            self.start.clone()
        };
        st.gpr = case.gpr;
        st.rip = code_ip(case.mode);
        st.seg[CS] = user_code(case.mode);
        if case.mode == Mode::B16 {
            for s in [ES, SS, DS] {
                st.seg[s] = user_data16();
            }
        }
        set_rflags(&mut st, 0x202 | (case.rflags & super::COMPARED_FLAGS));
        st.fx = super::fx_image(&case.xmm);
        Ok(st)
    }

    /// Where a run that stopped with `stop` ended; `cpu` is the CPU state at the stop.
    pub fn result(&self, case: &Case, stop: CpuStop, cpu: &CpuState) -> Final {
        let rip = match stop {
            CpuStop::HaltedForever { rip } => rip,
            other_stop => return other(case, format!("the sandbox guest stopped: {other_stop:?}")),
        };
        let Some(vector) = rip
            .checked_sub(STUBS + 1)
            .filter(|o| o % 8 == 0 && o / 8 < 32)
            .map(|o| (o / 8) as u8)
        else {
            return other(case, format!("the sandbox guest halted at {rip:#x}"));
        };
        let mut out = vec![0u8; DATA_SIZE];
        // Read back from RAM that new() allocated; cannot fail.
        let _ = self.mem.read(data_phys(case.mode), &mut out);
        if case.mode == Mode::Real {
            // The real-mode frame on the snippet's stack: IP, CS, FLAGS (each offset wraps
            // at 64 KiB); SP is 6 below its value at the event.
            let sp = cpu.gpr[RSP] & 0xFFFF;
            let word = |k: u64| {
                let a = cpu.seg[SS].base + ((sp + k) & 0xFFFF);
                let mut w = [0u8; 2];
                let _ = self.mem.read(a, &mut w);
                u16::from_le_bytes(w) as u64
            };
            let mut gpr = cpu.gpr;
            gpr[RSP] = (gpr[RSP] & !0xFFFF) | ((sp + 6) & 0xFFFF);
            return Final {
                gpr,
                rip: word(0),
                rflags: word(4),
                xmm: super::xmm_of(&cpu.fx),
                mxcsr: cpu.fx.mxcsr(),
                event: Event::Exception {
                    vector,
                    // Real-mode delivery pushes no error code and there is no paging.
                    error: None,
                    address: None,
                },
                data: out,
            };
        }
        // The 64-bit frame: [error code,] RIP, CS, RFLAGS, RSP, SS below KSTACK_TOP.
        let frame = KSTACK_TOP - 40;
        let error =
            has_error_code(vector).then(|| self.mem.read_u64(frame - 8).unwrap_or(0) as u32);
        let read = |a: u64| self.mem.read_u64(a).unwrap_or(0);
        let mut gpr = cpu.gpr;
        gpr[RSP] = read(frame + 24);
        Final {
            gpr,
            rip: read(frame),
            rflags: read(frame + 16),
            xmm: super::xmm_of(&cpu.fx),
            mxcsr: cpu.fx.mxcsr(),
            event: Event::Exception {
                vector,
                error,
                address: (vector == 14).then_some(cpu.cr2),
            },
            data: out,
        }
    }
}

/// Gantry's emulated CPU as a [`Runner`].
pub struct EmuRunner {
    cpu: EmuCpu,
    sandbox: Sandbox,
}

impl EmuRunner {
    /// The sandbox on the interpreter, or with `jit` on the Cranelift tier, which then
    /// compiles every block the first time it runs (each snippet runs once).
    pub fn new(jit: bool) -> Result<Self, String> {
        let mut cpu = EmuCpu::new(&EntryState::long_mode(CODE_VA), RAM);
        if jit {
            cpu.enable_jit(1)?;
        }
        Ok(Self {
            cpu,
            sandbox: Sandbox::new()?,
        })
    }

    /// Runs `case` and reports where it ended.
    pub fn execute(&mut self, case: &Case) -> Final {
        let st = match self.sandbox.load(case) {
            Ok(st) => st,
            Err(e) => return other(case, e),
        };
        self.cpu.code_written(code_phys(case.mode));
        self.cpu.state = st;
        let sb = &mut self.sandbox;
        let stop = self.cpu.run(&mut sb.mem, &mut sb.board);
        sb.result(case, stop, &self.cpu.state)
    }
}

impl Runner for EmuRunner {
    fn name(&self) -> String {
        if self.cpu.jit_enabled() {
            "gantry (Cranelift JIT)".into()
        } else {
            "gantry (interpreter)".into()
        }
    }
    fn run(&mut self, case: &Case) -> Result<Final, RunError> {
        Ok(self.execute(case))
    }
}

pub(super) fn other(case: &Case, why: String) -> Final {
    Final {
        gpr: case.gpr,
        rip: 0,
        rflags: 0,
        xmm: case.xmm,
        mxcsr: 0,
        event: Event::Other(why),
        data: Vec::new(),
    }
}

/// CS for code of this size, as the GDT in [`build_kernel`] describes it (or, for real
/// mode, as its selector makes it).
fn user_code(mode: Mode) -> Segment {
    let user = 0xB | attr::S | (3 << attr::DPL_SHIFT) | attr::P;
    let flat = |selector, size| Segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        attr: user | attr::G | size,
    };
    match mode {
        Mode::B64 => flat(USER_CS64, attr::L),
        Mode::B32 => flat(USER_CS32, attr::DB),
        Mode::B16 => Segment {
            base: seg_base(mode),
            limit: SEG16_LIMIT,
            selector: USER_CS16,
            attr: user,
        },
        Mode::Real => Segment::real((REAL_BASE >> 4) as u16, true),
    }
}

/// DS, ES and SS for 16-bit code.
fn user_data16() -> Segment {
    Segment {
        base: seg_base(Mode::B16),
        limit: SEG16_LIMIT,
        selector: USER_DS16,
        attr: 0x3 | attr::S | (3 << attr::DPL_SHIFT) | attr::P,
    }
}

/// A real-mode case's start state, apart from GPRs, RFLAGS and IP: CS, DS, ES and SS at
/// [`REAL_BASE`], the IVT at 0, paging and protection off.
fn real_state() -> CpuState {
    let mut st = CpuState::reset();
    let sel = (REAL_BASE >> 4) as u16;
    for (i, s) in st.seg.iter_mut().enumerate() {
        *s = match i {
            CS => user_code(Mode::Real),
            ES | SS | DS => Segment::real(sel, false),
            _ => Segment::real(0, false),
        };
    }
    st.idtr = DescriptorTable {
        base: 0,
        limit: 0x3FF,
    };
    st.cr0 = CR0_ET | CR0_NE;
    st
}

/// The CPU state at a snippet's start, apart from GPRs, RFLAGS and CS.
fn user_state(mut st: CpuState) -> CpuState {
    let data = Segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: USER_DS,
        attr: 0x3 | attr::S | (3 << attr::DPL_SHIFT) | attr::P | attr::G | attr::DB,
    };
    for (i, s) in st.seg.iter_mut().enumerate() {
        *s = if i == SS || i < 4 {
            data
        } else {
            // FS and GS: null, base 0 (the generators never use them).
            Segment::default()
        };
    }
    st.seg[CS] = user_code(Mode::B64);
    st.cpl = 3;
    st.gdtr = DescriptorTable {
        base: GDT,
        limit: GDT_ENTRIES as u32 * 8 - 1,
    };
    st.idtr = DescriptorTable {
        base: IDT,
        limit: 32 * 16 - 1,
    };
    st.tr = Segment {
        base: TSS,
        limit: 0x67,
        selector: TSS_SEL,
        attr: attr::P | 0xB,
    };
    st.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
    st.cr3 = PML4;
    st.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    st.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
    st
}

/// Page tables, GDT, TSS, IDT and stubs.
fn build_kernel(mem: &mut GuestMemory) -> Result<(), crate::memory::MemoryError> {
    // Fresh guest memory is zeroed: only the entries in use are written.
    mem.write_u64(PML4, PDPT | P | RW | US)?;
    mem.write_u64(PDPT, PD | P | RW | US)?;
    // The kernel's first 2 MiB, supervisor-only.
    mem.write_u64(PD, P | RW | PS)?;
    // The user pages' page table.
    let pd_index = (CODE_VA >> 21) & 511;
    mem.write_u64(PD + pd_index * 8, PT | P | RW | US)?;
    let pte = |va: u64| PT + ((va >> 12) & 511) * 8;
    mem.write_u64(pte(CODE_VA), CODE_PHYS | P | US)?;
    for page in 0..(DATA_SIZE as u64 / 0x1000) {
        mem.write_u64(
            pte(DATA_VA + page * 0x1000),
            (data_phys(Mode::B64) + page * 0x1000) | P | RW | US | NX,
        )?;
    }

    let tss_lo = 0x67 | (TSS & 0xFF_FFFF) << 16 | 0x89u64 << 40 | (TSS >> 24 & 0xFF) << 56;
    // 16-bit segments: base seg_base(B16), byte-granular limit SEG16_LIMIT, D/B = 0.
    let base16 = seg_base(Mode::B16);
    let seg16 = |access: u64| {
        SEG16_LIMIT as u64 | (base16 & 0xFF_FFFF) << 16 | access << 40 | (base16 >> 24 & 0xFF) << 56
    };
    let gdt: [u64; GDT_ENTRIES] = [
        0,
        0x00AF_9B00_0000_FFFF, // kernel code, 64-bit
        0x00CF_9300_0000_FFFF, // kernel data
        0x00CF_FB00_0000_FFFF, // user code, 32-bit
        0x00CF_F300_0000_FFFF, // user data
        0x00AF_FB00_0000_FFFF, // user code, 64-bit
        tss_lo,
        TSS >> 32,
        seg16(0xFB), // user code, 16-bit
        seg16(0xF3), // user data, 16-bit
    ];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_u64(GDT + i as u64 * 8, *d)?;
    }
    // The 64-bit TSS: RSP0 at offset 4.
    mem.write(TSS + 4, &KSTACK_TOP.to_le_bytes())?;

    for v in 0..32u64 {
        let stub = STUBS + v * 8;
        mem.write(stub, &[0xF4])?;
        // The IVT entry (segment 0) for real-mode cases.
        mem.write(v * 4, &(stub as u32).to_le_bytes())?;
        // #BP and #OF may be raised from user code (INT3, INTO), as on Linux.
        let dpl: u64 = if v == 3 || v == 4 { 3 } else { 0 };
        let gate = (stub & 0xFFFF)
            | (KERNEL_CS as u64) << 16
            | (0x8E00 | dpl << 13) << 32
            | ((stub >> 16) & 0xFFFF) << 48;
        mem.write_u64(IDT + v * 16, gate)?;
        mem.write_u64(IDT + v * 16 + 8, stub >> 32)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::difftest::corpus::parse_case;
    use crate::difftest::layout::data_addr;

    /// The real-mode sandbox: INC AX, then the end marker's #BP through the IVT, with the
    /// frame (IP, CS, FLAGS) on the snippet's stack in the data pages and SP as of the
    /// event. Nothing else checks this side when KVM cannot be the oracle.
    #[test]
    fn a_real_mode_case_ends_at_the_marker_with_its_frame_on_its_stack() {
        let sp = data_addr(Mode::Real) + 0x100;
        let case = parse_case(&format!(
            "real code=40 rflags=0 data=zero gpr=41,0,0,0,{sp:x},0,0,0,0,0,0,0,0,0,0,0"
        ))
        .unwrap();
        let f = EmuRunner::new(false).unwrap().execute(&case);
        assert_eq!(
            f.event,
            Event::Exception {
                vector: 3,
                error: None,
                address: None
            }
        );
        assert!(f.completed(&case), "{f:?}");
        assert_eq!((f.gpr[0], f.gpr[RSP]), (0x42, sp));
        // The frame's offset in the data pages.
        let at = (sp - 6 - data_addr(Mode::Real)) as usize;
        let word = |i: usize| u16::from_le_bytes([f.data[at + i], f.data[at + i + 1]]);
        assert_eq!(word(0), 2, "IP after INT3");
        assert_eq!(word(2), (REAL_BASE >> 4) as u16, "CS");
        assert_eq!(word(4) as u64, f.rflags);
    }
}
