//! Hypervisor.framework backend (macOS 15+ on Apple silicon, arm64 guests).
//!
//! * [`HvfHypervisor::create_vm`]: `hv_vm_create` (one VM per process,
//!   guarded by a process-wide flag) and `hv_vm_map` of guest RAM.
//! * [`HvfVm`]: [`Vm`](super::Vm) + [`VmAarch64`](super::aarch64::VmAarch64):
//!   `hv_gic_create` before any vCPU, `hv_gic_set_spi`, irqfds emulated by
//!   a thread per line, ioeventfds not needed (the transport handles
//!   notifies), [`HvfVm::kick`] / [`HvfVm::kick_all`] via `hv_vcpus_exit`.
//! * [`HvfVcpu`]: [`Vcpu`](super::Vcpu) + [`VcpuAarch64`](super::aarch64::VcpuAarch64):
//!   `hv_vcpu_create` on the calling thread; the run loop decodes data
//!   aborts into [`ExitHandler`](super::ExitHandler) calls, is the PSCI
//!   firmware, parks on WFI and handles the virtual-timer exit.
//!
//! Every `hv_*` call goes through [`HvfApi`], implemented by [`Hvf`] with
//! applevisor-sys and, in the tests, by a fake. None of this has run on real
//! HVF yet: see `docs/porting/hvf.md`.

mod api;
mod cpus;
mod error;
mod esr;
mod ffi;
mod psci;
mod vcpu;
mod vm;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use api::{Exit, HvfApi};
pub use cpus::{CpuOnRequest, Power};
pub use error::HvfError;
pub use ffi::{Hvf, HvfVcpuHandle};
pub use vcpu::{HvfVcpu, OFF_PARK, WFI_MAX_PARK};
pub use vm::HvfVm;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::{HvError, Hypervisor};

/// Hypervisor.framework, through the API `A` ([`Hvf`] unless testing).
pub struct HvfHypervisor<A: HvfApi = Hvf> {
    api: Arc<A>,
}

impl HvfHypervisor<Hvf> {
    /// The real Hypervisor.framework. Nothing is called until
    /// [`create_vm`](Hypervisor::create_vm).
    pub fn new() -> Self {
        Self::with_api(Hvf)
    }
}

impl Default for HvfHypervisor<Hvf> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: HvfApi> HvfHypervisor<A> {
    /// Hypervisor.framework through `api`.
    pub fn with_api(api: A) -> Self {
        Self { api: Arc::new(api) }
    }
}

impl<A: HvfApi> Hypervisor for HvfHypervisor<A> {
    type Vm = HvfVm<A>;

    /// `hv_vm_create` and `hv_vm_map` of every region of `mem` (RAM must be
    /// 16 KiB-aligned on Apple silicon). Fails with
    /// [`HvfError::SecondVm`] while another VM exists in this process.
    fn create_vm(&self, mem: &GuestMemoryMmap) -> Result<HvfVm<A>, HvError> {
        HvfVm::new(self.api.clone(), mem)
    }
}
