//! A fake WHP for the tests: records partition calls, keeps registers in a
//! map, replays a script of exits, and has a small instruction emulator
//! that drives the backend's `extern "system"` callbacks the way
//! `WHvEmulatorTry*Emulation` does: it reads operand registers through the
//! get-registers callback, translates the GVA, calls the I/O or memory
//! callback with a `WHV_EMULATOR_*_ACCESS_INFO`, and writes the result
//! register and RIP through the set-registers callback.
//!
//! The fake emulator decodes `in`/`out` (not string forms) and `mov`
//! between a general register and `[reg]` (opcodes 88, 89, 8a, 8b with
//! optional 66 and REX prefixes), which covers every access size.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};

use windows_sys::core::HRESULT;
use windows_sys::Win32::Foundation::{E_FAIL, S_OK};
use windows_sys::Win32::System::Hypervisor::{
    WHvRunVpExitReasonCanceled, WHvRunVpExitReasonMemoryAccess, WHvRunVpExitReasonX64Cpuid,
    WHvRunVpExitReasonX64IoPortAccess, WHvRunVpExitReasonX64MsrAccess,
    WHvTranslateGvaFlagValidateRead, WHvTranslateGvaFlagValidateWrite,
    WHvTranslateGvaResultSuccess, WHvX64RegisterR10, WHvX64RegisterR11, WHvX64RegisterR12,
    WHvX64RegisterR13, WHvX64RegisterR14, WHvX64RegisterR15, WHvX64RegisterR8, WHvX64RegisterR9,
    WHvX64RegisterRax, WHvX64RegisterRbp, WHvX64RegisterRbx, WHvX64RegisterRcx, WHvX64RegisterRdi,
    WHvX64RegisterRdx, WHvX64RegisterRip, WHvX64RegisterRsi, WHvX64RegisterRsp,
    WHV_EMULATOR_CALLBACKS, WHV_EMULATOR_IO_ACCESS_INFO, WHV_EMULATOR_MEMORY_ACCESS_INFO,
    WHV_EMULATOR_STATUS, WHV_INTERRUPT_CONTROL, WHV_MAP_GPA_RANGE_FLAGS, WHV_MEMORY_ACCESS_CONTEXT,
    WHV_PARTITION_PROPERTY_CODE, WHV_REGISTER_NAME, WHV_REGISTER_VALUE, WHV_RUN_VP_EXIT_CONTEXT,
    WHV_RUN_VP_EXIT_REASON, WHV_TRANSLATE_GVA_FLAGS, WHV_TRANSLATE_GVA_RESULT_CODE,
    WHV_VP_EXIT_CONTEXT, WHV_X64_IO_PORT_ACCESS_CONTEXT,
};

use super::api::EmulatorHandle;
use super::emulator::{DIRECTION_WRITE, STATUS_SUCCESS};
use super::regs::{reg128, reg64, u128_of, u64_of};
use super::{WhpApi, WhpError};

// WHV_EMULATOR_STATUS failure bits.
pub const STATUS_INTERNAL_FAILURE: u32 = 1 << 1;
pub const STATUS_IO_PORT_CALLBACK_FAILED: u32 = 1 << 2;
pub const STATUS_MEMORY_CALLBACK_FAILED: u32 = 1 << 3;
pub const STATUS_TRANSLATE_GVA_CALLBACK_FAILED: u32 = 1 << 4;
pub const STATUS_GET_REGISTERS_CALLBACK_FAILED: u32 = 1 << 6;
pub const STATUS_SET_REGISTERS_CALLBACK_FAILED: u32 = 1 << 7;

/// General-purpose registers in ModRM order (reg 0..15).
const GPRS: [WHV_REGISTER_NAME; 16] = [
    WHvX64RegisterRax,
    WHvX64RegisterRcx,
    WHvX64RegisterRdx,
    WHvX64RegisterRbx,
    WHvX64RegisterRsp,
    WHvX64RegisterRbp,
    WHvX64RegisterRsi,
    WHvX64RegisterRdi,
    WHvX64RegisterR8,
    WHvX64RegisterR9,
    WHvX64RegisterR10,
    WHvX64RegisterR11,
    WHvX64RegisterR12,
    WHvX64RegisterR13,
    WHvX64RegisterR14,
    WHvX64RegisterR15,
];

/// One `WHvRequestInterrupt`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested {
    pub kind: i32,
    pub logical: bool,
    pub level: bool,
    pub destination: u32,
    pub vector: u32,
}

