//! The IR's text form read back: [`parse_block`] takes what `Block`'s `Display` prints
//! (the golden files' format), so that tests can write IR by hand and run it on both tiers
//! (the translator's run tests), as Cranelift's filetests do with CLIF.
//!
//! Helper calls are not parsed (their names are the machine's business); everything else
//! is.

use crate::flags::{self, CcOp, Cond};
use crate::ir::*;
use crate::vendor::FlatSegmentTop;

/// Parses a block printed by `Block`'s `Display`; the error names the line.
pub fn parse_block(text: &str) -> Result<Block, String> {
    let mut b = Block::default();
    let mut header = false;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let err = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("block ") {
            header_of(rest, &mut b).map_err(err)?;
            header = true;
            continue;
        }
        if let Some(c) = line.strip_prefix(';') {
            // `; 0x1000 (3 bytes)` is a mark; other comments are comments.
            if header {
                if let Some((rip, len)) = mark_of(c.trim()) {
                    b.insts.push(Inst::Mark { rip, len });
                }
            }
            continue;
        }
        if !header {
            return Err(err("an instruction before the `block` line".into()));
        }
        let inst = inst_of(line, &mut b).map_err(err)?;
        b.insts.push(inst);
    }
    if !header {
        return Err("no `block` line".into());
    }
    Ok(b)
}

/// `0x1000 (3 bytes, 1 insns):`
fn header_of(rest: &str, b: &mut Block) -> Result<(), String> {
    let (start, tail) = rest.split_once(' ').ok_or("no size after the address")?;
    b.start = num(start)?;
    let nums: Vec<u64> = tail
        .trim_matches(|c| c == '(' || c == ')' || c == ':')
        .split(',')
        .map(|p| num(p.split_whitespace().next().unwrap_or("")))
        .collect::<Result<_, _>>()?;
    match nums[..] {
        [len, insns] => {
            b.len = len as u32;
            b.guest_insns = insns as u32;
            Ok(())
        }
        _ => Err("expected (N bytes, N insns)".into()),
    }
}

fn mark_of(c: &str) -> Option<(u64, u8)> {
    let (rip, rest) = c.split_once(' ')?;
    let len = rest.strip_prefix('(')?.split_whitespace().next()?;
    Some((num(rip).ok()?, num(len).ok()? as u8))
}

fn num(s: &str) -> Result<u64, String> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("{s:?} is not a number"))
}

fn ty_of(s: &str) -> Result<Ty, String> {
    Ok(match s {
        "i8" => Ty::I8,
        "i16" => Ty::I16,
        "i32" => Ty::I32,
        "i64" => Ty::I64,
        _ => return Err(format!("{s:?} is not a type")),
    })
}

/// A use of a value already defined.
fn val_of(s: &str, b: &Block) -> Result<Val, String> {
    let n: u32 = s
        .trim()
        .strip_prefix('v')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{s:?} is not a value"))?;
    if (n as usize) < b.vals.len() {
        Ok(Val(n))
    } else {
        Err(format!("v{n} is used before it is defined"))
    }
}

/// A definition: values are numbered in order, as the lifter makes them.
fn def_of(s: &str, b: &mut Block) -> Result<Val, String> {
    let (v, ty) = s.split_once(':').ok_or("a definition is vN:type")?;
    let n: u32 = v
        .strip_prefix('v')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{v:?} is not a value"))?;
    if n as usize != b.vals.len() {
        return Err(format!(
            "v{n} defined out of order (next is v{})",
            b.vals.len()
        ));
    }
    b.vals.push(ty_of(ty)?);
    Ok(Val(n))
}

fn loc_of(s: &str) -> Result<Loc, String> {
    const GPRS: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    if let Some(i) = GPRS.iter().position(|g| *g == s) {
        return Ok(Loc::Gpr(i as u8));
    }
    Ok(match s {
        "rip" => Loc::Rip,
        "rflags" => Loc::Rflags,
        "cc.op" => Loc::CcOp,
        "cc.dst" => Loc::CcDst,
        "cc.src" => Loc::CcSrc,
        "cc.aux" => Loc::CcAux,
        _ => {
            let (seg, field) = s
                .split_once('.')
                .ok_or_else(|| format!("{s:?} is no location"))?;
            let i = seg_of(seg)?;
            match field {
                "base" => Loc::SegBase(i),
                "sel" => Loc::SegSelector(i),
                _ => return Err(format!("{s:?} is no location")),
            }
        }
    })
}

fn seg_of(s: &str) -> Result<u8, String> {
    SEG_NAMES
        .iter()
        .position(|n| *n == s)
        .map(|i| i as u8)
        .ok_or_else(|| format!("{s:?} is not a segment"))
}

