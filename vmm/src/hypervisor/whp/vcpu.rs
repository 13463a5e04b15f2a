//! A WHP virtual processor: register set-up and the `WHvRunVirtualProcessor`
//! exit handling.
//!
//! [`Vcpu::run`] loops over exits. Port and MMIO exits go through the
//! instruction emulator to the [`ExitHandler`] and return `Io` / `Mmio`;
//! CPUID, MSR and APIC-EOI exits are answered here and the loop re-enters
//! the guest, as KVM does in the kernel; halt, cancel and the failures
//! return.

// Exit reasons are matched by their windows-sys (Windows SDK) names.
#![allow(non_upper_case_globals)]

use std::cell::RefCell;
use std::sync::Arc;

use windows_sys::Win32::System::Hypervisor::{
    WHvRegisterPendingEvent, WHvRunVpExitReasonCanceled, WHvRunVpExitReasonException,
    WHvRunVpExitReasonHypercall, WHvRunVpExitReasonInvalidVpRegisterValue,
    WHvRunVpExitReasonMemoryAccess, WHvRunVpExitReasonNone, WHvRunVpExitReasonSynicSintDeliverable,
    WHvRunVpExitReasonUnrecoverableException, WHvRunVpExitReasonUnsupportedFeature,
    WHvRunVpExitReasonX64ApicEoi, WHvRunVpExitReasonX64ApicInitSipiTrap,
    WHvRunVpExitReasonX64ApicSmiTrap, WHvRunVpExitReasonX64ApicWriteTrap,
    WHvRunVpExitReasonX64Cpuid, WHvRunVpExitReasonX64Halt, WHvRunVpExitReasonX64InterruptWindow,
    WHvRunVpExitReasonX64IoPortAccess, WHvRunVpExitReasonX64MsrAccess, WHvRunVpExitReasonX64Rdtsc,
    WHvX64PendingEventException, WHvX64RegisterApicLvtLint0, WHvX64RegisterApicLvtLint1,
    WHvX64RegisterFpControlStatus, WHvX64RegisterRax, WHvX64RegisterRbx, WHvX64RegisterRcx,
    WHvX64RegisterRdx, WHvX64RegisterRip, WHvX64RegisterXmmControlStatus, WHV_EMULATOR_STATUS,
    WHV_REGISTER_NAME, WHV_REGISTER_VALUE, WHV_RUN_VP_EXIT_CONTEXT, WHV_RUN_VP_EXIT_REASON,
    WHV_X64_FP_CONTROL_STATUS_REGISTER, WHV_X64_FP_CONTROL_STATUS_REGISTER_0,
    WHV_X64_XMM_CONTROL_STATUS_REGISTER, WHV_X64_XMM_CONTROL_STATUS_REGISTER_0,
};

use super::api::EmulatorHandle;
use super::cpuid;
use super::emulator::{self, CallbackContext};
use super::msr::{self, MsrTable};
use super::partition::Shared;
use super::regs::{self, reg128, reg64, u64_of};
use super::{WhpApi, WhpError, WinHv};
use crate::hypervisor::x86_64::{CpuidEntry, Regs, SpecialRegs, VcpuX86_64};
use crate::hypervisor::{ExitHandler, HvError, Vcpu, VcpuExit};

/// #GP.
const GP_VECTOR: u128 = 13;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;
/// CPUID, RDMSR and WRMSR are two bytes long, should WHP report length 0.
const TWO_BYTE_INSTRUCTION: u64 = 2;

/// The `WHvRegisterPendingEvent` value that injects #GP(0):
/// EventPending, EventType = exception, DeliverErrorCode, Vector 13,
/// ErrorCode 0 (`WHV_X64_PENDING_EXCEPTION_EVENT`).
pub fn pending_gp() -> u128 {
    1 | ((WHvX64PendingEventException as u128 & 7) << 1) | (1 << 8) | (GP_VECTOR << 16)
}

/// What an MSR access came to.
enum MsrResult {
    Read(u64),
    Written,
    Fault,
}

/// A WHP vCPU. `A` is the platform API: [`WinHv`], or a fake in tests.
pub struct WhpVcpu<A: WhpApi = WinHv> {
    id: u8,
    emulator: EmulatorHandle,
    shared: Arc<Shared<A>>,
    cpuid: RefCell<Vec<CpuidEntry>>,
    msrs: RefCell<MsrTable>,
}

impl<A: WhpApi> WhpVcpu<A> {
    pub(super) fn new(id: u8, shared: Arc<Shared<A>>, emulator: EmulatorHandle) -> Self {
        Self {
            id,
            emulator,
            shared,
            cpuid: RefCell::new(Vec::new()),
            msrs: RefCell::new(MsrTable::default()),
        }
    }

