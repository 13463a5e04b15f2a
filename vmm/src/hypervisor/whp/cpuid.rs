//! CPUID on WHP.
//!
//! WHP answers CPUID itself unless a leaf is in the partition's
//! `CpuidExitList`. hutch only needs to change the leaves that
//! `arch::x86_64::cpuid::patch` writes (topology, PMU, hypervisor bit), so
//! exactly those exit ([`EXIT_LEAVES`]); every other leaf keeps WHP's answer,
//! which is the truth about what the partition supports.
//!
//! [`supported`] builds the table for those leaves from the host's CPUID;
//! on an exit, [`answer`] looks the leaf up in the vCPU's table (set by
//! `set_cpuid`) and lets WHP's default answer veto feature bits in leaf 1.

use crate::hypervisor::x86_64::CpuidEntry;

/// `CpuidEntry::flags` bit: the entry applies to one subleaf only (KVM's
/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`, same value).
pub const SIGNIFICANT_INDEX: u32 = 1;

/// The leaves that exit to hutch.
pub const EXIT_LEAVES: [u32; 4] = [LEAF_FEATURES, LEAF_PMU, LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2];

const LEAF_FEATURES: u32 = 1;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// Subleaves of the topology leaves in the table: SMT, core, terminator.
const TOPOLOGY_SUBLEAVES: u32 = 3;

/// Leaf 1 ECX bits hutch owns: HYPERVISOR.
const ECX_OWNED: u32 = 1 << 31;
/// Leaf 1 EDX bits hutch owns: HTT.
const EDX_OWNED: u32 = 1 << 28;
/// Leaf 1 ECX bits a guest must not see on WHP: DTES64, MONITOR, DS-CPL,
/// VMX, SMX, EST, TM2, PDCM, x2APIC (the partition's APIC is xAPIC),
/// TSC-deadline.
const ECX_HIDDEN: u32 = (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 15)
    | (1 << 21)
    | (1 << 24);
/// Leaf 1 EDX bits hidden: DS, ACPI, TM, PBE.
const EDX_HIDDEN: u32 = (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);

/// The result registers of one CPUID.
pub type Answer = [u32; 4];

/// The table hutch can patch: [`EXIT_LEAVES`] from the host's CPUID, with
/// the features WHP does not give a guest hidden.
pub fn supported() -> Vec<CpuidEntry> {
    let max = host(0, 0)[0];
    let mut out = Vec::new();
    for leaf in EXIT_LEAVES {
        if leaf > max {
            continue;
        }
        let subleaves = if leaf == LEAF_TOPOLOGY || leaf == LEAF_TOPOLOGY_V2 {
            TOPOLOGY_SUBLEAVES
        } else {
            1
        };
        for index in 0..subleaves {
            let [eax, ebx, mut ecx, mut edx] = host(leaf, index);
            if leaf == LEAF_FEATURES {
                ecx &= !ECX_HIDDEN;
                edx &= !EDX_HIDDEN;
            }
            out.push(CpuidEntry {
                function: leaf,
                index,
                flags: if subleaves > 1 { SIGNIFICANT_INDEX } else { 0 },
                eax,
                ebx,
                ecx,
                edx,
            });
        }
    }
    out
}

fn host(leaf: u32, index: u32) -> Answer {
    // SAFETY: CPUID exists on every x86_64 CPU; the intrinsic has no other
    // precondition (it is a safe fn on newer toolchains, hence the allow).
    #[allow(unused_unsafe)]
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, index) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The entry of `table` for (`leaf`, `index`).
pub fn lookup(table: &[CpuidEntry], leaf: u32, index: u32) -> Option<&CpuidEntry> {
    table
        .iter()
        .find(|e| e.function == leaf && (e.flags & SIGNIFICANT_INDEX == 0 || e.index == index))
}

/// What CPUID (`leaf`, `index`) returns: the table's entry, else WHP's
/// `default` answer. In leaf 1 a feature bit is set only if WHP's answer
/// has it too (HYPERVISOR and HTT excepted, which hutch owns), so the table
/// can hide features but never invent them; OSXSAVE thus follows CR4.
pub fn answer(table: &[CpuidEntry], leaf: u32, index: u32, default: Answer) -> Answer {
    let Some(e) = lookup(table, leaf, index) else {
        return default;
    };
    let mut a = [e.eax, e.ebx, e.ecx, e.edx];
    if leaf == LEAF_FEATURES {
        a[2] &= default[2] | ECX_OWNED;
        a[3] &= default[3] | EDX_OWNED;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, flags: u32, v: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            flags,
            eax: v,
            ebx: v + 1,
            ecx: v + 2,
            edx: v + 3,
        }
    }

    #[test]
    fn supported_covers_the_exit_leaves_and_hides_vmx_and_x2apic() {
        let s = supported();
        let leaf1 = lookup(&s, 1, 0).expect("every x86_64 CPU has leaf 1");
        assert_eq!(leaf1.ecx & ((1 << 5) | (1 << 21)), 0);
        for e in &s {
            assert!(EXIT_LEAVES.contains(&e.function));
        }
        let mut patched = s.clone();
        crate::arch::x86_64::cpuid::patch(&mut patched, 1, 2);
        let leaf1 = lookup(&patched, 1, 0).unwrap();
        assert_eq!(leaf1.ebx >> 24, 1, "patch finds the leaf it writes");
        if let Some(t) = lookup(&patched, 0xb, 1) {
            assert_eq!(t.ebx, 2);
        }
    }

    #[test]
    fn lookup_honours_significant_index() {
        let t = [
            entry(4, 0, 0, 0x10),
            entry(0xb, 0, SIGNIFICANT_INDEX, 0x20),
            entry(0xb, 1, SIGNIFICANT_INDEX, 0x30),
        ];
        assert_eq!(lookup(&t, 4, 7).unwrap().eax, 0x10, "index ignored");
        assert_eq!(lookup(&t, 0xb, 1).unwrap().eax, 0x30);
        assert!(lookup(&t, 0xb, 2).is_none());
        assert!(lookup(&t, 5, 0).is_none());
    }

    #[test]
    fn answer_prefers_the_table_and_lets_whp_veto_leaf1_features() {
        let t = [
            CpuidEntry {
                function: 1,
                eax: 0x806c1,
                ebx: 0x0102_0800,
                ecx: ECX_OWNED | (1 << 27) | (1 << 0),
                edx: EDX_OWNED | 1,
                ..Default::default()
            },
            entry(0xb, 1, SIGNIFICANT_INDEX, 0x30),
        ];
        // WHP says: SSE3 yes, OSXSAVE no (CR4.OSXSAVE clear), no HTT, no hypervisor bit.
        let a = answer(&t, 1, 0, [0, 0, 1, 1]);
        assert_eq!(a[0], 0x806c1);
        assert_eq!(a[1], 0x0102_0800);
        assert_eq!(a[2], ECX_OWNED | 1, "OSXSAVE vetoed, hypervisor kept");
        assert_eq!(a[3], EDX_OWNED | 1);
        assert_eq!(answer(&t, 0xb, 1, [9; 4]), [0x30, 0x31, 0x32, 0x33]);
        assert_eq!(answer(&t, 0xb, 5, [9; 4]), [9; 4], "not in table");
        assert_eq!(answer(&t, 0x8000_0001, 0, [7, 6, 5, 4]), [7, 6, 5, 4]);
    }
}
