//! Gantry's side of a case: a sandbox guest, in long mode, that runs the snippet at CPL 3
//! (or, asked to, at CPL 0).
//!
//! The guest is what an x86-64 kernel gives a user process, reduced to the parts a snippet
//! can see: page tables mapping the code page (user, read-only, executable) and the data
//! pages (user, read/write, NX) at the [`layout`](super::layout) addresses and nothing
//! else user-accessible; 64-, 32- and 16-bit user code segments (the 16-bit one with a
//! 16-bit data segment for DS, ES and SS, as [`seg_base`] lays out); a TSS whose RSP0
//! takes exceptions to a kernel stack; and an IDT whose 32 exception gates each lead to a
//! one-byte stub, `hlt`. The CPU stops at the stub's HLT (interrupts are off in an
//! interrupt gate); the stub's address names the vector, and the frame on the kernel stack
//! holds RIP, RFLAGS and RSP as of the event. The GPRs are untouched by delivery.
//!
//! At CPL 0 the snippet runs in kernel code segments of the same three sizes, with kernel
//! data segments. The kernel's own pages are then within its reach: they are mapped
//! read-only (CR0.WP makes that bind ring 0 too), all but the kernel stack, so no snippet
//! can change the guest the next case runs in. Its IDT's gates switch to IST1, the same
//! kernel stack, so that delivery has a good stack whatever the snippet did to its own.
//! (Only there: kvm_pvm delivers an exception raised in compatibility mode at CPL 3
//! through an IST gate as #UD.)
//!
//! Legacy protected mode ([`Mode::Pm16`], [`Mode::Pm32`]) runs in the same guest with a
//! 32-bit kernel: 32-bit paging mapping the same pages alike (without NX, which 32-bit
//! paging lacks), a 32-bit TSS and IDT, and the same stubs. From CPL 3 the frame is on
//! the kernel stack (ESP0). From CPL 0 there is no stack switch, and no IST outside long
//! mode: the frame is on the snippet's own stack, in the data pages, as in real mode, and
//! a stack pointer outside them ends the case in a triple fault ([`Event::Shutdown`]).
//!
//! Real-mode cases ([`Mode::Real`]) run in the same guest with paging and protection off:
//! the snippet's segments are based at [`REAL_BASE`], and the IVT sends each exception
//! vector to the same HLT stub; the real-mode frame (IP, CS, FLAGS) is on the snippet's
//! own stack.
//!
//! One guest serves all cases: each run resets the CPU state, rewrites the code and data
//! pages and drops the translations of the code page (and the TLB when the paging mode
//! changes). The same guest ([`Sandbox`]) is what the KVM oracle runs.

use std::rc::Rc;

use gantry_devices::clock::{Clock, ManualClock};
use gantry_frontend::flags::{rflags, set_rflags};
use gantry_frontend::state::{
    attr, CpuState, DescriptorTable, Segment, CR0_AM, CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR0_WP,
    CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_PAE, CS, DS, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, ES, RSP,
    SS,
};
use gantry_frontend::vendor::Vendor;

use super::layout::{
    code_ip, end_marker, end_rip, seg_base, CODE_SIZE, CODE_VA, DATA_SIZE, DATA_VA, REAL_BASE,
    SEG16_LIMIT,
};
use super::{has_error_code, Case, Event, Final, Mode, RunError, Runner};
use gantry_machine::accel::emu::paging::{self, PagingRegs};
use gantry_machine::accel::emu::{Compiles, EmuCpu};
use gantry_machine::accel::vcpu::{Ended, Vcpu, VcpuError};
use gantry_machine::accel::CpuStop;
use gantry_machine::board::{Board, BoardConfig};
use gantry_machine::boot::entry;
use gantry_machine::console::HostConsole;
use gantry_machine::memory::GuestMemory;

