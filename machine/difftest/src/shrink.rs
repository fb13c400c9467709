//! Shrinking: a failing case made as small as it will go while it still fails, so that
//! the report shows the instruction and the input that matter.

use super::gen::decode;
use super::{Case, DataInit};

/// Returns the smallest variant of `case` found for which `fails` still holds: fewer
/// instructions, zeroed data, registers (GPRs, then XMMs) reset to 0 one by one, flags cleared. Each step
/// is kept only if the case still fails.
pub fn shrink(case: &Case, mut fails: impl FnMut(&Case) -> bool) -> Case {
    let mut best = case.clone();
    let mut tries = |candidate: Case, best: &mut Case| {
        if candidate != *best && fails(&candidate) {
            *best = candidate;
        }
    };
    // Drop instructions, last first (later ones are likelier to be incidental).
    let mut i = decode(&best).len();
    while i > 0 {
        i -= 1;
        let instrs = decode(&best);
        if instrs.len() <= 1 || i >= instrs.len() {
            continue;
        }
        let start: usize = instrs[..i].iter().map(|x| x.len()).sum();
        let mut code = best.code.clone();
        code.drain(start..start + instrs[i].len());
        tries(
            Case {
                code,
                ..best.clone()
            },
            &mut best,
        );
    }
    tries(
        Case {
            data: DataInit::Zero,
            ..best.clone()
        },
        &mut best,
    );
    for r in 0..16 {
        let mut gpr = best.gpr;
        gpr[r] = 0;
        tries(
            Case {
                gpr,
                ..best.clone()
            },
            &mut best,
        );
    }
    for r in 0..16 {
        let mut xmm = best.xmm;
        if xmm[r] == 0 {
            continue;
        }
        xmm[r] = 0;
        tries(
            Case {
                xmm,
                ..best.clone()
            },
            &mut best,
        );
    }
    tries(
        Case {
            rflags: 0,
            ..best.clone()
        },
        &mut best,
    );
    best
}
