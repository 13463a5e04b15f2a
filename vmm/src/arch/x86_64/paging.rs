//! Identity page tables for the 64-bit entry: the first GiB mapped with
//! 2 MiB pages, enough for the kernel to reach its own page tables.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{layout, write_err, ArchError};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// The three tables as (address, entries) to write: PML4 -> PDPT -> PD.
pub fn tables() -> Vec<(u64, Vec<u64>)> {
    let pml4 = vec![layout::PDPT_ADDR | PRESENT_RW];
    let pdpt = vec![layout::PD_ADDR | PRESENT_RW];
    let pd = (0..512u64)
        .map(|i| (i << 21) | PRESENT_RW | PAGE_SIZE_2M)
        .collect();
    vec![
        (layout::PML4_ADDR, pml4),
        (layout::PDPT_ADDR, pdpt),
        (layout::PD_ADDR, pd),
    ]
}

/// Writes the tables; returns the CR3 value.
pub fn write<M: GuestMemory>(mem: &M) -> Result<u64, ArchError> {
    for (base, entries) in tables() {
        for (i, e) in entries.iter().enumerate() {
            let at = GuestAddress(base + i as u64 * 8);
            mem.write_obj(*e, at).map_err(write_err("page table", at))?;
        }
    }
    Ok(layout::PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the written tables like the MMU does for `va`.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 511) * 8))
            .ok()?;
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 511) * 8))
            .ok()?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 511) * 8))
            .ok()?;
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn identity_maps_the_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = write(&mem).unwrap();
        for va in [0u64, 0x7000, 0x10_0000, 0x1234_5678, (1 << 30) - 1] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 30), None);
    }
}
