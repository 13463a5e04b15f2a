//! arm64 register state and the arm64 extension traits of the hypervisor
//! API, shaped so that both HVF (`hypervisor/hvf/`) and a future KVM/arm64
//! backend implement them.
//!
//! # Where the GIC is created
//!
//! The two hypervisors disagree on ordering, so the trait states it rather
//! than hiding it ([`VmAarch64::GIC_ORDER`]):
//!
//! * **HVF** ([`GicOrder::BeforeVcpus`]): `hv_gic_create` (macOS 15+) must run
//!   after `hv_vm_create` and before any `hv_vcpu_create`; the GIC is ready
//!   at once and [`VmAarch64::finalize_gic`] does nothing.
//! * **KVM/arm64** ([`GicOrder::AfterVcpus`]): `KVM_CREATE_DEVICE`
//!   (`KVM_DEV_TYPE_ARM_VGIC_V3`) plus its address attributes after every
//!   vCPU exists (`KVM_ARM_VCPU_INIT` done), then
//!   `KVM_DEV_ARM_VGIC_CTRL_INIT` in [`VmAarch64::finalize_gic`] before any
//!   vCPU's first `KVM_RUN`.
//!
//! A VMM that does
//!
//! ```text
//! if GIC_ORDER == BeforeVcpus { create_gic }
//! create + configure every vCPU (each on its own thread), wait for all
//! if GIC_ORDER == AfterVcpus  { create_gic }
//! finalize_gic
//! run
//! ```
//!
//! is correct on both.
//!
//! # PSCI
//!
//! KVM implements PSCI in the kernel (`KVM_ARM_VCPU_PSCI_0_2`): secondary
//! vCPUs start powered off (`KVM_ARM_VCPU_POWER_OFF`) and `CPU_ON` wakes them
//! inside `KVM_RUN`. HVF hands `HVC` to user space; the HVF backend
//! implements the same behaviour (a secondary's `run` waits until a `CPU_ON`
//! names it), so the VMM runs every vCPU thread from the start on both.

use super::HvError;

/// A core register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    /// X0..=X30 (X30 is LR). `X(31)` is not a register: 31 encodes XZR in
    /// load/store syndromes, and backends treat it as reads-zero.
    X(u8),
    /// The program counter.
    Pc,
    /// PSTATE as SPSR/CPSR bits (NZCV, DAIF, mode).
    Pstate,
}

/// The system registers hutch touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysReg {
    /// Multiprocessor affinity (what PSCI `CPU_ON` and the GIC route by).
    MpidrEl1,
    /// EL1 stack pointer.
    SpEl1,
    /// EL1 system control.
    SctlrEl1,
    /// Virtual timer control (ENABLE, IMASK, ISTATUS).
    CntvCtlEl0,
    /// Virtual timer compare value.
    CntvCvalEl0,
}

/// CNTV_CTL_EL0.ENABLE.
pub const CNTV_CTL_ENABLE: u64 = 1;
/// CNTV_CTL_EL0.IMASK.
pub const CNTV_CTL_IMASK: u64 = 1 << 1;
/// CNTV_CTL_EL0.ISTATUS.
pub const CNTV_CTL_ISTATUS: u64 = 1 << 2;

/// Register state for a vCPU's first instruction: the boot vCPU under the
/// arm64 Linux boot protocol, or a secondary started by PSCI `CPU_ON`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootRegs {
    /// X0..X3 (boot vCPU: FDT address, 0, 0, 0; `CPU_ON`: context id, ...).
    pub x: [u64; 4],
    /// Entry point.
    pub pc: u64,
    /// PSTATE (EL1h with D, A, I and F masked).
    pub pstate: u64,
}

/// Where and how big the GICv3 is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicConfig {
    /// Distributor base address.
    pub dist_addr: u64,
    /// Base of the first redistributor; vCPU n's follows at n x 128 KiB.
    pub redist_addr: u64,
    /// Number of vCPUs the VM will have.
    pub vcpus: u8,
}

/// When [`VmAarch64::create_gic`] must be called relative to vCPU creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicOrder {
    /// Before the first vCPU is created (HVF).
    BeforeVcpus,
    /// After every vCPU is created, before any runs (KVM/arm64).
    AfterVcpus,
}

/// arm64 operations on a VM.
pub trait VmAarch64 {
    /// When the GIC is created; see the module documentation.
    const GIC_ORDER: GicOrder;
    /// Creates the in-kernel GICv3 at `cfg`'s addresses.
    fn create_gic(&self, cfg: &GicConfig) -> Result<(), HvError>;
    /// Finishes GIC setup once every vCPU exists and before any runs
    /// (KVM: `KVM_DEV_ARM_VGIC_CTRL_INIT`; HVF: nothing).
    fn finalize_gic(&self) -> Result<(), HvError>;
    /// Sets the level of SPI `spi` (INTID 32 + `spi`); edge-triggered
    /// devices raise then lower it.
    fn set_spi(&self, spi: u32, level: bool) -> Result<(), HvError>;
}

/// arm64 operations on a vCPU. Like every `Vcpu` call, on the vCPU's thread.
pub trait VcpuAarch64 {
    /// Reads a core register.
    fn get_reg(&self, reg: Reg) -> Result<u64, HvError>;
    /// Writes a core register.
    fn set_reg(&self, reg: Reg, value: u64) -> Result<(), HvError>;
    /// Reads a system register.
    fn get_sys_reg(&self, reg: SysReg) -> Result<u64, HvError>;
    /// Writes a system register.
    fn set_sys_reg(&self, reg: SysReg, value: u64) -> Result<(), HvError>;
    /// Loads the boot state (see `arch::aarch64::regs`).
    fn set_boot_regs(&self, regs: &BootRegs) -> Result<(), HvError> {
        for (i, &value) in regs.x.iter().enumerate() {
            self.set_reg(Reg::X(i as u8), value)?;
        }
        self.set_reg(Reg::Pstate, regs.pstate)?;
        self.set_reg(Reg::Pc, regs.pc)
    }
}