    fn vp(&self) -> u32 {
        u32::from(self.id)
    }

    fn set(
        &self,
        names: &[WHV_REGISTER_NAME],
        values: &[WHV_REGISTER_VALUE],
    ) -> Result<(), WhpError> {
        self.shared.api.set_registers(self.vp(), names, values)
    }

    fn get(&self, names: &[WHV_REGISTER_NAME]) -> Result<Vec<WHV_REGISTER_VALUE>, WhpError> {
        let mut values = vec![WHV_REGISTER_VALUE::default(); names.len()];
        self.shared
            .api
            .get_registers(self.vp(), names, &mut values)?;
        Ok(values)
    }

    /// Handles one exit: `Some` returns from `run`, `None` re-enters the guest.
    fn handle(
        &self,
        exit: &WHV_RUN_VP_EXIT_CONTEXT,
        io: &dyn ExitHandler,
    ) -> Result<Option<VcpuExit>, WhpError> {
        let vcpu = self.vp();
        let rip = exit.VpContext.Rip;
        Ok(Some(match exit.ExitReason {
            WHvRunVpExitReasonX64IoPortAccess => {
                self.emulate_io(exit, io)?;
                VcpuExit::Io
            }
            WHvRunVpExitReasonMemoryAccess => {
                self.emulate_mmio(exit, io)?;
                VcpuExit::Mmio
            }
            WHvRunVpExitReasonX64Cpuid => {
                self.cpuid_exit(exit)?;
                return Ok(None);
            }
            WHvRunVpExitReasonX64MsrAccess => {
                self.msr_exit(exit)?;
                return Ok(None);
            }
            WHvRunVpExitReasonX64ApicEoi => {
                // SAFETY: for this exit reason WHP fills the ApicEoi member.
                let vector = unsafe { exit.Anonymous.ApicEoi.InterruptVector };
                self.shared.end_of_interrupt(vector as u8);
                return Ok(None);
            }
            WHvRunVpExitReasonX64InterruptWindow => return Ok(None),
            WHvRunVpExitReasonX64Halt => VcpuExit::Hlt,
            WHvRunVpExitReasonCanceled => VcpuExit::Interrupted,
            // A triple fault (how `reboot=t` ends every hutch guest) comes
            // back as an unrecoverable exception: KVM's shutdown exit.
            WHvRunVpExitReasonUnrecoverableException => VcpuExit::Shutdown,
            WHvRunVpExitReasonInvalidVpRegisterValue => {
                return Err(WhpError::InvalidRegisterValue { vcpu, rip })
            }
            WHvRunVpExitReasonUnsupportedFeature => {
                // SAFETY: for this exit reason WHP fills the UnsupportedFeature member.
                let f = unsafe { exit.Anonymous.UnsupportedFeature };
                return Err(WhpError::UnsupportedFeature {
                    vcpu,
                    feature: f.FeatureCode,
                    parameter: f.FeatureParameter,
                    rip,
                });
            }
            other => VcpuExit::Unhandled(format!("{} at RIP {rip:#x}", exit_name(other))),
        }))
    }

    fn emulate_io(
        &self,
        exit: &WHV_RUN_VP_EXIT_CONTEXT,
        io: &dyn ExitHandler,
    ) -> Result<(), WhpError> {
        // SAFETY: for an X64IoPortAccess exit WHP fills the IoPortAccess member.
        let access = unsafe { &exit.Anonymous.IoPortAccess };
        let ctx = CallbackContext::new(&self.shared, self.vp(), io);
        // SAFETY: the emulator was created with `emulator::callbacks::<A>()`,
        // whose context is a `CallbackContext<A>`; `ctx` lives on this
        // frame for the whole call.
        let status = unsafe {
            self.shared
                .api
                .try_io_emulation(self.emulator, ctx.as_ptr(), &exit.VpContext, access)
        };
        ctx.resume_panic();
        self.check_emulation(
            status?,
            "WHvEmulatorTryIoEmulation",
            "port",
            u64::from(access.PortNumber),
        )
    }

    fn emulate_mmio(
        &self,
        exit: &WHV_RUN_VP_EXIT_CONTEXT,
        io: &dyn ExitHandler,
    ) -> Result<(), WhpError> {
        // SAFETY: for a MemoryAccess exit WHP fills the MemoryAccess member.
        let access = unsafe { &exit.Anonymous.MemoryAccess };
        let ctx = CallbackContext::new(&self.shared, self.vp(), io);
        // SAFETY: as in emulate_io.
        let status = unsafe {
            self.shared
                .api
                .try_mmio_emulation(self.emulator, ctx.as_ptr(), &exit.VpContext, access)
        };
        ctx.resume_panic();
        self.check_emulation(
            status?,
            "WHvEmulatorTryMmioEmulation",
            "guest address",
            access.Gpa,
        )
    }

