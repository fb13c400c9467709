//! The SSE/SSE2 instructions that run as a helper: operands (XMM, GPR or memory) fetched
//! and stored here, the operation itself in `gantry_frontend::sse` and `sse_fp`, MXCSR
//! exceptions delivered as #XM or #UD.

use super::*;

fn xmm(cpu: &CpuState, i: u8) -> sse::X {
    cpu.fx.xmm(i as usize)
}

fn set_xmm(cpu: &mut CpuState, i: u8, x: &sse::X) {
    cpu.fx.set_xmm(i as usize, x)
}

/// Records SIMD floating-point exceptions in MXCSR; any that MXCSR does not mask is
/// delivered (#XM, or #UD when the OS has not set CR4.OSXMMEXCPT) before the result is
/// written.
fn simd_exceptions(cpu: &mut CpuState, raised: u32) -> Result<(), Exception> {
    let mxcsr = cpu.fx.mxcsr();
    cpu.fx.set_mxcsr(mxcsr | raised);
    let masked = (mxcsr >> sse_fp::MASK_SHIFT) & sse_fp::FLAGS;
    if raised & !masked == 0 {
        Ok(())
    } else if cpu.cr4 & CR4_OSXMMEXCPT != 0 {
        Err(XM)
    } else {
        Err(UD)
    }
}

/// `x` with its low 8 bytes replaced by `v`.
fn with_low(x: &sse::X, v: u64) -> sse::X {
    let mut r = *x;
    r[..8].copy_from_slice(&v.to_le_bytes());
    r
}

fn low(x: &sse::X, n: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..n.min(8)].copy_from_slice(&x[..n.min(8)]);
    u64::from_le_bytes(b)
}

fn from_low(v: u64, n: usize) -> sse::X {
    let mut x = [0u8; 16];
    x[..n.min(8)].copy_from_slice(&v.to_le_bytes()[..n.min(8)]);
    x
}

