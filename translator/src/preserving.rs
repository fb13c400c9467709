//! Trampolines into the shims that keep every general register, for Cranelift's
//! `preserve_all` convention. With the shims called in the host's convention, a value a
//! block holds across one of its (cold) calls had to live in a callee-saved register,
//! and nearly every block saved four of them in its prologue and restored them at each
//! exit, chained ones included: about a fifth of a short block's instructions. Through
//! these, a block keeps its values in any register and its prologue is `push rbp; mov
//! rbp, rsp`; the Debian boot took 0.936x the time (median of 10 interleaved pairs, on
//! x86-64).
//!
//! A trampoline saves the caller-saved general registers, puts the shim's arguments where
//! its C signature wants them (the CPU state's address is the call's one register
//! operand, the runtime's is in its `RUNTIME` word, the rest were stored in its `PASSED`
//! words), calls it, stores its result in the `RET` word (`preserve_all` returns nothing
//! in registers) and restores them. Vector registers are left to the shims: generated code
//! holds integers only. On x86-64 and aarch64 Linux hosts (the directives are ELF's);
//! elsewhere the shims are called in the host's convention.

use super::Shim;

/// One trampoline: `$name` calls `$shim`.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
macro_rules! trampoline {
    ($name:ident, $shim:path) => {
        std::arch::global_asm!(
            concat!(".pushsection .text.", stringify!($name), ",\"ax\",@progbits"),
            ".p2align 4",
            concat!(".globl ", stringify!($name)),
            concat!(".hidden ", stringify!($name)),
            concat!(".type ", stringify!($name), ",@function"),
            concat!(stringify!($name), ":"),
            // Entered with RSP 8 past a 16-byte boundary: nine pushes align it.
            "push rax", "push rcx", "push rdx", "push rsi", "push rdi",
            "push r8", "push r9", "push r10", "push r11",
            // The shim's arguments: the runtime and the CPU (in RDI), and the rest, all
            // from the CPU state's run words.
            "mov rsi, rdi",
            "mov rdi, [rsi + {runtime}]",
            "mov rdx, [rsi + {passed}]",
            "mov rcx, [rsi + {passed} + 8]",
            "mov r8, [rsi + {passed} + 16]",
            "call {shim}",
            // The CPU: the call's operand, pushed fifth.
            "mov r11, [rsp + 32]",
            "mov [r11 + {ret}], rax",
            "pop r11", "pop r10", "pop r9", "pop r8", "pop rdi",
            "pop rsi", "pop rdx", "pop rcx", "pop rax",
            "ret",
            ".popsection",
            shim = sym $shim,
            ret = const crate::jit::RT_RET,
            passed = const crate::jit::RT_PASSED,
            runtime = const crate::jit::RT_RUNTIME,
        );
    };
}

#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
macro_rules! trampoline {
    ($name:ident, $shim:path) => {
        std::arch::global_asm!(
            concat!(".pushsection .text.", stringify!($name), ",\"ax\",%progbits"),
            ".p2align 4",
            concat!(".globl ", stringify!($name)),
            concat!(".hidden ", stringify!($name)),
            concat!(".type ", stringify!($name), ",%function"),
            concat!(stringify!($name), ":"),
            // A frame record, then x0-x18 (the caller-saved registers; x30 is in the
            // record): 176 bytes, keeping SP 16-byte aligned.
            "stp x29, x30, [sp, #-176]!",
            "mov x29, sp",
            "stp x0, x1, [sp, #16]",
            "stp x2, x3, [sp, #32]",
            "stp x4, x5, [sp, #48]",
            "stp x6, x7, [sp, #64]",
            "stp x8, x9, [sp, #80]",
            "stp x10, x11, [sp, #96]",
            "stp x12, x13, [sp, #112]",
            "stp x14, x15, [sp, #128]",
            "stp x16, x17, [sp, #144]",
            "str x18, [sp, #160]",
            // The shim's arguments: the runtime and the CPU (in x0), and the rest, all
            // from the CPU state's run words.
            "mov x1, x0",
            "ldr x0, [x1, #{runtime}]",
            "ldr x2, [x1, #{passed}]",
            "ldr x3, [x1, #{passed} + 8]",
            "ldr x4, [x1, #{passed} + 16]",
            "bl {shim}",
            // The CPU: the call's operand, saved first.
            "ldr x9, [sp, #16]",
            "str x0, [x9, #{ret}]",
            "ldp x0, x1, [sp, #16]",
            "ldp x2, x3, [sp, #32]",
            "ldp x4, x5, [sp, #48]",
            "ldp x6, x7, [sp, #64]",
            "ldp x8, x9, [sp, #80]",
            "ldp x10, x11, [sp, #96]",
            "ldp x12, x13, [sp, #112]",
            "ldp x14, x15, [sp, #128]",
            "ldp x16, x17, [sp, #144]",
            "ldr x18, [sp, #160]",
            "ldp x29, x30, [sp], #176",
            "ret",
            ".popsection",
            shim = sym $shim,
            ret = const crate::jit::RT_RET,
            passed = const crate::jit::RT_PASSED,
            runtime = const crate::jit::RT_RUNTIME,
        );
    };
}

/// The shims, each once: its own address (for a call in the host's convention) and,
/// where this host has them, the trampoline into it.
macro_rules! shims {
    ($($variant:ident: $keep:ident => $shim:path),* $(,)?) => {
        /// `shim`'s own address.
        pub(super) fn address(shim: Shim) -> *const u8 {
            match shim {
                $(Shim::$variant => $shim as *const u8,)*
            }
        }

        #[cfg(all(
            any(target_arch = "x86_64", target_arch = "aarch64"),
            target_os = "linux"
        ))]
        mod imp {
            use super::Shim;

            $(trampoline!($keep, $shim);)*

            // Declared for their addresses only: Rust never calls them (their convention
            // is not C's).
            unsafe extern "C" {
                $(fn $keep();)*
            }

            pub fn trampoline(shim: Shim) -> Option<*const u8> {
                Some(match shim {
                    $(Shim::$variant => $keep as *const u8,)*
                })
            }
        }

        #[cfg(not(all(
            any(target_arch = "x86_64", target_arch = "aarch64"),
            target_os = "linux"
        )))]
        mod imp {
            pub fn trampoline(_: super::Shim) -> Option<*const u8> {
                None
            }
        }
    };
}

shims!(
    Load: gantry_keep_load => crate::jit::shim_load,
    Store: gantry_keep_store => crate::jit::shim_store,
    SegCheck: gantry_keep_seg_check => crate::jit::shim_seg_check,
    Rflags: gantry_keep_rflags => crate::jit::shim_rflags,
    Test: gantry_keep_test => crate::jit::shim_test,
    Helper: gantry_keep_helper => crate::jit::shim_helper,
    Chain: gantry_keep_chain => crate::jit::shim_chain,
);

/// The trampoline into `shim`, where this host has them.
pub(super) fn trampoline(shim: Shim) -> Option<*const u8> {
    imp::trampoline(shim)
}
