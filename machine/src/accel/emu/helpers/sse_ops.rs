//! The SSE/SSE2 instructions that run as a helper: the values an instruction reads
//! fetched here (XMM registers, a general register, memory), what it does computed by
//! `gantry_frontend::sse_op::execute`, its effect written back here, and the MXCSR
//! exception it raises delivered as #XM or #UD, as `sse_fp::simd_exception` says.

use gantry_frontend::sse_op::{self, Effect, Inputs, SseOp, SseOperand};

use super::*;

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
        self.fpu_available(cpu, true)?;
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        let op = SseOp::decode(arg(0)).ok_or(UD)?;
        let (dst, src) = (SseOperand::decode(arg(1)), SseOperand::decode(arg(2)));
        let (value, imm, mem) = (arg(3), arg(4) as u8, (arg(5) as usize).min(16));
        // Memory operands were checked by the translation (alignment, then the segment).
        let src_value = match src {
            SseOperand::Xmm(i) => cpu.fx.xmm(i as usize),
            SseOperand::Gpr(_, size) => {
                let mut x = [0u8; 16];
                let n = (size as usize).min(8);
                x[..n].copy_from_slice(&value.to_le_bytes()[..n]);
                x
            }
            SseOperand::Memory => self.read_x(cpu, value, mem)?,
            SseOperand::None => [0; 16],
        };
        let input = Inputs {
            dst: match dst {
                SseOperand::Xmm(i) => cpu.fx.xmm(i as usize),
                _ => [0; 16],
            },
            src: src_value,
            mxcsr: cpu.fx.mxcsr(),
        };
        let Some(out) = sse_op::execute(op, dst, src, imm, mem, &input) else {
            self.stats
                .count_unimplemented_at(&format!("{op:?} (operand form)"), cpu.rip);
            return Err(UD);
        };
        if out.raised != 0 {
            let osxmmexcpt = cpu.cr4 & CR4_OSXMMEXCPT != 0;
            let (mxcsr, vector) = sse_fp::simd_exception(input.mxcsr, out.raised, osxmmexcpt);
            cpu.fx.set_mxcsr(mxcsr);
            if let Some(v) = vector {
                return Err(Exception::new(v));
            }
        }
        match out.effect {
            Effect::Xmm(i, x) => cpu.fx.set_xmm(i as usize, &x),
            Effect::Gpr(i, v) => cpu.gpr[i as usize & 15] = v,
            Effect::Memory(x, len) => self.write_x(cpu, value, &x, len)?,
            Effect::ArithFlags(f) => flags::set_arith_flags(cpu, f),
        }
        Ok(0)
    }
}
