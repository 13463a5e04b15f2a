//! The HVF VM: one per process, guest memory mapped with `hv_vm_map`, the
//! in-kernel GICv3 (`hv_gic_create`, macOS 15+) and irqfd emulation.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::api::HvfApi;
use super::cpus::{CpuOnRequest, Cpus, Power};
use super::error::{vcpu_err, vm_err};
use super::{HvfError, HvfVcpu};
use crate::arch::aarch64::layout;
use crate::hypervisor::aarch64::{GicConfig, GicOrder, SysReg, VmAarch64};
use crate::hypervisor::{HvError, Vm};

/// How often an irqfd thread checks whether its VM is gone.
const IRQFD_POLL: Duration = Duration::from_millis(100);

/// Owns the process's HVF VM: destroys it and frees the one-per-process
/// slot when dropped.
struct VmSlot<A: HvfApi> {
    api: Arc<A>,
    created: bool,
}

impl<A: HvfApi> Drop for VmSlot<A> {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = self.api.vm_destroy() {
                log::warn!("hv_vm_destroy: {e}");
            }
        }
        self.api.vm_flag().store(false, Ordering::Release);
    }
}

/// A Hypervisor.framework VM. `A` is the platform API: [`super::Hvf`] for
/// real, a fake in tests.
pub struct HvfVm<A: HvfApi> {
    api: Arc<A>,
    cpus: Arc<Cpus>,
    /// The guest's virtual counter is the host counter minus this, on every
    /// vCPU alike (HVF's default differs per vCPU).
    vtimer_offset: u64,
    gic_created: AtomicBool,
    irqfd_stop: Arc<AtomicBool>,
    irqfds: Mutex<Vec<JoinHandle<()>>>,
    /// Dropped before `_mem`: the VM goes before its memory is unmapped.
    _slot: VmSlot<A>,
    _mem: GuestMemoryMmap,
}

impl<A: HvfApi> HvfVm<A> {
    pub(super) fn new(api: Arc<A>, mem: &GuestMemoryMmap) -> Result<Self, HvError> {
        if api
            .vm_flag()
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(vm_err("hv_vm_create")(HvfError::SecondVm));
        }
        let mut slot = VmSlot {
            api: api.clone(),
            created: false,
        };
        api.vm_create().map_err(vm_err("hv_vm_create"))?;
        slot.created = true;
        for (i, region) in mem.iter().enumerate() {
            let (addr, size, host) = (region.start_addr().0, region.len(), region.as_ptr() as u64);
            let map_err = |e: HvfError| HvError::MapMemory {
                slot: i as u32,
                addr,
                size,
                source: std::io::Error::other(e),
            };
            let page = A::PAGE_SIZE;
            if addr % page != 0 || size % page != 0 || host % page != 0 {
                return Err(map_err(HvfError::Unaligned {
                    addr,
                    size,
                    host,
                    page,
                }));
            }
            // SAFETY: the region is a live mapping of `size` bytes owned by
            // `mem`; this VM keeps a clone of `mem` and drops it only after
            // `_slot` has destroyed the VM.
            unsafe { api.vm_map(region.as_ptr(), addr, size) }.map_err(map_err)?;
        }
        let vtimer_offset = api.host_ticks();
        Ok(Self {
            api,
            cpus: Arc::new(Cpus::default()),
            vtimer_offset,
            gic_created: AtomicBool::new(false),
            irqfd_stop: Arc::new(AtomicBool::new(false)),
            irqfds: Mutex::new(Vec::new()),
            _slot: slot,
            _mem: mem.clone(),
        })
    }

    /// Makes vCPU `id` leave `run` (returning `VcpuExit::Interrupted`) as
    /// soon as possible: `hv_vcpus_exit` if it is in the guest, a wake-up
    /// if it is parked. HVF's replacement for the signal kick KVM uses.
    pub fn kick(&self, id: u8) -> Result<(), HvError> {
        let handles = self.cpus.kick(Some(id));
        self.api
            .vcpus_exit(&handles)
            .map_err(vcpu_err(id, "hv_vcpus_exit"))
    }

    /// [`kick`](Self::kick) for every vCPU.
    pub fn kick_all(&self) -> Result<(), HvError> {
        let handles = self.cpus.kick(None);
        if handles.is_empty() {
            return Ok(());
        }
        self.api
            .vcpus_exit(&handles)
            .map_err(vm_err("hv_vcpus_exit"))
    }

    /// PSCI `CPU_ON` requests not yet taken up by their vCPU. The backend
    /// starts the target itself (its `run` waits for the request), so a VMM
    /// only needs this to log or to start vCPU threads lazily.
    pub fn pending_cpu_on(&self) -> Vec<CpuOnRequest> {
        self.cpus.pending_cpu_on()
    }

    /// vCPU `id`'s PSCI power state, if it exists.
    pub fn power(&self, id: u8) -> Option<Power> {
        self.cpus.power(id)
    }
}