    fn check_emulation(
        &self,
        status: WHV_EMULATOR_STATUS,
        func: &'static str,
        what: &'static str,
        addr: u64,
    ) -> Result<(), WhpError> {
        let bits = emulator::status_bits(&status);
        if bits & emulator::STATUS_SUCCESS != 0 {
            return Ok(());
        }
        Err(WhpError::Emulation {
            vcpu: self.vp(),
            func,
            what,
            addr,
            status: bits,
        })
    }

    fn cpuid_exit(&self, exit: &WHV_RUN_VP_EXIT_CONTEXT) -> Result<(), WhpError> {
        // SAFETY: for an X64Cpuid exit WHP fills the CpuidAccess member.
        let c = unsafe { exit.Anonymous.CpuidAccess };
        let default = [
            c.DefaultResultRax as u32,
            c.DefaultResultRbx as u32,
            c.DefaultResultRcx as u32,
            c.DefaultResultRdx as u32,
        ];
        let a = cpuid::answer(&self.cpuid.borrow(), c.Rax as u32, c.Rcx as u32, default);
        self.set(
            &[
                WHvX64RegisterRax,
                WHvX64RegisterRbx,
                WHvX64RegisterRcx,
                WHvX64RegisterRdx,
                WHvX64RegisterRip,
            ],
            &[
                reg64(u64::from(a[0])),
                reg64(u64::from(a[1])),
                reg64(u64::from(a[2])),
                reg64(u64::from(a[3])),
                reg64(next_rip(exit)),
            ],
        )
    }

    fn msr_exit(&self, exit: &WHV_RUN_VP_EXIT_CONTEXT) -> Result<(), WhpError> {
        // SAFETY: for an X64MsrAccess exit WHP fills the MsrAccess member.
        let m = unsafe { exit.Anonymous.MsrAccess };
        // SAFETY: both members of the union are one u32.
        let is_write = unsafe { m.AccessInfo.AsUINT32 } & 1 != 0;
        let index = m.MsrNumber;
        let value = (m.Rdx << 32) | (m.Rax & 0xffff_ffff);
        let result = match (msr::register_for(index), is_write) {
            (Some(reg), true) => match self.set(&[reg], &[reg64(value)]) {
                Ok(()) => MsrResult::Written,
                Err(e) => {
                    log::debug!(
                        "vCPU {}: WRMSR {index:#x} = {value:#x} refused: {e}",
                        self.id
                    );
                    MsrResult::Fault
                }
            },
            (Some(reg), false) => MsrResult::Read(u64_of(&self.get(&[reg])?[0])),
            (None, true) if self.msrs.borrow_mut().write(index, value) => MsrResult::Written,
            (None, false) => match self.msrs.borrow().read(index) {
                Some(v) => MsrResult::Read(v),
                None => MsrResult::Fault,
            },
            (None, true) => MsrResult::Fault,
        };
        match result {
            MsrResult::Read(v) => self.set(
                &[WHvX64RegisterRax, WHvX64RegisterRdx, WHvX64RegisterRip],
                &[
                    reg64(v & 0xffff_ffff),
                    reg64(v >> 32),
                    reg64(next_rip(exit)),
                ],
            ),
            MsrResult::Written => self.set(&[WHvX64RegisterRip], &[reg64(next_rip(exit))]),
            MsrResult::Fault => {
                log::debug!(
                    "vCPU {}: {} of unknown MSR {index:#x}: #GP",
                    self.id,
                    if is_write { "WRMSR" } else { "RDMSR" }
                );
                // RIP stays on the instruction: #GP is a fault.
                self.set(&[WHvRegisterPendingEvent], &[reg128(pending_gp())])
            }
        }
    }
}

/// The RIP after the instruction that exited.
fn next_rip(exit: &WHV_RUN_VP_EXIT_CONTEXT) -> u64 {
    // VpContext bitfield: InstructionLength:4, Cr8:4.
    let len = u64::from(exit.VpContext._bitfield & 0xf);
    let len = if len == 0 { TWO_BYTE_INSTRUCTION } else { len };
    exit.VpContext.Rip.wrapping_add(len)
}

