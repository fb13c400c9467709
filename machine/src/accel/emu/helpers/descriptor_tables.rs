//! LLDT, LTR, LAR, LSL, VERR, VERW and UMIP: loading and checking system descriptors.

use super::*;

impl Ctx<'_> {
    pub(super) fn umip(&self, cpu: &CpuState) -> Result<(), Exception> {
        if cpu.cr4 & CR4_UMIP != 0 && cpu.cpl() > 0 {
            Err(gp0())
        } else {
            Ok(())
        }
    }

    /// Loads the GDT descriptor of an LDT or TSS (16 bytes in long mode) for LLDT/LTR,
    /// checked against the system types `ok`; returns its address and the segment.
    pub(super) fn system_descriptor(
        &mut self,
        cpu: &mut CpuState,
        sel: u16,
        ok: impl Fn(u8) -> bool,
    ) -> Result<(u64, u64, Segment), Exception> {
        if sel & 4 != 0 {
            return Err(gp(sel));
        }
        let (addr, d) = segments::fetch(cpu, self, sel)?;
        if d.s() || !ok(d.typ()) {
            return Err(gp(sel));
        }
        if !d.present() {
            return Err(Exception::with_code(11, (sel & 0xFFFC) as u32));
        }
        let mut s = d.segment(sel);
        if cpu.long_mode() {
            s.base |= (self.sys_read(cpu, addr + 8, 4)? & 0xFFFF_FFFF) << 32;
        }
        Ok((addr, d.raw, s))
    }

    pub(super) fn lldt(&mut self, cpu: &mut CpuState, sel: u16) -> Result<(), Exception> {
        require_cpl0(cpu)?;
        if !cpu.protected() || cpu.v86() {
            return Err(UD);
        }
        if sel & !3 == 0 {
            cpu.ldtr = Segment {
                selector: sel,
                ..Default::default()
            };
            return Ok(());
        }
        let (_, _, s) = self.system_descriptor(cpu, sel, |t| t == 2)?;
        cpu.ldtr = s;
        Ok(())
    }

    pub(super) fn ltr(&mut self, cpu: &mut CpuState, sel: u16) -> Result<(), Exception> {
        require_cpl0(cpu)?;
        if !cpu.protected() || cpu.v86() {
            return Err(UD);
        }
        if sel & !3 == 0 {
            return Err(gp(sel));
        }
        // Available 16-bit (1) or 32/64-bit (9) TSS.
        let long = cpu.long_mode();
        let (addr, raw, mut s) =
            self.system_descriptor(cpu, sel, |t| t == 9 || (t == 1 && !long))?;
        // Mark it busy, in memory and in TR.
        self.sys_write(cpu, addr + 5, 1, (raw >> 40) | 2)?;
        s.attr |= 2;
        cpu.tr = s;
        Ok(())
    }

    pub(super) fn descriptor_check(
        &mut self,
        cpu: &mut CpuState,
        which: u8,
        sel: u16,
    ) -> Result<u64, Exception> {
        if !cpu.protected() || cpu.v86() {
            return Err(UD);
        }
        let fl = flags::rflags(cpu);
        let result = (|| {
            if sel & !3 == 0 {
                return None;
            }
            let (_, d) = segments::fetch(cpu, self, sel).ok()?;
            let cpl = cpu.cpl();
            let rpl = (sel & 3) as u8;
            let privileged_ok = d.conforming() || (d.dpl() >= cpl && d.dpl() >= rpl);
            match which {
                0 | 1 => {
                    let sys_ok = d.s()
                        || matches!(d.typ(), 1 | 2 | 3 | 9 | 11)
                        || (which == 0 && matches!(d.typ(), 4 | 5 | 12));
                    if !sys_ok || !privileged_ok {
                        return None;
                    }
                    Some(if which == 0 {
                        (d.raw >> 32) & 0x00F0_FF00
                    } else {
                        d.limit() as u64
                    })
                }
                2 => (d.s() && d.readable() && privileged_ok).then_some(0),
                _ => (d.writable_data() && privileged_ok).then_some(0),
            }
        })();
        let zf = result.is_some();
        flags::set_rflags(cpu, if zf { fl | ZF } else { fl & !ZF });
        Ok(result.unwrap_or(0))
    }
}
