//! Intel MultiProcessor Specification 1.4 tables: how a kernel without ACPI
//! finds the application processors and the IOAPIC.
//!
//! The floating pointer structure sits at the start of the BIOS area
//! (0xf0000), which the kernel scans, and the configuration table follows it.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{layout, write_err, ArchError};

/// Where the floating pointer structure is written.
pub const MPTABLE_ADDR: u64 = 0xf0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201; // FPU, APIC
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The IOAPIC's id: the first one after the vCPUs' APIC ids.
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus
}

/// Builds the floating pointer and configuration table for `vcpus` CPUs,
/// as one blob to be written at [`MPTABLE_ADDR`].
pub fn build(vcpus: u8) -> Result<Vec<u8>, ArchError> {
    if vcpus == 0 || vcpus > layout::MAX_VCPUS {
        return Err(ArchError::TooManyVcpus(vcpus));
    }
    let ioapic = ioapic_id(vcpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        entries.extend_from_slice(&[
            0,
            id,
            APIC_VERSION,
            CPU_ENABLED | if id == 0 { CPU_BOOT } else { 0 },
        ]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for pin in 0..layout::IOAPIC_PINS as u8 {
        let kind = if pin == 0 {
            INT_TYPE_EXTINT
        } else {
            INT_TYPE_INT
        };
        entries.extend_from_slice(&[3, kind, 0, 0, 0, pin, ioapic, pin]);
        count += 1;
    }
    entries.extend_from_slice(&[4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE_ADDR + 16;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"HUTCH   ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(layout::LAPIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table
    header.extend_from_slice(&[0, 0]);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Writes the MP table for `vcpus` CPUs.
pub fn write<M: GuestMemory>(mem: &M, vcpus: u8) -> Result<(), ArchError> {
    let blob = build(vcpus)?;
    let at = GuestAddress(MPTABLE_ADDR);
    mem.write_slice(&blob, at)
        .map_err(write_err("MP table", at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        for n in [1u8, 2, 4, 64, layout::MAX_VCPUS] {
            let b = build(n).unwrap();
            assert_eq!(&b[0..4], b"_MP_");
            assert_eq!(sum(&b[0..16]), 0, "mpf checksum, {n} cpus");
            let ptr = u32::from_le_bytes(b[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_ADDR + 16);
            let t = &b[16..];
            assert_eq!(&t[0..4], b"PCMP");
            let len = u16::from_le_bytes([t[4], t[5]]) as usize;
            assert_eq!(len, t.len());
            assert_eq!(sum(t), 0, "table checksum, {n} cpus");
            let count = u16::from_le_bytes([t[34], t[35]]) as usize;
            assert_eq!(count, n as usize + 2 + 24 + 2);
        }
    }

    #[test]
    fn one_boot_processor_and_apic_ids_in_order() {
        let b = build(3).unwrap();
        let entries = &b[16 + 44..];
        for id in 0..3usize {
            let e = &entries[id * 20..id * 20 + 20];
            assert_eq!(e[0], 0, "processor entry");
            assert_eq!(e[1] as usize, id);
            assert_eq!(e[3] & CPU_BOOT != 0, id == 0);
            assert!(e[3] & CPU_ENABLED != 0);
        }
        let io = &entries[60 + 8..60 + 16];
        assert_eq!(io[0], 2);
        assert_eq!(io[1], ioapic_id(3));
    }

    #[test]
    fn rejects_zero_and_too_many() {
        assert!(matches!(build(0), Err(ArchError::TooManyVcpus(0))));
        assert!(matches!(build(255), Err(ArchError::TooManyVcpus(255))));
    }

    #[test]
    fn largest_table_fits_below_one_mib() {
        let b = build(layout::MAX_VCPUS).unwrap();
        assert!(MPTABLE_ADDR + b.len() as u64 <= layout::HIMEM_START);
    }
}
