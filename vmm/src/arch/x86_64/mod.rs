//! x86_64 boot: where things live in guest memory, the two boot protocols
//! (PVH for an ELF `vmlinux`, the 64-bit Linux boot protocol for a `bzImage`),
//! the MP table, CPUID and MSRs.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod pvh;
pub mod regs;
pub mod zero_page;

use thiserror::Error;
use vm_memory::GuestAddress;

/// Errors writing boot structures into guest memory.
#[derive(Debug, Error)]
pub enum ArchError {
    /// A boot structure did not fit or its address is not backed by RAM.
    #[error("writing {what} at guest address {addr:#x}: {source}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    /// More vCPUs than the MP table or APIC ids can describe.
    #[error("{0} vCPUs requested; at most {max} are supported", max = layout::MAX_VCPUS)]
    TooManyVcpus(u8),
    /// The initramfs does not fit below the MMIO gap.
    #[error("initramfs of {size} bytes does not fit in guest memory below {limit:#x}")]
    InitrdTooLarge { size: u64, limit: u64 },
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
}

/// Shorthand used by the writers in this module.
pub(crate) fn write_err(
    what: &'static str,
    addr: GuestAddress,
) -> impl FnOnce(vm_memory::GuestMemoryError) -> ArchError {
    move |source| ArchError::GuestWrite {
        what,
        addr: addr.0,
        source,
    }
}