fn cond_of(s: &str) -> Result<Cond, String> {
    (0..16)
        .map(Cond::from_nibble)
        .find(|c| c.name() == s)
        .ok_or_else(|| format!("{s:?} is not a condition"))
}

fn named<T: Copy + std::fmt::Debug>(all: &[T], s: &str) -> Option<T> {
    all.iter()
        .copied()
        .find(|x| format!("{x:?}").to_lowercase() == s)
}

const BIN_OPS: [BinOp; 13] = [
    BinOp::Add,
    BinOp::Sub,
    BinOp::And,
    BinOp::Or,
    BinOp::Xor,
    BinOp::Shl,
    BinOp::Shr,
    BinOp::Sar,
    BinOp::Rol,
    BinOp::Ror,
    BinOp::Mul,
    BinOp::MulHiU,
    BinOp::MulHiS,
];
const UN_OPS: [UnOp; 6] = [
    UnOp::Not,
    UnOp::Neg,
    UnOp::Bswap,
    UnOp::Popcnt,
    UnOp::Ctz,
    UnOp::Clz,
];
const CMP_OPS: [CmpOp; 6] = [
    CmpOp::Eq,
    CmpOp::Ne,
    CmpOp::Ult,
    CmpOp::Ule,
    CmpOp::Slt,
    CmpOp::Sle,
];
const EXITS: [ExitWhy; 3] = [ExitWhy::Sync, ExitWhy::Halt, ExitWhy::Continue];

/// `v1, v2, ...`
fn vals_of(s: &str, b: &Block) -> Result<Vec<Val>, String> {
    s.split(',').map(|v| val_of(v, b)).collect()
}

fn two(s: &str, b: &Block) -> Result<(Val, Val), String> {
    match vals_of(s, b)?[..] {
        [x, y] => Ok((x, y)),
        _ => Err("expected two values".into()),
    }
}