// Guest-physical layout. The first 2 MiB are the kernel's, identity-mapped supervisor-only
// and read-only but for the kernel stack's page.
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
const GDT: u64 = 0x5000;
/// The 64-bit IDT (16-byte gates), the 32-bit one (8-byte gates), and the 64-bit one
/// for CPL 0, whose gates switch to IST1.
const IDT: u64 = 0x6000;
const IDT32: u64 = IDT + 32 * 16;
const IDT_RING0: u64 = IDT32 + 32 * 8;
/// The 64-bit TSS, then the 32-bit one.
const TSS: u64 = 0x7000;
const TSS32: u64 = TSS + 0x100;
/// Stub v (an HLT) is at STUBS + 8 * v.
const STUBS: u64 = 0x8000;
/// The 32-bit paging structures: the page directory, the kernel's page table, the user
/// pages' page table.
const PD32: u64 = 0x9000;
const PT32_LOW: u64 = 0xA000;
const PT32: u64 = 0xB000;
/// The long-mode page table of the kernel's first 2 MiB.
const PT_LOW: u64 = 0xC000;
const KSTACK_TOP: u64 = 0xF000;
const CODE_PHYS: u64 = 0x10_0000;
const RAM: u64 = 4 << 20;
/// What the kernel maps: its first 2 MiB.
const KERNEL_PAGES: u64 = 512;

const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_CS32: u16 = 0x18 | 3;
const USER_DS: u16 = 0x20 | 3;
const USER_CS64: u16 = 0x28 | 3;
const TSS_SEL: u16 = 0x30;
const USER_CS16: u16 = 0x40 | 3;
const USER_DS16: u16 = 0x48 | 3;
/// The legacy kernel's code segment, also CS for 32-bit code at CPL 0.
const KERNEL_CS32: u16 = 0x50;
const KERNEL_CS16: u16 = 0x58;
const KERNEL_DS16: u16 = 0x60;
const TSS32_SEL: u16 = 0x68;
const GDT_ENTRIES: usize = 14;

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const NX: u64 = 1 << 63;