fn exit_name(reason: WHV_RUN_VP_EXIT_REASON) -> String {
    let name = match reason {
        WHvRunVpExitReasonNone => "WHvRunVpExitReasonNone",
        WHvRunVpExitReasonException => "WHvRunVpExitReasonException",
        WHvRunVpExitReasonX64Rdtsc => "WHvRunVpExitReasonX64Rdtsc",
        WHvRunVpExitReasonX64ApicSmiTrap => "WHvRunVpExitReasonX64ApicSmiTrap",
        WHvRunVpExitReasonHypercall => "WHvRunVpExitReasonHypercall",
        WHvRunVpExitReasonX64ApicInitSipiTrap => "WHvRunVpExitReasonX64ApicInitSipiTrap",
        WHvRunVpExitReasonX64ApicWriteTrap => "WHvRunVpExitReasonX64ApicWriteTrap",
        WHvRunVpExitReasonSynicSintDeliverable => "WHvRunVpExitReasonSynicSintDeliverable",
        other => return format!("WHvRunVpExitReason {other:#x}"),
    };
    name.to_string()
}

impl<A: WhpApi> Drop for WhpVcpu<A> {
    fn drop(&mut self) {
        // SAFETY: the emulator was created for this vCPU in `create_vcpu`
        // and is destroyed only here.
        unsafe { self.shared.api.destroy_emulator(self.emulator) };
        if let Err(e) = self.shared.api.delete_vp(self.vp()) {
            log::warn!("{e}");
        }
    }
}

impl<A: WhpApi> Vcpu for WhpVcpu<A> {
    fn id(&self) -> u8 {
        self.id
    }

    fn run(&mut self, io: &dyn ExitHandler) -> Result<VcpuExit, HvError> {
        loop {
            let exit = self.shared.api.run_vp(self.vp())?;
            if let Some(done) = self.handle(&exit, io)? {
                return Ok(done);
            }
        }
    }
}

impl<A: WhpApi> VcpuX86_64 for WhpVcpu<A> {
    fn set_regs(&self, r: &Regs) -> Result<(), HvError> {
        let (names, values) = regs::from_regs(r);
        Ok(self.set(&names, &values)?)
    }

    fn set_sregs(&self, s: &SpecialRegs) -> Result<(), HvError> {
        let (names, values) = regs::from_sregs(s);
        Ok(self.set(&names, &values)?)
    }

    fn init_fpu(&self) -> Result<(), HvError> {
        let mut fp = WHV_X64_FP_CONTROL_STATUS_REGISTER::default();
        fp.Anonymous = WHV_X64_FP_CONTROL_STATUS_REGISTER_0 {
            FpControl: 0x37f,
            ..Default::default()
        };
        let mut xmm = WHV_X64_XMM_CONTROL_STATUS_REGISTER::default();
        xmm.Anonymous = WHV_X64_XMM_CONTROL_STATUS_REGISTER_0 {
            XmmStatusControl: 0x1f80,
            XmmStatusControlMask: 0xffff,
            ..Default::default()
        };
        let mut values = [WHV_REGISTER_VALUE::default(); 2];
        values[0].FpControlStatus = fp;
        values[1].XmmControlStatus = xmm;
        Ok(self.set(
            &[
                WHvX64RegisterFpControlStatus,
                WHvX64RegisterXmmControlStatus,
            ],
            &values,
        )?)
    }

    /// Keeps the table for the CPUID exits; only [`cpuid::EXIT_LEAVES`] exit.
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), HvError> {
        *self.cpuid.borrow_mut() = entries.to_vec();
        Ok(())
    }

    /// MSRs WHP keeps as registers are set through it, the ones hutch
    /// emulates in the table; others are not taken.
    fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<usize, HvError> {
        let mut names = Vec::new();
        let mut values = Vec::new();
        let mut taken = 0;
        for &(index, value) in msrs {
            if let Some(reg) = msr::register_for(index) {
                names.push(reg);
                values.push(reg64(value));
                taken += 1;
            } else if self.msrs.borrow_mut().set(index, value) {
                taken += 1;
            }
        }
        if !names.is_empty() {
            self.set(&names, &values)?;
        }
        Ok(taken)
    }

    fn set_lapic_lints(&self) -> Result<(), HvError> {
        let names = [WHvX64RegisterApicLvtLint0, WHvX64RegisterApicLvtLint1];
        let old = self.get(&names)?;
        let values = [
            reg64(u64::from(regs::lvt_with_mode(
                u64_of(&old[0]) as u32,
                APIC_MODE_EXTINT,
            ))),
            reg64(u64::from(regs::lvt_with_mode(
                u64_of(&old[1]) as u32,
                APIC_MODE_NMI,
            ))),
        ];
        Ok(self.set(&names, &values)?)
    }
}
