//! Cases as text, one per line, for the regression corpus (tests/difftest/corpus.txt) and
//! for reports: `<mode> code=<hex> rflags=<hex> data=zero|seed:<hex> gpr=<16 hex values>`,
//! then `cpl=0` for ring-0 code outside real mode, and `xmm=<16 hex values>` when any
//! XMM register starts non-zero. Lines starting with `#` and blank lines are comments.

use super::{Case, DataInit, Mode};

pub fn format_case(c: &Case) -> String {
    let code: String = c.code.iter().map(|b| format!("{b:02x}")).collect();
    let data = match c.data {
        DataInit::Zero => "zero".to_string(),
        DataInit::Seed(s) => format!("seed:{s:x}"),
    };
    let gpr: Vec<String> = c.gpr.iter().map(|g| format!("{g:x}")).collect();
    let mut line = format!(
        "{} code={code} rflags={:x} data={data} gpr={}",
        c.mode.name(),
        c.rflags,
        gpr.join(",")
    );
    if c.cpl != c.mode.default_cpl() {
        line.push_str(&format!(" cpl={}", c.cpl));
    }
    if c.xmm.iter().any(|&x| x != 0) {
        let xmm: Vec<String> = c.xmm.iter().map(|x| format!("{x:x}")).collect();
        line.push_str(&format!(" xmm={}", xmm.join(",")));
    }
    line
}

/// Parses one case line; the error names what is wrong.
pub fn parse_case(line: &str) -> Result<Case, String> {
    let mut words = line.split_whitespace();
    let mode = match words.next() {
        Some(w) => Mode::ALL.into_iter().find(|m| m.name() == w),
        None => None,
    }
    .ok_or_else(|| {
        let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
        format!("the line does not start with a mode ({})", names.join(", "))
    })?;
    let (mut code, mut rflags, mut data, mut gpr) = (None, None, None, None);
    let mut xmm = [0u128; 16];
    let mut cpl = mode.default_cpl();
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| format!("'{s}' is not hex"));
    for w in words {
        let (key, value) = w
            .split_once('=')
            .ok_or_else(|| format!("'{w}' is not key=value"))?;
        match key {
            "code" => {
                if value.len() % 2 != 0 {
                    return Err("code has an odd number of hex digits".into());
                }
                let bytes: Result<Vec<u8>, String> = (0..value.len())
                    .step_by(2)
                    .map(|i| hex(&value[i..i + 2]).map(|b| b as u8))
                    .collect();
                code = Some(bytes?);
            }
            "rflags" => rflags = Some(hex(value)?),
            "data" => {
                data = Some(match value.split_once(':') {
                    None if value == "zero" => DataInit::Zero,
                    Some(("seed", s)) => DataInit::Seed(hex(s)?),
                    _ => return Err(format!("data '{value}' is not zero or seed:<hex>")),
                })
            }
            "gpr" => {
                let v: Result<Vec<u64>, String> = value.split(',').map(hex).collect();
                let v = v?;
                gpr = Some(
                    <[u64; 16]>::try_from(v.as_slice())
                        .map_err(|_| format!("gpr has {} values, not 16", v.len()))?,
                );
            }
            "xmm" => {
                let v: Result<Vec<u128>, String> = value
                    .split(',')
                    .map(|s| u128::from_str_radix(s, 16).map_err(|_| format!("'{s}' is not hex")))
                    .collect();
                let v = v?;
                xmm = <[u128; 16]>::try_from(v.as_slice())
                    .map_err(|_| format!("xmm has {} values, not 16", v.len()))?;
            }
            "cpl" => {
                cpl = match value {
                    "0" if mode != Mode::Real => 0,
                    "3" if mode != Mode::Real => 3,
                    "0" => 0,
                    _ => return Err(format!("cpl={value} in {}", mode.describe())),
                }
            }
            _ => return Err(format!("unknown field '{key}'")),
        }
    }
    let code = code.ok_or("no code=")?;
    if code.is_empty() || code.len() > super::layout::MAX_SNIPPET {
        return Err(format!("code is {} bytes (1..=256)", code.len()));
    }
    Ok(Case {
        mode,
        code,
        rflags: rflags.ok_or("no rflags=")?,
        data: data.ok_or("no data=")?,
        gpr: gpr.ok_or("no gpr=")?,
        xmm,
        cpl,
    })
}

/// The cases of a corpus file's text, with their line numbers.
pub fn parse(text: &str) -> Result<Vec<(usize, Case)>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, l)| {
            parse_case(l)
                .map(|c| (n + 1, c))
                .map_err(|e| format!("line {}: {e}", n + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_survives_the_round_trip() {
        let case = Case {
            mode: Mode::B32,
            code: vec![0x01, 0xd8],
            gpr: std::array::from_fn(|i| (i as u64) << 60 | 0xabc),
            rflags: 0x8d5,
            xmm: [0; 16],
            data: DataInit::Seed(0xfeed),
            cpl: 3,
        };
        assert_eq!(parse_case(&format_case(&case)), Ok(case.clone()));
        assert!(!format_case(&case).contains("cpl="));
        let ring0 = Case {
            mode: Mode::Pm16,
            cpl: 0,
            ..case.clone()
        };
        assert!(format_case(&ring0).starts_with("pm16 "));
        assert_eq!(parse_case(&format_case(&ring0)), Ok(ring0));
        assert!(!format_case(&case).contains("xmm="));
        let mut xmm = [0u128; 16];
        xmm[3] = u128::MAX;
        xmm[15] = 0x8000_0000_0000_0000_7ff0_0000_0000_0001;
        let sse = Case {
            xmm,
            ..case.clone()
        };
        assert_eq!(parse_case(&format_case(&sse)), Ok(sse));
        let zero = Case {
            data: DataInit::Zero,
            ..case
        };
        assert_eq!(parse_case(&format_case(&zero)), Ok(zero));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert!(parse_case("8 code=90")
            .unwrap_err()
            .contains("mode (16, 32"));
        let e = parse_case("real code=90 rflags=0 data=zero cpl=3").unwrap_err();
        assert_eq!(e, "cpl=3 in real-mode code");
        let e = parse_case("pm32 code=90 rflags=0 data=zero cpl=1").unwrap_err();
        assert_eq!(e, "cpl=1 in 32-bit code in legacy protected mode");
        assert!(parse_case("64 code=9 rflags=0 data=zero gpr=0")
            .unwrap_err()
            .contains("odd"));
        let e = parse_case("64 code=90 rflags=0 data=zero gpr=1,2").unwrap_err();
        assert!(e.contains("2 values"), "{e}");
        let e = parse("# c\n\n64 code=90 rflags=0 data=zero\n").unwrap_err();
        assert!(e.starts_with("line 3: no gpr"), "{e}");
    }
}