/// The sandbox guest's memory, board and start state, whichever CPU runs it: Gantry's
/// emulated CPU here, or a KVM vCPU for the KVM oracle (`super::kvm`).
pub struct Sandbox {
    pub mem: GuestMemory,
    pub board: Board,
    start: CpuState,
    legacy_start: CpuState,
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
        let board = Board::new(BoardConfig::bare(RAM), clock, HostConsole::none())
            .map_err(|e| e.to_string())?;
        let start = user_state(entry::long_mode(CODE_VA));
        Ok(Self {
            mem,
            board,
            legacy_start: legacy_state(start.clone()),
            start,
            real_start: real_state(),
        })
    }

    /// Writes the case's code and data pages; returns the CPU state it starts from.
    pub fn load(&mut self, case: &Case) -> Result<CpuState, String> {
        let mut code = vec![0u8; CODE_SIZE];
        let n = case.code.len().min(CODE_SIZE - 1);
        code[..n].copy_from_slice(&case.code[..n]);
        code[n] = end_marker(case.mode, case.cpl);
        let data = case.data.bytes();
        let fail = |e: gantry_machine::memory::MemoryError| format!("sandbox memory: {e}");
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
        let mut st = match case.mode {
            Mode::Real => self.real_start.clone(),
            Mode::Pm16 | Mode::Pm32 => self.legacy_start.clone(),
            Mode::B16 | Mode::B32 | Mode::B64 => self.start.clone(),
        };
        st.gpr = case.gpr;
        st.rip = code_ip(case.mode);
        if case.mode != Mode::Real {
            let cpl = if case.cpl == 0 { 0 } else { 3 };
            st.cpl = cpl;
            if cpl == 0 && !case.mode.legacy() {
                st.idtr.base = IDT_RING0;
            }
            st.seg[CS] = code_segment(case.mode, cpl);
            for s in [ES, SS, DS] {
                st.seg[s] = data_segment(case.mode, cpl);
            }
        }
        set_rflags(&mut st, 0x202 | (case.rflags & super::COMPARED_FLAGS));
        st.fx = super::fx_image(&case.xmm);
        Ok(st)
    }

    /// Where a run that stopped with `stop` ended; `cpu` is the CPU state at the stop.
    pub fn result(&self, case: &Case, stop: CpuStop, cpu: &CpuState) -> Final {
        let mut out = vec![0u8; DATA_SIZE];
        // Read back from RAM that new() allocated; cannot fail.
        let _ = self.mem.read(data_phys(case.mode), &mut out);
        // The state as the CPU holds it, where no exception frame tells the snippet's.
        let as_is = |rip: u64, event: Event| Final {
            gpr: cpu.gpr,
            rip,
            rflags: rflags(cpu),
            xmm: super::xmm_of(&cpu.fx),
            mxcsr: cpu.fx.mxcsr(),
            x87: super::x87_of(&cpu.fx),
            event,
            data: out.clone(),
        };
        let rip = match stop {
            // The end marker's HLT (CPL 0).
            CpuStop::HaltedForever { rip } if rip == end_rip(case.mode, case.code.len()) => {
                return as_is(rip, Event::Halted)
            }
            CpuStop::HaltedForever { rip } => rip,
            // Where delivery uses the snippet's stack, a stack pointer off the data pages
            // makes it a triple fault. Elsewhere the kernel stack is always there: a
            // shutdown is the sandbox's failure.
            CpuStop::TripleFault { rip } if case.frame_on_own_stack().is_some() => {
                return as_is(rip, Event::Shutdown)
            }
            other_stop => return other(case, format!("the sandbox guest stopped: {other_stop:?}")),
        };
        let Some(vector) = rip
            .checked_sub(STUBS + 1)
            .filter(|o| o % 8 == 0 && o / 8 < 32)
            .map(|o| (o / 8) as u8)
        else {
            return other(case, format!("the sandbox guest halted at {rip:#x}"));
        };
        let error_pushed = has_error_code(vector) && case.mode != Mode::Real;
        let mut gpr = cpu.gpr;
        let (rip, rflags, error) = if let Some(slot) = case.frame_on_own_stack() {
            // The frame on the snippet's own stack: [error code,] (E)IP, CS, (E)FLAGS, each
            // offset wrapping as the stack's size makes it; the stack pointer is the frame's
            // size below its value at the event.
            let wrap: u64 = if cpu.seg[SS].attr & attr::DB != 0 {
                0xFFFF_FFFF
            } else {
                0xFFFF
            };
            let sp = cpu.gpr[RSP] & wrap;
            let read = |k: u64| {
                let linear = cpu.seg[SS].base + ((sp + k) & wrap);
                let mut v = [0u8; 4];
                if let Some(a) = paging::phys_of(&self.mem, &PagingRegs::of(cpu), linear) {
                    let _ = self.mem.read(a, &mut v[..slot as usize]);
                }
                u32::from_le_bytes(v) as u64
            };
            let error = error_pushed.then(|| read(0) as u32);
            let ip_at = if error_pushed { slot } else { 0 };
            gpr[RSP] = (gpr[RSP] & !wrap) | ((sp + ip_at + 3 * slot) & wrap);
            (read(ip_at), read(ip_at + 2 * slot), error)
        } else if case.mode.legacy() {
            // The 32-bit frame on the kernel stack: [error code,] EIP, CS, EFLAGS, ESP, SS.
            let frame = KSTACK_TOP - 20;
            let read = |a: u64| self.mem.read_u32(a).unwrap_or(0) as u64;
            let error = error_pushed.then(|| read(frame - 4) as u32);
            gpr[RSP] = read(frame + 12);
            (read(frame), read(frame + 8), error)
        } else {
            // The 64-bit frame: [error code,] RIP, CS, RFLAGS, RSP, SS.
            let frame = KSTACK_TOP - 40;
            let read = |a: u64| self.mem.read_u64(a).unwrap_or(0);
            let error = error_pushed.then(|| read(frame - 8) as u32);
            gpr[RSP] = read(frame + 24);
            (read(frame), read(frame + 16), error)
        };
        // Paging is on in every mode but real mode.
        let address = (vector == 14 && case.mode != Mode::Real).then_some(cpu.cr2);
        Final {
            gpr,
            rip,
            rflags,
            xmm: super::xmm_of(&cpu.fx),
            mxcsr: cpu.fx.mxcsr(),
            x87: super::x87_of(&cpu.fx),
            event: Event::Exception {
                vector,
                error,
                address,
            },
            data: out,
        }
    }
}

/// Runs `case` in the sandbox on `vcpu` (either backend) and reports where it ended.
pub(super) fn run_on(
    vcpu: &mut dyn Vcpu,
    sandbox: &mut Sandbox,
    case: &Case,
) -> Result<Final, VcpuError> {
    let st = match sandbox.load(case) {
        Ok(st) => st,
        Err(e) => return Ok(other(case, e)),
    };
    vcpu.code_written(&sandbox.mem, code_phys(case.mode));
    vcpu.set_state(st)?;
    match vcpu.run_to_end(&mut sandbox.mem, &mut sandbox.board) {
        Ended::Stop(stop) => Ok(sandbox.result(case, stop, vcpu.state())),
        Ended::Failed(e) => Err(e),
    }
}

