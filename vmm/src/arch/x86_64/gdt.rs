//! GDT entries and the segment registers that match them.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::{layout, write_err, ArchError};
use crate::hypervisor::x86_64::{DescriptorTable, Segment};

/// Encodes a GDT descriptor from its flags (access byte in bits 0-7, the
/// granularity nibble in bits 12-15), base and limit.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0xffff)
        | ((limit as u64 & 0xf_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// Decodes a descriptor into the segment register it loads, with `index`
/// as the selector's table index.
pub fn segment(entry: u64, index: u16) -> Segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = (entry >> 55) & 1 == 1;
    Segment {
        base,
        // With 4 KiB granularity the hidden limit is in bytes.
        limit: if g { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        s: (entry >> 44) & 1 == 1,
        dpl: ((entry >> 45) & 3) as u8,
        present: (entry >> 47) & 1 == 1,
        avl: (entry >> 52) & 1 == 1,
        l: (entry >> 53) & 1 == 1,
        db: (entry >> 54) & 1 == 1,
        g,
    }
}

/// GDT for the 64-bit Linux boot protocol: null, 64-bit code, data, TSS.
pub const GDT_64: [u64; 4] = [
    0,
    entry(0xa09b, 0, 0xfffff),
    entry(0xc093, 0, 0xfffff),
    entry(0x808b, 0, 0xfffff),
];

/// GDT for PVH (32-bit protected mode, paging off): null, 32-bit code, data, TSS.
pub const GDT_32: [u64; 4] = [
    0,
    entry(0xc09b, 0, 0xfffff),
    entry(0xc093, 0, 0xfffff),
    entry(0x008b, 0, 0x67),
];

/// Segments loaded from a 4-entry GDT above: (code, data, tss).
pub fn segments(gdt: &[u64; 4]) -> (Segment, Segment, Segment) {
    (segment(gdt[1], 1), segment(gdt[2], 2), segment(gdt[3], 3))
}

/// Writes `gdt` at [`layout::GDT_ADDR`] and returns the GDTR value.
pub fn write<M: GuestMemory>(mem: &M, gdt: &[u64; 4]) -> Result<DescriptorTable, ArchError> {
    let addr = GuestAddress(layout::GDT_ADDR);
    for (i, e) in gdt.iter().enumerate() {
        let at = addr.unchecked_add(i as u64 * 8);
        mem.write_obj(*e, at).map_err(write_err("GDT", at))?;
    }
    Ok(DescriptorTable {
        base: layout::GDT_ADDR,
        limit: (gdt.len() * 8 - 1) as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_descriptors() {
        // Values every x86 boot loader uses.
        assert_eq!(entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn decodes_code64() {
        let s = segment(GDT_64[1], 1);
        assert!(s.l && !s.db && s.present && s.s && s.g);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.selector, 8);
        assert_eq!(s.limit, 0xffff_ffff);
        let c32 = segment(GDT_32[1], 1);
        assert!(!c32.l && c32.db);
        let tss = segment(GDT_32[3], 3);
        assert!(!tss.s && !tss.g);
        assert_eq!(tss.limit, 0x67);
    }

    #[test]
    fn round_trips_base_and_limit() {
        let e = entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment(e, 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.selector, 40);
    }
}
