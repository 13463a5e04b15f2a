//! Decoding the exception syndrome (ESR_EL2) HVF reports with an exception
//! exit. Pure functions, so they are tested bit by bit.

/// ESR.EC: WFI or WFE trapped.
pub const EC_WFX: u8 = 0x01;
/// ESR.EC: HVC from AArch64.
pub const EC_HVC64: u8 = 0x16;
/// ESR.EC: SMC from AArch64.
pub const EC_SMC64: u8 = 0x17;
/// ESR.EC: MSR/MRS/system instruction trapped.
pub const EC_SYS64: u8 = 0x18;
/// ESR.EC: instruction abort from a lower EL.
pub const EC_IABT_LOWER: u8 = 0x20;
/// ESR.EC: data abort from a lower EL.
pub const EC_DABT_LOWER: u8 = 0x24;

/// The exception class.
pub fn ec(esr: u64) -> u8 {
    ((esr >> 26) & 0x3f) as u8
}

/// The 16-bit immediate of an HVC or SMC.
pub fn imm16(esr: u64) -> u16 {
    (esr & 0xffff) as u16
}

/// Whether a WFx syndrome is WFE (TI bit 0 set) rather than WFI.
pub fn is_wfe(esr: u64) -> bool {
    esr & 1 != 0
}

/// A data abort's instruction syndrome, valid only when ISV (bit 24) is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataAbort {
    /// Access size in bytes: 1, 2, 4 or 8 (SAS, bits 23:22).
    pub size: usize,
    /// Sign-extend a load (SSE, bit 21).
    pub sign_extend: bool,
    /// The transfer register Xt / Wt (SRT, bits 20:16); 31 means XZR.
    pub reg: u8,
    /// The register is 64-bit (SF, bit 15); otherwise a 32-bit Wt.
    pub sixty_four: bool,
    /// A store (WnR, bit 6); otherwise a load.
    pub write: bool,
    /// A cache-maintenance operation, not a load or store (CM, bit 8).
    pub cache_maintenance: bool,
}

/// Decodes a data abort's ISS; `None` when ISV is clear (the hardware did
/// not describe the access, e.g. a load/store pair or writeback form).
pub fn data_abort(esr: u64) -> Option<DataAbort> {
    if esr & (1 << 24) == 0 {
        return None;
    }
    Some(DataAbort {
        size: 1 << ((esr >> 22) & 3),
        sign_extend: esr & (1 << 21) != 0,
        reg: ((esr >> 16) & 0x1f) as u8,
        sixty_four: esr & (1 << 15) != 0,
        write: esr & (1 << 6) != 0,
        cache_maintenance: esr & (1 << 8) != 0,
    })
}

impl DataAbort {
    /// The register value a load of `raw` (zero-extended little-endian
    /// bytes of `self.size`) leaves in Xt: sign-extended if SSE, then cut
    /// to 32 bits for a Wt destination.
    pub fn load_value(&self, raw: u64) -> u64 {
        let bits = self.size as u32 * 8;
        let mut v = if bits == 64 {
            raw
        } else {
            raw & ((1u64 << bits) - 1)
        };
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            v = (((v << shift) as i64) >> shift) as u64;
        }
        if !self.sixty_four {
            v &= 0xffff_ffff;
        }
        v
    }
}

/// A trapped MSR/MRS (EC 0x18) decoded from its ISS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRegAccess {
    /// op0, op1, CRn, CRm, op2: the register's encoding.
    pub encoding: (u8, u8, u8, u8, u8),
    /// The transfer register (31 = XZR).
    pub reg: u8,
    /// MRS (a read into `reg`) rather than MSR.
    pub read: bool,
}

/// Decodes a trapped system-register access.
pub fn sys_reg(esr: u64) -> SysRegAccess {
    let f = |shift: u32, bits: u32| ((esr >> shift) & ((1 << bits) - 1)) as u8;
    SysRegAccess {
        encoding: (f(20, 2), f(14, 3), f(10, 4), f(1, 4), f(17, 3)),
        reg: f(5, 5),
        read: esr & 1 != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a data-abort ESR the way the hardware does.
    fn dabt(size_log2: u64, reg: u64, write: bool, sf: bool, sse: bool) -> u64 {
        (u64::from(EC_DABT_LOWER) << 26)
            | (1 << 25) // IL: 32-bit instruction
            | (1 << 24) // ISV
            | (size_log2 << 22)
            | (u64::from(sse) << 21)
            | (reg << 16)
            | (u64::from(sf) << 15)
            | (u64::from(write) << 6)
            | 0x07 // DFSC: translation fault, level 3
    }

    #[test]
    fn data_abort_fields() {
        let d = data_abort(dabt(2, 5, true, false, false)).unwrap();
        assert_eq!(ec(dabt(2, 5, true, false, false)), EC_DABT_LOWER);
        assert_eq!(
            d,
            DataAbort {
                size: 4,
                sign_extend: false,
                reg: 5,
                sixty_four: false,
                write: true,
                cache_maintenance: false
            }
        );
        let d = data_abort(dabt(3, 30, false, true, false)).unwrap();
        assert_eq!((d.size, d.reg, d.write, d.sixty_four), (8, 30, false, true));
        assert_eq!(data_abort(dabt(0, 1, false, true, true)).unwrap().size, 1);
        assert_eq!(data_abort(dabt(1, 1, false, true, true)).unwrap().size, 2);
        assert!(data_abort(dabt(2, 5, true, false, false) & !(1 << 24)).is_none());
    }

    #[test]
    fn loads_sign_and_zero_extend() {
        let ldrsb_x = data_abort(dabt(0, 1, false, true, true)).unwrap();
        assert_eq!(ldrsb_x.load_value(0x80), 0xffff_ffff_ffff_ff80);
        assert_eq!(ldrsb_x.load_value(0x7f), 0x7f);
        let ldrsh_w = data_abort(dabt(1, 1, false, false, true)).unwrap();
        assert_eq!(ldrsh_w.load_value(0x8001), 0xffff_8001);
        let ldrsw = data_abort(dabt(2, 1, false, true, true)).unwrap();
        assert_eq!(ldrsw.load_value(0x8000_0000), 0xffff_ffff_8000_0000);
        let ldrb = data_abort(dabt(0, 1, false, false, false)).unwrap();
        assert_eq!(ldrb.load_value(0xff), 0xff);
        let ldr_x = data_abort(dabt(3, 1, false, true, false)).unwrap();
        assert_eq!(ldr_x.load_value(u64::MAX), u64::MAX);
    }

    #[test]
    fn sys_reg_fields() {
        // MRS x3, OSLSR_EL1: op0=2 op1=0 CRn=1 CRm=1 op2=4, read.
        let esr = (u64::from(EC_SYS64) << 26)
            | (2 << 20)
            | (4 << 17)
            | (1 << 10)
            | (3 << 5)
            | (1 << 1)
            | 1;
        assert_eq!(
            sys_reg(esr),
            SysRegAccess {
                encoding: (2, 0, 1, 1, 4),
                reg: 3,
                read: true
            }
        );
    }

    #[test]
    fn wfx_and_immediates() {
        assert!(!is_wfe(u64::from(EC_WFX) << 26));
        assert!(is_wfe((u64::from(EC_WFX) << 26) | 1));
        assert_eq!(imm16((u64::from(EC_HVC64) << 26) | 0x1234), 0x1234);
    }
}
