//! Lifter golden tests, in the manner of Cranelift's filetests: each file in `golden/`
//! holds the mode and guest bytes (with their disassembly, for the reader) and the IR the
//! lifter must produce. A change in lowering shows up as a readable diff.
//!
//! `GANTRY_BLESS=1 cargo test -p gantry-frontend --test golden` rewrites the expectations.

use std::path::Path;

use gantry_frontend::iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use gantry_frontend::lift::{translate, CodeBytes, Mode};

const START: u64 = 0x1000;

fn mode(bits: u32) -> Mode {
    Mode {
        code_bits: bits,
        stack_bits: bits,
        mode64: bits == 64,
        vendor: gantry_frontend::vendor::Vendor::Intel,
    }
}

fn parse_header(text: &str) -> (u32, Vec<u8>) {
    let mut bits = 64;
    let mut bytes = Vec::new();
    for line in text.lines() {
        if let Some(m) = line.strip_prefix("; mode: ") {
            bits = m.trim().parse().expect("mode");
        }
        if let Some(b) = line.strip_prefix("; bytes: ") {
            bytes = b
                .split_whitespace()
                .map(|x| u8::from_str_radix(x, 16).expect("hex byte"))
                .collect();
        }
    }
    (bits, bytes)
}

fn render(bits: u32, bytes: &[u8]) -> String {
    let mut out = format!("; mode: {bits}\n; bytes: ");
    out += &bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    out += "\n";
    let mut dec = Decoder::with_ip(bits, bytes, START, DecoderOptions::NONE);
    let mut fmt = IntelFormatter::new();
    for ins in dec.iter() {
        let mut s = String::new();
        fmt.format(&ins, &mut s);
        out += &format!(";   {s}\n");
    }
    out += "\n";
    let block =
        translate(&mut CodeBytes { at: START, bytes }, START, 0, mode(bits)).expect("lifts");
    out += &block.to_string();
    out
}

#[test]
fn golden_ir() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("GANTRY_BLESS").is_some();
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    assert!(!entries.is_empty(), "no golden files in {}", dir.display());
    for e in entries {
        let path = e.path();
        let text = std::fs::read_to_string(&path).expect("read");
        let (bits, bytes) = parse_header(&text);
        let got = render(bits, &bytes);
        if bless {
            std::fs::write(&path, &got).expect("write");
        } else if got != text {
            failures.push(format!(
                "{}:\n--- expected\n{text}\n--- got\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
