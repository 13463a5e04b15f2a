//! [`Hvf`]: the [`HvfApi`] that calls Hypervisor.framework through
//! applevisor-sys. applevisor-sys declares its functions on every target,
//! so this compiles (and links, as long as nothing calls it) on Linux; it
//! only works on macOS 15+ on Apple silicon.

use std::ptr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use applevisor_sys as hv;

use super::api::{Exit, HvfApi};
use super::HvfError;
use crate::hypervisor::aarch64::{Reg, SysReg};

/// The process-wide "a VM exists" flag behind [`HvfApi::vm_flag`].
static VM_EXISTS: AtomicBool = AtomicBool::new(false);

/// Hypervisor.framework itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hvf;

/// A vCPU of the real API. The raw exit pointer keeps it `!Send`, as HVF
/// requires (a vCPU is used only on the thread that created it).
#[derive(Debug)]
pub struct HvfVcpuHandle {
    vcpu: hv::hv_vcpu_t,
    exit: *const hv::hv_vcpu_exit_t,
}

fn check(rc: hv::hv_return_t) -> Result<(), HvfError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(HvfError::Status(rc))
    }
}

const X_REGS: [hv::hv_reg_t; 31] = {
    use hv::hv_reg_t::*;
    [
        X0, X1, X2, X3, X4, X5, X6, X7, X8, X9, X10, X11, X12, X13, X14, X15, X16, X17, X18, X19,
        X20, X21, X22, X23, X24, X25, X26, X27, X28, X29, X30,
    ]
};

/// `None` for XZR (reads zero, ignores writes).
fn hv_reg(reg: Reg) -> Result<Option<hv::hv_reg_t>, HvfError> {
    Ok(match reg {
        Reg::X(31) => None,
        Reg::X(n) => Some(*X_REGS.get(n as usize).ok_or(HvfError::NoSuchRegister(n))?),
        Reg::Pc => Some(hv::hv_reg_t::PC),
        Reg::Pstate => Some(hv::hv_reg_t::CPSR),
    })
}

fn hv_sys_reg(reg: SysReg) -> hv::hv_sys_reg_t {
    match reg {
        SysReg::MpidrEl1 => hv::hv_sys_reg_t::MPIDR_EL1,
        SysReg::SpEl1 => hv::hv_sys_reg_t::SP_EL1,
        SysReg::SctlrEl1 => hv::hv_sys_reg_t::SCTLR_EL1,
        SysReg::CntvCtlEl0 => hv::hv_sys_reg_t::CNTV_CTL_EL0,
        SysReg::CntvCvalEl0 => hv::hv_sys_reg_t::CNTV_CVAL_EL0,
    }
}

impl HvfApi for Hvf {
    type Vcpu = HvfVcpuHandle;
    const PAGE_SIZE: u64 = hv::PAGE_SIZE as u64;

    fn vm_flag(&self) -> &AtomicBool {
        &VM_EXISTS
    }

    fn vm_create(&self) -> Result<(), HvfError> {
        // SAFETY: a null configuration asks for the default one; no memory
        // is handed over.
        check(unsafe { hv::hv_vm_create(ptr::null_mut()) })
    }

    fn vm_destroy(&self) -> Result<(), HvfError> {
        // SAFETY: takes no arguments; the caller destroyed its vCPUs first.
        check(unsafe { hv::hv_vm_destroy() })
    }

    unsafe fn vm_map(&self, host: *mut u8, ipa: u64, size: u64) -> Result<(), HvfError> {
        let flags = hv::HV_MEMORY_READ | hv::HV_MEMORY_WRITE | hv::HV_MEMORY_EXEC;
        // SAFETY: the caller guarantees `host..host + size` stays mapped for
        // the VM's lifetime (this function's contract).
        check(unsafe { hv::hv_vm_map(host.cast(), ipa, size as usize, flags) })
    }

