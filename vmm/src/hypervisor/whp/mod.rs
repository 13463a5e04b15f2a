//! WHP backend (Windows Hypervisor Platform), behind the `whp` feature.
//!
//! * [`WhpHypervisor`] → [`WhpVm`] → [`WhpVcpu`] implement the hypervisor
//!   traits; the VM and vCPUs are generic over [`WhpApi`], the WHv* calls
//!   hutch makes, so the exit handling is tested against a fake. [`WinHv`]
//!   is the real partition over windows-sys.
//! * Port and MMIO exits go through WHP's instruction emulator, whose
//!   callbacks (`emulator.rs`) call the [`ExitHandler`](super::ExitHandler).
//! * WHP emulates the local APICs; the IOAPIC is hutch's own (`ioapic.rs`),
//!   reached through the MMIO exits of its window and delivering with
//!   `WHvRequestInterrupt`.
//! * irqfds are threads (`irqfd.rs`); ioeventfds are not needed (the
//!   virtio-mmio transport handles `QueueNotify` stores itself).
//!
//! On Linux this is type-checked, linted and fake-tested only; nothing has
//! run on real WHP. See docs/porting/whp.md.

mod api;
mod cpuid;
mod emulator;
mod error;
mod ioapic;
mod irqfd;
mod msr;
mod partition;
mod regs;
mod vcpu;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use api::{hypervisor_present, EmulatorHandle, WhpApi, WinHv};
pub use error::WhpError;
pub use ioapic::{DeliveryMode, Interrupt, Ioapic};
pub use partition::WhpVm;
pub use vcpu::WhpVcpu;

use vm_memory::GuestMemoryMmap;

use super::{HvError, Hypervisor};

/// The Windows Hypervisor Platform, creating partitions for a fixed number
/// of vCPUs: WHP needs the processor count before `WHvSetupPartition`,
/// and [`Hypervisor::create_vm`] does not carry it.
#[derive(Debug)]
pub struct WhpHypervisor {
    vcpus: u8,
}

impl WhpHypervisor {
    /// Checks that WHP is present; VMs will have `vcpus` vCPUs.
    pub fn new(vcpus: u8) -> Result<Self, HvError> {
        if !hypervisor_present()? {
            return Err(WhpError::NotPresent.into());
        }
        Ok(Self { vcpus })
    }
}

impl Hypervisor for WhpHypervisor {
    type Vm = WhpVm<WinHv>;

    fn create_vm(&self, mem: &GuestMemoryMmap) -> Result<WhpVm<WinHv>, HvError> {
        Ok(WhpVm::with_api(WinHv::create()?, mem, self.vcpus)?)
    }
}
