//! The little of ACPI Machine Language the DSDT needs (ACPI 6.x, section 20): names,
//! packages, buffers, devices and scopes, and the resource descriptors a PCI host bridge's
//! _CRS uses. Each function returns the encoded bytes.

/// PkgLength: the length of what follows it, itself included.
fn pkg_length(body_len: usize) -> Vec<u8> {
    for n in 1..=4usize {
        let total = body_len + n;
        let fits = match n {
            1 => total < 0x40,
            _ => total < 1 << (4 + 8 * (n - 1)),
        };
        if fits {
            if n == 1 {
                return vec![total as u8];
            }
            let mut out = vec![((n - 1) << 6) as u8 | (total & 0xF) as u8];
            for i in 0..n - 1 {
                out.push((total >> (4 + 8 * i)) as u8);
            }
            return out;
        }
    }
    unreachable!("AML package of {body_len} bytes")
}

fn with_pkg(op: &[u8], body: Vec<u8>) -> Vec<u8> {
    let mut out = op.to_vec();
    out.extend(pkg_length(body.len()));
    out.extend(body);
    out
}

/// A name string: a path of 4-character segments (`\` for the root prefix).
pub fn name_string(path: &str) -> Vec<u8> {
    let (root, rest) = match path.strip_prefix('\\') {
        Some(r) => (true, r),
        None => (false, path),
    };
    let segs: Vec<[u8; 4]> = rest
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut seg = [b'_'; 4];
            seg[..s.len().min(4)].copy_from_slice(&s.as_bytes()[..s.len().min(4)]);
            seg
        })
        .collect();
    let mut out = Vec::new();
    if root {
        out.push(b'\\');
    }
    match segs.len() {
        0 => out.push(0),
        1 => {}
        2 => out.push(0x2E),
        n => {
            out.push(0x2F);
            out.push(n as u8);
        }
    }
    for s in segs {
        out.extend_from_slice(&s);
    }
    out
}

pub fn integer(v: u64) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        v if v <= 0xFF => vec![0x0A, v as u8],
        v if v <= 0xFFFF => [&[0x0B][..], &(v as u16).to_le_bytes()].concat(),
        v if v <= 0xFFFF_FFFF => [&[0x0C][..], &(v as u32).to_le_bytes()].concat(),
        v => [&[0x0E][..], &v.to_le_bytes()].concat(),
    }
}

/// Name(NAME, object).
pub fn name(n: &str, object: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0x08];
    out.extend(name_string(n));
    out.extend(object);
    out
}

pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![elements.len() as u8];
    for e in elements {
        body.extend_from_slice(e);
    }
    with_pkg(&[0x12], body)
}

pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut body = integer(bytes.len() as u64);
    body.extend_from_slice(bytes);
    with_pkg(&[0x11], body)
}

pub fn scope(path: &str, terms: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name_string(path);
    body.extend(terms.concat());
    with_pkg(&[0x10], body)
}

pub fn device(n: &str, terms: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name_string(n);
    body.extend(terms.concat());
    with_pkg(&[0x5B, 0x82], body)
}

/// A compressed EISA ID (`PNP0A03`), as _HID takes it.
pub fn eisa_id(id: &str) -> Vec<u8> {
    let b = id.as_bytes();
    let letter = |c: u8| u32::from(c - b'@') & 0x1F;
    let hex =
        |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap_or("0"), 16).unwrap_or(0);
    let vendor = letter(b[0]) << 10 | letter(b[1]) << 5 | letter(b[2]);
    let product = hex(&b[3..7]);
    // Big-endian bytes of the vendor and product words, as the integer's little-endian
    // encoding lays them out.
    let v =
        u32::from((vendor as u16).swap_bytes()) | u32::from((product as u16).swap_bytes()) << 16;
    integer(u64::from(v))
}

/// Word Address Space descriptor: `kind` 1 (I/O) or 2 (bus numbers), fixed range.
pub fn word_space(kind: u8, min: u16, max: u16) -> Vec<u8> {
    let mut d = vec![
        0x88,
        0x0D,
        0x00,
        kind,
        0x0C,
        if kind == 1 { 0x03 } else { 0 },
    ];
    for v in [0u16, min, max, 0, max.wrapping_sub(min).wrapping_add(1)] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d
}

/// DWord Memory descriptor: a read-write, non-cacheable fixed range.
pub fn dword_memory(min: u32, max: u32) -> Vec<u8> {
    let mut d = vec![0x87, 0x17, 0x00, 0x00, 0x0C, 0x01];
    for v in [0u32, min, max, 0, max - min + 1] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d
}

/// The end tag closing a resource template (checksum 0: "treat as summed").
pub fn end_tag() -> Vec<u8> {
    vec![0x79, 0x00]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_specification() {
        assert_eq!(pkg_length(10), vec![11]);
        assert_eq!(pkg_length(100), vec![0x40 | (102 & 0xF), 102 >> 4]);
        assert_eq!(name_string("\\_SB.PCI0"), b"\\\x2E_SB_PCI0".to_vec());
        assert_eq!(eisa_id("PNP0A03"), vec![0x0C, 0x41, 0xD0, 0x0A, 0x03]);
        assert_eq!(integer(0x1234), vec![0x0B, 0x34, 0x12]);
    }
}
