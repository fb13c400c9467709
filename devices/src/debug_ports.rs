//! Ports for test kernels and firmware: QEMU's isa-debug-exit (0xF4), isa-debugcon
//! (0xE9 by default), and the POST code port 0x80.

use std::io::Write;
use std::rc::Rc;

use crate::bus::BusDevice;
use crate::signals::{SystemEvent, SystemSignals};

/// A write of V ends the run; the process exit status is `(V << 1) | 1`.
pub struct DebugExit {
    signals: Rc<SystemSignals>,
}

impl DebugExit {
    pub fn new(signals: Rc<SystemSignals>) -> Self {
        Self { signals }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        self.signals
            .raise(SystemEvent::DebugExit(u32::from_le_bytes(v)));
    }
    fn wide_access(&self) -> bool {
        true
    }
}

/// Bytes written go to the host (stderr in the CLI); reads return 0xE9 so guests can
/// detect the port, as with QEMU.
pub struct DebugCon {
    out: Box<dyn Write>,
}

impl DebugCon {
    pub fn new(out: Box<dyn Write>) -> Self {
        Self { out }
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data[0] = 0xE9;
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let _ = self.out.write_all(data);
        let _ = self.out.flush();
    }
}

/// Port 0x80: firmware progress codes, kept for `--stats`. Linux also uses the port for
/// I/O delays, so only the last codes are kept.
#[derive(Default)]
pub struct PostCodes {
    last: Vec<u8>,
    writes: u64,
}

impl PostCodes {
    const KEEP: usize = 16;

    pub fn writes(&self) -> u64 {
        self.writes
    }
    /// The most recent codes, oldest first.
    pub fn recent(&self) -> &[u8] {
        &self.last
    }
}

impl BusDevice for PostCodes {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data[0] = self.last.last().copied().unwrap_or(0xFF);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.writes += 1;
        if self.last.len() == Self::KEEP {
            self.last.remove(0);
        }
        self.last.push(data[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_exit_takes_any_width() {
        let s = Rc::new(SystemSignals::default());
        let mut d = DebugExit::new(s.clone());
        d.write(0, &[0x10]);
        assert_eq!(s.take(), Some(SystemEvent::DebugExit(0x10)));
        d.write(0, &0x1234_5678u32.to_le_bytes());
        assert_eq!(s.take(), Some(SystemEvent::DebugExit(0x1234_5678)));
    }

    #[test]
    fn post_codes_keep_the_latest() {
        let mut p = PostCodes::default();
        for i in 0..20u8 {
            p.write(0, &[i]);
        }
        assert_eq!(p.writes(), 20);
        assert_eq!(p.recent().len(), 16);
        assert_eq!(p.recent()[15], 19);
        let mut d = [0];
        p.read(0, &mut d);
        assert_eq!(d[0], 19);
    }
}