impl From<&WHV_INTERRUPT_CONTROL> for Requested {
    fn from(c: &WHV_INTERRUPT_CONTROL) -> Self {
        Self {
            kind: (c._bitfield & 0xff) as i32,
            logical: (c._bitfield >> 8) & 0xf == 1,
            level: (c._bitfield >> 12) & 0xf == 1,
            destination: c.Destination,
            vector: c.Vector,
        }
    }
}

/// Everything the fake saw and holds.
#[derive(Default)]
pub struct FakeState {
    /// Names of the WHv functions called, in order.
    pub calls: Vec<&'static str>,
    pub properties: Vec<(WHV_PARTITION_PROPERTY_CODE, Vec<u8>)>,
    /// (slot, gpa, size, flags) of each mapped range.
    pub mapped: Vec<(u32, u64, u64, WHV_MAP_GPA_RANGE_FLAGS)>,
    pub vps: HashSet<u32>,
    pub deleted_vps: Vec<u32>,
    pub exits: VecDeque<WHV_RUN_VP_EXIT_CONTEXT>,
    pub registers: HashMap<(u32, WHV_REGISTER_NAME), u128>,
    pub interrupts: Vec<Requested>,
    pub emulators: Vec<WHV_EMULATOR_CALLBACKS>,
    pub destroyed_emulators: usize,
    pub cancel_pending: HashSet<u32>,
    /// Makes the named WHv function fail with E_FAIL.
    pub fail: Option<&'static str>,
}

/// The fake partition.
#[derive(Default)]
pub struct FakeApi {
    state: Mutex<FakeState>,
}

impl FakeApi {
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push_exit(&self, exit: WHV_RUN_VP_EXIT_CONTEXT) {
        self.state().exits.push_back(exit);
    }

    pub fn reg(&self, vp: u32, name: WHV_REGISTER_NAME) -> u64 {
        self.reg128(vp, name) as u64
    }

    pub fn reg128(&self, vp: u32, name: WHV_REGISTER_NAME) -> u128 {
        self.state()
            .registers
            .get(&(vp, name))
            .copied()
            .unwrap_or(0)
    }

    pub fn set_reg(&self, vp: u32, name: WHV_REGISTER_NAME, value: u64) {
        self.state().registers.insert((vp, name), u128::from(value));
    }

    pub fn interrupts(&self) -> Vec<Requested> {
        self.state().interrupts.clone()
    }

    /// Records the call; fails it if the test asked for that.
    fn call(&self, func: &'static str) -> Result<(), HRESULT> {
        let mut s = self.state();
        s.calls.push(func);
        if s.fail == Some(func) {
            Err(E_FAIL)
        } else {
            Ok(())
        }
    }

    fn call_partition(&self, func: &'static str) -> Result<(), WhpError> {
        self.call(func)
            .map_err(|hr| WhpError::Partition { func, hr })
    }

    fn call_vp(&self, vp: u32, func: &'static str) -> Result<(), WhpError> {
        self.call(func)
            .map_err(|hr| WhpError::Vcpu { vcpu: vp, func, hr })
    }

    fn callbacks(&self, emulator: EmulatorHandle) -> WHV_EMULATOR_CALLBACKS {
        let index = emulator as usize - 1;
        self.state().emulators[index]
    }
}

impl WhpApi for FakeApi {
    fn set_property(
        &self,
        code: WHV_PARTITION_PROPERTY_CODE,
        value: &[u8],
    ) -> Result<(), WhpError> {
        self.call_partition("WHvSetPartitionProperty")?;
        self.state().properties.push((code, value.to_vec()));
        Ok(())
    }

    fn setup(&self) -> Result<(), WhpError> {
        self.call_partition("WHvSetupPartition")
    }

    unsafe fn map_gpa_range(
        &self,
        slot: u32,
        _host: *const u8,
        gpa: u64,
        size: u64,
        flags: WHV_MAP_GPA_RANGE_FLAGS,
    ) -> Result<(), WhpError> {
        self.call("WHvMapGpaRange").map_err(|hr| WhpError::MapGpa {
            slot,
            gpa,
            size,
            hr,
        })?;
        self.state().mapped.push((slot, gpa, size, flags));
        Ok(())
    }

    fn create_vp(&self, vp: u32) -> Result<(), WhpError> {
        self.call_vp(vp, "WHvCreateVirtualProcessor")?;
        self.state().vps.insert(vp);
        Ok(())
    }