/// Gantry's emulated CPU as a [`Runner`].
pub struct EmuRunner {
    cpu: EmuCpu,
    sandbox: Sandbox,
}

impl EmuRunner {
    /// The sandbox on the interpreter, or with `jit` on the Cranelift tier, which then
    /// compiles every block the first time it runs (each snippet runs once); the CPU is a
    /// model of `vendor`.
    pub fn new(jit: bool, vendor: Vendor) -> Result<Self, String> {
        let mut cpu = EmuCpu::new(entry::long_mode(CODE_VA), RAM);
        cpu.set_vendor(vendor);
        if jit {
            cpu.enable_jit(1, Compiles::Inline)?;
        }
        Ok(Self {
            cpu,
            sandbox: Sandbox::new()?,
        })
    }

    /// Runs `case` and reports where it ended.
    pub fn execute(&mut self, case: &Case) -> Final {
        match run_on(&mut self.cpu, &mut self.sandbox, case) {
            Ok(f) => f,
            // The emulated CPU does not fail; were it to, the case shows why.
            Err(e) => other(case, e.to_string()),
        }
    }
}

impl Runner for EmuRunner {
    fn name(&self) -> String {
        let tier = if self.cpu.jit_enabled() {
            "Cranelift JIT"
        } else {
            "interpreter"
        };
        format!("gantry ({tier}, {} model)", self.cpu.vendor())
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
        x87: [0; 3],
        event: Event::Other(why),
        data: Vec::new(),
    }
}

/// The GDT's code and data segments, as their descriptor caches hold them once loaded:
/// flat, or for 16-bit code based at [`seg_base`] with a 64 KiB limit. Each selector's
/// RPL is its segment's DPL. [`build_kernel`] writes the GDT from these.
fn gdt_segments() -> [Segment; 10] {
    const CODE: u16 = 0xB;
    const DATA: u16 = 0x3;
    let seg = |selector: u16, kind: u16, size: u16| {
        let attr = kind | attr::S | attr::P | (selector & 3) << attr::DPL_SHIFT | size;
        if size == 0 {
            Segment {
                base: seg_base(Mode::B16),
                limit: SEG16_LIMIT,
                selector,
                attr,
            }
        } else {
            Segment {
                base: 0,
                limit: 0xFFFF_FFFF,
                selector,
                attr: attr | attr::G,
            }
        }
    };
    [
        seg(KERNEL_CS, CODE, attr::L),
        seg(KERNEL_DS, DATA, attr::DB),
        seg(USER_CS32, CODE, attr::DB),
        seg(USER_DS, DATA, attr::DB),
        seg(USER_CS64, CODE, attr::L),
        seg(USER_CS16, CODE, 0),
        seg(USER_DS16, DATA, 0),
        seg(KERNEL_CS32, CODE, attr::DB),
        seg(KERNEL_CS16, CODE, 0),
        seg(KERNEL_DS16, DATA, 0),
    ]
}

fn segment(selector: u16) -> Segment {
    gdt_segments()
        .into_iter()
        .find(|s| s.selector == selector)
        .unwrap_or_default()
}

/// CS for code of this mode at this CPL (3 or 0; real mode has its own).
fn code_segment(mode: Mode, cpl: u8) -> Segment {
    let ring0 = cpl == 0;
    match mode {
        Mode::B64 => segment(if ring0 { KERNEL_CS } else { USER_CS64 }),
        Mode::B32 | Mode::Pm32 => segment(if ring0 { KERNEL_CS32 } else { USER_CS32 }),
        Mode::B16 | Mode::Pm16 => segment(if ring0 { KERNEL_CS16 } else { USER_CS16 }),
        Mode::Real => Segment::real((REAL_BASE >> 4) as u16, true),
    }
}

/// DS, ES and SS for code of this mode at this CPL (outside real mode).
fn data_segment(mode: Mode, cpl: u8) -> Segment {
    let ring0 = cpl == 0;
    segment(match mode.bits() {
        16 if ring0 => KERNEL_DS16,
        16 => USER_DS16,
        _ if ring0 => KERNEL_DS,
        _ => USER_DS,
    })
}

