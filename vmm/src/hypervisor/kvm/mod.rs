//! KVM backend (Linux): `/dev/kvm` through kvm-ioctls.

mod vcpu;
mod vm;

pub use vcpu::KvmVcpu;
pub use vm::KvmVm;

use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;

use super::{HvError, Hypervisor};

/// An open `/dev/kvm`.
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm`.
    pub fn new() -> Result<Self, HvError> {
        let kvm = Kvm::new().map_err(|e| HvError::Open {
            path: "/dev/kvm",
            source: e.into(),
        })?;
        Ok(Self { kvm })
    }
}

impl Hypervisor for KvmHypervisor {
    type Vm = KvmVm;

    fn create_vm(&self, mem: &GuestMemoryMmap) -> Result<KvmVm, HvError> {
        KvmVm::new(&self.kvm, mem)
    }
}

pub(crate) fn vm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HvError {
    move |e| HvError::Vm {
        op,
        source: e.into(),
    }
}

impl From<&kvm_bindings::kvm_cpuid_entry2> for super::x86_64::CpuidEntry {
    fn from(e: &kvm_bindings::kvm_cpuid_entry2) -> Self {
        Self {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<&super::x86_64::CpuidEntry> for kvm_bindings::kvm_cpuid_entry2 {
    fn from(e: &super::x86_64::CpuidEntry) -> Self {
        Self {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        }
    }
}
