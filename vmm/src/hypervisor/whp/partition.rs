//! A WHP partition as hutch's [`Vm`]: partition properties and set-up,
//! guest memory, the user-space IOAPIC and irqfd forwarding.

use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use windows_sys::Win32::System::Hypervisor::{
    WHvMapGpaRangeFlagExecute, WHvMapGpaRangeFlagRead, WHvMapGpaRangeFlagWrite,
    WHvPartitionPropertyCodeCpuidExitList, WHvPartitionPropertyCodeExtendedVmExits,
    WHvPartitionPropertyCodeLocalApicEmulationMode, WHvPartitionPropertyCodeProcessorCount,
    WHvX64InterruptDestinationModeLogical, WHvX64InterruptDestinationModePhysical,
    WHvX64InterruptTriggerModeEdge, WHvX64InterruptTriggerModeLevel, WHvX64InterruptTypeFixed,
    WHvX64InterruptTypeInit, WHvX64InterruptTypeLowestPriority, WHvX64InterruptTypeNmi,
    WHvX64LocalApicEmulationModeXApic, WHV_INTERRUPT_CONTROL,
};

use super::cpuid;
use super::emulator;
use super::ioapic::{self, DeliveryMode, Interrupt, Ioapic};
use super::irqfd::IrqfdThreads;
use super::vcpu::WhpVcpu;
use super::{WhpApi, WhpError, WinHv};
use crate::arch::x86_64::mptable;
use crate::hypervisor::x86_64::{CpuidEntry, VmX86_64};
use crate::hypervisor::{HvError, Vm};

/// `WHV_EXTENDED_VM_EXITS` bit: CPUID of the leaves in `CpuidExitList` exits.
pub const EXIT_X64_CPUID: u64 = 1 << 0;
/// `WHV_EXTENDED_VM_EXITS` bit: MSR accesses WHP does not handle exit.
pub const EXIT_X64_MSR: u64 = 1 << 1;

/// What the VM and its vCPUs share.
pub struct Shared<A: WhpApi> {
    /// The partition. Declared before `mem`, so the partition is deleted
    /// before the memory it maps is unmapped.
    pub api: A,
    pub mem: GuestMemoryMmap,
    /// Processor count the partition was set up with.
    pub vcpus: u32,
    ioapic: Mutex<Ioapic>,
}

impl<A: WhpApi> Shared<A> {
    fn ioapic(&self) -> MutexGuard<'_, Ioapic> {
        self.ioapic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A load from the IOAPIC's MMIO window.
    pub fn ioapic_read(&self, offset: u64, data: &mut [u8]) {
        self.ioapic().mmio_read(offset, data);
    }

    /// A store to the IOAPIC's MMIO window.
    pub fn ioapic_write(&self, offset: u64, data: &[u8]) {
        let fired = self.ioapic().mmio_write(offset, data);
        self.deliver(fired);
    }

    /// Sets the level of IOAPIC pin `gsi`.
    pub fn set_gsi(&self, gsi: u32, asserted: bool) -> Result<(), WhpError> {
        check_gsi(gsi)?;
        let fired = self.ioapic().set_level(gsi, asserted);
        self.deliver(fired);
        Ok(())
    }

    /// Asserts and deasserts IOAPIC pin `gsi` (an irqfd write).
    pub fn pulse_gsi(&self, gsi: u32) -> Result<(), WhpError> {
        check_gsi(gsi)?;
        let fired = self.ioapic().pulse(gsi);
        self.deliver(fired);
        Ok(())
    }

    /// A local APIC EOI for a level-triggered `vector` (the `X64ApicEoi` exit).
    pub fn end_of_interrupt(&self, vector: u8) {
        let fired = self.ioapic().end_of_interrupt(vector);
        self.deliver(fired);
    }

    /// Sends each interrupt with `WHvRequestInterrupt`. Called without the
    /// IOAPIC lock held. Failures are logged: the callers are vCPU and
    /// irqfd threads with nobody to return them to.
    fn deliver(&self, fired: impl IntoIterator<Item = Interrupt>) {
        for i in fired {
            match interrupt_control(&i) {
                Some(ctl) => {
                    if let Err(e) = self.api.request_interrupt(&ctl) {
                        log::warn!("IOAPIC vector {:#x}: {e}", i.vector);
                    }
                }
                None => log::warn!(
                    "IOAPIC vector {:#x}: delivery mode {:?} has no WHP equivalent; dropped",
                    i.vector,
                    i.mode
                ),
            }
        }
    }
}