    fn gic_create(&self, dist: u64, redist: u64) -> Result<(), HvfError> {
        // SAFETY: takes no arguments; returns an object we release below.
        let config = unsafe { hv::hv_gic_config_create() };
        if config.is_null() {
            return Err(HvfError::Status(hv::hv_error_t::HV_NO_RESOURCES as i32));
        }
        let configure_and_create = || {
            // SAFETY: `config` is the live object created above.
            check(unsafe { hv::hv_gic_config_set_distributor_base(config, dist) })?;
            // SAFETY: as above.
            check(unsafe { hv::hv_gic_config_set_redistributor_base(config, redist) })?;
            // SAFETY: as above; hv_gic_create copies what it needs.
            check(unsafe { hv::hv_gic_create(config) })
        };
        let result = configure_and_create();
        // SAFETY: `config` came from hv_gic_config_create and is not used again.
        unsafe { hv::os_release(config) };
        result
    }

    fn gic_redistributor_region_size(&self) -> Result<u64, HvfError> {
        let mut size: usize = 0;
        // SAFETY: the out-pointer points at a local.
        check(unsafe { hv::hv_gic_get_redistributor_region_size(&mut size) })?;
        Ok(size as u64)
    }

    fn gic_set_spi(&self, intid: u32, level: bool) -> Result<(), HvfError> {
        // SAFETY: plain values; HVF validates `intid`.
        check(unsafe { hv::hv_gic_set_spi(intid, level) })
    }

    fn gic_set_ppi_pending(&self, vcpu: &HvfVcpuHandle, intid: u32) -> Result<(), HvfError> {
        let reg = hv::hv_gic_redistributor_reg_t::ISPENDR0;
        // SAFETY: plain values; `vcpu.vcpu` is a live vCPU of this process.
        check(unsafe { hv::hv_gic_set_redistributor_reg(vcpu.vcpu, reg, 1u64 << intid) })
    }

    fn vcpus_exit(&self, vcpus: &[u64]) -> Result<(), HvfError> {
        // SAFETY: the pointer and length describe `vcpus`, which outlives the call.
        check(unsafe { hv::hv_vcpus_exit(vcpus.as_ptr(), vcpus.len() as u32) })
    }

    fn vcpu_create(&self) -> Result<HvfVcpuHandle, HvfError> {
        let mut vcpu: hv::hv_vcpu_t = 0;
        let mut exit: *const hv::hv_vcpu_exit_t = ptr::null();
        // SAFETY: both out-pointers point at locals; a null config asks for
        // the default vCPU configuration.
        check(unsafe { hv::hv_vcpu_create(&mut vcpu, &mut exit, ptr::null_mut()) })?;
        Ok(HvfVcpuHandle { vcpu, exit })
    }

    fn vcpu_destroy(&self, vcpu: &HvfVcpuHandle) -> Result<(), HvfError> {
        // SAFETY: called on the vCPU's own thread (the handle is !Send).
        check(unsafe { hv::hv_vcpu_destroy(vcpu.vcpu) })
    }

    fn vcpu_handle(&self, vcpu: &HvfVcpuHandle) -> u64 {
        vcpu.vcpu
    }

    fn vcpu_run(&self, vcpu: &HvfVcpuHandle) -> Result<Exit, HvfError> {
        // SAFETY: on the vCPU's own thread; HVF fills `vcpu.exit`.
        check(unsafe { hv::hv_vcpu_run(vcpu.vcpu) })?;
        // SAFETY: `exit` was set by hv_vcpu_create, stays valid while the
        // vCPU exists, and hv_vcpu_run has just written it on this thread.
        // The reason is read as a u32 so that a value newer than this
        // binding cannot form an invalid enum.
        let (reason, e) = unsafe {
            let reason = ptr::addr_of!((*vcpu.exit).reason).cast::<u32>().read();
            (reason, ptr::addr_of!((*vcpu.exit).exception).read())
        };
        Ok(match reason {
            0 => Exit::Canceled,
            1 => Exit::Exception {
                syndrome: e.syndrome,
                virtual_address: e.virtual_address,
                physical_address: e.physical_address,
            },
            2 => Exit::VtimerActivated,
            other => Exit::Unknown(other),
        })
    }

