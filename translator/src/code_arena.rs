//! Where cranelift-jit puts the compiled blocks: one mapping, readable, writable and
//! executable, into which functions are packed one after the other.
//!
//! cranelift-jit's own provider finalizes by giving the code written since the last
//! finalize pages of their own and making them read-only and executable with `mprotect`.
//! The JIT finalizes after every block, so each block (1.2 KiB on average in a Linux
//! boot) took a 4 KiB page of its own, and each install cost a system call whose TLB
//! shootdown interrupted the compile thread's core: 2% of the vCPU thread's time in a
//! Debian boot, with the blocks scattered one to a page. QEMU's TCG keeps its code buffer
//! writable and executable at once on Linux hosts in the same way. Code is written only
//! here, by the thread that runs it (`Jit::place`), and never patched afterwards (chain
//! slots are data).
//!
//! The mapping comes from the `region` crate, which cranelift-jit itself maps with:
//! memmap2 has no mapping that is writable and executable at once.

use std::io;

use cranelift_jit::{BranchProtection, JITMemoryKind, JITMemoryProvider};
use cranelift_module::{ModuleError, ModuleResult};

pub struct CodeArena {
    /// `None` once freed.
    map: Option<region::Allocation>,
    /// Bytes handed out, from the mapping's start.
    used: usize,
    /// Where the code not yet finalized starts.
    finalized: usize,
}

impl CodeArena {
    /// Reserves `size` bytes (the kernel backs only the pages written).
    pub fn new(size: usize) -> io::Result<Self> {
        let map = region::alloc(size, region::Protection::READ_WRITE_EXECUTE)
            .map_err(|e| io::Error::other(format!("cannot map code memory: {e}")))?;
        Ok(Self {
            map: Some(map),
            used: 0,
            finalized: 0,
        })
    }

    fn take(&mut self, size: usize, align: u64) -> io::Result<*mut u8> {
        let map = self
            .map
            .as_mut()
            .ok_or_else(|| io::Error::other("code memory used after it was freed"))?;
        let align = usize::try_from(align.max(1)).map_err(io::Error::other)?;
        let start = self.used.next_multiple_of(align);
        let end = start
            .checked_add(size)
            .filter(|&end| end <= map.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        self.used = end;
        // SAFETY: `start + size <= map.len()`, so the pointer is inside the mapping.
        Ok(unsafe { map.as_mut_ptr::<u8>().add(start) })
    }
}

// SAFETY: the arena owns its mapping alone (`region::Allocation` is not `Send` only
// because it holds a raw pointer); cranelift-jit asks for a provider it may move to
// another thread with its module, and the arena's memory is plain memory that any thread
// may use.
unsafe impl Send for CodeArena {}

impl JITMemoryProvider for CodeArena {
    /// Code, read-only and writable data alike, packed one after the other.
    fn allocate(&mut self, size: usize, align: u64, _: JITMemoryKind) -> io::Result<*mut u8> {
        self.take(size, align)
    }

    unsafe fn free_memory(&mut self) {
        self.map = None;
    }

    /// Makes the code written since the last call visible to instruction fetch: nothing
    /// to do on x86, a cache clean and a pipeline flush on hosts such as aarch64. Branch
    /// target identification is not asked for (Cranelift's `use_bti` is off by default).
    fn finalize(&mut self, _: BranchProtection) -> ModuleResult<()> {
        let Some(map) = self.map.as_ref() else {
            return Ok(());
        };
        let fresh = self.used - self.finalized;
        if fresh > 0 {
            // SAFETY: the range lies inside the mapping (`take` handed it out).
            let start = unsafe { map.as_ptr::<u8>().add(self.finalized) };
            // SAFETY: cleaning the caches of mapped memory has no other effect.
            unsafe { wasmtime_jit_icache_coherence::clear_cache(start.cast(), fresh) }
                .map_err(|e| ModuleError::Backend(e.into()))?;
            wasmtime_jit_icache_coherence::pipeline_flush_mt()
                .map_err(|e| ModuleError::Backend(e.into()))?;
        }
        self.finalized = self.used;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_packed_aligned_and_the_arena_says_when_it_is_full() {
        let mut a = CodeArena::new(1 << 16).expect("map");
        let first = a
            .allocate(100, 16, JITMemoryKind::Executable)
            .expect("first") as usize;
        let second = a
            .allocate(40, 16, JITMemoryKind::Executable)
            .expect("second") as usize;
        assert_eq!(second - first, 112, "packed, at the next 16-byte boundary");
        assert_eq!(second % 16, 0);
        let err = a
            .allocate(1 << 16, 16, JITMemoryKind::Executable)
            .expect_err("too big");
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        a.finalize(BranchProtection::None).expect("finalize");
        // SAFETY: nothing points into the arena any more.
        unsafe { a.free_memory() };
        assert!(a.allocate(1, 1, JITMemoryKind::Executable).is_err());
    }
}
