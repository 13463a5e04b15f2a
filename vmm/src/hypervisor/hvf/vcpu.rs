//! The HVF vCPU and its run loop: exception exits decoded from the ESR
//! (MMIO data aborts, PSCI over HVC, WFI, trapped system registers) and the
//! virtual-timer exit.
//!
//! [`Vcpu::run`] loops inside the backend over exits the VMM has no part in
//! (PSCI, WFI, the timer, trapped system registers) and returns on an MMIO
//! access (after calling the [`ExitHandler`]), a kick (`Interrupted`), a
//! PSCI `SYSTEM_OFF` / `SYSTEM_RESET`, or an error.

use std::sync::Arc;
use std::time::Duration;

use super::api::{Exit, HvfApi};
use super::cpus::{Cpus, Power};
use super::error::vcpu_err;
use super::esr::{self, DataAbort};
use super::psci::{self, Call};
use super::HvfError;
use crate::arch::aarch64::{layout, regs};
use crate::hypervisor::aarch64::{
    Reg, SysReg, VcpuAarch64, CNTV_CTL_ENABLE, CNTV_CTL_IMASK, CNTV_CTL_ISTATUS,
};
use crate::hypervisor::{ExitHandler, HvError, Vcpu, VcpuExit};

/// Longest a vCPU parks in WFI. Interrupts the VMM raises wake it at once,
/// but an SGI (IPI) another vCPU sends through HVF's GIC is invisible to
/// user space, so a parked vCPU looks again this often.
pub const WFI_MAX_PARK: Duration = Duration::from_millis(1);
/// How long a powered-off vCPU waits for `CPU_ON` before `run` returns
/// `Interrupted` (so the VMM's loop can see a stop request).
pub const OFF_PARK: Duration = Duration::from_millis(50);

/// The vTimer's PPI as a GIC INTID (27).
const VTIMER_INTID: u32 = layout::PPI_INTID_BASE + layout::VTIMER_PPI;

/// What the virtual timer means for a WFI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerWait {
    /// Disabled or masked: only an interrupt ends the wait.
    Never,
    /// Already due: do not wait.
    Due,
    /// Fires in this many counter ticks.
    In(u64),
}

/// When the guest's virtual timer fires, from CNTV_CTL_EL0, CNTV_CVAL_EL0 and
/// the guest's current virtual count.
pub fn timer_wait(ctl: u64, cval: u64, now: u64) -> TimerWait {
    if ctl & CNTV_CTL_ENABLE == 0 || ctl & CNTV_CTL_IMASK != 0 {
        TimerWait::Never
    } else if cval <= now {
        TimerWait::Due
    } else {
        TimerWait::In(cval - now)
    }
}

/// Whether the virtual timer's interrupt output is asserted.
fn timer_asserted(ctl: u64) -> bool {
    ctl & (CNTV_CTL_ENABLE | CNTV_CTL_IMASK | CNTV_CTL_ISTATUS)
        == (CNTV_CTL_ENABLE | CNTV_CTL_ISTATUS)
}

enum Step {
    Continue,
    Exit(VcpuExit),
}

/// An HVF vCPU. Created by [`HvfVm::create_vcpu`](super::HvfVm) on the thread
/// that runs it, and destroyed there when dropped.
pub struct HvfVcpu<A: HvfApi> {
    id: u8,
    api: Arc<A>,
    cpus: Arc<Cpus>,
    handle: A::Vcpu,
    vtimer_offset: u64,
    /// We masked the vtimer after it fired and have not unmasked it yet.
    vtimer_masked: bool,
    /// The park timeout of the last WFI (for tests and debugging).
    pub(crate) last_wfi_park: Option<Duration>,
}

impl<A: HvfApi> HvfVcpu<A> {
    pub(super) fn new(
        id: u8,
        api: Arc<A>,
        cpus: Arc<Cpus>,
        handle: A::Vcpu,
        vtimer_offset: u64,
    ) -> Self {
        Self {
            id,
            api,
            cpus,
            handle,
            vtimer_offset,
            vtimer_masked: false,
            last_wfi_park: None,
        }
    }

    pub(super) fn handle(&self) -> &A::Vcpu {
        &self.handle
    }

    /// Whether the vtimer is masked awaiting the guest's handling.
    pub fn vtimer_masked(&self) -> bool {
        self.vtimer_masked
    }

    fn reg(&self, reg: Reg) -> Result<u64, HvError> {
        self.api
            .get_reg(&self.handle, reg)
            .map_err(vcpu_err(self.id, "hv_vcpu_get_reg"))
    }

    fn put_reg(&self, reg: Reg, value: u64) -> Result<(), HvError> {
        self.api
            .set_reg(&self.handle, reg, value)
            .map_err(vcpu_err(self.id, "hv_vcpu_set_reg"))
    }

    fn sys(&self, reg: SysReg) -> Result<u64, HvError> {
        self.api
            .get_sys_reg(&self.handle, reg)
            .map_err(vcpu_err(self.id, "hv_vcpu_get_sys_reg"))
    }

