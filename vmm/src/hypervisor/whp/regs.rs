//! Conversions between hutch's x86_64 register types and WHP register values.

use windows_sys::Win32::System::Hypervisor::{
    WHvX64RegisterCr0, WHvX64RegisterCr3, WHvX64RegisterCr4, WHvX64RegisterCs, WHvX64RegisterDs,
    WHvX64RegisterEfer, WHvX64RegisterEs, WHvX64RegisterFs, WHvX64RegisterGdtr, WHvX64RegisterGs,
    WHvX64RegisterIdtr, WHvX64RegisterLdtr, WHvX64RegisterRax, WHvX64RegisterRbp,
    WHvX64RegisterRbx, WHvX64RegisterRcx, WHvX64RegisterRdi, WHvX64RegisterRdx,
    WHvX64RegisterRflags, WHvX64RegisterRip, WHvX64RegisterRsi, WHvX64RegisterRsp,
    WHvX64RegisterSs, WHvX64RegisterTr, WHV_REGISTER_NAME, WHV_REGISTER_VALUE, WHV_UINT128,
    WHV_UINT128_0, WHV_X64_SEGMENT_REGISTER, WHV_X64_TABLE_REGISTER,
};

use crate::hypervisor::x86_64::{DescriptorTable, Regs, Segment, SpecialRegs};

/// A register value holding `v` in its low 64 bits, the rest zero.
pub fn reg64(v: u64) -> WHV_REGISTER_VALUE {
    let mut r = WHV_REGISTER_VALUE::default();
    r.Reg64 = v;
    r
}

/// The low 64 bits of a register value.
pub fn u64_of(v: &WHV_REGISTER_VALUE) -> u64 {
    // SAFETY: every member of the union is plain integer data, and values
    // come zero-filled from `Default` or written whole by WHP, so the first
    // 8 bytes are initialised.
    unsafe { v.Reg64 }
}

/// Both halves of a 128-bit register value (pending events, FP state).
#[cfg(test)]
pub fn u128_of(v: &WHV_REGISTER_VALUE) -> u128 {
    // SAFETY: as in `u64_of`, all 16 bytes are initialised integer data.
    let (lo, hi) = unsafe { (v.Reg128.Anonymous.Low64, v.Reg128.Anonymous.High64) };
    u128::from(lo) | (u128::from(hi) << 64)
}

/// A register value holding `v` in all 128 bits.
pub fn reg128(v: u128) -> WHV_REGISTER_VALUE {
    let mut u = WHV_UINT128::default();
    u.Anonymous = WHV_UINT128_0 {
        Low64: v as u64,
        High64: (v >> 64) as u64,
    };
    let mut r = WHV_REGISTER_VALUE::default();
    r.Reg128 = u;
    r
}

/// WHP's segment attribute word: type, S, DPL, P, AVL, L, D/B, G.
pub fn segment_attributes(s: &Segment) -> u16 {
    u16::from(s.type_ & 0xf)
        | (u16::from(s.s) << 4)
        | (u16::from(s.dpl & 3) << 5)
        | (u16::from(s.present) << 7)
        | (u16::from(s.avl) << 12)
        | (u16::from(s.l) << 13)
        | (u16::from(s.db) << 14)
        | (u16::from(s.g) << 15)
}

fn segment(s: &Segment) -> WHV_REGISTER_VALUE {
    let mut r = WHV_REGISTER_VALUE::default();
    let mut seg = WHV_X64_SEGMENT_REGISTER {
        Base: s.base,
        Limit: s.limit,
        Selector: s.selector,
        ..Default::default()
    };
    seg.Anonymous.Attributes = segment_attributes(s);
    r.Segment = seg;
    r
}

fn table(d: &DescriptorTable) -> WHV_REGISTER_VALUE {
    let mut r = WHV_REGISTER_VALUE::default();
    r.Table = WHV_X64_TABLE_REGISTER {
        Pad: [0; 3],
        Limit: d.limit,
        Base: d.base,
    };
    r
}

