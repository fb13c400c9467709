//! The x86 architecture for Gantry: `CpuState`, decoding with iced-x86, basic-block
//! discovery and lifting x86 into Gantry's IR, the one place where x86 semantics live.
//!
//! Empty until the CPU issue: nothing here runs yet. The KVM backend (in `gantry-machine`)
//! needs none of it; its entry state is described by `gantry_machine::boot::EntryState`.