/// A segment's GDT descriptor: the inverse of loading it into a segment register.
fn descriptor(s: &Segment) -> u64 {
    let base = s.base;
    let limit = if s.attr & attr::G != 0 {
        s.limit as u64 >> 12
    } else {
        s.limit as u64
    };
    let attr = s.attr as u64;
    (limit & 0xFFFF)
        | (base & 0xFF_FFFF) << 16
        | (attr & 0xFF) << 40
        | (limit >> 16 & 0xF) << 48
        | (attr >> 12 & 0xF) << 52
        | (base >> 24 & 0xFF) << 56
}

/// A real-mode case's start state, apart from GPRs, RFLAGS and IP: CS, DS, ES and SS at
/// [`REAL_BASE`], the IVT at 0, paging and protection off.
fn real_state() -> CpuState {
    let mut st = CpuState::reset();
    let sel = (REAL_BASE >> 4) as u16;
    for (i, s) in st.seg.iter_mut().enumerate() {
        *s = match i {
            CS => code_segment(Mode::Real, 0),
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

/// The TSS's segment register as LTR leaves it (busy).
fn task_register(selector: u16, base: u64) -> Segment {
    Segment {
        base,
        limit: 0x67,
        selector,
        attr: attr::P | 0xB,
    }
}

/// The CPU state at a snippet's start in long mode, apart from GPRs, RFLAGS, CPL, CS,
/// DS, ES and SS.
fn user_state(mut st: CpuState) -> CpuState {
    for (i, s) in st.seg.iter_mut().enumerate() {
        *s = match i {
            ES | CS | SS | DS => segment(USER_DS),
            // FS and GS: null, base 0 (the generators never use them).
            _ => Segment::default(),
        };
    }
    st.cpl = 3;
    st.gdtr = DescriptorTable {
        base: GDT,
        limit: GDT_ENTRIES as u32 * 8 - 1,
    };
    st.idtr = DescriptorTable {
        base: IDT,
        limit: 32 * 16 - 1,
    };
    st.tr = task_register(TSS_SEL, TSS);
    st.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
    st.cr3 = PML4;
    st.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    st.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
    st
}

/// The same in legacy protected mode: 32-bit paging, the 32-bit IDT and TSS.
fn legacy_state(mut st: CpuState) -> CpuState {
    st.idtr = DescriptorTable {
        base: IDT32,
        limit: 32 * 8 - 1,
    };
    st.tr = task_register(TSS32_SEL, TSS32);
    st.cr3 = PD32;
    st.cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT;
    st.efer = 0;
    st
}

/// Page tables, GDT, TSSs, IDTs and stubs.
fn build_kernel(mem: &mut GuestMemory) -> Result<(), gantry_machine::memory::MemoryError> {
    // Fresh guest memory is zeroed: only the entries in use are written. Directory
    // entries allow everything; the leaves decide.
    let kstack_page = (KSTACK_TOP >> 12) - 1;
    let kernel_pte = |page: u64| page << 12 | P | if page == kstack_page { RW } else { 0 };
    let data_pages = DATA_SIZE as u64 / 0x1000;
    let data_pte = |page: u64| (data_phys(Mode::B64) + page * 0x1000) | P | RW | US;

    // Long mode: 4-level paging.
    mem.write_u64(PML4, PDPT | P | RW | US)?;
    mem.write_u64(PDPT, PD | P | RW | US)?;
    mem.write_u64(PD, PT_LOW | P | RW)?;
    for page in 0..KERNEL_PAGES {
        mem.write_u64(PT_LOW + page * 8, kernel_pte(page))?;
    }
    let pd_index = (CODE_VA >> 21) & 511;
    mem.write_u64(PD + pd_index * 8, PT | P | RW | US)?;
    let pte = |va: u64| PT + ((va >> 12) & 511) * 8;
    mem.write_u64(pte(CODE_VA), CODE_PHYS | P | US)?;
    for page in 0..data_pages {
        mem.write_u64(pte(DATA_VA + page * 0x1000), data_pte(page) | NX)?;
    }

    // Legacy protected mode: 32-bit paging, the same mappings (without NX).
    mem.write_u32(PD32, (PT32_LOW | P | RW) as u32)?;
    for page in 0..KERNEL_PAGES {
        mem.write_u32(PT32_LOW + page * 4, kernel_pte(page) as u32)?;
    }
    mem.write_u32(PD32 + (CODE_VA >> 22) * 4, (PT32 | P | RW | US) as u32)?;
    let pte32 = |va: u64| PT32 + ((va >> 12) & 1023) * 4;
    mem.write_u32(pte32(CODE_VA), (CODE_PHYS | P | US) as u32)?;
    for page in 0..data_pages {
        mem.write_u32(pte32(DATA_VA + page * 0x1000), data_pte(page) as u32)?;
    }

    // The TSS descriptors, busy as LTR leaves them: the 64-bit one takes two slots.
    let tss =
        |base: u64| 0x67 | (base & 0xFF_FFFF) << 16 | 0x8Bu64 << 40 | (base >> 24 & 0xFF) << 56;
    let mut gdt = [0u64; GDT_ENTRIES];
    for s in gdt_segments() {
        gdt[s.selector as usize >> 3] = descriptor(&s);
    }
    gdt[TSS_SEL as usize >> 3] = tss(TSS);
    gdt[(TSS_SEL as usize >> 3) + 1] = TSS >> 32;
    gdt[TSS32_SEL as usize >> 3] = tss(TSS32);
    for (i, d) in gdt.iter().enumerate() {
        mem.write_u64(GDT + i as u64 * 8, *d)?;
    }
    // The 64-bit TSS: RSP0, and IST1 at offset 24h. The 32-bit TSS: ESP0 and SS0.
    mem.write_u64(TSS + 4, KSTACK_TOP)?;
    mem.write_u64(TSS + 0x24, KSTACK_TOP)?;
    mem.write_u32(TSS32 + 4, KSTACK_TOP as u32)?;
    mem.write_u32(TSS32 + 8, KERNEL_DS as u32)?;

    for v in 0..32u64 {
        let stub = STUBS + v * 8;
        mem.write(stub, &[0xF4])?;
        // The IVT entry (segment 0) for real-mode cases.
        mem.write(v * 4, &(stub as u32).to_le_bytes())?;
        // #BP and #OF may be raised from user code (INT3, INTO), as on Linux.
        let dpl: u64 = if v == 3 || v == 4 { 3 } else { 0 };
        // An interrupt gate's first 8 bytes, alike in both formats but for the 64-bit
        // one's IST field.
        let gate = |cs: u16, ist: u64| {
            (stub & 0xFFFF)
                | (cs as u64) << 16
                | ist << 32
                | (0x8E00 | dpl << 13) << 32
                | ((stub >> 16) & 0xFFFF) << 48
        };
        for (idt, ist) in [(IDT, 0), (IDT_RING0, 1)] {
            mem.write_u64(idt + v * 16, gate(KERNEL_CS, ist))?;
            mem.write_u64(idt + v * 16 + 8, stub >> 32)?;
        }
        mem.write_u64(IDT32 + v * 8, gate(KERNEL_CS32, 0))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::parse_case;
    use crate::layout::data_addr;

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
        let f = EmuRunner::new(false, Vendor::Intel).unwrap().execute(&case);
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

    fn case(line: &str) -> Case {
        parse_case(&format!("{line} rflags=0 data=zero")).unwrap()
    }

    fn pf(error: u32, address: u64) -> Event {
        Event::Exception {
            vector: 14,
            error: Some(error),
            address: Some(address),
        }
    }

    /// CPL 0 in legacy protected mode: no stack switch, so a fault's frame (error code,
    /// EIP, CS, EFLAGS) is on the snippet's own stack, and the reported ESP is the one
    /// as of the fault. The fault is a write to the kernel's read-only page, which CR0.WP
    /// makes binding at ring 0: #PF with P and W, not U (SDM vol. 3, 4.6 and 6.12.1).
    /// Nothing else checks this side when KVM cannot run legacy protected mode.
    #[test]
    fn a_ring0_legacy_fault_leaves_its_frame_on_the_snippets_stack() {
        let sp = data_addr(Mode::Pm32) + 0x100;
        // MOV [8000h], EAX: the first exception stub's page.
        let c = case(&format!(
            "pm32 code=890500800000 cpl=0 gpr=0,0,0,0,{sp:x},0,0,0,0,0,0,0,0,0,0,0"
        ));
        let f = EmuRunner::new(false, Vendor::Intel).unwrap().execute(&c);
        assert_eq!(f.event, pf(0x3, 0x8000), "{f:?}");
        assert_eq!((f.rip, f.gpr[RSP]), (CODE_VA, sp));
        let at = (sp - 16 - data_addr(Mode::Pm32)) as usize;
        let dword = |i: usize| u32::from_le_bytes(f.data[at + i..at + i + 4].try_into().unwrap());
        assert_eq!(dword(0), 3, "error code");
        assert_eq!(dword(4) as u64, CODE_VA, "EIP");
        assert_eq!(dword(8), KERNEL_CS32 as u32, "CS");
        assert_eq!(dword(12) as u64, f.rflags, "EFLAGS");
        // The same store from CPL 3 is a user access to a supervisor page; its frame is
        // on the kernel stack.
        let c = case(&format!(
            "pm32 code=890500800000 gpr=0,0,0,0,{sp:x},0,0,0,0,0,0,0,0,0,0,0"
        ));
        let f = EmuRunner::new(false, Vendor::Intel).unwrap().execute(&c);
        assert_eq!(f.event, pf(0x7, 0x8000), "{f:?}");
        assert_eq!((f.rip, f.gpr[RSP]), (CODE_VA, sp));
    }

    /// With ESP off the data pages, a ring-0 fault in legacy protected mode cannot push
    /// its frame: #PF, then #DF, then a triple fault.
    #[test]
    fn a_ring0_legacy_fault_without_a_stack_shuts_the_cpu_down() {
        // UD2 with ESP in the unmapped page after the data pages.
        let esp = DATA_VA + DATA_SIZE as u64 + 0x100;
        let c = case(&format!(
            "pm32 code=0f0b cpl=0 gpr=0,0,0,0,{esp:x},0,0,0,0,0,0,0,0,0,0,0"
        ));
        let f = EmuRunner::new(false, Vendor::Intel).unwrap().execute(&c);
        assert_eq!(f.event, Event::Shutdown, "{f:?}");
        // At CPL 3 the kernel stack takes the #UD.
        let c = case(&format!(
            "pm32 code=0f0b gpr=0,0,0,0,{esp:x},0,0,0,0,0,0,0,0,0,0,0"
        ));
        let f = EmuRunner::new(false, Vendor::Intel).unwrap().execute(&c);
        assert_eq!(f.event.to_string(), "#UD");
        assert_eq!((f.rip, f.gpr[RSP]), (CODE_VA, esp));
    }

    /// At CPL 0 a snippet ends at its HLT with its own state, in 16-bit code too (whose
    /// IP is an offset from CS's base), and reads the kernel's pages that CPL 3 cannot.
    #[test]
    fn ring0_snippets_end_at_their_hlt_and_reach_the_kernels_pages() {
        let mut runner = EmuRunner::new(false, Vendor::Intel).unwrap();
        // PUSH AX; POP CX.
        let sp = data_addr(Mode::Pm16) + 0x100;
        let c = case(&format!(
            "pm16 code=5059 cpl=0 gpr=1234,0,0,0,{sp:x},0,0,0,0,0,0,0,0,0,0,0"
        ));
        let f = runner.execute(&c);
        assert_eq!(f.event, Event::Halted, "{f:?}");
        assert!(f.completed(&c));
        assert_eq!((f.rip, f.gpr[1], f.gpr[RSP]), (3, 0x1234, sp));
        // MOV EAX, [8000h]: the HLT of stub 0, at CPL 0 in each kernel; #PF at CPL 3.
        for mode in [
            "64 code=8b042500800000",
            "32 code=8b0500800000",
            "pm32 code=8b0500800000",
        ] {
            let zeros = "gpr=0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0";
            let f = runner.execute(&case(&format!("{mode} cpl=0 {zeros}")));
            assert_eq!(
                (&f.event, f.gpr[0]),
                (&Event::Halted, 0xF4),
                "{mode}: {f:?}"
            );
            let f = runner.execute(&case(&format!("{mode} {zeros}")));
            assert_eq!(f.event, pf(0x5, 0x8000), "{mode}: {f:?}");
        }
    }
}
