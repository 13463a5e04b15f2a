//! MSRs: the ones WHP keeps as vCPU registers, and a small table of ones
//! hutch answers itself when WHP exits with `X64MsrAccess`. Any other MSR
//! gets #GP, as on hardware that lacks it.

use windows_sys::Win32::System::Hypervisor::{
    WHvX64RegisterApicBase, WHvX64RegisterCstar, WHvX64RegisterEfer, WHvX64RegisterKernelGsBase,
    WHvX64RegisterLstar, WHvX64RegisterMsrMtrrCap, WHvX64RegisterMsrMtrrDefType, WHvX64RegisterPat,
    WHvX64RegisterSfmask, WHvX64RegisterStar, WHvX64RegisterSysenterCs, WHvX64RegisterSysenterEip,
    WHvX64RegisterSysenterEsp, WHvX64RegisterTsc, WHvX64RegisterTscAux, WHV_REGISTER_NAME,
};

/// IA32_MISC_ENABLE.
pub const MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// The WHP register that holds MSR `index`, if WHP keeps it as one.
pub fn register_for(index: u32) -> Option<WHV_REGISTER_NAME> {
    Some(match index {
        0x10 => WHvX64RegisterTsc,
        0x1b => WHvX64RegisterApicBase,
        0xfe => WHvX64RegisterMsrMtrrCap,
        0x174 => WHvX64RegisterSysenterCs,
        0x175 => WHvX64RegisterSysenterEsp,
        0x176 => WHvX64RegisterSysenterEip,
        0x277 => WHvX64RegisterPat,
        0x2ff => WHvX64RegisterMsrMtrrDefType,
        0xc000_0080 => WHvX64RegisterEfer,
        0xc000_0081 => WHvX64RegisterStar,
        0xc000_0082 => WHvX64RegisterLstar,
        0xc000_0083 => WHvX64RegisterCstar,
        0xc000_0084 => WHvX64RegisterSfmask,
        0xc000_0102 => WHvX64RegisterKernelGsBase,
        0xc000_0103 => WHvX64RegisterTscAux,
        _ => return None,
    })
}

/// What the guest may do with an emulated MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadWrite,
    ReadOnly,
    /// Writes are accepted and dropped (microcode update triggers).
    WriteIgnored,
}

/// (index, reset value, access) of each MSR hutch emulates.
const EMULATED: &[(u32, u64, Access)] = &[
    (MISC_ENABLE, MISC_ENABLE_FAST_STRING, Access::ReadWrite),
    // IA32_PLATFORM_ID.
    (0x17, 0, Access::ReadOnly),
    // IA32_FEATURE_CONTROL: locked, VMX off.
    (0x3a, 1, Access::ReadOnly),
    // IA32_BIOS_UPDT_TRIG and IA32_BIOS_SIGN_ID (microcode revision 0).
    (0x79, 0, Access::WriteIgnored),
    (0x8b, 0, Access::WriteIgnored),
    // IA32_MCG_CAP (no banks) and IA32_MCG_STATUS.
    (0x179, 0, Access::ReadOnly),
    (0x17a, 0, Access::ReadWrite),
];

/// One vCPU's emulated MSRs.
#[derive(Debug, Clone)]
pub struct MsrTable {
    values: Vec<(u32, u64, Access)>,
}

impl Default for MsrTable {
    fn default() -> Self {
        Self {
            values: EMULATED.to_vec(),
        }
    }
}

impl MsrTable {
    /// The value of `index`, or None (#GP) if hutch does not emulate it.
    pub fn read(&self, index: u32) -> Option<u64> {
        self.values
            .iter()
            .find(|(i, ..)| *i == index)
            .map(|(_, v, _)| *v)
    }

    /// A guest write; false (#GP) for unknown or read-only MSRs.
    pub fn write(&mut self, index: u32, value: u64) -> bool {
        match self.values.iter_mut().find(|(i, ..)| *i == index) {
            Some((_, v, Access::ReadWrite)) => {
                *v = value;
                true
            }
            Some((_, _, Access::WriteIgnored)) => true,
            _ => false,
        }
    }

    /// A write from the VMM (`set_msrs`): also sets read-only MSRs.
    pub fn set(&mut self, index: u32, value: u64) -> bool {
        match self.values.iter_mut().find(|(i, ..)| *i == index) {
            Some((_, v, _)) => {
                *v = value;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulated_msrs_read_write_and_refuse() {
        let mut t = MsrTable::default();
        assert_eq!(t.read(MISC_ENABLE), Some(1));
        assert!(t.write(MISC_ENABLE, 0x81));
        assert_eq!(t.read(MISC_ENABLE), Some(0x81));
        assert!(!t.write(0x3a, 5), "read-only");
        assert_eq!(t.read(0x3a), Some(1));
        assert!(t.write(0x8b, 0x1234), "accepted");
        assert_eq!(t.read(0x8b), Some(0), "and dropped");
        assert_eq!(t.read(0xdead_beef), None);
        assert!(!t.write(0xdead_beef, 0));
        assert!(t.set(0x3a, 5), "the VMM may set it");
        assert!(!t.set(0x4321, 0));
    }

    #[test]
    fn boot_msrs_are_registers_or_emulated() {
        let t = MsrTable::default();
        for (index, _) in crate::arch::x86_64::msr::boot_msrs() {
            assert!(
                register_for(index).is_some() || t.read(index).is_some(),
                "MSR {index:#x} from boot_msrs has nowhere to go"
            );
        }
    }
}
