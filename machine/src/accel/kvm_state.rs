//! KVM's register structures <-> the emulated CPU's [`CpuState`], so the debugger (register
//! layouts, page walks, `monitor info registers`) sees one state whichever backend runs.
//! Pure conversions; the ioctls stay in `kvm.rs`.

use kvm_bindings::{kvm_debugregs, kvm_dtable, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

use gantry_frontend::flags;
use gantry_frontend::state::{self as st, attr, CpuState, DescriptorTable, FxState, Segment};

fn segment_of(k: &kvm_segment) -> Segment {
    // KVM marks a null data segment "unusable" rather than clearing P.
    let present = k.present != 0 && k.unusable == 0;
    Segment {
        base: k.base,
        limit: k.limit,
        selector: k.selector,
        attr: (k.type_ as u16 & attr::TYPE)
            | (k.s as u16 & 1) << 4
            | (k.dpl as u16 & 3) << attr::DPL_SHIFT
            | (present as u16) << 7
            | (k.avl as u16 & 1) << 12
            | (k.l as u16 & 1) << 13
            | (k.db as u16 & 1) << 14
            | (k.g as u16 & 1) << 15,
    }
}

fn kvm_segment_of(s: &Segment) -> kvm_segment {
    let bit = |b: u16| (s.attr & b != 0) as u8;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (s.attr & attr::TYPE) as u8,
        present: bit(attr::P),
        dpl: s.dpl(),
        db: bit(attr::DB),
        s: bit(attr::S),
        l: bit(attr::L),
        g: bit(attr::G),
        avl: bit(attr::AVL),
        unusable: 1 - bit(attr::P),
        padding: 0,
    }
}

fn table_of(t: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: t.base,
        limit: t.limit as u32,
    }
}

fn kvm_table_of(t: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: t.base,
        limit: t.limit as u16,
        padding: [0; 3],
    }
}

/// The architectural state KVM holds, in the emulated CPU's form. MSRs, TSC and the
/// emulator-only fields (A20, lazy flags) keep their reset values.
pub fn state_of(
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    fpu: &kvm_fpu,
    dbg: &kvm_debugregs,
) -> CpuState {
    let mut c = CpuState::reset();
    c.gpr = [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ];
    c.rip = regs.rip;
    flags::set_rflags(&mut c, regs.rflags);
    for (i, k) in [
        &sregs.es, &sregs.cs, &sregs.ss, &sregs.ds, &sregs.fs, &sregs.gs,
    ]
    .iter()
    .enumerate()
    {
        c.seg[i] = segment_of(k);
    }
    c.ldtr = segment_of(&sregs.ldt);
    c.tr = segment_of(&sregs.tr);
    c.gdtr = table_of(&sregs.gdt);
    c.idtr = table_of(&sregs.idt);
    c.cr0 = sregs.cr0;
    c.cr2 = sregs.cr2;
    c.cr3 = sregs.cr3;
    c.cr4 = sregs.cr4;
    c.cr8 = sregs.cr8;
    c.efer = sregs.efer;
    c.msr.apic_base = sregs.apic_base;
    // KVM keeps CPL in SS.DPL (as VMX and SVM do).
    c.cpl = c.seg[st::SS].dpl();
    c.dr = [
        dbg.db[0],
        dbg.db[1],
        dbg.db[2],
        dbg.db[3],
        0xFFFF_0FF0,
        0x400,
        dbg.dr6,
        dbg.dr7,
    ];
    let fx = &mut c.fx.bytes;
    fx[FxState::FCW..FxState::FCW + 2].copy_from_slice(&fpu.fcw.to_le_bytes());
    fx[FxState::FSW..FxState::FSW + 2].copy_from_slice(&fpu.fsw.to_le_bytes());
    fx[FxState::FTW] = fpu.ftwx;
    fx[FxState::FOP..FxState::FOP + 2].copy_from_slice(&fpu.last_opcode.to_le_bytes());
    fx[FxState::FIP..FxState::FIP + 8].copy_from_slice(&fpu.last_ip.to_le_bytes());
    fx[FxState::FDP..FxState::FDP + 8].copy_from_slice(&fpu.last_dp.to_le_bytes());
    fx[FxState::MXCSR..FxState::MXCSR + 4].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    for (i, r) in fpu.fpr.iter().enumerate() {
        fx[FxState::ST0 + 16 * i..FxState::ST0 + 16 * i + 16].copy_from_slice(r);
    }
    for (i, r) in fpu.xmm.iter().enumerate() {
        fx[FxState::XMM0 + 16 * i..FxState::XMM0 + 16 * i + 16].copy_from_slice(r);
    }
    c
}

