//! A user-space IOAPIC (82093AA register model, version 0x11 like KVM's).
//!
//! WHP emulates each vCPU's local APIC but has no IOAPIC, so this one turns
//! GSI assertions into [`Interrupt`]s, which the partition sends with
//! `WHvRequestInterrupt`. It is plain state: every method returns the
//! interrupts to deliver instead of delivering them, so it is tested without
//! a hypervisor.
//!
//! Registers (through the MMIO window at [`layout::IOAPIC_ADDR`]):
//! `IOREGSEL` at offset 0x00 selects, `IOWIN` at 0x10 reads or writes the
//! selected register: 0x00 ID, 0x01 version, 0x02 arbitration, 0x10 + 2n /
//! 0x11 + 2n the low / high dword of redirection entry n. The version-0x20
//! EOI register at 0x40 is accepted too.
//!
//! Polarity (bit 13) is stored but not applied: callers pass the logical
//! level ("asserted"), as KVM's irqfd does.

use crate::arch::x86_64::layout;

/// Number of redirection entries (pins).
pub const PINS: usize = layout::IOAPIC_PINS as usize;
/// Size of the MMIO window the backend routes to the IOAPIC.
pub const MMIO_SIZE: u64 = 0x1000;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDIR_FIRST: u8 = 0x10;

const VERSION: u32 = 0x11;

const VECTOR_MASK: u64 = 0xff;
const DELIVERY_MODE_SHIFT: u32 = 8;
const DEST_LOGICAL: u64 = 1 << 11;
const REMOTE_IRR: u64 = 1 << 14;
const TRIGGER_LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const DEST_SHIFT: u32 = 56;
/// Bits of an entry the guest may not write: delivery status and remote IRR.
const READ_ONLY: u64 = (1 << 12) | REMOTE_IRR;
/// Writable bits of the high dword: the destination field only.
const HIGH_WRITABLE: u64 = 0xff << DEST_SHIFT;

/// An entry's delivery mode (bits 8..10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    ExtInt,
    /// 0b011 and 0b110 are reserved.
    Reserved(u8),
}

impl DeliveryMode {
    fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            7 => Self::ExtInt,
            other => Self::Reserved(other),
        }
    }
}

/// One interrupt for the local APICs, as a redirection entry describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupt {
    pub vector: u8,
    /// APIC id (physical) or logical destination bits (logical).
    pub destination: u8,
    pub logical: bool,
    pub level: bool,
    pub mode: DeliveryMode,
}

/// The IOAPIC's state.
#[derive(Debug, Clone)]
pub struct Ioapic {
    id: u8,
    ioregsel: u8,
    redirection: [u64; PINS],
    /// Bit n: pin n is asserted.
    lines: u32,
}

impl Ioapic {
    /// An IOAPIC with APIC id `id` and every entry masked (its reset state).
    pub fn new(id: u8) -> Self {
        Self {
            id,
            ioregsel: 0,
            redirection: [MASKED; PINS],
            lines: 0,
        }
    }

