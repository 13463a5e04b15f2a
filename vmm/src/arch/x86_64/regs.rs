//! The boot vCPU's register state for each boot protocol.

use super::{gdt, layout};
use crate::hypervisor::x86_64::{DescriptorTable, Regs, SpecialRegs};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 2;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// PVH: 32-bit protected mode, paging off, EBX = start info.
    Pvh { entry: u64, start_info: u64 },
    /// Linux 64-bit boot protocol: long mode, identity paging, RSI = zero page.
    Linux64 { entry: u64, cr3: u64 },
}

/// General registers for the boot vCPU.
pub fn regs(entry: Entry) -> Regs {
    match entry {
        Entry::Pvh { entry, start_info } => Regs {
            rip: entry,
            rbx: start_info,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
        Entry::Linux64 { entry, .. } => Regs {
            rip: entry,
            rsi: layout::ZERO_PAGE_ADDR,
            rsp: layout::BOOT_STACK,
            rbp: layout::BOOT_STACK,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
    }
}

/// Segment and control registers for the boot vCPU; `gdtr` is where the
/// matching GDT ([`gdt::GDT_32`] or [`gdt::GDT_64`]) was written.
pub fn sregs(entry: Entry, gdtr: DescriptorTable) -> SpecialRegs {
    let table = match entry {
        Entry::Pvh { .. } => &gdt::GDT_32,
        Entry::Linux64 { .. } => &gdt::GDT_64,
    };
    let (code, data, tss) = gdt::segments(table);
    let mut s = SpecialRegs {
        cs: code,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: tss,
        gdt: gdtr,
        idt: DescriptorTable { base: 0, limit: 0 },
        ..Default::default()
    };
    match entry {
        Entry::Pvh { .. } => {
            s.cr0 = CR0_PE | CR0_ET;
        }
        Entry::Linux64 { cr3, .. } => {
            s.cr0 = CR0_PE | CR0_ET | CR0_PG;
            s.cr3 = cr3;
            s.cr4 = CR4_PAE;
            s.efer = EFER_LME | EFER_LMA;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_is_flat_protected_mode_without_paging() {
        let e = Entry::Pvh {
            entry: 0x100_0000,
            start_info: 0x6000,
        };
        let r = regs(e);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, 0x6000, 2));
        let s = sregs(
            e,
            DescriptorTable {
                base: 0x500,
                limit: 31,
            },
        );
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.cr0 & CR0_PE, 1);
        assert_eq!(s.efer, 0);
        assert!(s.cs.db && !s.cs.l);
        assert_eq!(s.cs.base, 0);
        assert_eq!(s.cs.limit, 0xffff_ffff);
        assert_eq!(s.gdt.base, 0x500);
    }

    #[test]
    fn linux64_is_long_mode_with_paging() {
        let e = Entry::Linux64 {
            entry: 0x100_0200,
            cr3: layout::PML4_ADDR,
        };
        let r = regs(e);
        assert_eq!(r.rsi, layout::ZERO_PAGE_ADDR);
        let s = sregs(
            e,
            DescriptorTable {
                base: 0x500,
                limit: 31,
            },
        );
        assert!(s.cs.l && !s.cs.db);
        assert_eq!(s.cr3, layout::PML4_ADDR);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert!(s.cr0 & CR0_PG != 0 && s.cr4 & CR4_PAE != 0);
    }
}
