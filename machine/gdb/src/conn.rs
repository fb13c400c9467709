//! The gdb connection: a TCP stream that also watches the packets gdb sends for what the
//! gdbstub crate does not check. gdbstub (0.7) parses an `M` packet's length and drops
//! it, so `M addr,len:data` with data of another length would be written and answered
//! `OK`; this wrapper notes such a packet, and the memory write refuses it (an error
//! reply), as the protocol's length field intends.

use std::cell::Cell;
use std::net::TcpStream;
use std::rc::Rc;

use gdbstub::conn::{Connection, ConnectionExt};

/// What the connection learnt of the packet being received, shared with the session.
#[derive(Clone, Default)]
pub struct PacketCheck(Rc<Cell<bool>>);

impl PacketCheck {
    /// Whether the packet gdbstub is handling is an `M` whose length field does not match
    /// its data.
    pub fn bad_write_length(&self) -> bool {
        self.0.get()
    }
}

/// A packet's bytes, from `$` to `#`, are collected up to this many (an `M` longer than
/// that is checked no further; gdb's are at most a packet).
const MAX_WATCHED: usize = 1 << 16;

pub struct CheckedStream {
    stream: TcpStream,
    check: PacketCheck,
    /// The body of the packet being received, while inside one.
    body: Option<Vec<u8>>,
}

impl CheckedStream {
    pub fn new(stream: TcpStream, check: PacketCheck) -> Self {
        Self {
            stream,
            check,
            body: None,
        }
    }

    fn watch(&mut self, byte: u8) {
        match (&mut self.body, byte) {
            (_, b'$') => {
                self.body = Some(Vec::new());
                self.check.0.set(false);
            }
            (Some(body), b'#') => {
                let bad = write_length_mismatch(body);
                self.check.0.set(bad);
                self.body = None;
            }
            (Some(body), b) if body.len() < MAX_WATCHED => body.push(b),
            _ => {}
        }
    }
}

/// `M addr,len:hex` whose hex is not `len` bytes.
fn write_length_mismatch(body: &[u8]) -> bool {
    let Some(rest) = body.strip_prefix(b"M") else {
        return false;
    };
    let text = String::from_utf8_lossy(rest);
    let Some((_, tail)) = text.split_once(',') else {
        return false;
    };
    let Some((len, data)) = tail.split_once(':') else {
        return false;
    };
    match usize::from_str_radix(len, 16) {
        Ok(n) => n.checked_mul(2) != Some(data.len()),
        Err(_) => false,
    }
}

impl Connection for CheckedStream {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        Connection::write(&mut self.stream, byte)
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        Connection::write_all(&mut self.stream, buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Connection::flush(&mut self.stream)
    }

    fn on_session_start(&mut self) -> Result<(), Self::Error> {
        Connection::on_session_start(&mut self.stream)
    }
}

impl ConnectionExt for CheckedStream {
    fn read(&mut self) -> Result<u8, Self::Error> {
        let b = ConnectionExt::read(&mut self.stream)?;
        self.watch(b);
        Ok(b)
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        ConnectionExt::peek(&mut self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_lengths_are_checked() {
        assert!(!write_length_mismatch(b"M100000,2:abcd"));
        assert!(write_length_mismatch(b"M100000,4:abcd"));
        assert!(write_length_mismatch(b"M100000,1:abcd"));
        assert!(!write_length_mismatch(b"m100000,4"));
        assert!(!write_length_mismatch(b"M100000,0:"));
    }
}