    fn delete_vp(&self, vp: u32) -> Result<(), WhpError> {
        self.call_vp(vp, "WHvDeleteVirtualProcessor")?;
        let mut s = self.state();
        s.vps.remove(&vp);
        s.deleted_vps.push(vp);
        Ok(())
    }

    fn run_vp(&self, vp: u32) -> Result<WHV_RUN_VP_EXIT_CONTEXT, WhpError> {
        self.call_vp(vp, "WHvRunVirtualProcessor")?;
        let mut s = self.state();
        if s.cancel_pending.remove(&vp) {
            return Ok(exit(WHvRunVpExitReasonCanceled));
        }
        let Some(e) = s.exits.pop_front() else {
            // An exhausted script fails the run instead of hanging the test.
            return Err(WhpError::Vcpu {
                vcpu: vp,
                func: "WHvRunVirtualProcessor",
                hr: E_FAIL,
            });
        };
        // The VP's RIP is where it exited; scripted exits without one
        // (RIP 0) leave it where the last instruction put it.
        if e.VpContext.Rip != 0 {
            s.registers
                .insert((vp, WHvX64RegisterRip), u128::from(e.VpContext.Rip));
        }
        Ok(e)
    }

    fn cancel_run_vp(&self, vp: u32) -> Result<(), WhpError> {
        self.call_vp(vp, "WHvCancelRunVirtualProcessor")?;
        self.state().cancel_pending.insert(vp);
        Ok(())
    }

    fn get_registers(
        &self,
        vp: u32,
        names: &[WHV_REGISTER_NAME],
        values: &mut [WHV_REGISTER_VALUE],
    ) -> Result<(), WhpError> {
        self.call_vp(vp, "WHvGetVirtualProcessorRegisters")?;
        let s = self.state();
        for (n, v) in names.iter().zip(values.iter_mut()) {
            *v = reg128(s.registers.get(&(vp, *n)).copied().unwrap_or(0));
        }
        Ok(())
    }

    fn set_registers(
        &self,
        vp: u32,
        names: &[WHV_REGISTER_NAME],
        values: &[WHV_REGISTER_VALUE],
    ) -> Result<(), WhpError> {
        self.call_vp(vp, "WHvSetVirtualProcessorRegisters")?;
        let mut s = self.state();
        for (n, v) in names.iter().zip(values) {
            s.registers.insert((vp, *n), u128_of(v));
        }
        Ok(())
    }

    /// Identity paging.
    fn translate_gva(
        &self,
        vp: u32,
        gva: u64,
        _flags: WHV_TRANSLATE_GVA_FLAGS,
    ) -> Result<(WHV_TRANSLATE_GVA_RESULT_CODE, u64), WhpError> {
        self.call_vp(vp, "WHvTranslateGva")?;
        Ok((WHvTranslateGvaResultSuccess, gva))
    }

    fn request_interrupt(&self, interrupt: &WHV_INTERRUPT_CONTROL) -> Result<(), WhpError> {
        self.call_partition("WHvRequestInterrupt")?;
        self.state().interrupts.push(interrupt.into());
        Ok(())
    }

    fn create_emulator(
        &self,
        callbacks: &WHV_EMULATOR_CALLBACKS,
    ) -> Result<EmulatorHandle, WhpError> {
        self.call_partition("WHvEmulatorCreateEmulator")?;
        let mut s = self.state();
        s.emulators.push(*callbacks);
        Ok(std::ptr::without_provenance_mut(s.emulators.len()))
    }

    unsafe fn destroy_emulator(&self, _emulator: EmulatorHandle) {
        let _ = self.call("WHvEmulatorDestroyEmulator");
        self.state().destroyed_emulators += 1;
    }

    unsafe fn try_io_emulation(
        &self,
        emulator: EmulatorHandle,
        context: *const c_void,
        vp_context: &WHV_VP_EXIT_CONTEXT,
        access: &WHV_X64_IO_PORT_ACCESS_CONTEXT,
    ) -> Result<WHV_EMULATOR_STATUS, WhpError> {
        self.call_partition("WHvEmulatorTryIoEmulation")?;
        let emu = Emu {
            cbs: self.callbacks(emulator),
            context,
        };
        Ok(status(emu.io(vp_context, access)))
    }

    unsafe fn try_mmio_emulation(
        &self,
        emulator: EmulatorHandle,
        context: *const c_void,
        vp_context: &WHV_VP_EXIT_CONTEXT,
        access: &WHV_MEMORY_ACCESS_CONTEXT,
    ) -> Result<WHV_EMULATOR_STATUS, WhpError> {
        self.call_partition("WHvEmulatorTryMmioEmulation")?;
        let emu = Emu {
            cbs: self.callbacks(emulator),
            context,
        };
        Ok(status(emu.mmio(vp_context, access)))
    }
}

