//! The arm64 guest physical memory map. Device addresses and interrupt
//! numbers follow QEMU's `virt` machine (`-M virt,gic-version=3`), so the
//! same FDT describes a hutch guest and a QEMU `virt` guest.
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x080a_0000  GICv3 redistributors (128 KiB per vCPU, up to 123 vCPUs)
//! 0x0900_0000  PL011 UART (SPI 1)
//! 0x0a00_0000  virtio-mmio windows, 0x200 apart (SPI 16, 17, ...)
//! 0x4000_0000  RAM: the kernel at its start, the initramfs just below the
//!              FDT, the FDT in the last 2 MiB-aligned 2 MiB of RAM
//! ```

use thiserror::Error;
use vm_memory::GuestAddress;

/// GICv3 distributor base.
pub const GIC_DIST_ADDR: u64 = 0x0800_0000;
/// GICv3 distributor size.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// First GICv3 redistributor; one frame pair per vCPU follows.
pub const GIC_REDIST_ADDR: u64 = 0x080a_0000;
/// One vCPU's redistributor (RD_base + SGI_base frames).
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// End of QEMU virt's redistributor region (where the UART starts).
pub const GIC_REDIST_END: u64 = 0x0900_0000;
/// Most vCPUs whose redistributors fit below [`GIC_REDIST_END`] (123).
pub const MAX_VCPUS: u8 = ((GIC_REDIST_END - GIC_REDIST_ADDR) / GIC_REDIST_SIZE_PER_CPU) as u8;

/// PL011 UART base.
pub const UART_ADDR: u64 = 0x0900_0000;
/// PL011 UART register window.
pub const UART_SIZE: u64 = 0x1000;
/// SPI number of the UART (INTID 33).
pub const UART_SPI: u32 = 1;
/// Frequency of the fixed `apb_pclk` clock feeding the UART.
pub const APB_PCLK_HZ: u32 = 24_000_000;

/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
/// Number of virtio-mmio windows in QEMU virt's layout.
pub const VIRTIO_MMIO_COUNT: usize = 32;
/// SPI number of the first virtio-mmio window; later ones follow.
pub const VIRTIO_FIRST_SPI: u32 = 16;

/// INTID of SPI 0 (SPIs are INTIDs 32..1019).
pub const SPI_INTID_BASE: u32 = 32;
/// Highest SPI number (INTID 1019).
pub const MAX_SPI: u32 = 1019 - SPI_INTID_BASE;
/// INTID of PPI 0 (PPIs are INTIDs 16..31).
pub const PPI_INTID_BASE: u32 = 16;
/// Architected timer PPIs, in the order the `arm,armv8-timer` binding lists
/// them: secure physical, non-secure physical, virtual, hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// PPI of the virtual timer (INTID 27), the one HVF reports as
/// `HV_EXIT_REASON_VTIMER_ACTIVATED`.
pub const VTIMER_PPI: u32 = 11;

/// Start of RAM.
pub const RAM_START: u64 = 0x4000_0000;
/// End of the RAM window of QEMU virt's low memory map (1 TiB).
pub const RAM_END: u64 = 0x100_0000_0000;
/// Most RAM hutch places (255 GiB).
pub const MAX_RAM_SIZE: u64 = RAM_END - RAM_START;
/// Where the kernel `Image` goes: the start of RAM, 2 MiB-aligned as the
/// arm64 boot protocol wants. Add the image header's `text_offset` (0 for
/// kernels since 5.8; see [`kernel_addr`]).
pub const KERNEL_ADDR: u64 = RAM_START;
/// The largest FDT the arm64 boot protocol accepts (2 MiB).
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
/// Alignment of the FDT slot (the kernel maps it with 2 MiB blocks).
pub const FDT_ALIGN: u64 = 0x20_0000;
/// Alignment of the initramfs.
pub const INITRD_ALIGN: u64 = 0x1000;

/// Errors placing boot images in guest RAM.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// RAM is too small for even the FDT slot, or larger than the map allows.
    #[error("{size:#x} bytes of RAM at {RAM_START:#x}: need at least {min:#x} and at most {MAX_RAM_SIZE:#x}")]
    RamSize { size: u64, min: u64 },
    /// The initramfs does not fit between the kernel and the FDT.
    #[error("initramfs of {size} bytes does not fit below the FDT at {fdt:#x} (above {floor:#x})")]
    InitrdTooLarge { size: u64, fdt: u64, floor: u64 },
}

/// The RAM region of a guest with `mem_size` bytes: one region from
/// [`RAM_START`].
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    vec![(GuestAddress(RAM_START), mem_size)]
}

/// Total size of the redistributor frames of `cpus` vCPUs.
pub fn gic_redist_size(cpus: u8) -> u64 {
    u64::from(cpus) * GIC_REDIST_SIZE_PER_CPU
}

/// Address of the `index`-th virtio-mmio window.
pub fn virtio_mmio_addr(index: usize) -> u64 {
    VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE
}

/// SPI number of the `index`-th virtio-mmio window.
pub fn virtio_mmio_spi(index: usize) -> u32 {
    VIRTIO_FIRST_SPI + index as u32
}