    /// The redirection entry of `pin`.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.redirection.get(pin).copied()
    }

    /// A load of `data.len()` bytes at `offset` into the MMIO window.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let value = match offset & !3 {
            IOREGSEL => u32::from(self.ioregsel),
            IOWIN => self.read_register(self.ioregsel),
            _ => 0,
        };
        copy_out(value, offset, data);
    }

    /// A store of `data` at `offset` into the MMIO window; returns the
    /// interrupts it causes (unmasking an asserted level line, an EOI).
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) -> Vec<Interrupt> {
        match offset & !3 {
            IOREGSEL => {
                self.ioregsel = merge_in(u32::from(self.ioregsel), offset, data) as u8;
                Vec::new()
            }
            IOWIN => {
                let old = self.read_register(self.ioregsel);
                self.write_register(self.ioregsel, merge_in(old, offset, data))
            }
            EOI => self.end_of_interrupt(merge_in(0, offset, data) as u8),
            _ => Vec::new(),
        }
    }

    /// Sets the level of `pin`: an edge entry fires on a rising edge, a level
    /// entry while asserted and its remote IRR is clear. Masked entries and
    /// pins past the last do nothing.
    pub fn set_level(&mut self, pin: u32, asserted: bool) -> Option<Interrupt> {
        let p = pin as usize;
        if p >= PINS {
            return None;
        }
        let bit = 1u32 << pin;
        let was = self.lines & bit != 0;
        if !asserted {
            self.lines &= !bit;
            return None;
        }
        self.lines |= bit;
        let entry = self.redirection[p];
        if entry & TRIGGER_LEVEL == 0 {
            // Edge: only a rising edge on an unmasked entry counts.
            return (!was && entry & MASKED == 0).then(|| decode(entry));
        }
        self.service_level(p)
    }

    /// Asserts then deasserts `pin` (what an irqfd does).
    pub fn pulse(&mut self, pin: u32) -> Option<Interrupt> {
        let fired = self.set_level(pin, true);
        self.set_level(pin, false);
        fired
    }

    /// A local APIC's EOI for `vector`: clears the remote IRR of each level
    /// entry with that vector, and fires again the ones still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) -> Vec<Interrupt> {
        let mut fired = Vec::new();
        for p in 0..PINS {
            let e = self.redirection[p];
            if e & REMOTE_IRR != 0 && (e & VECTOR_MASK) as u8 == vector {
                self.redirection[p] &= !REMOTE_IRR;
                fired.extend(self.service_level(p));
            }
        }
        fired
    }

    /// Delivers level entry `p` if it is asserted, unmasked and not in service.
    fn service_level(&mut self, p: usize) -> Option<Interrupt> {
        let e = self.redirection[p];
        let asserted = self.lines & (1 << p) != 0;
        if e & TRIGGER_LEVEL == 0 || !asserted || e & (MASKED | REMOTE_IRR) != 0 {
            return None;
        }
        self.redirection[p] |= REMOTE_IRR;
        Some(decode(e))
    }

    fn read_register(&self, index: u8) -> u32 {
        match index {
            REG_ID | REG_ARBITRATION => u32::from(self.id & 0xf) << 24,
            REG_VERSION => ((PINS as u32 - 1) << 16) | VERSION,
            _ => match redirection_slot(index) {
                Some((pin, false)) => self.redirection[pin] as u32,
                Some((pin, true)) => (self.redirection[pin] >> 32) as u32,
                None => 0,
            },
        }
    }

    fn write_register(&mut self, index: u8, value: u32) -> Vec<Interrupt> {
        match index {
            REG_ID => self.id = ((value >> 24) & 0xf) as u8,
            _ => {
                if let Some((pin, high)) = redirection_slot(index) {
                    let old = self.redirection[pin];
                    let mut new = if high {
                        (old & 0xffff_ffff) | ((u64::from(value) << 32) & HIGH_WRITABLE)
                    } else {
                        (old & HIGH_WRITABLE) | (u64::from(value) & !READ_ONLY)
                    };
                    new = (new & !READ_ONLY) | (old & READ_ONLY);
                    if new & TRIGGER_LEVEL == 0 {
                        // Switching to edge clears remote IRR (Linux's EOI
                        // fallback for IOAPICs without an EOI register).
                        new &= !REMOTE_IRR;
                    }
                    self.redirection[pin] = new;
                    return self.service_level(pin).into_iter().collect();
                }
            }
        }
        Vec::new()
    }
}

/// (pin, high dword?) of a redirection register index.
fn redirection_slot(index: u8) -> Option<(usize, bool)> {
    let i = index.checked_sub(REG_REDIR_FIRST)? as usize;
    (i / 2 < PINS).then_some((i / 2, i % 2 == 1))
}

fn decode(e: u64) -> Interrupt {
    Interrupt {
        vector: (e & VECTOR_MASK) as u8,
        destination: (e >> DEST_SHIFT) as u8,
        logical: e & DEST_LOGICAL != 0,
        level: e & TRIGGER_LEVEL != 0,
        mode: DeliveryMode::from_bits((e >> DELIVERY_MODE_SHIFT) as u8),
    }
}

/// Copies the bytes of the 32-bit register `value` that an access of
/// `data.len()` bytes at `offset` sees.
fn copy_out(value: u32, offset: u64, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    let start = (offset & 3) as usize;
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(start + i).copied().unwrap_or(0);
    }
}