fn status(bits: u32) -> WHV_EMULATOR_STATUS {
    let mut s = WHV_EMULATOR_STATUS::default();
    s.AsUINT32 = bits;
    s
}

/// The fake instruction emulator for one call: the backend's callbacks and
/// the context it passed. Methods return the emulator status bits.
struct Emu {
    cbs: WHV_EMULATOR_CALLBACKS,
    context: *const c_void,
}

impl Emu {
    fn get(&self, name: WHV_REGISTER_NAME) -> Result<u64, u32> {
        let mut v = [WHV_REGISTER_VALUE::default()];
        let f = self
            .cbs
            .WHvEmulatorGetVirtualProcessorRegisters
            .expect("callback");
        // SAFETY: `context` is what the backend passed to the emulation
        // call that is running; one name and one value slot.
        let hr = unsafe { f(self.context, &name, 1, v.as_mut_ptr()) };
        if hr == S_OK {
            Ok(u64_of(&v[0]))
        } else {
            Err(STATUS_GET_REGISTERS_CALLBACK_FAILED)
        }
    }

    fn set(&self, name: WHV_REGISTER_NAME, value: u64) -> Result<(), u32> {
        let v = [reg64(value)];
        let f = self
            .cbs
            .WHvEmulatorSetVirtualProcessorRegisters
            .expect("callback");
        // SAFETY: as in `get`.
        let hr = unsafe { f(self.context, &name, 1, v.as_ptr()) };
        if hr == S_OK {
            Ok(())
        } else {
            Err(STATUS_SET_REGISTERS_CALLBACK_FAILED)
        }
    }

    fn io(&self, vp: &WHV_VP_EXIT_CONTEXT, access: &WHV_X64_IO_PORT_ACCESS_CONTEXT) -> u32 {
        self.try_io(vp, access).unwrap_or_else(|e| e)
    }

    fn try_io(
        &self,
        vp: &WHV_VP_EXIT_CONTEXT,
        access: &WHV_X64_IO_PORT_ACCESS_CONTEXT,
    ) -> Result<u32, u32> {
        // SAFETY: both members of the union are one u32.
        let bits = unsafe { access.AccessInfo.AsUINT32 };
        let (write, size, string) = (bits & 1 != 0, (bits >> 1) & 7, bits & (1 << 4) != 0);
        if string {
            return Err(STATUS_INTERNAL_FAILURE);
        }
        let mask = mask(size as usize);
        let rax = self.get(WHvX64RegisterRax)?;
        let mut info = WHV_EMULATOR_IO_ACCESS_INFO {
            Direction: u8::from(write),
            Port: access.PortNumber,
            AccessSize: size as u16,
            Data: if write { (rax & mask) as u32 } else { 0 },
        };
        let f = self.cbs.WHvEmulatorIoPortCallback.expect("callback");
        // SAFETY: as in `get`; `info` is a live access record.
        if unsafe { f(self.context, &mut info) } != S_OK {
            return Err(STATUS_IO_PORT_CALLBACK_FAILED);
        }
        if !write {
            let data = u64::from(info.Data) & mask;
            // A 32-bit destination zero-extends into RAX.
            let rax = if size == 4 {
                data
            } else {
                (rax & !mask) | data
            };
            self.set(WHvX64RegisterRax, rax)?;
        }
        let len = u64::from(vp._bitfield & 0xf);
        self.set(WHvX64RegisterRip, vp.Rip + len)?;
        Ok(STATUS_SUCCESS)
    }

    fn mmio(&self, vp: &WHV_VP_EXIT_CONTEXT, access: &WHV_MEMORY_ACCESS_CONTEXT) -> u32 {
        self.try_mmio(vp, access).unwrap_or_else(|e| e)
    }