    fn skip_instruction(&self) -> Result<(), HvError> {
        let pc = self.reg(Reg::Pc)?;
        self.put_reg(Reg::Pc, pc.wrapping_add(4))
    }

    /// The guest's virtual count now.
    fn virtual_count(&self) -> u64 {
        self.api.host_ticks().wrapping_sub(self.vtimer_offset)
    }

    /// Before entering the guest: once the guest has dealt with the timer
    /// (re-armed, disabled or masked it), unmask it again in HVF.
    fn sync_vtimer(&mut self) -> Result<(), HvError> {
        if self.vtimer_masked && !timer_asserted(self.sys(SysReg::CntvCtlEl0)?) {
            self.api
                .set_vtimer_mask(&self.handle, false)
                .map_err(vcpu_err(self.id, "hv_vcpu_set_vtimer_mask"))?;
            self.vtimer_masked = false;
        }
        Ok(())
    }

    /// `HV_EXIT_REASON_VTIMER_ACTIVATED`: keep the timer masked (HVF masked
    /// it already; saying so keeps our state and HVF's in step) and make its
    /// PPI pending in the GIC.
    fn vtimer_fired(&mut self) -> Result<(), HvError> {
        self.api
            .set_vtimer_mask(&self.handle, true)
            .map_err(vcpu_err(self.id, "hv_vcpu_set_vtimer_mask"))?;
        self.vtimer_masked = true;
        self.api
            .gic_set_ppi_pending(&self.handle, VTIMER_INTID)
            .map_err(vcpu_err(
                self.id,
                "hv_gic_set_redistributor_reg(GICR_ISPENDR0)",
            ))
    }

    fn exception(
        &mut self,
        esr: u64,
        ipa: u64,
        seen: u64,
        io: &dyn ExitHandler,
    ) -> Result<Step, HvError> {
        match esr::ec(esr) {
            esr::EC_DABT_LOWER => self.mmio(esr, ipa, io),
            esr::EC_HVC64 => self.hvc(esr),
            esr::EC_SMC64 => {
                // hutch's PSCI conduit is HVC; SMCCC says unknown calls get -1.
                self.put_reg(Reg::X(0), psci::NOT_SUPPORTED as u64)?;
                self.skip_instruction()?;
                Ok(Step::Continue)
            }
            esr::EC_WFX => {
                self.skip_instruction()?;
                if !esr::is_wfe(esr) {
                    self.wfi(seen)?;
                }
                Ok(Step::Continue)
            }
            esr::EC_SYS64 => self.sys_reg_trap(esr),
            esr::EC_IABT_LOWER => Err(vcpu_err(self.id, "guest instruction fetch")(
                HvfError::InstructionAbort {
                    ipa,
                    pc: self.reg(Reg::Pc)?,
                    esr,
                },
            )),
            ec => Err(vcpu_err(self.id, "handling a guest exception")(
                HvfError::UnhandledException {
                    ec,
                    esr,
                    pc: self.reg(Reg::Pc)?,
                },
            )),
        }
    }

    /// A data abort on an address that is not RAM: an MMIO load or store.
    fn mmio(&mut self, esr: u64, ipa: u64, io: &dyn ExitHandler) -> Result<Step, HvError> {
        let pc = self.reg(Reg::Pc)?;
        let Some(access) = esr::data_abort(esr) else {
            return Err(vcpu_err(self.id, "emulating MMIO")(HvfError::NoSyndrome {
                ipa,
                pc,
                esr,
            }));
        };
        let DataAbort {
            size,
            reg,
            write,
            cache_maintenance,
            ..
        } = access;
        if cache_maintenance {
            // DC CIVAC and friends on device memory: nothing to do.
            self.put_reg(Reg::Pc, pc.wrapping_add(4))?;
            return Ok(Step::Continue);
        }
        if write {
            let value = self.reg(Reg::X(reg))?;
            io.mmio_write(ipa, &value.to_le_bytes()[..size]);
        } else {
            let mut data = [0u8; 8];
            io.mmio_read(ipa, &mut data[..size]);
            let value = access.load_value(u64::from_le_bytes(data));
            self.put_reg(Reg::X(reg), value)?;
        }
        self.put_reg(Reg::Pc, pc.wrapping_add(4))?;
        Ok(Step::Exit(VcpuExit::Mmio))
    }

    /// HVC: PSCI. The PC already points past the HVC (its preferred return
    /// address), so it is not advanced. SMCCC calls use `HVC #0`; any other
    /// immediate gets NOT_SUPPORTED.
    fn hvc(&mut self, esr: u64) -> Result<Step, HvError> {
        if esr::imm16(esr) != 0 {
            self.put_reg(Reg::X(0), psci::NOT_SUPPORTED as u64)?;
            return Ok(Step::Continue);
        }
        let x = [
            self.reg(Reg::X(0))?,
            self.reg(Reg::X(1))?,
            self.reg(Reg::X(2))?,
            self.reg(Reg::X(3))?,
        ];
        let ret = match psci::decode(x) {
            Call::Return(v) => v,
            Call::CpuOn {
                target,
                entry,
                context_id,
            } => self
                .cpus
                .cpu_on(layout::vcpu_of_mpidr(target), entry, context_id),
            Call::CpuOff => {
                self.cpus.cpu_off(self.id);
                return Ok(Step::Continue);
            }
            Call::AffinityInfo { target } => self.cpus.affinity_info(layout::vcpu_of_mpidr(target)),
            Call::SystemOff => return Ok(Step::Exit(VcpuExit::SystemShutdown)),
            Call::SystemReset => return Ok(Step::Exit(VcpuExit::SystemReset)),
        };
        self.put_reg(Reg::X(0), ret as u64)?;
        Ok(Step::Continue)
    }

