//! What goes wrong in the HVF backend. These travel inside
//! [`HvError`](crate::hypervisor::HvError) (as its `source`), whose `op`
//! names the `hv_*` function or the step and whose `vcpu` names the vCPU.

use thiserror::Error;

use crate::hypervisor::HvError;

/// Errors of the HVF backend.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HvfError {
    /// An `hv_*` call returned something other than `HV_SUCCESS`.
    #[error("{}", status_name(*.0))]
    Status(i32),
    /// HVF allows one VM per process and one already exists.
    #[error(
        "a Hypervisor.framework VM already exists in this process (HVF allows one per process)"
    )]
    SecondVm,
    /// Guest memory that `hv_vm_map` cannot take.
    #[error("guest memory at {addr:#x} ({size:#x} bytes, host {host:#x}) is not aligned to the {page:#x}-byte HVF page")]
    Unaligned {
        addr: u64,
        size: u64,
        host: u64,
        page: u64,
    },
    /// The GIC must exist before any vCPU (HVF) and only once.
    #[error("the GIC must be created once, before the first vCPU ({0})")]
    GicOrder(&'static str),
    /// HVF's redistributor region would overlap the devices above it.
    #[error("HVF's GIC redistributor region at {base:#x} is {size:#x} bytes and would run past {limit:#x} (the PL011)")]
    GicLayout { base: u64, size: u64, limit: u64 },
    /// A data abort without a valid instruction syndrome: the access cannot
    /// be emulated from the ESR alone.
    #[error("MMIO access at guest address {ipa:#x} (PC {pc:#x}, ESR {esr:#x}) has no instruction syndrome (ISV=0; e.g. a load/store pair or writeback); refusing to emulate it")]
    NoSyndrome { ipa: u64, pc: u64, esr: u64 },
    /// The guest executed from an address that is not RAM.
    #[error("instruction abort at guest address {ipa:#x} (PC {pc:#x}, ESR {esr:#x})")]
    InstructionAbort { ipa: u64, pc: u64, esr: u64 },
    /// An exception class the backend does not handle.
    #[error("unhandled exception class {ec:#x} (ESR {esr:#x}) at PC {pc:#x}")]
    UnhandledException { ec: u8, esr: u64, pc: u64 },
    /// A register index that does not exist.
    #[error("no such register X{0}")]
    NoSuchRegister(u8),
}

/// The name of an `hv_return_t`.
pub fn status_name(code: i32) -> String {
    let name = match code as u32 {
        0 => "HV_SUCCESS",
        0xfae9_4001 => "HV_ERROR",
        0xfae9_4002 => "HV_BUSY",
        0xfae9_4003 => "HV_BAD_ARGUMENT",
        0xfae9_4004 => "HV_ILLEGAL_GUEST_STATE",
        0xfae9_4005 => "HV_NO_RESOURCES",
        0xfae9_4006 => "HV_NO_DEVICE",
        0xfae9_4007 => "HV_DENIED",
        0xfae9_4008 => "HV_FAULT",
        0xfae9_400f => "HV_UNSUPPORTED",
        _ => "unknown hv_return_t",
    };
    format!("{name} ({:#x})", code as u32)
}

/// Turns an [`HvfError`] from VM-wide operation `op` into an [`HvError`].
pub(crate) fn vm_err(op: &'static str) -> impl FnOnce(HvfError) -> HvError {
    move |e| HvError::Vm {
        op,
        source: std::io::Error::other(e),
    }
}

/// Turns an [`HvfError`] from operation `op` on vCPU `vcpu` into an [`HvError`].
pub(crate) fn vcpu_err(vcpu: u8, op: &'static str) -> impl FnOnce(HvfError) -> HvError {
    move |e| HvError::Vcpu {
        vcpu,
        op,
        source: std::io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_call_vcpu_and_address() {
        let e = vcpu_err(3, "hv_vcpu_run")(HvfError::Status(0xfae9_4003_u32 as i32));
        assert_eq!(
            e.to_string(),
            "vCPU 3: hv_vcpu_run: HV_BAD_ARGUMENT (0xfae94003)"
        );
        let e = vcpu_err(0, "emulating MMIO")(HvfError::NoSyndrome {
            ipa: 0x0a00_0050,
            pc: 0x4000_1234,
            esr: 0x9300_0046,
        });
        assert!(e.to_string().contains("0xa000050"), "{e}");
        assert!(e.to_string().starts_with("vCPU 0: emulating MMIO"), "{e}");
        let e = vm_err("hv_vm_create")(HvfError::SecondVm);
        assert!(e.to_string().contains("one per process"), "{e}");
    }
}
