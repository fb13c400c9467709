//! Cases as text, one per line, for the regression corpus (tests/difftest/corpus.txt) and
//! for reports: `<mode> code=<hex> rflags=<hex> data=zero|seed:<hex> gpr=<16 hex values>`,
//! then `cpl=0` for ring-0 code outside real mode, and `xmm=<16 hex values>` when any
//! XMM register starts non-zero. Lines starting with `#` and blank lines are comments.
//!
//! A corpus line may end with `vendor=amd` or `vendor=amd:1a` (vendor, and family in
//! hex): the host the case was found on, when its expected answer is that vendor's (or
//! that generation's) own, as undefined flags are. It then runs only on such a host.

use gantry_frontend::vendor::{Family, Vendor};

use super::{Case, DataInit, Mode};

/// Where a corpus case's expected answer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoundOn {
    pub vendor: Vendor,
    pub family: Option<Family>,
}

impl FoundOn {
    /// Whether a host of this vendor and family gives the case's answer.
    pub fn holds_on(&self, host: Option<(Vendor, Family)>) -> bool {
        host.is_some_and(|(v, f)| v == self.vendor && self.family.is_none_or(|g| g == f))
    }

    fn parse(value: &str) -> Result<FoundOn, String> {
        let (v, f) = match value.split_once(':') {
            Some((v, f)) => (v, Some(f)),
            None => (value, None),
        };
        let vendor =
            Vendor::from_name(v).ok_or_else(|| format!("vendor '{v}' is not intel or amd"))?;
        let family = f
            .map(|f| u32::from_str_radix(f, 16).map_err(|_| format!("family '{f}' is not hex")))
            .transpose()?;
        Ok(FoundOn { vendor, family })
    }
}

impl std::fmt::Display for FoundOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.family {
            Some(g) => write!(f, "{} family {g:#x}", self.vendor),
            None => write!(f, "{}", self.vendor),
        }
    }
}

/// One line of a corpus.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub line: usize,
    pub case: Case,
    pub found_on: Option<FoundOn>,
}

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
    parse_line(line).map(|(c, _)| c)
}

fn parse_line(line: &str) -> Result<(Case, Option<FoundOn>), String> {
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
    let mut found_on = None;
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
            "vendor" => found_on = Some(FoundOn::parse(value)?),
            _ => return Err(format!("unknown field '{key}'")),
        }
    }
    let code = code.ok_or("no code=")?;
    if code.is_empty() || code.len() > super::layout::MAX_SNIPPET {
        return Err(format!("code is {} bytes (1..=256)", code.len()));
    }
    let case = Case {
        mode,
        code,
        rflags: rflags.ok_or("no rflags=")?,
        data: data.ok_or("no data=")?,
        gpr: gpr.ok_or("no gpr=")?,
        xmm,
        cpl,
    };
    Ok((case, found_on))
}

/// The cases of a corpus file's text, with their line numbers.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, l)| {
            parse_line(l)
                .map(|(case, found_on)| Entry {
                    line: n + 1,
                    case,
                    found_on,
                })
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
        let e = parse_case("64 code=90 rflags=0 data=zero vendor=via").unwrap_err();
        assert!(e.contains("not intel or amd"), "{e}");
    }

    #[test]
    fn vendor_specific_cases_run_only_where_found() {
        let gpr = "gpr=0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0";
        let text = format!(
            "64 code=90 rflags=0 data=zero {gpr}\n\
             64 code=90 rflags=0 data=zero {gpr} vendor=amd\n\
             64 code=90 rflags=0 data=zero {gpr} vendor=amd:1a\n"
        );
        let e = parse(&text).unwrap();
        assert_eq!(e[0].found_on, None);
        let amd = e[1].found_on.unwrap();
        let zen5 = e[2].found_on.unwrap();
        assert!(amd.holds_on(Some((Vendor::Amd, 0x19))));
        assert!(!amd.holds_on(Some((Vendor::Intel, 6))));
        assert!(!amd.holds_on(None));
        assert!(zen5.holds_on(Some((Vendor::Amd, 0x1A))));
        assert!(!zen5.holds_on(Some((Vendor::Amd, 0x19))));
        assert_eq!(zen5.to_string(), "amd family 0x1a");
    }
}