impl Ctx<'_> {
    pub(super) fn read_x(
        &mut self,
        cpu: &mut CpuState,
        addr: u64,
        n: usize,
    ) -> Result<sse::X, Exception> {
        let mut x = [0u8; 16];
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(8);
            let v = self.read(
                cpu,
                addr + done as u64,
                chunk as u8,
                Access::Read,
                Privilege::User,
            )?;
            x[done..done + chunk].copy_from_slice(&v.to_le_bytes()[..chunk]);
            done += chunk;
        }
        Ok(x)
    }

    pub(super) fn write_x(
        &mut self,
        cpu: &mut CpuState,
        addr: u64,
        x: &sse::X,
        n: usize,
    ) -> Result<(), Exception> {
        self.check_writable(cpu, addr, n as u64, Privilege::User)?;
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(8);
            let mut b = [0u8; 8];
            b[..chunk].copy_from_slice(&x[done..done + chunk]);
            self.write(
                cpu,
                addr + done as u64,
                chunk as u8,
                u64::from_le_bytes(b),
                Privilege::User,
            )?;
            done += chunk;
        }
        Ok(())
    }

    /// An SSE/SSE2 instruction (see `Helper::Sse` for the arguments).
    pub(super) fn sse(&mut self, cpu: &mut CpuState, a: &[u64]) -> Result<u64, Exception> {
        use gantry_frontend::iced_x86::Mnemonic as M;
        use SseOperand::*;
        self.fpu_available(cpu, true)?;
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        let m = sse::mnemonic(arg(0)).ok_or(UD)?;
        let (dst, src) = (sse_operand(arg(1)), sse_operand(arg(2)));
        let (value, imm, mem) = (arg(3), arg(4) as u8, (arg(5) as usize).min(16));
        let mxcsr = cpu.fx.mxcsr();
        // Memory operands were checked by the translation (alignment, then the segment).
        // The source operand as 128 bits (narrower sources in the low bytes).
        let source = |ctx: &mut Self, cpu: &mut CpuState| -> Result<sse::X, Exception> {
            match src {
                Xmm(i) => Ok(xmm(cpu, i)),
                Gpr(_, size) => Ok(from_low(value, size as usize)),
                Memory => ctx.read_x(cpu, value, mem),
                None => Ok([0; 16]),
            }
        };
        let write_gpr = |cpu: &mut CpuState, i: u8, size: u8, v: u64| {
            cpu.gpr[i as usize & 15] = if size >= 8 { v } else { v & 0xFFFF_FFFF };
        };
        match (m, dst) {
            (M::Movd | M::Movq, Xmm(d)) => {
                let n = match src {
                    Gpr(_, size) => size as usize,
                    Memory => mem,
                    _ => 8,
                };
                let s = source(self, cpu)?;
                set_xmm(cpu, d, &from_low(low(&s, n), n));
            }
            (M::Movd | M::Movq, Gpr(i, size)) => {
                if let Xmm(s) = src {
                    write_gpr(cpu, i, size, low(&xmm(cpu, s), size as usize));
                }
            }
            (M::Movd | M::Movq | M::Movsd | M::Movss | M::Movlps | M::Movlpd, Memory) => {
                if let Xmm(s) = src {
                    let x = xmm(cpu, s);
                    self.write_x(cpu, value, &x, mem)?;
                }
            }
            (M::Movhps | M::Movhpd, Memory) => {
                if let Xmm(s) = src {
                    let x = xmm(cpu, s);
                    let mut hi = [0u8; 16];
                    hi[..8].copy_from_slice(&x[8..]);
                    self.write_x(cpu, value, &hi, 8)?;
                }
            }
            (_, Xmm(d)) if sse::is_full_move(m) => {
                let s = source(self, cpu)?;
                set_xmm(cpu, d, &s);
            }
            (_, Memory) if sse::is_full_move(m) => {
                if let Xmm(s) = src {
                    let x = xmm(cpu, s);
                    self.write_x(cpu, value, &x, 16)?;
                }
            }
            (M::Movsd | M::Movss, Xmm(d)) => {
                let n = if m == M::Movsd { 8 } else { 4 };
                let s = source(self, cpu)?;
                // From memory the rest is zeroed; between registers it is kept.
                let mut r = if src == Memory {
                    [0u8; 16]
                } else {
                    xmm(cpu, d)
                };
                r[..n].copy_from_slice(&s[..n]);
                set_xmm(cpu, d, &r);
            }
            (M::Movhps | M::Movhpd | M::Movlps | M::Movlpd | M::Movhlps, Xmm(d)) => {
                let s = source(self, cpu)?;
                let mut r = xmm(cpu, d);
                match m {
                    M::Movhps | M::Movhpd => r[8..].copy_from_slice(&s[..8]),
                    M::Movhlps => r[..8].copy_from_slice(&s[8..]),
                    _ => r[..8].copy_from_slice(&s[..8]),
                }
                set_xmm(cpu, d, &r);
            }
            (M::Pmovmskb | M::Movmskps | M::Movmskpd, Gpr(i, size)) => {
                let s = source(self, cpu)?;
                write_gpr(cpu, i, size, sse::move_mask(m, &s));
            }
            (M::Comisd | M::Ucomisd, Xmm(d)) => {
                let s = source(self, cpu)?;
                let (f, raised) =
                    sse_fp::comisd(low(&xmm(cpu, d), 8), low(&s, 8), m == M::Comisd, mxcsr);
                simd_exceptions(cpu, raised)?;
                let old = flags::rflags(cpu);
                flags::set_rflags(cpu, (old & !(CF | PF | AF | ZF | SF | OF)) | f);
            }
            (M::Cvtsi2sd, Xmm(d)) => {
                let n = match src {
                    Gpr(_, size) => size as usize,
                    _ => mem,
                };
                let s = source(self, cpu)?;
                let v = low(&s, n);
                let int = if n == 8 {
                    v as i64
                } else {
                    v as u32 as i32 as i64
                };
                let (r, raised) = sse_fp::from_int(int, mxcsr);
                simd_exceptions(cpu, raised)?;
                set_xmm(cpu, d, &with_low(&xmm(cpu, d), r));
            }
            (M::Cvttsd2si | M::Cvtsd2si, Gpr(i, size)) => {
                let s = source(self, cpu)?;
                let truncate = m == M::Cvttsd2si;
                let (v, raised) = sse_fp::to_int(low(&s, 8), size as u32 * 8, truncate, mxcsr);
                simd_exceptions(cpu, raised)?;
                write_gpr(cpu, i, size, v);
            }
            (M::Pextrw, Gpr(i, size)) => {
                let s = source(self, cpu)?;
                let at = (imm & 7) as usize * 2;
                write_gpr(cpu, i, size, u16::from_le_bytes([s[at], s[at + 1]]) as u64);
            }
            (_, Xmm(d)) => {
                let s = source(self, cpu)?;
                let dst = xmm(cpu, d);
                let r = match sse_fp::binary(m, &dst, &s, imm, mxcsr) {
                    Some((r, raised)) => {
                        simd_exceptions(cpu, raised)?;
                        r
                    }
                    Option::None => sse::binary(m, &dst, &s, imm).ok_or(UD)?,
                };
                set_xmm(cpu, d, &r);
            }
            _ => {
                self.stats
                    .count_unimplemented_at(&format!("{m:?} (operand form)"), cpu.rip);
                return Err(UD);
            }
        }
        Ok(0)
    }
}
