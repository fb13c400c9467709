//! Executing Gantry's IR: the interpreter (cold tier) and the Cranelift JIT (hot tier), the
//! code cache, block linking and invalidation.
//!
//! Empty until the CPU issue: no guest instruction is executed by Gantry itself yet
//! (`--accel interp` and `--accel jit` say so and exit 2).
