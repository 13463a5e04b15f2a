//! The guest physical memory map.
//!
//! ```text
//! 0x0000_0500  GDT
//! 0x0000_6000  PVH start info, module list, memory map
//! 0x0000_7000  zero page (boot_params) for the Linux boot protocol
//! 0x0000_9000  identity page tables (PML4, PDPT, PD) for 64-bit entry
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP floating pointer and configuration table
//! 0x0010_0000  kernel (1 MiB)
//! ...          initramfs, at the top of low RAM
//! 0xc000_0000  MMIO gap: virtio-mmio devices at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when the guest has more than 3 GiB
//! ```

use vm_memory::GuestAddress;

/// GDT with null, code and data descriptors.
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`, then the module list and the memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Page-map level 4.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory (2 MiB pages covering the first GiB).
pub const PD_ADDR: u64 = 0xb000;
/// Boot stack top for the 64-bit entry (unused by PVH).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// x86 Linux 6.1 `COMMAND_LINE_SIZE`, including the NUL.
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole: the kernel is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of the first virtio-mmio device; later ones follow.
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// GSI of the serial port (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Number of IOAPIC pins.
pub const IOAPIC_PINS: u32 = 24;
/// Most vCPUs hutch configures (APIC ids are one byte; the IOAPIC takes the next id).
pub const MAX_VCPUS: u8 = 254;

/// The RAM regions of a guest with `mem_size` bytes: one below the MMIO gap
/// and, if needed, one above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), mem_size - MMIO_GAP_START),
        ]
    }
}

/// End of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// Address of the `index`-th virtio-mmio window.
pub fn virtio_mmio_addr(index: usize) -> u64 {
    VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE
}

/// One e820 / PVH memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// 1 = RAM, 2 = reserved.
    pub kind: u32,
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The memory map both boot protocols hand to the kernel.
pub fn memory_map(mem_size: u64) -> Vec<MemEntry> {
    let mut map = vec![
        MemEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemEntry {
            addr: EBDA_START,
            size: 0xa0000 - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = low_ram_end(mem_size);
    if low_end > HIMEM_START {
        map.push(MemEntry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(MemEntry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let r = ram_regions(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            r[1],
            (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
        );
        let total: u64 = r.iter().map(|x| x.1).sum();
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn memory_map_covers_ram_without_holes_misreported() {
        let map = memory_map(512 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            MemEntry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, 512 << 20);
        let big = memory_map(6 << 30);
        assert_eq!(big.last().unwrap().addr, MMIO_GAP_END);
        assert_eq!(big.last().unwrap().size, (6u64 << 30) - MMIO_GAP_START);
        // Nothing is RAM inside the MMIO gap.
        for e in big.iter().filter(|e| e.kind == E820_RAM) {
            assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
        }
    }

    #[test]
    fn virtio_windows_stay_in_the_gap() {
        assert_eq!(virtio_mmio_addr(0), 0xd000_0000);
        assert_eq!(virtio_mmio_addr(3), 0xd000_3000);
        assert!(virtio_mmio_addr(16) < IOAPIC_ADDR);
    }
}