/// KVM's general registers from Gantry's order (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI,
/// R8-R15).
pub fn regs_of(g: &[u64; 16], rip: u64, rflags: u64) -> kvm_regs {
    kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip,
        rflags,
    }
}

/// Writes a CPU state into KVM's structures: GPRs, RIP, RFLAGS, segments, descriptor
/// tables, control registers, EFER, x87/SSE (a debugger's edits, which keep the control
/// registers as they came, or a whole new state such as a difftest case's). Debug
/// registers go through KVM_SET_GUEST_DEBUG instead, and the MSRs are left as KVM has them.
pub fn store(c: &CpuState, regs: &mut kvm_regs, sregs: &mut kvm_sregs, fpu: &mut kvm_fpu) {
    *regs = regs_of(&c.gpr, c.rip, flags::rflags(c));
    let segs = [
        &mut sregs.es,
        &mut sregs.cs,
        &mut sregs.ss,
        &mut sregs.ds,
        &mut sregs.fs,
        &mut sregs.gs,
    ];
    for (i, k) in segs.into_iter().enumerate() {
        *k = kvm_segment_of(&c.seg[i]);
    }
    sregs.ldt = kvm_segment_of(&c.ldtr);
    sregs.tr = kvm_segment_of(&c.tr);
    sregs.gdt = kvm_table_of(&c.gdtr);
    sregs.idt = kvm_table_of(&c.idtr);
    sregs.cr0 = c.cr0;
    sregs.cr2 = c.cr2;
    sregs.cr3 = c.cr3;
    sregs.cr4 = c.cr4;
    sregs.cr8 = c.cr8;
    sregs.efer = c.efer;
    let fx = &c.fx.bytes;
    let u16_at = |o: usize| u16::from_le_bytes([fx[o], fx[o + 1]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&fx[o..o + 8]);
        u64::from_le_bytes(b)
    };
    fpu.fcw = u16_at(FxState::FCW);
    fpu.fsw = u16_at(FxState::FSW);
    fpu.ftwx = fx[FxState::FTW];
    fpu.last_opcode = u16_at(FxState::FOP);
    fpu.last_ip = u64_at(FxState::FIP);
    fpu.last_dp = u64_at(FxState::FDP);
    fpu.mxcsr = u32::from_le_bytes([
        fx[FxState::MXCSR],
        fx[FxState::MXCSR + 1],
        fx[FxState::MXCSR + 2],
        fx[FxState::MXCSR + 3],
    ]);
    for (i, r) in fpu.fpr.iter_mut().enumerate() {
        r.copy_from_slice(&fx[FxState::ST0 + 16 * i..FxState::ST0 + 16 * i + 16]);
    }
    for (i, r) in fpu.xmm.iter_mut().enumerate() {
        r.copy_from_slice(&fx[FxState::XMM0 + 16 * i..FxState::XMM0 + 16 * i + 16]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (kvm_regs, kvm_sregs, kvm_fpu, kvm_debugregs) {
        let regs = kvm_regs {
            rax: 1,
            rcx: 2,
            rdx: 3,
            rbx: 4,
            rsp: 0x7000,
            rbp: 6,
            rsi: 7,
            rdi: 8,
            r8: 9,
            r15: 0xF0F0,
            rip: 0x10_0200,
            rflags: 0x246,
            ..Default::default()
        };
        let code = kvm_segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: 0x10,
            type_: 0xB,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment {
            selector: 0x18,
            type_: 0x3,
            db: 1,
            l: 0,
            ..code
        };
        let null = kvm_segment {
            unusable: 1,
            ..Default::default()
        };
        let sregs = kvm_sregs {
            cs: code,
            ss: data,
            ds: data,
            es: data,
            fs: kvm_segment {
                base: 0xFFFF_8000_0000_1000,
                ..null
            },
            gs: null,
            tr: kvm_segment {
                type_: 0xB,
                present: 1,
                s: 0,
                limit: 0x67,
                ..Default::default()
            },
            ldt: null,
            gdt: kvm_dtable {
                base: 0x1000,
                limit: 0x27,
                padding: [0; 3],
            },
            cr0: 0x8000_0011,
            cr3: 0x9000,
            cr4: 0x20,
            efer: 0x500,
            ..Default::default()
        };
        let mut fpu = kvm_fpu {
            fcw: 0x37F,
            fsw: 0x3800,
            ftwx: 0x80,
            mxcsr: 0x1F80,
            ..Default::default()
        };
        fpu.fpr[7] = [0xAA; 16];
        fpu.xmm[15] = [0x55; 16];
        let dbg = kvm_debugregs {
            db: [0x1000, 0, 0, 0],
            dr6: 0xFFFF_0FF0,
            dr7: 0x401,
            ..Default::default()
        };
        (regs, sregs, fpu, dbg)
    }

    #[test]
    fn state_from_kvm() {
        let (regs, sregs, fpu, dbg) = sample();
        let c = state_of(&regs, &sregs, &fpu, &dbg);
        assert_eq!(c.gpr[st::RSP], 0x7000);
        assert_eq!(c.gpr[15], 0xF0F0);
        assert!(c.mode64(), "CS.L with EFER.LMA is 64-bit mode");
        assert_eq!(c.linear_rip(), 0x10_0200);
        assert_eq!(flags::rflags(&c), 0x246);
        assert!(!c.seg[st::GS].present(), "unusable reads as not present");
        assert_eq!(c.seg[st::FS].base, 0xFFFF_8000_0000_1000);
        assert_eq!(c.seg[st::SS].attr & attr::DB, attr::DB);
        assert_eq!(c.dr[0], 0x1000);
        assert_eq!(c.dr[7], 0x401);
        assert_eq!(
            &c.fx.bytes[FxState::MXCSR..FxState::MXCSR + 4],
            &0x1F80u32.to_le_bytes()
        );
        assert_eq!(c.fx.bytes[FxState::ST0 + 16 * 7], 0xAA);
        assert_eq!(c.fx.bytes[FxState::XMM0 + 16 * 15 + 15], 0x55);
    }

    #[test]
    fn round_trip() {
        let (regs, sregs, fpu, dbg) = sample();
        let mut c = state_of(&regs, &sregs, &fpu, &dbg);
        c.gpr[st::RAX] = 21;
        c.seg[st::GS].base = 0x4000;
        let (mut r2, mut s2, mut f2) = (kvm_regs::default(), sregs, kvm_fpu::default());
        store(&c, &mut r2, &mut s2, &mut f2);
        assert_eq!(r2.rax, 21);
        assert_eq!(r2.rip, regs.rip);
        assert_eq!(r2.rflags, regs.rflags);
        assert_eq!(s2.gs.base, 0x4000);
        assert_eq!(s2.cs.l, 1);
        assert_eq!(s2.gs.unusable, 1);
        assert_eq!(s2.tr.type_, 0xB);
        assert_eq!(f2.fpr, fpu.fpr);
        assert_eq!(f2.xmm, fpu.xmm);
        assert_eq!(
            (f2.fcw, f2.fsw, f2.ftwx, f2.mxcsr),
            (0x37F, 0x3800, 0x80, 0x1F80)
        );
        let back = state_of(&r2, &s2, &f2, &dbg);
        assert_eq!(back, c);
    }
}
