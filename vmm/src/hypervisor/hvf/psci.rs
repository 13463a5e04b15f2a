//! PSCI 1.0 over HVC: the calls a Linux guest makes and what they become.
//! KVM implements PSCI in the kernel; on HVF the VMM is the firmware.

/// PSCI_VERSION.
pub const PSCI_VERSION: u32 = 0x8400_0000;
/// CPU_OFF.
pub const CPU_OFF: u32 = 0x8400_0002;
/// CPU_ON (32- and 64-bit).
pub const CPU_ON_32: u32 = 0x8400_0003;
pub const CPU_ON_64: u32 = 0xc400_0003;
/// AFFINITY_INFO (32- and 64-bit).
pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
/// MIGRATE_INFO_TYPE.
pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
/// SYSTEM_OFF.
pub const SYSTEM_OFF: u32 = 0x8400_0008;
/// SYSTEM_RESET.
pub const SYSTEM_RESET: u32 = 0x8400_0009;
/// PSCI_FEATURES.
pub const PSCI_FEATURES: u32 = 0x8400_000a;

/// Version 1.0 (major << 16 | minor).
pub const VERSION_1_0: u64 = 0x0001_0000;
/// MIGRATE_INFO_TYPE: no trusted OS that needs migrating.
pub const TOS_NOT_PRESENT_MP: u64 = 2;

/// PSCI return codes.
pub const SUCCESS: i64 = 0;
pub const NOT_SUPPORTED: i64 = -1;
pub const INVALID_PARAMETERS: i64 = -2;
pub const ALREADY_ON: i64 = -4;
pub const ON_PENDING: i64 = -5;

/// AFFINITY_INFO results.
pub const AFFINITY_ON: i64 = 0;
pub const AFFINITY_OFF: i64 = 1;
pub const AFFINITY_ON_PENDING: i64 = 2;

/// A decoded call: what the backend must do, given x0..x3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Put this value in x0 and resume.
    Return(i64),
    /// Power on the vCPU whose MPIDR is `target`.
    CpuOn {
        target: u64,
        entry: u64,
        context_id: u64,
    },
    /// Power off the calling vCPU.
    CpuOff,
    /// Report the power state of the vCPU whose MPIDR is `target`.
    AffinityInfo { target: u64 },
    /// Power the system off.
    SystemOff,
    /// Reset the system.
    SystemReset,
}

/// Decodes a PSCI call from the guest's x0..x3. Arguments of 32-bit calls
/// are the low 32 bits of their registers (SMCCC).
pub fn decode(x: [u64; 4]) -> Call {
    let func = x[0] as u32;
    let arg = |i: usize| {
        if func & 0x4000_0000 == 0 {
            x[i] & 0xffff_ffff
        } else {
            x[i]
        }
    };
    match func {
        PSCI_VERSION => Call::Return(VERSION_1_0 as i64),
        CPU_ON_32 | CPU_ON_64 => Call::CpuOn {
            target: arg(1),
            entry: arg(2),
            context_id: arg(3),
        },
        CPU_OFF => Call::CpuOff,
        AFFINITY_INFO_32 | AFFINITY_INFO_64 => Call::AffinityInfo { target: arg(1) },
        MIGRATE_INFO_TYPE => Call::Return(TOS_NOT_PRESENT_MP as i64),
        SYSTEM_OFF => Call::SystemOff,
        SYSTEM_RESET => Call::SystemReset,
        PSCI_FEATURES => Call::Return(match arg(1) as u32 {
            PSCI_VERSION | CPU_ON_32 | CPU_ON_64 | CPU_OFF | AFFINITY_INFO_32
            | AFFINITY_INFO_64 | MIGRATE_INFO_TYPE | SYSTEM_OFF | SYSTEM_RESET | PSCI_FEATURES => {
                SUCCESS
            }
            _ => NOT_SUPPORTED,
        }),
        // CPU_SUSPEND (0x8400_0001 / 0xc400_0001) needs idle states in the
        // FDT, which hutch does not describe; everything else
        // (SMCCC_VERSION, ...) is unknown.
        _ => Call::Return(NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_unknown_calls() {
        assert_eq!(decode([0x8400_0000, 0, 0, 0]), Call::Return(0x1_0000));
        assert_eq!(decode([0x8000_0000, 0, 0, 0]), Call::Return(-1));
        assert_eq!(decode([0xc400_0001, 0, 0, 0]), Call::Return(-1));
        assert_eq!(decode([0x8400_0006, 0, 0, 0]), Call::Return(2));
    }

    #[test]
    fn cpu_on_arguments_follow_the_calling_convention() {
        assert_eq!(
            decode([0xc400_0003, 0x1, 0x4000_1000, 0xffff_0000_1234]),
            Call::CpuOn {
                target: 1,
                entry: 0x4000_1000,
                context_id: 0xffff_0000_1234
            }
        );
        assert_eq!(
            decode([0x8400_0003, 0xdead_0000_0002, 0x1_4000_1000, 7]),
            Call::CpuOn {
                target: 2,
                entry: 0x4000_1000,
                context_id: 7
            }
        );
    }

    #[test]
    fn features_and_power_calls() {
        assert_eq!(
            decode([PSCI_FEATURES as u64, CPU_ON_64 as u64, 0, 0]),
            Call::Return(0)
        );
        assert_eq!(
            decode([PSCI_FEATURES as u64, 0x8000_0000, 0, 0]),
            Call::Return(-1)
        );
        assert_eq!(decode([0x8400_0008, 0, 0, 0]), Call::SystemOff);
        assert_eq!(decode([0x8400_0009, 0, 0, 0]), Call::SystemReset);
        assert_eq!(decode([0x8400_0002, 0, 0, 0]), Call::CpuOff);
        assert_eq!(
            decode([0xc400_0004, 0x101, 0, 0]),
            Call::AffinityInfo { target: 0x101 }
        );
    }
}
