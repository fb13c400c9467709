//! Accesses through one base register share one inline TLB look-up in compiled code
//! (the first access of a group looks up the range they all touch). When that range
//! leaves the page, or a helper between them may change the TLB, each access must still
//! behave as alone: loads and stores before a fault done, the fault at the right access
//! with the right address, and nothing read through a translation the guest dropped. The
//! loops run many laps on the fast path before the lap that matters; the harness checks
//! both tiers against each other.

mod cpu_harness;

use cpu_harness::*;
use gantry_frontend::state::CpuState;
use gantry_machine::memory::GuestMemory;
use iced_x86::code_asm::*;

/// The page table mapping the first 2 MiB with 4 KiB pages.
const PT: u64 = 0x5_0000;

/// 4 KiB pages for the first 2 MiB (CR0.WP on), each PTE as `edit` leaves it.
fn small_pages(cpu: &mut CpuState, mem: &mut GuestMemory, edit: impl Fn(u64, u64) -> u64) {
    for i in 0..512u64 {
        mem.write_u64(PT + i * 8, edit(i, (i << 12) | 0x3)).unwrap();
    }
    mem.write_u64(0xB000, PT | 0x3).unwrap();
    cpu.cr0 |= 1 << 16;
}

/// Quadword `i` from `at` on is `i + 1`.
fn count_up(mem: &mut GuestMemory, at: u64, n: u64) {
    for i in 0..n {
        mem.write_u64(at + 8 * i, i + 1).unwrap();
    }
}

/// Two loads through RBX, 8 bytes apart, walk up to a page that is not present: the lap
/// whose second load is the first on that page faults there, after its first load.
#[test]
fn a_group_running_into_a_missing_page_faults_at_its_second_access() {
    let d = run(
        Mode::Long64,
        |cpu, mem| {
            small_pages(cpu, mem, |i, e| if i == 0x11 { 0 } else { e });
            count_up(mem, 0x1_0F00, 32);
        },
        |a| {
            let mut top = a.create_label();
            a.mov(rbx, 0x1_0F00u64)?;
            a.xor(esi, esi)?;
            a.set_label(&mut top)?;
            a.mov(r9, qword_ptr(rbx))?;
            a.mov(rcx, qword_ptr(rbx + 8))?;
            a.add(rsi, r9)?;
            a.add(rsi, rcx)?;
            a.add(rbx, 8)?;
            a.jmp(top)
        },
    );
    assert_eq!(d.vector(), Some(14), "#PF");
    assert_eq!(d.cpu.cr2, 0x1_1000, "CR2: the second load's address");
    assert_eq!(d.cpu.gpr[3], 0x1_0FF8, "RBX: the faulting lap's");
    assert_eq!(d.cpu.gpr[9], 32, "R9: the faulting lap's first load");
    assert_eq!(d.cpu.gpr[1], 32, "RCX: the lap before's");
    // Laps 0..=30 added quadwords j+1 and j+2.
    assert_eq!(d.cpu.gpr[6], (0..31).map(|j| 2 * j + 3).sum::<u64>(), "RSI");
}

/// A group's first access is not its lowest: the load at RBX+16, a store at RBX, then a
/// load at RBX-8, walking down to a page that is not present. The faulting lap did its
/// load and its store first.
#[test]
fn a_group_whose_lowest_access_comes_last_faults_there() {
    let d = run(
        Mode::Long64,
        |cpu, mem| {
            small_pages(cpu, mem, |i, e| if i == 0xF { 0 } else { e });
            count_up(mem, 0x1_0000, 64);
        },
        |a| {
            let mut top = a.create_label();
            a.mov(rbx, 0x1_0100u64)?;
            a.xor(esi, esi)?;
            a.set_label(&mut top)?;
            a.mov(r9, qword_ptr(rbx + 16))?;
            a.mov(qword_ptr(rbx), r9)?;
            a.mov(rcx, qword_ptr(rbx - 8))?;
            a.add(rsi, rcx)?;
            a.sub(rbx, 8)?;
            a.jmp(top)
        },
    );
    assert_eq!(d.vector(), Some(14), "#PF");
    assert_eq!(d.cpu.cr2, 0xFFF8, "CR2: the last load's address");
    assert_eq!(d.cpu.gpr[3], 0x1_0000, "RBX: the faulting lap's");
    assert_eq!(d.u64_at(0x1_0000), d.u64_at(0x1_0010), "the lap's store");
    assert_eq!(d.cpu.gpr[9], d.u64_at(0x1_0010), "R9: the lap's load");
}