fn inst_of(line: &str, b: &mut Block) -> Result<Inst, String> {
    if let Some((lhs, rhs)) = line.split_once(" = ") {
        // The operands are read before the definition takes its number.
        let (op, args) = rhs.split_once(' ').unwrap_or((rhs, ""));
        let pending = b.vals.len();
        let inst = |dst: Val, b: &Block| -> Result<Inst, String> {
            let one = || val_of(args, b);
            Ok(match op {
                "const" => Inst::Const {
                    dst,
                    value: num(args)?,
                },
                "get" => Inst::Get {
                    dst,
                    loc: loc_of(args)?,
                },
                "zext" => Inst::Zext { dst, a: one()? },
                "sext" => Inst::Sext { dst, a: one()? },
                "trunc" => Inst::Trunc { dst, a: one()? },
                "rflags" => Inst::GetFlags { dst },
                "select" => match vals_of(args, b)?[..] {
                    [cond, a, x] => Inst::Select { dst, cond, a, b: x },
                    _ => return Err("select takes three values".into()),
                },
                _ if op.starts_with("test.") => Inst::Test {
                    dst,
                    cond: cond_of(&op[5..])?,
                },
                _ if op.starts_with("cmp.") => {
                    let cop = named(&CMP_OPS, &op[4..]).ok_or("unknown comparison")?;
                    let (a, x) = two(args, b)?;
                    Inst::Cmp {
                        dst,
                        op: cop,
                        a,
                        b: x,
                    }
                }
                _ if op.starts_with("load") => Inst::Load {
                    dst,
                    addr: one()?,
                    ss: op.contains(".ss"),
                    rmw: op.contains(".rmw"),
                },
                _ if op == "call" || op.starts_with("call") => {
                    return Err("helper calls are not parsed".into())
                }
                _ => {
                    if let Some(u) = named(&UN_OPS, op) {
                        Inst::Un {
                            dst,
                            op: u,
                            a: one()?,
                        }
                    } else if let Some(bop) = named(&BIN_OPS, op) {
                        let (a, x) = two(args, b)?;
                        Inst::Bin {
                            dst,
                            op: bop,
                            a,
                            b: x,
                        }
                    } else {
                        return Err(format!("unknown operation {op:?}"));
                    }
                }
            })
        };
        let dst = def_of(lhs, b)?;
        // Uses may not name the value being defined.
        let mut probe = b.clone();
        probe.vals.truncate(pending);
        return inst(dst, &probe);
    }
    let (op, args) = line.split_once(' ').unwrap_or((line, ""));
    Ok(match op {
        "put" => {
            let (loc, v) = args
                .split_once(',')
                .ok_or("put takes a location and a value")?;
            Inst::Put {
                loc: loc_of(loc.trim())?,
                src: val_of(v, b)?,
            }
        }
        "jump" => Inst::Jump {
            target: val_of(args, b)?,
        },
        "raise" => Inst::Raise {
            vector: num(args.trim_start_matches('#'))? as u8,
        },
        "exitif" => {
            let (c, next) = args
                .split_once(',')
                .ok_or("exitif takes a value and an address")?;
            Inst::ExitIf {
                cond: val_of(c, b)?,
                next: num(next)?,
            }
        }
        "branch" => match args.split(',').map(str::trim).collect::<Vec<_>>()[..] {
            [c, t, nt] => Inst::Branch {
                cond: val_of(c, b)?,
                taken: num(t)?,
                not_taken: num(nt)?,
            },
            _ => return Err("branch takes a value and two addresses".into()),
        },
        "flags" => {
            let (kind, vals) = args.split_once(' ').ok_or("flags takes an op and values")?;
            let (k, bits) = kind.split_once('.').ok_or("flags op is kind.bits")?;
            let kind = named(&flags::KINDS, k).ok_or("unknown flags kind")?;
            let size = (num(bits)? / 8) as u8;
            match vals_of(vals, b)?[..] {
                [dst, src, aux] => Inst::SetFlags {
                    op: CcOp::new(kind, size),
                    dst,
                    src,
                    aux,
                },
                _ => return Err("flags takes three values".into()),
            }
        }
        _ if op.starts_with("exit.") => Inst::Exit {
            next: num(args)?,
            why: named(&EXITS, &op[5..]).ok_or("unknown exit")?,
        },
        _ if op.starts_with("store") => {
            let (a, v) = two(args, b)?;
            Inst::Store {
                addr: a,
                src: v,
                ss: op.contains(".ss"),
            }
        }
        _ if op.starts_with("segcheck.") => {
            match args.split(',').map(str::trim).collect::<Vec<_>>()[..] {
                [seg, a, bytes] => Inst::SegCheck {
                    seg: seg_of(seg)?,
                    addr: val_of(a, b)?,
                    bytes: num(bytes)? as u16,
                    write: op.split('.').nth(1) == Some("w"),
                    top: if op.ends_with(".wrap") {
                        FlatSegmentTop::Wraps
                    } else {
                        FlatSegmentTop::Faults
                    },
                },
                _ => return Err("segcheck takes a segment, a value and a size".into()),
            }
        }
        _ if op.starts_with("trapif") => {
            let (c, v) = args
                .split_once(',')
                .ok_or("trapif takes a value and a vector")?;
            let v = v.trim().trim_start_matches('#');
            let (vector, error) = match v.split_once('(') {
                Some((vec, e)) => (num(vec)?, Some(num(e.trim_end_matches(')'))? as u32)),
                None => (num(v)?, None),
            };
            Inst::TrapIf {
                cond: val_of(c, b)?,
                vector: vector as u8,
                error,
            }
        }
        _ => return Err(format!("unknown instruction {op:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lift::{self, CodeBytes, Mode};
    use crate::vendor::Vendor;

    /// What the printer prints, the parser reads back to the same block: for lifted code
    /// of every kind the parser takes (arithmetic with flags, shifts, memory, branches).
    #[test]
    fn printed_blocks_parse_back() {
        let mode = Mode::long64(Vendor::Intel);
        for code in [
            &[0x48, 0x01, 0xC8][..],               // add rax, rcx
            &[0x48, 0xD3, 0xE0, 0x0F, 0x94, 0xC0], // shl rax, cl; sete al
            &[0x48, 0x8B, 0x03, 0x48, 0x89, 0x0B], // mov rax, [rbx]; mov [rbx], rcx
            &[0x48, 0x85, 0xC0, 0x75, 0x02],       // test rax, rax; jne
            &[0x0F, 0xBC, 0xC1],                   // bsf eax, ecx
        ] {
            let block = lift::translate(
                &mut CodeBytes {
                    at: 0x1000,
                    bytes: code,
                },
                0x1000,
                0,
                mode,
            )
            .unwrap();
            let text = block.to_string();
            let back = parse_block(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back.to_string(), text);
            assert_eq!(back.insts, block.insts);
            assert_eq!(back.vals, block.vals);
        }
    }

    #[test]
    fn bad_text_says_which_line() {
        let e = parse_block("block 0x0 (1 bytes, 1 insns):\n  v0:i64 = frob v1\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse_block("block 0x0 (1 bytes, 1 insns):\n  v1:i64 = const 0\n").unwrap_err();
        assert!(e.contains("out of order"), "{e}");
        let e = parse_block("block 0x0 (1 bytes, 1 insns):\n  v0:i64 = add v0, v0\n").unwrap_err();
        assert!(e.contains("before it is defined"), "{e}");
        assert!(parse_block("  put rax, v0\n").is_err());
    }
}
