//! vCPU register state at entry, per the arm64 Linux boot protocol
//! (Documentation/arch/arm64/booting.rst) and PSCI `CPU_ON`.

use crate::hypervisor::aarch64::BootRegs;

/// PSTATE.M = EL1 with SP_EL1 ("EL1h").
pub const PSTATE_MODE_EL1H: u64 = 0b0101;
/// PSTATE.F (FIQ masked).
pub const PSTATE_F: u64 = 1 << 6;
/// PSTATE.I (IRQ masked).
pub const PSTATE_I: u64 = 1 << 7;
/// PSTATE.A (SError masked).
pub const PSTATE_A: u64 = 1 << 8;
/// PSTATE.D (debug exceptions masked).
pub const PSTATE_D: u64 = 1 << 9;
/// EL1h with D, A, I and F masked: what the kernel expects at entry (0x3c5).
pub const PSTATE_BOOT: u64 = PSTATE_D | PSTATE_A | PSTATE_I | PSTATE_F | PSTATE_MODE_EL1H;

/// The boot vCPU: x0 = FDT address, x1..x3 = 0, PC = kernel entry.
pub fn boot_regs(kernel_entry: u64, fdt_addr: u64) -> BootRegs {
    BootRegs {
        x: [fdt_addr, 0, 0, 0],
        pc: kernel_entry,
        pstate: PSTATE_BOOT,
    }
}

/// A secondary vCPU started by PSCI `CPU_ON`: x0 = context id, PC = entry.
pub fn cpu_on_regs(entry: u64, context_id: u64) -> BootRegs {
    BootRegs {
        x: [context_id, 0, 0, 0],
        pc: entry,
        pstate: PSTATE_BOOT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_state_follows_the_arm64_boot_protocol() {
        let r = boot_regs(0x4000_0000, 0x5fe0_0000);
        assert_eq!(r.x, [0x5fe0_0000, 0, 0, 0]);
        assert_eq!(r.pc, 0x4000_0000);
        assert_eq!(r.pstate, 0x3c5);
        assert_eq!(r.pstate & 0xf, PSTATE_MODE_EL1H);
    }

    #[test]
    fn cpu_on_passes_the_context_id_in_x0() {
        let r = cpu_on_regs(0x4008_1000, 0xdead);
        assert_eq!((r.x[0], r.pc, r.pstate), (0xdead, 0x4008_1000, PSTATE_BOOT));
    }
}
