//! CPUID as each vCPU sees it: the hypervisor's supported set, with the
//! topology filled in per vCPU and the hypervisor bit set.

use crate::hypervisor::x86_64::CpuidEntry;

const LEAF_FEATURES: u32 = 1;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Adjusts `entries` for vCPU `apic_id` of `vcpus`.
pub fn patch(entries: &mut [CpuidEntry], apic_id: u8, vcpus: u8) {
    let shift = u32::BITS - (u32::from(vcpus).max(1) - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx =
                    (e.ebx & 0x0000_ffff) | (u32::from(apic_id) << 24) | (u32::from(vcpus) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_PMU => {
                // No virtual PMU: perf inside the guest would trap to an emulator.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                // One thread per core, all cores in one package.
                e.edx = u32::from(apic_id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = u32::from(vcpus);
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            ebx: 0x0000_0800,
            edx: EDX_HTT,
            eax: 7,
            ..Default::default()
        }
    }

    #[test]
    fn sets_apic_id_count_and_hypervisor_bit() {
        let mut e = vec![
            leaf(1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xa, 0),
            leaf(7, 0),
        ];
        patch(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x800, "CLFLUSH size kept");
        assert!(e[0].ecx & ECX_HYPERVISOR != 0);
        assert!(e[0].edx & EDX_HTT != 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!((e[2].eax, e[2].ebx), (2, 4));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx, e[3].edx), (0, 0, 0, 0));
        assert_eq!(e[4], leaf(7, 0), "other leaves untouched");
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut e = vec![leaf(1, 0), leaf(0xb, 1)];
        patch(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].eax, e[1].ebx), (0, 1));
    }
}
