//! Run tests in the style of Cranelift's `filetests/runtests`: each file in `runtests/` is
//! an IR block in the printer's text form (see `gantry_frontend::ir_text`) with `; run:`
//! lines giving a CPU state before and what must hold after. Every run executes on the
//! interpreter and on the Cranelift JIT (the block compiled before its first run, and
//! again with the compile on the JIT's background thread, the run made once its code is
//! installed), so a lowering bug shows as one failing expectation naming the tier.
//!
//! `; run: rax=1 rcx=2 flags=0x0 -> rax=3 flags=0x4 rip=0x1003 end=next`: registers by
//! name, `rip`, `flags` (the six arithmetic flags, in RFLAGS bit positions; before the
//! arrow they are set, after it compared), `mem64@ADDR=V` (64 KiB of flat memory from 0),
//! and after the arrow `end=next|sync|halt|fault:VECTOR`.

use std::path::Path;
use std::time::{Duration, Instant};

use gantry_frontend::flags;
use gantry_frontend::ir::Helper;
use gantry_frontend::ir_text::parse_block;
use gantry_frontend::state::{CpuState, ARITH_FLAGS};
use gantry_translator::block::Prepared;
use gantry_translator::interp::Interp;
use gantry_translator::jit::Jit;
use gantry_translator::{BlockEnd, Exception, Host};

const GPRS: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const MEM: usize = 1 << 16;

/// Flat memory; a helper call is #UD (run tests exercise the IR, not the machine).
struct FlatHost(Vec<u8>);

impl FlatHost {
    fn range(&self, addr: u64, bytes: u8) -> Result<std::ops::Range<usize>, Exception> {
        let a = addr as usize;
        if addr as usize + bytes as usize > MEM || addr >= MEM as u64 {
            return Err(Exception::with_code(13, 0));
        }
        Ok(a..a + bytes as usize)
    }
}

impl Host for FlatHost {
    fn load(
        &mut self,
        _: &mut CpuState,
        addr: u64,
        bytes: u8,
        _: bool,
        _: bool,
    ) -> Result<u64, Exception> {
        let r = self.range(addr, bytes)?;
        let mut v = [0u8; 8];
        v[..bytes as usize].copy_from_slice(&self.0[r]);
        Ok(u64::from_le_bytes(v))
    }
    fn store(
        &mut self,
        _: &mut CpuState,
        addr: u64,
        bytes: u8,
        value: u64,
        _: bool,
    ) -> Result<(), Exception> {
        let r = self.range(addr, bytes)?;
        self.0[r].copy_from_slice(&value.to_le_bytes()[..bytes as usize]);
        Ok(())
    }
    fn helper(&mut self, _: &mut CpuState, _: Helper, _: &[u64]) -> Result<u64, Exception> {
        Err(Exception::new(6))
    }
}

fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|_| panic!("{s:?} is not a number"))
}

/// Applies `key=value` to the state before a run.
fn set(cpu: &mut CpuState, mem: &mut [u8], key: &str, value: &str) {
    if let Some(i) = GPRS.iter().position(|g| *g == key) {
        cpu.gpr[i] = num(value);
    } else if key == "rip" {
        cpu.rip = num(value);
    } else if key == "flags" {
        flags::set_rflags(cpu, num(value) & ARITH_FLAGS);
    } else if let Some(addr) = key.strip_prefix("mem64@") {
        let a = num(addr) as usize;
        mem[a..a + 8].copy_from_slice(&num(value).to_le_bytes());
    } else {
        panic!("unknown input {key:?}");
    }
}

fn end_name(e: BlockEnd) -> String {
    match e {
        BlockEnd::Next => "next".into(),
        BlockEnd::Sync => "sync".into(),
        BlockEnd::Halt => "halt".into(),
        BlockEnd::Fault(x) => format!("fault:{}", x.vector),
        BlockEnd::Retry => "retry".into(),
    }
}

/// What `key` is after a run, to compare with the expected text.
fn get(cpu: &CpuState, mem: &[u8], end: BlockEnd, key: &str) -> u64 {
    if let Some(i) = GPRS.iter().position(|g| *g == key) {
        return cpu.gpr[i];
    }
    match key {
        "rip" => cpu.rip,
        "flags" => flags::rflags(cpu) & ARITH_FLAGS,
        _ => match key.strip_prefix("mem64@") {
            Some(addr) => {
                let a = num(addr) as usize;
                u64::from_le_bytes(mem[a..a + 8].try_into().unwrap_or_default())
            }
            None => panic!("unknown output {key:?} (end: {})", end_name(end)),
        },
    }
}

fn run_file(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).expect("read run test");
    let block = parse_block(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let runs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("; run:"))
        .collect();
    assert!(!runs.is_empty(), "{}: no `; run:` line", path.display());
    for run in &runs {
        let (before, after) = run.split_once("->").expect("a run has `->`");
        for tier in ["interpreter", "jit", "jit in the background"] {
            let mut cpu = CpuState::reset();
            cpu.rip = block.start;
            let mut host = FlatHost(vec![0; MEM]);
            for kv in before.split_whitespace() {
                let (k, v) = kv.split_once('=').expect("key=value");
                set(&mut cpu, &mut host.0, k, v);
            }
            let p = Prepared::new(block.clone());
            let mut interp = Interp::new();
            let end = if tier == "jit" {
                let mut jit = Jit::new(1).expect("the JIT on this host");
                let end = jit.run(&p, &mut interp, &mut cpu, &mut host);
                assert_eq!(
                    jit.compiled,
                    1,
                    "{}: the JIT did not compile the block",
                    path.display()
                );
                end
            } else if tier == "jit in the background" {
                let mut jit = Jit::with_background_compiles(1).expect("the JIT on this host");
                // Throwaway runs, interpreted while the compile thread works, until one
                // ran the installed code.
                let deadline = Instant::now() + Duration::from_secs(30);
                while jit.compiled == 0 && jit.refused == 0 && Instant::now() < deadline {
                    let mut c = cpu.clone();
                    let mut h = FlatHost(host.0.clone());
                    jit.run(&p, &mut Interp::new(), &mut c, &mut h);
                    std::thread::sleep(Duration::from_micros(200));
                }
                assert_eq!(
                    (jit.compiled, jit.refused),
                    (1, 0),
                    "{}: the compile thread did not compile the block",
                    path.display()
                );
                jit.run(&p, &mut interp, &mut cpu, &mut host)
            } else {
                interp.run(&p, &mut cpu, &mut host)
            };
            for kv in after.split_whitespace() {
                let (k, want) = kv.split_once('=').expect("key=value");
                let what = format!("{} ({tier}): `{}`: {k}", path.display(), run.trim());
                if k == "end" {
                    assert_eq!(end_name(end), want, "{what}");
                } else {
                    let got = get(&cpu, &host.0, end, k);
                    assert_eq!(got, num(want), "{what}: {got:#x}, not {want}");
                }
            }
        }
    }
    runs.len()
}

#[test]
fn every_run_test_holds_on_both_tiers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/runtests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ir"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let runs: usize = files.iter().map(|f| run_file(f)).sum();
    println!(
        "{} files, {runs} runs, on the interpreter and the JIT (compiling at once and in the background)",
        files.len()
    );
}