    /// WFI: park until the virtual timer is due, an interrupt is raised, a
    /// kick, or [`WFI_MAX_PARK`].
    fn wfi(&mut self, seen: u64) -> Result<(), HvError> {
        let ctl = self.sys(SysReg::CntvCtlEl0)?;
        let wait = match timer_wait(ctl, self.sys(SysReg::CntvCvalEl0)?, self.virtual_count()) {
            TimerWait::Due => Duration::ZERO,
            TimerWait::Never => WFI_MAX_PARK,
            TimerWait::In(ticks) => self.api.ticks_to_duration(ticks).min(WFI_MAX_PARK),
        };
        self.last_wfi_park = Some(wait);
        if !wait.is_zero() {
            self.cpus.park(self.id, seen, wait);
        }
        Ok(())
    }

    /// A trapped MSR/MRS HVF leaves to user space (debug, PMU, OS lock
    /// registers): reads as zero, writes ignored, as QEMU's HVF backend does.
    fn sys_reg_trap(&mut self, esr: u64) -> Result<Step, HvError> {
        let access = esr::sys_reg(esr);
        log::debug!(
            "vCPU {}: {} of trapped system register {:?} treated as RAZ/WI",
            self.id,
            if access.read { "MRS" } else { "MSR" },
            access.encoding
        );
        if access.read {
            self.put_reg(Reg::X(access.reg), 0)?;
        }
        self.skip_instruction()?;
        Ok(Step::Continue)
    }
}

impl<A: HvfApi> Drop for HvfVcpu<A> {
    fn drop(&mut self) {
        self.cpus.unregister(self.id);
        if let Err(e) = self.api.vcpu_destroy(&self.handle) {
            log::warn!("vCPU {}: hv_vcpu_destroy: {e}", self.id);
        }
    }
}

impl<A: HvfApi> Vcpu for HvfVcpu<A> {
    fn id(&self) -> u8 {
        self.id
    }

    fn run(&mut self, io: &dyn ExitHandler) -> Result<VcpuExit, HvError> {
        loop {
            if self.cpus.take_kick(self.id) {
                return Ok(VcpuExit::Interrupted);
            }
            match self.cpus.power(self.id) {
                Some(Power::On) => {}
                Some(Power::OnPending(_)) => {
                    if let Some(req) = self.cpus.take_cpu_on(self.id) {
                        self.set_boot_regs(&regs::cpu_on_regs(req.entry, req.context_id))?;
                    }
                }
                Some(Power::Off) | None => {
                    let seen = self.cpus.generation(self.id);
                    self.cpus.park(self.id, seen, OFF_PARK);
                    if matches!(self.cpus.power(self.id), Some(Power::OnPending(_))) {
                        continue;
                    }
                    return Ok(VcpuExit::Interrupted);
                }
            }
            let seen = self.cpus.generation(self.id);
            self.sync_vtimer()?;
            let exit = self
                .api
                .vcpu_run(&self.handle)
                .map_err(vcpu_err(self.id, "hv_vcpu_run"))?;
            let step = match exit {
                Exit::Canceled => Step::Exit(VcpuExit::Interrupted),
                Exit::VtimerActivated => {
                    self.vtimer_fired()?;
                    Step::Continue
                }
                Exit::Exception {
                    syndrome,
                    physical_address,
                    ..
                } => self.exception(syndrome, physical_address, seen, io)?,
                Exit::Unknown(reason) => {
                    Step::Exit(VcpuExit::Unhandled(format!("HVF exit reason {reason}")))
                }
            };
            if let Step::Exit(exit) = step {
                if exit == VcpuExit::Interrupted {
                    self.cpus.take_kick(self.id);
                }
                return Ok(exit);
            }
        }
    }
}

impl<A: HvfApi> VcpuAarch64 for HvfVcpu<A> {
    fn get_reg(&self, reg: Reg) -> Result<u64, HvError> {
        self.reg(reg)
    }

    fn set_reg(&self, reg: Reg, value: u64) -> Result<(), HvError> {
        self.put_reg(reg, value)
    }

    fn get_sys_reg(&self, reg: SysReg) -> Result<u64, HvError> {
        self.sys(reg)
    }

    fn set_sys_reg(&self, reg: SysReg, value: u64) -> Result<(), HvError> {
        self.api
            .set_sys_reg(&self.handle, reg, value)
            .map_err(vcpu_err(self.id, "hv_vcpu_set_sys_reg"))
    }
}
