//! The WHP backend's errors. Each names the WHv function and, where there
//! is one, the vCPU, guest address or GSI.

use thiserror::Error;
use windows_sys::core::HRESULT;

use crate::hypervisor::HvError;

/// An error from the WHP backend.
#[derive(Debug, Error)]
pub enum WhpError {
    /// WHP is not installed or not enabled on this host.
    #[error("the Windows Hypervisor Platform is not available (WHvGetCapability: HypervisorPresent is false); enable the optional feature \"Windows Hypervisor Platform\"")]
    NotPresent,
    /// A call on the partition failed.
    #[error("{func}: HRESULT {hr:#010x}")]
    Partition { func: &'static str, hr: HRESULT },
    /// A call on one vCPU failed.
    #[error("vCPU {vcpu}: {func}: HRESULT {hr:#010x}")]
    Vcpu {
        vcpu: u32,
        func: &'static str,
        hr: HRESULT,
    },
    /// Mapping one guest memory region failed.
    #[error("WHvMapGpaRange of slot {slot} at guest address {gpa:#x} ({size} bytes): HRESULT {hr:#010x}")]
    MapGpa {
        slot: u32,
        gpa: u64,
        size: u64,
        hr: HRESULT,
    },
    /// The instruction emulator returned without emulating the access.
    #[error("vCPU {vcpu}: {func} could not emulate the access to {what} {addr:#x} (emulator status {status:#x})")]
    Emulation {
        vcpu: u32,
        func: &'static str,
        what: &'static str,
        addr: u64,
        status: u32,
    },
    /// The guest state holds a value the hypervisor rejects.
    #[error("vCPU {vcpu}: WHvRunVirtualProcessor: invalid register value (RIP {rip:#x})")]
    InvalidRegisterValue { vcpu: u32, rip: u64 },
    /// The guest used a feature WHP does not support.
    #[error("vCPU {vcpu}: WHvRunVirtualProcessor: unsupported feature {feature} (parameter {parameter:#x}) at RIP {rip:#x}")]
    UnsupportedFeature {
        vcpu: u32,
        feature: i32,
        parameter: u64,
        rip: u64,
    },
    /// A vCPU index past the processor count the partition was set up with.
    #[error("vCPU {vcpu}: WHvCreateVirtualProcessor: the partition was set up for {max} vCPUs")]
    TooManyVcpus { vcpu: u32, max: u32 },
    /// An interrupt line that is not an IOAPIC pin.
    #[error("GSI {gsi}: not an IOAPIC pin (the IOAPIC has {pins})")]
    NoSuchGsi { gsi: u32, pins: usize },
    /// Starting the thread that forwards an irqfd failed.
    #[error("irqfd for GSI {gsi}: {source}")]
    Irqfd { gsi: u32, source: std::io::Error },
}

impl WhpError {
    /// The HRESULT to hand back to WHP from a callback.
    pub fn hresult(&self) -> HRESULT {
        match self {
            Self::Partition { hr, .. } | Self::Vcpu { hr, .. } | Self::MapGpa { hr, .. } => *hr,
            _ => windows_sys::Win32::Foundation::E_FAIL,
        }
    }
}

impl From<WhpError> for HvError {
    fn from(e: WhpError) -> Self {
        let other = |msg: String| std::io::Error::other(msg);
        match e {
            WhpError::Vcpu { vcpu, func, hr } => HvError::Vcpu {
                vcpu: vcpu as u8,
                op: func,
                source: other(format!("HRESULT {hr:#010x}")),
            },
            WhpError::Partition { func, hr } => HvError::Vm {
                op: func,
                source: other(format!("HRESULT {hr:#010x}")),
            },
            WhpError::MapGpa {
                slot,
                gpa,
                size,
                hr,
            } => HvError::MapMemory {
                slot,
                addr: gpa,
                size,
                source: other(format!("WHvMapGpaRange: HRESULT {hr:#010x}")),
            },
            WhpError::Emulation {
                vcpu,
                func,
                what,
                addr,
                status,
            } => HvError::Vcpu {
                vcpu: vcpu as u8,
                op: func,
                source: other(format!(
                    "could not emulate the access to {what} {addr:#x} (emulator status {status:#x})"
                )),
            },
            WhpError::InvalidRegisterValue { vcpu, rip } => HvError::Vcpu {
                vcpu: vcpu as u8,
                op: "WHvRunVirtualProcessor",
                source: other(format!("invalid register value (RIP {rip:#x})")),
            },
            WhpError::UnsupportedFeature {
                vcpu,
                feature,
                parameter,
                rip,
            } => HvError::Vcpu {
                vcpu: vcpu as u8,
                op: "WHvRunVirtualProcessor",
                source: other(format!(
                    "unsupported feature {feature} (parameter {parameter:#x}) at RIP {rip:#x}"
                )),
            },
            WhpError::TooManyVcpus { vcpu, max } => HvError::Vcpu {
                vcpu: vcpu as u8,
                op: "WHvCreateVirtualProcessor",
                source: other(format!("the partition was set up for {max} vCPUs")),
            },
            e @ (WhpError::NotPresent | WhpError::NoSuchGsi { .. } | WhpError::Irqfd { .. }) => {
                HvError::Vm {
                    op: "Windows Hypervisor Platform",
                    source: std::io::Error::other(e),
                }
            }
        }
    }
}
