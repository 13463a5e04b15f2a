//! arm64 boot, shared by the HVF backend and a future KVM/arm64 backend:
//! the guest memory map (QEMU `virt`-compatible), the flattened device tree
//! and the boot vCPU's register state.

pub mod fdt;
#[cfg(test)]
pub(crate) mod fdt_reader;
pub mod layout;
pub mod regs;
