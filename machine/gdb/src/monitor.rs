//! gdb's `monitor` commands: the machine state gdb's register view leaves out.

use std::fmt::Write as _;

use gantry_frontend::flags;
use gantry_frontend::state::{self as st, CpuState, Segment};

use super::Session;
use gantry_machine::accel::emu::paging::{self, PagingRegs, WalkEnd};

const HELP: &str = "\
monitor commands:
  info registers    the full CPU state: segments with their caches, descriptor tables,
                    control and debug registers, EFER, CPL, mode
  info tlb ADDR     the page-table walk of a virtual (linear) address
  xp ADDR [LEN]     hex dump of guest-physical memory (LEN bytes, default 64, at most 4096)
  stats             the --stats report so far
  reset             reset the machine (as the reset button; CMOS kept)
  help              this text
";

pub fn run(s: &mut Session, cmd: &str) -> String {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.as_slice() {
        [] | ["help"] => HELP.to_string(),
        ["info", "registers"] | ["info", "reg"] | ["info", "r"] => registers(s.cpu.state()),
        ["info", "tlb", addr] => match parse(addr) {
            Some(a) => walk(s, a),
            None => format!("bad address {addr:?}\n"),
        },
        ["xp", addr] => xp(s, addr, "64"),
        ["xp", addr, len] => xp(s, addr, len),
        ["stats"] => {
            let mut text = String::new();
            s.cpu.report(&mut text, s.started.elapsed().as_secs_f64());
            text
        }
        ["reset"] => match s.reset() {
            Ok(()) => "machine reset\n".to_string(),
            Err(e) => format!("reset failed: {e}\n"),
        },
        _ => format!("unknown monitor command {cmd:?}; try `monitor help`\n"),
    }
}

fn parse(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn segment(out: &mut String, name: &str, g: &Segment) {
    let _ = writeln!(
        out,
        "{name:<4} {:04x} base {:016x} limit {:08x} attr {:04x} (DPL {}{}{})",
        g.selector,
        g.base,
        g.limit,
        g.attr,
        g.dpl(),
        if g.present() { "" } else { ", not present" },
        if g.attr & st::attr::S == 0 {
            ", system"
        } else if g.attr & st::attr::CODE != 0 {
            ", code"
        } else {
            ", data"
        }
    );
}

fn registers(c: &CpuState) -> String {
    let mut out = String::new();
    let names = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    for (i, n) in names.iter().enumerate() {
        let _ = write!(
            out,
            "{n:<4}{:016x}{}",
            c.gpr[i],
            if i % 4 == 3 { "\n" } else { "  " }
        );
    }
    let rflags = flags::rflags(c);
    let mode = if c.mode64() {
        "64-bit"
    } else if c.long_mode() {
        "compatibility"
    } else if c.v86() {
        "virtual-8086"
    } else if c.protected() {
        "protected"
    } else {
        "real"
    };
    let _ = writeln!(
        out,
        "rip {:016x}  rflags {rflags:08x}  cs:ip {:04x}:{:x}  linear {:x}",
        c.rip,
        c.seg[st::CS].selector,
        c.rip,
        c.linear_rip()
    );
    let _ = writeln!(
        out,
        "mode {mode}, {}-bit code, CPL {}, IOPL {}{}{}",
        c.code_bits(),
        c.cpl(),
        (rflags >> 12) & 3,
        if c.halted { ", halted" } else { "" },
        if c.a20_mask & (1 << 20) == 0 {
            ", A20 off"
        } else {
            ""
        }
    );
    for (name, i) in [
        ("es", st::ES),
        ("cs", st::CS),
        ("ss", st::SS),
        ("ds", st::DS),
        ("fs", st::FS),
        ("gs", st::GS),
    ] {
        segment(&mut out, name, &c.seg[i]);
    }
    segment(&mut out, "ldtr", &c.ldtr);
    segment(&mut out, "tr", &c.tr);
    let _ = writeln!(
        out,
        "gdtr base {:016x} limit {:04x}   idtr base {:016x} limit {:04x}",
        c.gdtr.base, c.gdtr.limit, c.idtr.base, c.idtr.limit
    );
    let _ = writeln!(
        out,
        "cr0 {:08x}  cr2 {:016x}  cr3 {:016x}  cr4 {:08x}  cr8 {:x}",
        c.cr0, c.cr2, c.cr3, c.cr4, c.cr8
    );
    let _ = writeln!(
        out,
        "efer {:x}  kernel_gs_base {:x}  star {:x}  lstar {:x}",
        c.efer, c.msr.kernel_gs_base, c.msr.star, c.msr.lstar
    );
    let _ = writeln!(
        out,
        "dr0 {:x}  dr1 {:x}  dr2 {:x}  dr3 {:x}  dr6 {:x}  dr7 {:x}",
        c.dr[0], c.dr[1], c.dr[2], c.dr[3], c.dr[6], c.dr[7]
    );
    out
}

fn walk(s: &Session, linear: u64) -> String {
    let regs = PagingRegs::of(s.cpu.state());
    let mut out = String::new();
    if !regs.paging() {
        let _ = writeln!(out, "paging is off: linear {linear:#x} is physical");
    }
    let w = paging::walk(&s.machine.memory, &regs, linear);
    for e in w.entries() {
        let v = e.value;
        let _ = writeln!(
            out,
            "{:<6} at {:#012x}: {:#018x}  {}{}{}{}{}{}{}",
            e.level,
            e.addr,
            v,
            if v & 1 != 0 { "P" } else { "-" },
            if v & 2 != 0 { " W" } else { " R" },
            if v & 4 != 0 { " U" } else { " S" },
            if v & 0x20 != 0 { " A" } else { "" },
            if v & 0x40 != 0 { " D" } else { "" },
            if v & 0x80 != 0 && e.level != "PTE" {
                " PS"
            } else {
                ""
            },
            if e.wide && v >> 63 != 0 { " NX" } else { "" }
        );
    }
    let _ = match w.end {
        WalkEnd::Mapped {
            phys,
            page_size,
            writable,
            user,
            executable,
            ..
        } => writeln!(
            out,
            "{linear:#x} -> physical {phys:#x} ({} KiB page, {}, {}, {})",
            page_size / 1024,
            if writable { "writable" } else { "read-only" },
            if user { "user" } else { "supervisor" },
            if executable {
                "executable"
            } else {
                "no-execute"
            }
        ),
        WalkEnd::NotPresent => writeln!(out, "{linear:#x} is not mapped"),
        WalkEnd::Reserved => writeln!(out, "{linear:#x}: reserved bit set (NX without EFER.NXE)"),
    };
    out
}

fn xp(s: &Session, addr: &str, len: &str) -> String {
    let (Some(addr), Some(len)) = (parse(addr), parse(len)) else {
        return "usage: xp ADDR [LEN]\n".to_string();
    };
    let len = len.min(4096) as usize;
    let mut buf = vec![0u8; len];
    if s.machine.memory.read(addr, &mut buf).is_err() {
        return format!("{addr:#x}+{len}: not RAM or ROM\n");
    }
    let mut out = String::new();
    for (i, chunk) in buf.chunks(16).enumerate() {
        let _ = write!(out, "{:016x}:", addr + 16 * i as u64);
        for b in chunk {
            let _ = write!(out, " {b:02x}");
        }
        out.push('\n');
    }
    out
}
