//! The JIT's code memory: cranelift-jit's `JITModule`, which frees only all of its code at
//! once. When the code compiled into it passes [`CODE_BUDGET`], the module is freed and
//! replaced by a fresh one, and the epoch advances: each compiled block carries the epoch
//! it was compiled in, so code of an older epoch is never entered again, and blocks
//! compile anew when next hot. (A finer scheme, freeing or patching single blocks, needs
//! code memory of Gantry's own on top of cranelift-codegen; this one keeps to the crate.)

use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::default_libcall_names;

/// Compiled code, in bytes, after which the code memory is freed and refilled.
pub const CODE_BUDGET: usize = 64 << 20;

pub struct CodeMemory {
    module: JITModule,
    epoch: u64,
    /// Bytes of code compiled into the current module.
    used: usize,
    /// How often the memory was freed and refilled.
    pub flushes: u64,
}

/// A module for the host CPU, with the settings the JIT compiles with.
fn new_module() -> Result<JITModule, String> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k, v| f.set(k, v).map_err(|e| e.to_string());
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "is_pic", "false")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    let isa = cranelift_native::builder()
        .map_err(|e| format!("Cranelift does not support this host: {e}"))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| e.to_string())?;
    Ok(JITModule::new(JITBuilder::with_isa(
        isa,
        default_libcall_names(),
    )))
}

impl CodeMemory {
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            module: new_module()?,
            epoch: 0,
            used: 0,
            flushes: 0,
        })
    }

    pub fn module(&mut self) -> &mut JITModule {
        &mut self.module
    }

    /// The current epoch: code compiled now is valid while it lasts.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Frees all compiled code when the budget is spent (starting a new epoch); `None`
    /// if no fresh module could be made.
    pub fn make_room(&mut self) -> Option<()> {
        if self.used < CODE_BUDGET {
            return Some(());
        }
        let old = std::mem::replace(&mut self.module, new_module().ok()?);
        // SAFETY: every function of the old module belongs to an older epoch, which the
        // JIT never enters again (`Jit::run` compares a block's epoch with the current one).
        unsafe { old.free_memory() };
        self.epoch += 1;
        self.used = 0;
        self.flushes += 1;
        Some(())
    }

    /// Counts `bytes` of code just compiled into the module.
    pub fn add(&mut self, bytes: usize) {
        self.used += bytes;
    }
}
