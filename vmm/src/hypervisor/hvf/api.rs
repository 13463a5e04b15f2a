//! The Hypervisor.framework calls the backend makes, as a trait: [`Hvf`]
//! (in `ffi.rs`) calls applevisor-sys; the tests drive the same backend
//! code with a fake that scripts exits and records every call.
//!
//! [`Hvf`]: super::Hvf

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::HvfError;
use crate::hypervisor::aarch64::{Reg, SysReg};

/// Why `hv_vcpu_run` returned (`hv_vcpu_exit_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `HV_EXIT_REASON_CANCELED`: `hv_vcpus_exit` asked the vCPU to stop.
    Canceled,
    /// `HV_EXIT_REASON_EXCEPTION`: a trap; ESR_EL2, FAR and the faulting IPA.
    Exception {
        syndrome: u64,
        virtual_address: u64,
        physical_address: u64,
    },
    /// `HV_EXIT_REASON_VTIMER_ACTIVATED`: the virtual timer fired; HVF has
    /// masked it until the VMM unmasks it.
    VtimerActivated,
    /// `HV_EXIT_REASON_UNKNOWN` or a value this code does not know.
    Unknown(u32),
}

/// Every `hv_*` call the backend makes. Process-wide calls (`hv_vm_*`,
/// `hv_gic_*`) take only `&self`; per-vCPU calls take the vCPU handle and
/// must be made on the thread that created it.
pub trait HvfApi: Send + Sync + 'static {
    /// A vCPU: `hv_vcpu_t` plus its exit-information pointer. Not `Send`
    /// for the real API (HVF vCPUs belong to their thread).
    type Vcpu;
    /// The stage-2 page size `hv_vm_map` requires (16 KiB on Apple silicon).
    const PAGE_SIZE: u64;

    /// The process-wide "a VM exists" flag (HVF allows one VM per process).
    fn vm_flag(&self) -> &AtomicBool;
    /// `hv_vm_create(NULL)`.
    fn vm_create(&self) -> Result<(), HvfError>;
    /// `hv_vm_destroy()`.
    fn vm_destroy(&self) -> Result<(), HvfError>;
    /// `hv_vm_map(host, ipa, size, READ | WRITE | EXEC)`.
    ///
    /// # Safety
    ///
    /// `host..host + size` must be a live mapping that stays mapped until
    /// the VM is destroyed.
    unsafe fn vm_map(&self, host: *mut u8, ipa: u64, size: u64) -> Result<(), HvfError>;
    /// `hv_gic_config_create` + `set_distributor_base` +
    /// `set_redistributor_base` + `hv_gic_create`.
    fn gic_create(&self, dist: u64, redist: u64) -> Result<(), HvfError>;
    /// `hv_gic_get_redistributor_region_size`: bytes the redistributors of
    /// every vCPU HVF supports take from the redistributor base.
    fn gic_redistributor_region_size(&self) -> Result<u64, HvfError>;
    /// `hv_gic_set_spi(intid, level)`.
    fn gic_set_spi(&self, intid: u32, level: bool) -> Result<(), HvfError>;
    /// Makes PPI `intid` pending on `vcpu`'s redistributor
    /// (`hv_gic_set_redistributor_reg(GICR_ISPENDR0, 1 << intid)`).
    fn gic_set_ppi_pending(&self, vcpu: &Self::Vcpu, intid: u32) -> Result<(), HvfError>;
    /// `hv_vcpus_exit`: makes the vCPUs with these `hv_vcpu_t`s leave (or
    /// not enter) `hv_vcpu_run`. Callable from any thread.
    fn vcpus_exit(&self, vcpus: &[u64]) -> Result<(), HvfError>;

    /// `hv_vcpu_create` on the calling thread.
    fn vcpu_create(&self) -> Result<Self::Vcpu, HvfError>;
    /// `hv_vcpu_destroy`, on the vCPU's thread.
    fn vcpu_destroy(&self, vcpu: &Self::Vcpu) -> Result<(), HvfError>;
    /// The vCPU's `hv_vcpu_t` (for [`vcpus_exit`](Self::vcpus_exit)).
    fn vcpu_handle(&self, vcpu: &Self::Vcpu) -> u64;
    /// `hv_vcpu_run`, then the exit information.
    fn vcpu_run(&self, vcpu: &Self::Vcpu) -> Result<Exit, HvfError>;
    /// `hv_vcpu_get_reg`; `X(31)` (XZR) reads 0.
    fn get_reg(&self, vcpu: &Self::Vcpu, reg: Reg) -> Result<u64, HvfError>;
    /// `hv_vcpu_set_reg`; writes to `X(31)` (XZR) are dropped.
    fn set_reg(&self, vcpu: &Self::Vcpu, reg: Reg, value: u64) -> Result<(), HvfError>;
    /// `hv_vcpu_get_sys_reg`.
    fn get_sys_reg(&self, vcpu: &Self::Vcpu, reg: SysReg) -> Result<u64, HvfError>;
    /// `hv_vcpu_set_sys_reg`.
    fn set_sys_reg(&self, vcpu: &Self::Vcpu, reg: SysReg, value: u64) -> Result<(), HvfError>;
    /// `hv_vcpu_set_vtimer_mask`.
    fn set_vtimer_mask(&self, vcpu: &Self::Vcpu, masked: bool) -> Result<(), HvfError>;
    /// `hv_vcpu_set_vtimer_offset`.
    fn set_vtimer_offset(&self, vcpu: &Self::Vcpu, offset: u64) -> Result<(), HvfError>;

    /// The host counter (`mach_absolute_time`); the guest's virtual counter
    /// is this minus the vtimer offset.
    fn host_ticks(&self) -> u64;
    /// How long `ticks` counter ticks last (`mach_timebase_info`).
    fn ticks_to_duration(&self, ticks: u64) -> Duration;
}
