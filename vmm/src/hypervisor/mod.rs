//! The hypervisor API hutch's VMM is written against.
//!
//! Base traits [`Hypervisor`], [`Vm`] and [`Vcpu`] plus per-architecture
//! extension traits ([`x86_64::VmX86_64`], [`x86_64::VcpuX86_64`]), one
//! folder per backend. Port and MMIO accesses are not returned as data:
//! [`Vcpu::run`] calls an [`ExitHandler`] while it handles the exit. That is
//! what lets backends whose exits need decoding fit without bending:
//!
//! * KVM decodes the access itself and hands over the bytes;
//! * WHP (Windows Hypervisor Platform) reports "instruction emulation needed":
//!   its backend runs `WHvEmulatorTryIoEmulation` / `TryMmioEmulation`, whose
//!   callbacks call the same [`ExitHandler`] methods;
//! * HVF (Apple silicon) reports a data abort: its backend decodes the ESR's
//!   syndrome (register, width, direction), calls the handler, writes the
//!   register back and advances the PC.

#[cfg(feature = "aarch64")]
pub mod aarch64;
#[cfg(feature = "hvf")]
pub mod hvf;
pub mod kvm;
#[cfg(feature = "whp")]
pub mod whp;
pub mod x86_64;

use thiserror::Error;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Errors from a hypervisor backend. Each names the operation and, where
/// there is one, the vCPU, slot or address.
#[derive(Debug, Error)]
pub enum HvError {
    /// The hypervisor device could not be opened.
    #[error("opening {path}: {source}")]
    Open {
        path: &'static str,
        source: std::io::Error,
    },
    /// An operation on the VM failed.
    #[error("{op}: {source}")]
    Vm {
        op: &'static str,
        source: std::io::Error,
    },
    /// An operation on one vCPU failed.
    #[error("vCPU {vcpu}: {op}: {source}")]
    Vcpu {
        vcpu: u8,
        op: &'static str,
        source: std::io::Error,
    },
    /// Mapping guest memory failed.
    #[error("mapping guest memory slot {slot} at {addr:#x} ({size} bytes): {source}")]
    MapMemory {
        slot: u32,
        addr: u64,
        size: u64,
        source: std::io::Error,
    },
}

/// Why [`Vcpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExit {
    /// A port access was handled by the [`ExitHandler`].
    Io,
    /// An MMIO access was handled by the [`ExitHandler`].
    Mmio,
    /// The vCPU halted with interrupts disabled (no in-kernel irqchip).
    Hlt,
    /// Triple fault or another shutdown condition (how `reboot=t` ends).
    Shutdown,
    /// The guest asked for a reset.
    SystemReset,
    /// The guest asked to power off.
    SystemShutdown,
    /// A signal interrupted the run (someone wants the vCPU to stop).
    Interrupted,
    /// The hypervisor could not enter the guest.
    FailEntry { reason: u64 },
    /// The hypervisor hit an internal error (often: an instruction it cannot emulate).
    InternalError { suberror: u32, rip: u64 },
    /// Any other exit, by name.
    Unhandled(String),
}

/// Receives the guest's port and MMIO accesses while a vCPU runs.
pub trait ExitHandler: Sync {
    /// `in` from `port`; fill `data`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// `out` to `port`.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// Load from guest-physical `addr`; fill `data`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// Store to guest-physical `addr`.
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// A hypervisor: creates VMs.
pub trait Hypervisor {
    type Vm: Vm;
    /// Creates a VM whose RAM is `mem`. The VM keeps a reference to `mem`
    /// so that the mapping outlives every vCPU.
    fn create_vm(&self, mem: &GuestMemoryMmap) -> Result<Self::Vm, HvError>;
}

/// A VM: owns guest memory mappings, interrupt routing and vCPUs.
pub trait Vm: Send + Sync {
    type Vcpu: Vcpu;
    /// Creates vCPU `id` (its APIC id on x86). Called on the thread that
    /// will run it.
    fn create_vcpu(&self, id: u8) -> Result<Self::Vcpu, HvError>;
    /// Raises `gsi` (edge) each time `evt` is written.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), HvError>;
    /// Writes `evt` when the guest stores `datamatch` (4 bytes) at MMIO `addr`,
    /// without a vCPU exit to user space where the backend supports it.
    fn register_ioeventfd(&self, evt: &EventFd, addr: u64, datamatch: u32) -> Result<(), HvError>;
}

/// A virtual CPU. Created, configured and run on one thread (HVF requires
/// `hv_vcpu_*` calls on the vCPU's own thread), so it need not be `Send`.
pub trait Vcpu {
    /// The vCPU's index.
    fn id(&self) -> u8;
    /// Runs until the next exit; port and MMIO exits are handled through `io`.
    fn run(&mut self, io: &dyn ExitHandler) -> Result<VcpuExit, HvError>;
}