/// `old` with the bytes an access of `data` at `offset` writes replaced.
fn merge_in(old: u32, offset: u64, data: &[u8]) -> u32 {
    let mut bytes = old.to_le_bytes();
    let start = (offset & 3) as usize;
    for (i, d) in data.iter().enumerate() {
        if let Some(b) = bytes.get_mut(start + i) {
            *b = *d;
        }
    }
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_reg(io: &mut Ioapic, index: u8, value: u32) -> Vec<Interrupt> {
        io.mmio_write(IOREGSEL, &u32::from(index).to_le_bytes());
        io.mmio_write(IOWIN, &value.to_le_bytes())
    }

    fn read_reg(io: &mut Ioapic, index: u8) -> u32 {
        io.mmio_write(IOREGSEL, &u32::from(index).to_le_bytes());
        let mut d = [0u8; 4];
        io.mmio_read(IOWIN, &mut d);
        u32::from_le_bytes(d)
    }

    /// Programs `pin` with (low dword, destination) through the window.
    fn program(io: &mut Ioapic, pin: u8, low: u32, dest: u8) -> Vec<Interrupt> {
        write_reg(io, REG_REDIR_FIRST + 2 * pin + 1, u32::from(dest) << 24);
        write_reg(io, REG_REDIR_FIRST + 2 * pin, low)
    }

    const LEVEL: u32 = 1 << 15;
    const MASK: u32 = 1 << 16;

    #[test]
    fn id_version_and_arbitration() {
        let mut io = Ioapic::new(4);
        assert_eq!(read_reg(&mut io, REG_ID), 4 << 24);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        assert_eq!(read_reg(&mut io, REG_ARBITRATION), 4 << 24);
        write_reg(&mut io, REG_ID, 9 << 24);
        assert_eq!(read_reg(&mut io, REG_ID), 9 << 24);
        write_reg(&mut io, REG_VERSION, 0);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011, "read-only");
        let mut sel = [0u8; 4];
        io.mmio_read(IOREGSEL, &mut sel);
        assert_eq!(sel, [REG_VERSION, 0, 0, 0]);
    }

    #[test]
    fn entries_reset_masked_and_read_back_through_the_window() {
        let mut io = Ioapic::new(0);
        for pin in 0..PINS as u8 {
            assert_eq!(read_reg(&mut io, REG_REDIR_FIRST + 2 * pin), MASK);
        }
        program(&mut io, 23, 0x0000_0931, 0xab);
        assert_eq!(read_reg(&mut io, REG_REDIR_FIRST + 46), 0x0000_0931);
        assert_eq!(read_reg(&mut io, REG_REDIR_FIRST + 47), 0xab00_0000);
        assert_eq!(io.entry(23), Some(0xab00_0000_0000_0931));
        // Past the last entry: reads 0, writes ignored.
        assert_eq!(write_reg(&mut io, REG_REDIR_FIRST + 48, 0x30), vec![]);
        assert_eq!(read_reg(&mut io, REG_REDIR_FIRST + 48), 0);
        // Reserved bits of the high dword are not kept.
        write_reg(&mut io, REG_REDIR_FIRST + 47, 0xcd00_ffff);
        assert_eq!(read_reg(&mut io, REG_REDIR_FIRST + 47), 0xcd00_0000);
    }

    #[test]
    fn edge_entry_fires_once_per_rising_edge() {
        let mut io = Ioapic::new(0);
        assert!(program(&mut io, 4, 0x34, 2).is_empty());
        let want = Interrupt {
            vector: 0x34,
            destination: 2,
            logical: false,
            level: false,
            mode: DeliveryMode::Fixed,
        };
        assert_eq!(io.set_level(4, true), Some(want));
        assert_eq!(io.set_level(4, true), None, "no edge while held");
        assert_eq!(io.set_level(4, false), None);
        assert_eq!(io.pulse(4), Some(want));
        assert_eq!(io.pulse(4), Some(want), "edges are not throttled");
    }

    #[test]
    fn masked_entries_and_unknown_pins_do_nothing() {
        let mut io = Ioapic::new(0);
        assert_eq!(io.pulse(3), None, "reset state is masked");
        program(&mut io, 3, MASK | 0x40, 0);
        assert_eq!(io.pulse(3), None);
        program(&mut io, 3, MASK | LEVEL | 0x40, 0);
        assert_eq!(io.set_level(3, true), None);
        assert_eq!(io.entry(3).unwrap() & REMOTE_IRR, 0);
        assert_eq!(io.pulse(24), None);
        assert_eq!(io.set_level(99, true), None);
    }

    #[test]
    fn unmasking_an_asserted_level_line_delivers() {
        let mut io = Ioapic::new(0);
        program(&mut io, 5, MASK | LEVEL | 0x45, 1);
        assert_eq!(io.set_level(5, true), None);
        let fired = program(&mut io, 5, LEVEL | 0x45, 1);
        assert_eq!(fired.len(), 1);
        assert_eq!((fired[0].vector, fired[0].level), (0x45, true));
        // An edge line asserted while masked is lost, as on hardware.
        program(&mut io, 6, MASK | 0x46, 1);
        io.set_level(6, true);
        assert!(program(&mut io, 6, 0x46, 1).is_empty());
    }

    #[test]
    fn level_entry_waits_for_eoi_and_refires_while_asserted() {
        let mut io = Ioapic::new(0);
        program(&mut io, 10, LEVEL | 0x5a, 3);
        let first = io.set_level(10, true).expect("delivered");
        assert!(first.level);
        assert_ne!(
            read_reg(&mut io, REG_REDIR_FIRST + 20) & (1 << 14),
            0,
            "remote IRR set"
        );
        assert_eq!(io.set_level(10, true), None, "in service");
        // The guest tries to clear remote IRR by writing it: read-only.
        write_reg(&mut io, REG_REDIR_FIRST + 20, LEVEL | 0x5a);
        assert_ne!(io.entry(10).unwrap() & REMOTE_IRR, 0);
        // EOI for another vector does nothing.
        assert!(io.end_of_interrupt(0x99).is_empty());
        // EOI while still asserted: fires again, remote IRR stays set.
        assert_eq!(io.end_of_interrupt(0x5a), vec![first]);
        assert_ne!(io.entry(10).unwrap() & REMOTE_IRR, 0);
        // Deassert, EOI: remote IRR clears, nothing fires.
        io.set_level(10, false);
        assert!(io.end_of_interrupt(0x5a).is_empty());
        assert_eq!(io.entry(10).unwrap() & REMOTE_IRR, 0);
        // A pulse (irqfd) on a level entry delivers once, then waits for EOI.
        assert!(io.pulse(10).is_some());
        assert!(io.pulse(10).is_none());
        assert!(io.end_of_interrupt(0x5a).is_empty(), "line low at EOI");
        assert!(io.pulse(10).is_some());
    }

    #[test]
    fn eoi_register_and_switch_to_edge_clear_remote_irr() {
        let mut io = Ioapic::new(0);
        program(&mut io, 7, LEVEL | 0x61, 0);
        io.pulse(7);
        assert_ne!(io.entry(7).unwrap() & REMOTE_IRR, 0);
        assert!(io.mmio_write(EOI, &[0x61, 0, 0, 0]).is_empty());
        assert_eq!(io.entry(7).unwrap() & REMOTE_IRR, 0);
        io.pulse(7);
        program(&mut io, 7, 0x61, 0);
        assert_eq!(
            io.entry(7).unwrap() & REMOTE_IRR,
            0,
            "edge has no remote IRR"
        );
    }

    #[test]
    fn decodes_destination_mode_and_delivery_mode() {
        let mut io = Ioapic::new(0);
        // Logical, lowest priority.
        program(&mut io, 1, (1 << 11) | (1 << 8) | 0x31, 0x0f);
        let i = io.pulse(1).unwrap();
        assert_eq!(
            (i.logical, i.destination, i.mode),
            (true, 0x0f, DeliveryMode::LowestPriority)
        );
        program(&mut io, 2, (4 << 8) | 0x02, 0);
        assert_eq!(io.pulse(2).unwrap().mode, DeliveryMode::Nmi);
        program(&mut io, 2, 7 << 8, 0);
        assert_eq!(io.pulse(2).unwrap().mode, DeliveryMode::ExtInt);
        program(&mut io, 2, 3 << 8, 0);
        assert_eq!(io.pulse(2).unwrap().mode, DeliveryMode::Reserved(3));
    }

    #[test]
    fn narrow_accesses_see_and_set_single_bytes() {
        let mut io = Ioapic::new(0);
        io.mmio_write(IOREGSEL, &[REG_VERSION]);
        let mut b = [0u8; 1];
        io.mmio_read(IOWIN + 2, &mut b);
        assert_eq!(b[0], 0x17, "max redirection entry");
        program(&mut io, 0, 0x20, 0);
        io.mmio_write(IOREGSEL, &[REG_REDIR_FIRST]);
        io.mmio_write(IOWIN, &[0x21]);
        assert_eq!(io.entry(0).unwrap() & 0xff, 0x21);
        let mut wide = [0u8; 8];
        io.mmio_read(IOWIN, &mut wide);
        assert_eq!(wide, [0x21, 0, 0, 0, 0, 0, 0, 0]);
        let mut other = [0xffu8; 4];
        io.mmio_read(0x20, &mut other);
        assert_eq!(other, [0; 4], "unknown offsets read zero");
    }
}