/// The names and values `set_regs` writes.
pub fn from_regs(r: &Regs) -> (Vec<WHV_REGISTER_NAME>, Vec<WHV_REGISTER_VALUE>) {
    let pairs = [
        (WHvX64RegisterRax, r.rax),
        (WHvX64RegisterRbx, r.rbx),
        (WHvX64RegisterRcx, r.rcx),
        (WHvX64RegisterRdx, r.rdx),
        (WHvX64RegisterRsi, r.rsi),
        (WHvX64RegisterRdi, r.rdi),
        (WHvX64RegisterRsp, r.rsp),
        (WHvX64RegisterRbp, r.rbp),
        (WHvX64RegisterRip, r.rip),
        (WHvX64RegisterRflags, r.rflags),
    ];
    pairs.iter().map(|(n, v)| (*n, reg64(*v))).unzip()
}

/// The names and values `set_sregs` writes.
pub fn from_sregs(s: &SpecialRegs) -> (Vec<WHV_REGISTER_NAME>, Vec<WHV_REGISTER_VALUE>) {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (n, seg) in [
        (WHvX64RegisterCs, &s.cs),
        (WHvX64RegisterDs, &s.ds),
        (WHvX64RegisterEs, &s.es),
        (WHvX64RegisterFs, &s.fs),
        (WHvX64RegisterGs, &s.gs),
        (WHvX64RegisterSs, &s.ss),
        (WHvX64RegisterTr, &s.tr),
        (WHvX64RegisterLdtr, &s.ldt),
    ] {
        names.push(n);
        values.push(segment(seg));
    }
    for (n, t) in [(WHvX64RegisterGdtr, &s.gdt), (WHvX64RegisterIdtr, &s.idt)] {
        names.push(n);
        values.push(table(t));
    }
    for (n, v) in [
        (WHvX64RegisterCr0, s.cr0),
        (WHvX64RegisterCr3, s.cr3),
        (WHvX64RegisterCr4, s.cr4),
        (WHvX64RegisterEfer, s.efer),
    ] {
        names.push(n);
        values.push(reg64(v));
    }
    (names, values)
}

/// An APIC LVT value with its delivery mode (bits 8..10) set to `mode`.
pub fn lvt_with_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | ((mode & 7) << 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment_attributes() {
        let cs = Segment {
            type_: 0xb,
            s: true,
            present: true,
            l: true,
            g: true,
            ..Default::default()
        };
        assert_eq!(segment_attributes(&cs), 0xa09b);
        let data32 = Segment {
            type_: 0x3,
            s: true,
            present: true,
            db: true,
            g: true,
            dpl: 3,
            avl: true,
            ..Default::default()
        };
        assert_eq!(segment_attributes(&data32), 0xd0f3);
        assert_eq!(segment_attributes(&Segment::default()), 0, "not present");
    }

    #[test]
    fn register_values_round_trip() {
        assert_eq!(u64_of(&reg64(0x1234_5678_9abc_def0)), 0x1234_5678_9abc_def0);
        assert_eq!(u128_of(&reg64(7)), 7, "upper half zeroed");
        let v = (0xdead_u128 << 64) | 0xbeef;
        assert_eq!(u128_of(&reg128(v)), v);
    }

    #[test]
    fn sregs_cover_segments_tables_and_control_registers() {
        let s = SpecialRegs {
            cr0: 0x8000_0011,
            gdt: DescriptorTable {
                base: 0x500,
                limit: 0x1f,
            },
            ..Default::default()
        };
        let (names, values) = from_sregs(&s);
        assert_eq!(names.len(), 14);
        assert_eq!(names.len(), values.len());
        let gdtr = names.iter().position(|n| *n == WHvX64RegisterGdtr).unwrap();
        // SAFETY: from_sregs wrote the Table member of this value.
        let t = unsafe { values[gdtr].Table };
        assert_eq!((t.Base, t.Limit), (0x500, 0x1f));
        let cr0 = names.iter().position(|n| *n == WHvX64RegisterCr0).unwrap();
        assert_eq!(u64_of(&values[cr0]), 0x8000_0011);
    }

    #[test]
    fn lvt_mode_replaces_only_delivery_mode() {
        assert_eq!(lvt_with_mode(0x0001_0000, 7), 0x0001_0700);
        assert_eq!(lvt_with_mode(0x0001_07ff, 4), 0x0001_04ff);
    }
}