    fn try_mmio(
        &self,
        vp: &WHV_VP_EXIT_CONTEXT,
        access: &WHV_MEMORY_ACCESS_CONTEXT,
    ) -> Result<u32, u32> {
        let bytes = &access.InstructionBytes[..usize::from(access.InstructionByteCount)];
        let d = decode(bytes).ok_or(STATUS_INTERNAL_FAILURE)?;
        // Translate the operand's GVA as the real emulator does.
        let flags = if d.write {
            WHvTranslateGvaFlagValidateWrite
        } else {
            WHvTranslateGvaFlagValidateRead
        };
        let (mut code, mut gpa) = (0, 0u64);
        let f = self.cbs.WHvEmulatorTranslateGvaPage.expect("callback");
        // SAFETY: as in `get`; `code` and `gpa` are live locals.
        let hr = unsafe { f(self.context, access.Gva, flags, &mut code, &mut gpa) };
        if hr != S_OK || code != WHvTranslateGvaResultSuccess || gpa != access.Gpa {
            return Err(STATUS_TRANSLATE_GVA_CALLBACK_FAILED);
        }
        let reg = GPRS[d.reg];
        let mut info = WHV_EMULATOR_MEMORY_ACCESS_INFO {
            GpaAddress: gpa,
            Direction: if d.write { DIRECTION_WRITE } else { 0 },
            AccessSize: d.size as u8,
            Data: [0; 8],
        };
        if d.write {
            let v = self.get(reg)?;
            info.Data[..d.size].copy_from_slice(&v.to_le_bytes()[..d.size]);
        }
        let f = self.cbs.WHvEmulatorMemoryCallback.expect("callback");
        // SAFETY: as in `get`; `info` is a live access record.
        if unsafe { f(self.context, &mut info) } != S_OK {
            return Err(STATUS_MEMORY_CALLBACK_FAILED);
        }
        if !d.write {
            let mut b = [0u8; 8];
            b[..d.size].copy_from_slice(&info.Data[..d.size]);
            let loaded = u64::from_le_bytes(b);
            let old = self.get(reg)?;
            let mask = mask(d.size);
            let new = if d.size >= 4 {
                loaded
            } else {
                (old & !mask) | loaded
            };
            self.set(reg, new)?;
        }
        self.set(WHvX64RegisterRip, vp.Rip + d.len as u64)?;
        Ok(STATUS_SUCCESS)
    }
}

fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// A decoded `mov` between a register and `[reg]`.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    write: bool,
    size: usize,
    reg: usize,
    len: usize,
}

fn decode(bytes: &[u8]) -> Option<Decoded> {
    let mut i = 0;
    let opsize16 = bytes.first() == Some(&0x66);
    if opsize16 {
        i += 1;
    }
    let rex = match bytes.get(i) {
        Some(b @ 0x40..=0x4f) => {
            i += 1;
            *b
        }
        _ => 0,
    };
    let op = *bytes.get(i)?;
    let modrm = *bytes.get(i + 1)?;
    i += 2;
    // Only [reg] addressing: mod 00, no SIB, no RIP-relative.
    if modrm >> 6 != 0 || matches!(modrm & 7, 4 | 5) {
        return None;
    }
    let (write, byte) = match op {
        0x88 => (true, true),
        0x89 => (true, false),
        0x8a => (false, true),
        0x8b => (false, false),
        _ => return None,
    };
    let reg = usize::from((modrm >> 3) & 7) | if rex & 4 != 0 { 8 } else { 0 };
    if byte && rex == 0 && reg >= 4 {
        return None; // AH..BH
    }
    let size = match (byte, rex & 8 != 0, opsize16) {
        (true, ..) => 1,
        (false, true, _) => 8,
        (false, false, true) => 2,
        (false, false, false) => 4,
    };
    Some(Decoded {
        write,
        size,
        reg,
        len: i,
    })
}

/// An exit with just a reason.
pub fn exit(reason: WHV_RUN_VP_EXIT_REASON) -> WHV_RUN_VP_EXIT_CONTEXT {
    WHV_RUN_VP_EXIT_CONTEXT {
        ExitReason: reason,
        ..Default::default()
    }
}

fn at(reason: WHV_RUN_VP_EXIT_REASON, rip: u64, len: u8) -> WHV_RUN_VP_EXIT_CONTEXT {
    let mut e = exit(reason);
    e.VpContext.Rip = rip;
    e.VpContext._bitfield = len & 0xf;
    e
}

/// `in`/`out` of `size` bytes at `port` (`out dx, al` and friends: one byte long).
pub fn io_exit(port: u16, size: u8, write: bool, rip: u64) -> WHV_RUN_VP_EXIT_CONTEXT {
    let mut e = at(WHvRunVpExitReasonX64IoPortAccess, rip, 1);
    let mut access = WHV_X64_IO_PORT_ACCESS_CONTEXT {
        PortNumber: port,
        InstructionByteCount: 1,
        ..Default::default()
    };
    access.InstructionBytes[0] = match (write, size) {
        (true, 1) => 0xee,
        (true, _) => 0xef,
        (false, 1) => 0xec,
        (false, _) => 0xed,
    };
    access.AccessInfo.AsUINT32 = u32::from(write) | (u32::from(size) << 1);
    e.Anonymous.IoPortAccess = access;
    e
}