/// GIC INTID of SPI `spi` (what `hv_gic_set_spi` and `KVM_IRQ_LINE` take).
pub fn spi_intid(spi: u32) -> u32 {
    SPI_INTID_BASE + spi
}

/// MPIDR_EL1 affinity of vCPU `id`: 16 vCPUs per cluster (Aff0 0..15),
/// which is what KVM assigns and what QEMU virt uses with GICv3.
pub fn mpidr(id: u8) -> u64 {
    let id = u64::from(id);
    ((id / 16) << 8) | (id % 16)
}

/// The vCPU index whose [`mpidr`] is `mpidr` (PSCI `CPU_ON` names its
/// target by MPIDR), or `None` if no vCPU of ours has it.
pub fn vcpu_of_mpidr(mpidr: u64) -> Option<u8> {
    let aff0 = mpidr & 0xff;
    let aff1 = (mpidr >> 8) & 0xff;
    // Aff2 (bits 16..24) and Aff3 (32..40) are always 0 here.
    if aff0 >= 16 || mpidr & 0xff_00ff_0000 != 0 {
        return None;
    }
    u8::try_from(aff1 * 16 + aff0).ok()
}

/// Where to load a kernel `Image` whose header says `text_offset`.
pub fn kernel_addr(text_offset: u64) -> u64 {
    KERNEL_ADDR + text_offset
}

/// Where the FDT goes: the last 2 MiB slot of RAM.
pub fn fdt_addr(mem_size: u64) -> Result<u64, LayoutError> {
    if !(2 * FDT_ALIGN..=MAX_RAM_SIZE).contains(&mem_size) {
        return Err(LayoutError::RamSize {
            size: mem_size,
            min: 2 * FDT_ALIGN,
        });
    }
    Ok(RAM_START + (mem_size & !(FDT_ALIGN - 1)) - FDT_MAX_SIZE)
}

/// Where an initramfs of `size` bytes goes: just below the FDT, page
/// aligned, and above `kernel_end` (the end of the loaded kernel image
/// plus whatever room it needs for its BSS).
pub fn initrd_addr(mem_size: u64, size: u64, kernel_end: u64) -> Result<u64, LayoutError> {
    let fdt = fdt_addr(mem_size)?;
    let floor = kernel_end.max(RAM_START);
    let too_large = LayoutError::InitrdTooLarge { size, fdt, floor };
    let addr = fdt.checked_sub(size).ok_or(too_large.clone())? & !(INITRD_ALIGN - 1);
    if addr < floor {
        return Err(too_large);
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_match_qemu_virt() {
        assert_eq!(GIC_DIST_ADDR, 0x0800_0000);
        assert_eq!(GIC_REDIST_ADDR, 0x080a_0000);
        assert_eq!(UART_ADDR, 0x0900_0000);
        assert_eq!(MAX_VCPUS, 123);
        assert!(GIC_REDIST_ADDR + gic_redist_size(MAX_VCPUS) <= UART_ADDR);
        assert_eq!(virtio_mmio_addr(0), 0x0a00_0000);
        assert_eq!(virtio_mmio_addr(31), 0x0a00_3e00);
        assert_eq!(virtio_mmio_spi(0), 16);
        assert_eq!(spi_intid(UART_SPI), 33);
        assert_eq!(PPI_INTID_BASE + VTIMER_PPI, 27);
    }

    #[test]
    fn mpidr_round_trips() {
        assert_eq!(mpidr(0), 0);
        assert_eq!(mpidr(15), 15);
        assert_eq!(mpidr(16), 0x100);
        assert_eq!(mpidr(122), 0x70a);
        for id in 0..MAX_VCPUS {
            assert_eq!(vcpu_of_mpidr(mpidr(id)), Some(id));
        }
        assert_eq!(vcpu_of_mpidr(0x10), None);
        assert_eq!(vcpu_of_mpidr(0x1_0000), None);
    }

    #[test]
    fn fdt_sits_in_the_last_2mib_slot() {
        assert_eq!(fdt_addr(512 << 20), Ok(RAM_START + (510 << 20)));
        // Not a multiple of 2 MiB: the slot rounds down.
        assert_eq!(fdt_addr((512 << 20) + 4096), Ok(RAM_START + (510 << 20)));
        assert!(fdt_addr(1 << 20).is_err());
        assert!(fdt_addr(MAX_RAM_SIZE + 1).is_err());
        assert_eq!(
            ram_regions(1 << 30),
            vec![(GuestAddress(RAM_START), 1 << 30)]
        );
    }

    #[test]
    fn initrd_sits_below_the_fdt_above_the_kernel() {
        let mem = 256 << 20;
        let fdt = fdt_addr(mem).unwrap();
        let a = initrd_addr(mem, 10_000, RAM_START + (32 << 20)).unwrap();
        assert_eq!(a % INITRD_ALIGN, 0);
        assert!(a + 10_000 <= fdt);
        assert!(fdt - (a + 10_000) < INITRD_ALIGN);
        assert!(matches!(
            initrd_addr(mem, 250 << 20, RAM_START + (32 << 20)),
            Err(LayoutError::InitrdTooLarge { .. })
        ));
        assert!(initrd_addr(mem, u64::MAX, 0).is_err());
    }
}