/// Read-modify-writes through one base (ADD to memory, twice per lap) walk into a page
/// that is present but read-only: the second ADD of the lap that reaches it faults with a
/// write's error code, the first one done.
#[test]
fn a_group_of_writes_running_into_a_read_only_page_faults_at_its_second_write() {
    let d = run(
        Mode::Long64,
        |cpu, mem| {
            small_pages(cpu, mem, |i, e| if i == 0x11 { e & !2 } else { e });
            count_up(mem, 0x1_0F00, 33);
        },
        |a| {
            let mut top = a.create_label();
            a.mov(rbx, 0x1_0F00u64)?;
            a.mov(eax, 0x100)?;
            a.set_label(&mut top)?;
            a.add(qword_ptr(rbx), rax)?;
            a.add(qword_ptr(rbx + 8), rax)?;
            a.add(rbx, 8)?;
            a.jmp(top)
        },
    );
    assert_eq!(d.vector(), Some(14), "#PF");
    assert_eq!(d.cpu.cr2, 0x1_1000, "CR2");
    assert_eq!(d.cpu.gpr[3], 0x1_0FF8, "RBX: the faulting lap's");
    // Present, write, supervisor: the error code under the return address.
    assert_eq!(d.u64_at(d.cpu.gpr[4]), 0b011, "error code");
    // Quadword 0 was added to once, the others twice (quadword 31 by the faulting lap).
    assert_eq!(d.u64_at(0x1_0F00), 1 + 0x100);
    assert_eq!(d.u64_at(0x1_0F08), 2 + 0x200);
    assert_eq!(d.u64_at(0x1_0FF8), 32 + 0x200);
    assert_eq!(d.u64_at(0x1_1000), 33, "the read-only page unchanged");
}

/// Loads through RBX with an INVLPG between them that follows a rewritten PTE: the load
/// after it reads the page now mapped, never through the look-up made before it (the
/// block goes on past INVLPG). The lap's last load, after the mapping is back, leaves the
/// TLB holding it for the next lap's first.
#[test]
fn an_access_after_invlpg_reads_the_page_mapped_now() {
    // Linear page V maps physical P1, then P2, then P1 again each lap.
    const V: u64 = 0x1_2000;
    const P1: u64 = 0x1_3000;
    const P2: u64 = 0x1_4000;
    let d = run(
        Mode::Long64,
        |cpu, mem| {
            small_pages(cpu, mem, |i, e| if i == 0x12 { P1 | 3 } else { e });
            mem.write_u64(P1, 0x1111_0000_0000_0001).unwrap();
            mem.write_u64(P1 + 8, 0x100).unwrap();
            mem.write_u64(P2, 0x2222_0000_0000_0002).unwrap();
        },
        |a| {
            let mut top = a.create_label();
            a.mov(rbx, V)?;
            a.mov(rdi, PT + 0x12 * 8)?;
            a.mov(esi, 5)?;
            a.xor(ebp, ebp)?;
            a.set_label(&mut top)?;
            a.mov(eax, dword_ptr(rbx))?;
            a.add(rbp, rax)?;
            a.mov(rdx, P2 | 3)?;
            a.mov(qword_ptr(rdi), rdx)?;
            a.invlpg(byte_ptr(rbx))?;
            a.mov(eax, dword_ptr(rbx + 4))?;
            a.add(rbp, rax)?;
            a.mov(rdx, P1 | 3)?;
            a.mov(qword_ptr(rdi), rdx)?;
            a.invlpg(byte_ptr(rbx))?;
            a.mov(eax, dword_ptr(rbx + 8))?;
            a.add(rbp, rax)?;
            a.dec(esi)?;
            a.jnz(top)
        },
    );
    assert_eq!(d.vector(), None);
    assert_eq!(
        d.cpu.gpr[5],
        5 * (1 + 0x2222_0000 + 0x100),
        "RBP: P1's, P2's, P1's"
    );
}

/// PUSH and POP through a stack that crosses a page boundary as the loop walks it down:
/// the pushes' group and the pops' group fall across the boundary on one lap and go on
/// past it on the next.
#[test]
fn pushes_and_pops_across_a_page_boundary() {
    let d = run64(|a| {
        let mut top = a.create_label();
        a.mov(r8, rsp)?;
        a.mov(rsp, 0x1_0040u64)?;
        a.mov(ecx, 40)?;
        a.xor(ebp, ebp)?;
        a.set_label(&mut top)?;
        a.lea(rax, qword_ptr(rcx + 0x100))?;
        a.push(rax)?;
        a.push(rcx)?;
        a.pop(rdx)?;
        a.pop(rsi)?;
        a.add(rbp, rdx)?;
        a.add(rbp, rsi)?;
        a.sub(rsp, 4)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.mov(rsp, r8)
    });
    assert_eq!(d.vector(), None);
    assert_eq!(
        d.cpu.gpr[5],
        (1..=40).map(|c| 2 * c + 0x100).sum::<u64>(),
        "RBP"
    );
}