/// A memory access at `gpa` (GVA = GPA) by the instruction `insn`.
pub fn mmio_exit(gpa: u64, insn: &[u8], rip: u64) -> WHV_RUN_VP_EXIT_CONTEXT {
    let mut e = at(WHvRunVpExitReasonMemoryAccess, rip, 0);
    let mut access = WHV_MEMORY_ACCESS_CONTEXT {
        InstructionByteCount: insn.len() as u8,
        Gpa: gpa,
        Gva: gpa,
        ..Default::default()
    };
    access.InstructionBytes[..insn.len()].copy_from_slice(insn);
    let write = decode(insn).is_some_and(|d| d.write);
    // AccessType:2 (0 read, 1 write), GpaUnmapped:1, GvaValid:1.
    access.AccessInfo.AsUINT32 = u32::from(write) | (1 << 2) | (1 << 3);
    e.Anonymous.MemoryAccess = access;
    e
}

/// CPUID (`leaf`, `subleaf`) with WHP's `default` answer.
pub fn cpuid_exit(leaf: u32, subleaf: u32, default: [u32; 4], rip: u64) -> WHV_RUN_VP_EXIT_CONTEXT {
    let mut e = at(WHvRunVpExitReasonX64Cpuid, rip, 2);
    e.Anonymous.CpuidAccess.Rax = u64::from(leaf);
    e.Anonymous.CpuidAccess.Rcx = u64::from(subleaf);
    e.Anonymous.CpuidAccess.DefaultResultRax = u64::from(default[0]);
    e.Anonymous.CpuidAccess.DefaultResultRbx = u64::from(default[1]);
    e.Anonymous.CpuidAccess.DefaultResultRcx = u64::from(default[2]);
    e.Anonymous.CpuidAccess.DefaultResultRdx = u64::from(default[3]);
    e
}

/// RDMSR (`value` None) or WRMSR of `index`.
pub fn msr_exit(index: u32, value: Option<u64>, rip: u64) -> WHV_RUN_VP_EXIT_CONTEXT {
    let mut e = at(WHvRunVpExitReasonX64MsrAccess, rip, 2);
    let v = value.unwrap_or(0);
    e.Anonymous.MsrAccess.MsrNumber = index;
    e.Anonymous.MsrAccess.AccessInfo.AsUINT32 = u32::from(value.is_some());
    e.Anonymous.MsrAccess.Rax = v & 0xffff_ffff;
    e.Anonymous.MsrAccess.Rdx = v >> 32;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_reads_sizes_registers_and_lengths() {
        let d = |b: &[u8]| decode(b).unwrap();
        assert_eq!(
            d(&[0x88, 0x18]),
            Decoded {
                write: true,
                size: 1,
                reg: 3,
                len: 2
            }
        );
        assert_eq!(
            d(&[0x66, 0x89, 0x18]),
            Decoded {
                write: true,
                size: 2,
                reg: 3,
                len: 3
            }
        );
        assert_eq!(
            d(&[0x89, 0x18]),
            Decoded {
                write: true,
                size: 4,
                reg: 3,
                len: 2
            }
        );
        assert_eq!(
            d(&[0x48, 0x89, 0x18]),
            Decoded {
                write: true,
                size: 8,
                reg: 3,
                len: 3
            }
        );
        assert_eq!(
            d(&[0x4c, 0x8b, 0x00]),
            Decoded {
                write: false,
                size: 8,
                reg: 8,
                len: 3
            }
        );
        assert_eq!(
            d(&[0x8b, 0x08]),
            Decoded {
                write: false,
                size: 4,
                reg: 1,
                len: 2
            }
        );
        assert!(decode(&[0x8b, 0x04, 0x24]).is_none(), "SIB not supported");
        assert!(decode(&[0x88, 0x20]).is_none(), "AH not supported");
        assert!(decode(&[0x0f, 0x01]).is_none());
    }

    #[test]
    fn unknown_failures_map_to_e_fail() {
        let api = FakeApi::default();
        api.state().fail = Some("WHvSetupPartition");
        let e = api.setup().unwrap_err();
        assert_eq!(e.hresult(), E_FAIL);
        assert!(e.to_string().contains("WHvSetupPartition"));
    }
}