fn check_gsi(gsi: u32) -> Result<(), WhpError> {
    if (gsi as usize) < ioapic::PINS {
        Ok(())
    } else {
        Err(WhpError::NoSuchGsi {
            gsi,
            pins: ioapic::PINS,
        })
    }
}

/// The `WHvRequestInterrupt` argument for an IOAPIC interrupt; None for
/// SMI, ExtINT and reserved modes, which WHP cannot inject (there is no
/// PIC behind ExtINT either).
pub fn interrupt_control(i: &Interrupt) -> Option<WHV_INTERRUPT_CONTROL> {
    let kind = match i.mode {
        DeliveryMode::Fixed => WHvX64InterruptTypeFixed,
        DeliveryMode::LowestPriority => WHvX64InterruptTypeLowestPriority,
        DeliveryMode::Nmi => WHvX64InterruptTypeNmi,
        DeliveryMode::Init => WHvX64InterruptTypeInit,
        DeliveryMode::Smi | DeliveryMode::ExtInt | DeliveryMode::Reserved(_) => return None,
    };
    let dest_mode = if i.logical {
        WHvX64InterruptDestinationModeLogical
    } else {
        WHvX64InterruptDestinationModePhysical
    };
    let trigger = if i.level {
        WHvX64InterruptTriggerModeLevel
    } else {
        WHvX64InterruptTriggerModeEdge
    };
    // Bitfield: Type:8, DestinationMode:4, TriggerMode:4, reserved.
    let bits =
        (kind as u64 & 0xff) | ((dest_mode as u64 & 0xf) << 8) | ((trigger as u64 & 0xf) << 12);
    Some(WHV_INTERRUPT_CONTROL {
        _bitfield: bits,
        Destination: u32::from(i.destination),
        Vector: u32::from(i.vector),
    })
}

/// Sets the partition properties and calls `WHvSetupPartition`. WHP takes
/// these only before set-up, which is why the local APIC mode is chosen
/// here rather than in `setup_irqchip`.
fn configure<A: WhpApi>(api: &A, vcpus: u32) -> Result<(), WhpError> {
    api.set_property(
        WHvPartitionPropertyCodeProcessorCount,
        &vcpus.max(1).to_le_bytes(),
    )?;
    api.set_property(
        WHvPartitionPropertyCodeLocalApicEmulationMode,
        &WHvX64LocalApicEmulationModeXApic.to_le_bytes(),
    )?;
    api.set_property(
        WHvPartitionPropertyCodeExtendedVmExits,
        &(EXIT_X64_CPUID | EXIT_X64_MSR).to_le_bytes(),
    )?;
    let leaves: Vec<u8> = cpuid::EXIT_LEAVES
        .iter()
        .flat_map(|l| l.to_le_bytes())
        .collect();
    api.set_property(WHvPartitionPropertyCodeCpuidExitList, &leaves)?;
    api.setup()
}

/// Maps every region of `mem` (read, write, execute), one per slot, the
/// way the KVM backend fills its memory slots.
fn map_memory<A: WhpApi>(api: &A, mem: &GuestMemoryMmap) -> Result<(), WhpError> {
    let flags = WHvMapGpaRangeFlagRead | WHvMapGpaRangeFlagWrite | WHvMapGpaRangeFlagExecute;
    for (slot, region) in mem.iter().enumerate() {
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `mem`; the VM keeps a clone of `mem` in `Shared`, declared after
        // the partition, so the host memory outlives the partition.
        unsafe {
            api.map_gpa_range(
                slot as u32,
                region.as_ptr(),
                region.start_addr().0,
                region.len(),
                flags,
            )
        }?;
    }
    Ok(())
}

/// A WHP VM. `A` is the platform API: [`WinHv`], or a fake in tests.
pub struct WhpVm<A: WhpApi = WinHv> {
    /// Dropped first: stopping the threads releases their `Shared`.
    irqfds: Mutex<Option<IrqfdThreads>>,
    shared: Arc<Shared<A>>,
    supported_cpuid: Vec<CpuidEntry>,
}