impl<A: HvfApi> Drop for HvfVm<A> {
    fn drop(&mut self) {
        self.irqfd_stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.irqfds.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl<A: HvfApi> Vm for HvfVm<A> {
    type Vcpu = HvfVcpu<A>;

    /// `hv_vcpu_create` on the calling thread (which then runs the vCPU),
    /// MPIDR_EL1 from [`layout::mpidr`] (the GIC routes by it), and the
    /// VM-wide vtimer offset. vCPU 0 is powered on; the others wait for a
    /// PSCI `CPU_ON`.
    fn create_vcpu(&self, id: u8) -> Result<HvfVcpu<A>, HvError> {
        let handle = self
            .api
            .vcpu_create()
            .map_err(vcpu_err(id, "hv_vcpu_create"))?;
        let vcpu = HvfVcpu::new(
            id,
            self.api.clone(),
            self.cpus.clone(),
            handle,
            self.vtimer_offset,
        );
        let api = &self.api;
        api.set_sys_reg(vcpu.handle(), SysReg::MpidrEl1, layout::mpidr(id))
            .map_err(vcpu_err(id, "hv_vcpu_set_sys_reg(MPIDR_EL1)"))?;
        api.set_vtimer_offset(vcpu.handle(), self.vtimer_offset)
            .map_err(vcpu_err(id, "hv_vcpu_set_vtimer_offset"))?;
        self.cpus.register(id, api.vcpu_handle(vcpu.handle()));
        Ok(vcpu)
    }

    /// HVF has no irqfd: a thread per line waits on `evt` and raises SPI
    /// `gsi` (INTID 32 + `gsi`) as an edge with `hv_gic_set_spi`, then wakes
    /// parked vCPUs. Meant for edge-triggered lines (virtio-mmio); a
    /// level-triggered device (the PL011) should call
    /// [`VmAarch64::set_spi`] with its line level instead.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), HvError> {
        let evt = evt.try_clone().map_err(|source| HvError::Vm {
            op: "irqfd: cloning the eventfd",
            source,
        })?;
        let (api, cpus, stop) = (self.api.clone(), self.cpus.clone(), self.irqfd_stop.clone());
        let intid = layout::spi_intid(gsi);
        let thread = std::thread::Builder::new()
            .name(format!("hvf-irq{gsi}"))
            .spawn(move || irqfd_loop(&*api, &cpus, &evt, intid, &stop))
            .map_err(|source| HvError::Vm {
                op: "irqfd: spawning its thread",
                source,
            })?;
        self.irqfds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(thread);
        Ok(())
    }

    /// HVF has no ioeventfd: a queue notify is an ordinary MMIO exit, and
    /// the virtio-mmio transport writes the notify eventfd itself when it
    /// sees one. Nothing to register.
    fn register_ioeventfd(
        &self,
        _evt: &EventFd,
        _addr: u64,
        _datamatch: u32,
    ) -> Result<(), HvError> {
        Ok(())
    }
}

fn irqfd_loop<A: HvfApi>(api: &A, cpus: &Cpus, evt: &EventFd, intid: u32, stop: &AtomicBool) {
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Acquire) {
        pfd.revents = 0;
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, IRQFD_POLL.as_millis() as libc::c_int) };
        if n <= 0 || pfd.revents & libc::POLLIN == 0 {
            continue;
        }
        if evt.read().is_err() {
            continue;
        }
        for level in [true, false] {
            if let Err(e) = api.gic_set_spi(intid, level) {
                log::warn!("hv_gic_set_spi({intid}, {level}): {e}");
            }
        }
        cpus.wake_all();
    }
}

impl<A: HvfApi> VmAarch64 for HvfVm<A> {
    const GIC_ORDER: GicOrder = GicOrder::BeforeVcpus;

    /// `hv_gic_create` (macOS 15+): after `hv_vm_create`, before the first
    /// `hv_vcpu_create`, once. HVF sizes the redistributor region for every
    /// vCPU it supports (not `cfg.vcpus`), so it is checked to end below the
    /// UART, where QEMU virt's map puts the next device.
    fn create_gic(&self, cfg: &GicConfig) -> Result<(), HvError> {
        if self.cpus.any_created() {
            return Err(vm_err("hv_gic_create")(HvfError::GicOrder(
                "a vCPU already exists",
            )));
        }
        let size = self
            .api
            .gic_redistributor_region_size()
            .map_err(vm_err("hv_gic_get_redistributor_region_size"))?;
        if cfg.redist_addr.saturating_add(size) > layout::GIC_REDIST_END {
            return Err(vm_err("hv_gic_create")(HvfError::GicLayout {
                base: cfg.redist_addr,
                size,
                limit: layout::GIC_REDIST_END,
            }));
        }
        if self.gic_created.swap(true, Ordering::AcqRel) {
            return Err(vm_err("hv_gic_create")(HvfError::GicOrder(
                "it already exists",
            )));
        }
        self.api
            .gic_create(cfg.dist_addr, cfg.redist_addr)
            .inspect_err(|_| self.gic_created.store(false, Ordering::Release))
            .map_err(vm_err("hv_gic_create"))
    }

    /// Nothing: HVF's GIC is complete once created.
    fn finalize_gic(&self) -> Result<(), HvError> {
        Ok(())
    }

    /// `hv_gic_set_spi(32 + spi, level)`; raising a line also wakes parked
    /// vCPUs so that one waiting in WFI takes the interrupt now.
    fn set_spi(&self, spi: u32, level: bool) -> Result<(), HvError> {
        self.api
            .gic_set_spi(layout::spi_intid(spi), level)
            .map_err(vm_err("hv_gic_set_spi"))?;
        if level {
            self.cpus.wake_all();
        }
        Ok(())
    }
}
