//! A KVM VM: memory slots, in-kernel irqchip and PIT, irqfd and ioeventfd.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{vm_err, KvmVcpu};
use crate::hypervisor::x86_64::{CpuidEntry, VmX86_64};
use crate::hypervisor::{HvError, Vm};

/// Where KVM keeps its TSS (three pages just below the MMIO gap's top).
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// CPUID leaf 1, ECX: the local APIC has a TSC-deadline timer mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// A KVM VM.
pub struct KvmVm {
    fd: VmFd,
    supported_cpuid: Vec<CpuidEntry>,
    /// Keeps the guest memory mapped for as long as the VM exists.
    _mem: GuestMemoryMmap,
}

impl KvmVm {
    pub(super) fn new(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<Self, HvError> {
        let fd = kvm.create_vm().map_err(vm_err("KVM_CREATE_VM"))?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `len` bytes owned by
            // `mem`, a clone of which this VM holds until it is dropped, so the
            // host memory outlives the slot.
            unsafe { fd.set_user_memory_region(r) }.map_err(|e| HvError::MapMemory {
                slot: slot as u32,
                addr: r.guest_phys_addr,
                size: r.memory_size,
                source: e.into(),
            })?;
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(vm_err("KVM_GET_SUPPORTED_CPUID"))?
            .as_slice()
            .iter()
            .map(CpuidEntry::from)
            .collect();
        let supported_cpuid =
            with_tsc_deadline(supported_cpuid, kvm.check_extension(Cap::TscDeadlineTimer));
        Ok(Self {
            fd,
            supported_cpuid,
            _mem: mem.clone(),
        })
    }
}

/// Sets the TSC-deadline bit where KVM emulates the timer mode. KVM leaves it
/// out of `KVM_GET_SUPPORTED_CPUID` and says so with
/// `KVM_CAP_TSC_DEADLINE_TIMER` instead. A guest that sees it arms its timer
/// by TSC value and skips timing the APIC timer against the tick at boot
/// (two loops of 25 ticks: about 200 ms).
fn with_tsc_deadline(mut leaves: Vec<CpuidEntry>, emulated: bool) -> Vec<CpuidEntry> {
    if emulated {
        for e in leaves.iter_mut().filter(|e| e.function == 1) {
            e.ecx |= LEAF1_ECX_TSC_DEADLINE;
        }
    }
    leaves
}

impl Vm for KvmVm {
    type Vcpu = KvmVcpu;

    fn create_vcpu(&self, id: u8) -> Result<KvmVcpu, HvError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|e| HvError::Vcpu {
                vcpu: id,
                op: "KVM_CREATE_VCPU",
                source: e.into(),
            })?;
        Ok(KvmVcpu::new(id, fd))
    }

    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), HvError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(vm_err("KVM_IRQFD"))
    }

    fn register_ioeventfd(&self, evt: &EventFd, addr: u64, datamatch: u32) -> Result<(), HvError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(vm_err("KVM_IOEVENTFD"))
    }
}

impl VmX86_64 for KvmVm {
    fn setup_irqchip(&self) -> Result<(), HvError> {
        self.fd
            .set_tss_address(KVM_TSS_ADDR)
            .map_err(vm_err("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(vm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(vm_err("KVM_CREATE_PIT2"))
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>, HvError> {
        Ok(self.supported_cpuid.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deadline_is_set_only_where_kvm_emulates_it() {
        let leaves = || {
            vec![
                CpuidEntry {
                    function: 1,
                    ecx: 0x8000_0001,
                    ..Default::default()
                },
                CpuidEntry {
                    function: 7,
                    ..Default::default()
                },
            ]
        };
        let on = with_tsc_deadline(leaves(), true);
        assert_eq!(on[0].ecx, 0x8000_0001 | LEAF1_ECX_TSC_DEADLINE);
        assert_eq!(on[1].ecx, 0, "other leaves untouched");
        let off = with_tsc_deadline(leaves(), false);
        assert_eq!(off[0].ecx, 0x8000_0001);
    }
}