impl<A: WhpApi> WhpVm<A> {
    /// Configures the partition `api` for `vcpus` vCPUs, sets it up and
    /// maps `mem` into it.
    pub fn with_api(api: A, mem: &GuestMemoryMmap, vcpus: u8) -> Result<Self, WhpError> {
        configure(&api, u32::from(vcpus))?;
        map_memory(&api, mem)?;
        let shared = Arc::new(Shared {
            api,
            mem: mem.clone(),
            vcpus: u32::from(vcpus.max(1)),
            ioapic: Mutex::new(Ioapic::new(mptable::ioapic_id(vcpus))),
        });
        Ok(Self {
            irqfds: Mutex::new(None),
            shared,
            supported_cpuid: cpuid::supported(),
        })
    }

    /// Makes vCPU `id` leave `WHvRunVirtualProcessor` (its `run` returns
    /// [`crate::hypervisor::VcpuExit::Interrupted`]). The stand-in for the
    /// signal the engine sends to KVM vCPU threads.
    pub fn kick_vcpu(&self, id: u8) -> Result<(), HvError> {
        Ok(self.shared.api.cancel_run_vp(u32::from(id))?)
    }

    /// Sets the level of IOAPIC pin `gsi`, for devices with a level line.
    pub fn set_gsi_level(&self, gsi: u32, asserted: bool) -> Result<(), HvError> {
        Ok(self.shared.set_gsi(gsi, asserted)?)
    }

    /// The platform API (tests inspect the fake through it).
    pub fn api(&self) -> &A {
        &self.shared.api
    }

    #[cfg(test)]
    pub(super) fn shared(&self) -> &Shared<A> {
        &self.shared
    }
}

impl<A: WhpApi> Vm for WhpVm<A> {
    type Vcpu = WhpVcpu<A>;

    fn create_vcpu(&self, id: u8) -> Result<WhpVcpu<A>, HvError> {
        let vp = u32::from(id);
        if vp >= self.shared.vcpus {
            return Err(WhpError::TooManyVcpus {
                vcpu: vp,
                max: self.shared.vcpus,
            }
            .into());
        }
        self.shared.api.create_vp(vp)?;
        let emulator = match self.shared.api.create_emulator(&emulator::callbacks::<A>()) {
            Ok(e) => e,
            Err(e) => {
                let _ = self.shared.api.delete_vp(vp);
                return Err(e.into());
            }
        };
        Ok(WhpVcpu::new(id, self.shared.clone(), emulator))
    }

    /// WHP has no irqfd: a thread per line waits on `evt` and pulses `gsi`
    /// on the user-space IOAPIC, which requests the interrupt.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), HvError> {
        check_gsi(gsi)?;
        let mut guard = self.irqfds.lock().unwrap_or_else(|p| p.into_inner());
        let threads = match guard.as_mut() {
            Some(t) => t,
            None => {
                guard.insert(IrqfdThreads::new().map_err(|source| WhpError::Irqfd { gsi, source })?)
            }
        };
        let shared = self.shared.clone();
        threads
            .spawn(gsi, evt, move || {
                if let Err(e) = shared.pulse_gsi(gsi) {
                    log::warn!("{e}");
                }
            })
            .map_err(|source| WhpError::Irqfd { gsi, source })?;
        Ok(())
    }

    /// WHP has no ioeventfd. Nothing is registered: the store reaches the
    /// MMIO transport as an ordinary MMIO exit, and the virtio-mmio
    /// transport's `QueueNotify` write handler writes the same `evt` itself.
    fn register_ioeventfd(&self, _evt: &EventFd, addr: u64, datamatch: u32) -> Result<(), HvError> {
        log::debug!(
            "WHP: no ioeventfd for {addr:#x} = {datamatch}; the MMIO exit reaches the transport"
        );
        Ok(())
    }
}

impl<A: WhpApi> VmX86_64 for WhpVm<A> {
    /// Nothing left to do: the local APIC emulation mode was set before
    /// `WHvSetupPartition` (WHP takes it only then) and the user-space
    /// IOAPIC exists from creation. There is no PIC or PIT on WHP.
    fn setup_irqchip(&self) -> Result<(), HvError> {
        Ok(())
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>, HvError> {
        Ok(self.supported_cpuid.clone())
    }
}
