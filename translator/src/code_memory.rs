//! The JIT's code memory: cranelift-jit's `JITModule`, with the blocks packed into an
//! arena of Gantry's own ([`CodeArena`]), which frees only all of its code at once. When the code compiled into it passes [`CODE_BUDGET`], the module is freed and
//! replaced by a fresh one, and the epoch advances: each compiled block carries the epoch
//! it was compiled in, so code of an older epoch is never entered again, and blocks
//! compile anew when next hot. (A finer scheme, freeing or patching single blocks, needs
//! code memory of Gantry's own on top of cranelift-codegen; this one keeps to the crate.)

use cranelift_codegen::ir::{types, AbiParam, InstBuilder, Signature};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use gantry_frontend::state::CpuState;

use crate::code_arena::CodeArena;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};

/// The way into generated code from Rust: `enter(cpu, block)` calls the block's
/// function, which is in Cranelift's `tail` convention (Rust has no such ABI), in the
/// host's C convention, and returns what the block (or the last block it chained into)
/// returned.
pub type Entry = unsafe extern "C" fn(*mut CpuState, *const u8) -> u64;

/// The signature of every compiled block: `(cpu) -> exit word`, in the `tail`
/// convention, so that a block can end in a tail call of its successor. The CPU state's
/// address is the one base of everything the code reaches, the run's words among them
/// ([`crate::jit`]), as QEMU's code reaches everything from `env`. The blocks the run may
/// still chain into and the instructions it completed so far are in those words, which
/// each exit updates in place (they had gone from block to block as two more parameters,
/// which every block spilled to its stack frame on entry and reloaded at its exits).
pub fn block_signature() -> Signature {
    let mut sig = Signature::new(CallConv::Tail);
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I64));
    sig
}

/// Compiled code, in bytes, after which the code memory is freed and refilled.
pub const CODE_BUDGET: usize = 64 << 20;

pub struct CodeMemory {
    isa: OwnedTargetIsa,
    /// Freed by `Drop` (a `JITModule` dropped keeps its memory mapped: a process that
    /// makes many machines, as difftest and the benchmarks do, ran out of mappings).
    module: ManuallyDrop<JITModule>,
    /// The current module's entry trampoline.
    entry: Entry,
    epoch: u64,
    /// Bytes of code compiled into the current module.
    used: usize,
    /// How often the memory was freed and refilled.
    pub flushes: u64,
}

/// The host CPU as Cranelift's target, with the settings the JIT compiles with.
fn host_isa() -> Result<OwnedTargetIsa, String> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k, v| f.set(k, v).map_err(|e| e.to_string());
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "is_pic", "false")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    // Tail calls between blocks need frame pointers on some of Cranelift's backends.
    set(&mut flags, "preserve_frame_pointers", "true")?;
    // Cranelift's IR verifier cost 4% of a Linux boot (a seventh of all compile time),
    // checking the JIT's own output: on in debug builds only. What the code does is
    // checked by the suite's tier comparisons and by difftest on the JIT.
    let verify = if cfg!(debug_assertions) {
        "true"
    } else {
        "false"
    };
    set(&mut flags, "enable_verifier", verify)?;
    cranelift_native::builder()
        .map_err(|e| format!("Cranelift does not support this host: {e}"))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| e.to_string())
}

/// The address space one module's code may take: the budget, and room for the blocks
/// compiled before the budget's check next runs ([`CodeMemory::make_room`]) and for
/// alignment. Only the pages written are backed.
const ARENA_SIZE: usize = 2 * CODE_BUDGET;

fn new_module(isa: &OwnedTargetIsa) -> Result<JITModule, String> {
    let arena = CodeArena::new(ARENA_SIZE).map_err(|e| e.to_string())?;
    let mut builder = JITBuilder::with_isa(isa.clone(), default_libcall_names());
    builder.memory_provider(Box::new(arena));
    Ok(JITModule::new(builder))
}

/// Compiles the entry trampoline into `module`.
fn compile_entry(module: &mut JITModule) -> Result<Entry, String> {
    let mut ctx = module.make_context();
    let call_conv = module.isa().default_call_conv();
    let frontend = module.isa().frontend_config();
    ctx.func.signature = Signature::new(call_conv);
    for _ in 0..2 {
        ctx.func.signature.params.push(AbiParam::new(types::I64));
    }
    ctx.func.signature.returns.push(AbiParam::new(types::I64));
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let (cpu, code) = (p[0], p[1]);
        let sig = b.import_signature(block_signature());
        let call = b.ins().call_indirect(sig, code, &[cpu]);
        let r = b.inst_results(call)[0];
        b.ins().return_(&[r]);
        b.seal_all_blocks();
        b.finalize(frontend);
    }
    let id = module
        .declare_function("enter", Linkage::Local, &ctx.func.signature)
        .map_err(|e| e.to_string())?;
    module
        .define_function(id, &mut ctx)
        .map_err(|e| e.to_string())?;
    module.finalize_definitions().map_err(|e| e.to_string())?;
    let code = module.get_finalized_function(id);
    // SAFETY: the function was just compiled with this signature (two pointer-sized
    // integer parameters, one i64 result) in the host's default calling convention, which
    // `extern "C"` is on the hosts Cranelift supports.
    Ok(unsafe { std::mem::transmute::<*const u8, Entry>(code) })
}

/// Epochs are unique in the process, not per code memory: a block compiled by a JIT since
/// dropped (its memory freed) never matches the epoch of another one that runs it.
fn new_epoch() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl CodeMemory {
    pub fn new() -> Result<Self, String> {
        let isa = host_isa()?;
        let mut module = new_module(&isa)?;
        let entry = compile_entry(&mut module)?;
        Ok(Self {
            isa,
            module: ManuallyDrop::new(module),
            entry,
            epoch: new_epoch(),
            used: 0,
            flushes: 0,
        })
    }

    /// The target the module compiles for.
    pub fn isa(&self) -> OwnedTargetIsa {
        self.isa.clone()
    }

    pub fn module(&mut self) -> &mut JITModule {
        &mut self.module
    }

    /// The way into the current module's code.
    pub fn entry(&self) -> Entry {
        self.entry
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
        let mut module = new_module(&self.isa).ok()?;
        let entry = compile_entry(&mut module).ok()?;
        self.entry = entry;
        let old = std::mem::replace(&mut *self.module, module);
        // SAFETY: every function of the old module belongs to an older epoch, which the
        // JIT never enters again (`Jit::run` compares a block's epoch with the current one).
        unsafe { old.free_memory() };
        self.epoch = new_epoch();
        self.used = 0;
        self.flushes += 1;
        Some(())
    }

    /// Counts `bytes` of code just compiled into the module.
    pub fn add(&mut self, bytes: usize) {
        self.used += bytes;
    }
}

impl Drop for CodeMemory {
    fn drop(&mut self) {
        // SAFETY: the module is taken once, here, and not used after; its code is entered
        // only through the JIT that owns this code memory, which is being dropped, so no
        // code of it runs or can run again.
        let module = unsafe { ManuallyDrop::take(&mut self.module) };
        // SAFETY: as above: nothing holds a way into its code that can still be taken.
        unsafe { module.free_memory() };
    }
}