    fn get_reg(&self, vcpu: &HvfVcpuHandle, reg: Reg) -> Result<u64, HvfError> {
        let Some(reg) = hv_reg(reg)? else {
            return Ok(0);
        };
        let mut value = 0;
        // SAFETY: the out-pointer points at a local; vCPU's own thread.
        check(unsafe { hv::hv_vcpu_get_reg(vcpu.vcpu, reg, &mut value) })?;
        Ok(value)
    }

    fn set_reg(&self, vcpu: &HvfVcpuHandle, reg: Reg, value: u64) -> Result<(), HvfError> {
        let Some(reg) = hv_reg(reg)? else {
            return Ok(());
        };
        // SAFETY: plain values; vCPU's own thread.
        check(unsafe { hv::hv_vcpu_set_reg(vcpu.vcpu, reg, value) })
    }

    fn get_sys_reg(&self, vcpu: &HvfVcpuHandle, reg: SysReg) -> Result<u64, HvfError> {
        let mut value = 0;
        // SAFETY: the out-pointer points at a local; vCPU's own thread.
        check(unsafe { hv::hv_vcpu_get_sys_reg(vcpu.vcpu, hv_sys_reg(reg), &mut value) })?;
        Ok(value)
    }

    fn set_sys_reg(&self, vcpu: &HvfVcpuHandle, reg: SysReg, value: u64) -> Result<(), HvfError> {
        // SAFETY: plain values; vCPU's own thread.
        check(unsafe { hv::hv_vcpu_set_sys_reg(vcpu.vcpu, hv_sys_reg(reg), value) })
    }

    fn set_vtimer_mask(&self, vcpu: &HvfVcpuHandle, masked: bool) -> Result<(), HvfError> {
        // SAFETY: plain values; vCPU's own thread.
        check(unsafe { hv::hv_vcpu_set_vtimer_mask(vcpu.vcpu, masked) })
    }

    fn set_vtimer_offset(&self, vcpu: &HvfVcpuHandle, offset: u64) -> Result<(), HvfError> {
        // SAFETY: plain values; vCPU's own thread.
        check(unsafe { hv::hv_vcpu_set_vtimer_offset(vcpu.vcpu, offset) })
    }

    fn host_ticks(&self) -> u64 {
        mach::absolute_time()
    }

    fn ticks_to_duration(&self, ticks: u64) -> Duration {
        mach::ticks_to_duration(ticks)
    }
}

/// The host counter. On macOS it is `mach_absolute_time`, the counter the
/// guest's CNTVCT_EL0 is offset from.
#[cfg(target_os = "macos")]
mod mach {
    use std::time::Duration;

    #[repr(C)]
    #[derive(Default)]
    struct TimebaseInfo {
        numer: u32,
        denom: u32,
    }

    unsafe extern "C" {
        fn mach_absolute_time() -> u64;
        fn mach_timebase_info(info: *mut TimebaseInfo) -> i32;
    }

    pub fn absolute_time() -> u64 {
        // SAFETY: no arguments, no side effects.
        unsafe { mach_absolute_time() }
    }

    pub fn ticks_to_duration(ticks: u64) -> Duration {
        let mut tb = TimebaseInfo::default();
        // SAFETY: the out-pointer points at a local.
        if unsafe { mach_timebase_info(&mut tb) } != 0 || tb.denom == 0 {
            tb = TimebaseInfo { numer: 1, denom: 1 };
        }
        let nanos = u128::from(ticks) * u128::from(tb.numer) / u128::from(tb.denom);
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }
}

/// Elsewhere HVF does not exist; a monotonic nanosecond clock stands in so
/// that the backend type-checks and its timing code is exercised.
#[cfg(not(target_os = "macos"))]
mod mach {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    pub fn absolute_time() -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    pub fn ticks_to_duration(ticks: u64) -> Duration {
        Duration::from_nanos(ticks)
    }
}
