//! The WHP instruction emulator's callbacks.
//!
//! On an `X64IoPortAccess` or `MemoryAccess` exit WHP reports the
//! instruction, not the data. The vCPU hands the exit to
//! `WHvEmulatorTryIoEmulation` / `TryMmioEmulation`, which decodes it and
//! calls back, on the same thread, into the functions here with the
//! [`CallbackContext`] pointer the vCPU passed:
//!
//! * the I/O port callback calls [`ExitHandler::pio_read`] / `pio_write`;
//! * the memory callback routes by guest-physical address: the IOAPIC
//!   window to the partition's IOAPIC, guest RAM (string instructions read
//!   and write their RAM operand through it) to guest memory, anything else
//!   to [`ExitHandler::mmio_read`] / `mmio_write`;
//! * the register and GVA-translation callbacks go to the vCPU through
//!   [`WhpApi`].
//!
//! A panic inside a callback must not unwind into WHP: it is caught, the
//! callback fails with `E_FAIL`, and the vCPU resumes the panic once the
//! emulator has returned.

use std::any::Any;
use std::cell::Cell;
use std::ffi::c_void;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use vm_memory::{Bytes, GuestAddress, GuestMemory};
use windows_sys::core::HRESULT;
use windows_sys::Win32::Foundation::{E_FAIL, E_INVALIDARG, S_OK};
use windows_sys::Win32::System::Hypervisor::{
    WHV_EMULATOR_CALLBACKS, WHV_EMULATOR_IO_ACCESS_INFO, WHV_EMULATOR_MEMORY_ACCESS_INFO,
    WHV_EMULATOR_STATUS, WHV_REGISTER_NAME, WHV_REGISTER_VALUE, WHV_TRANSLATE_GVA_FLAGS,
    WHV_TRANSLATE_GVA_RESULT_CODE,
};

use super::ioapic;
use super::partition::Shared;
use super::WhpApi;
use crate::arch::x86_64::layout;
use crate::hypervisor::ExitHandler;

/// `WHV_EMULATOR_IO_ACCESS_INFO::Direction` / memory `Direction` for a write.
pub const DIRECTION_WRITE: u8 = 1;

/// `WHV_EMULATOR_STATUS` bit: the instruction was emulated.
pub const STATUS_SUCCESS: u32 = 1;

/// The raw bits of an emulator status.
pub fn status_bits(s: &WHV_EMULATOR_STATUS) -> u32 {
    // SAFETY: both members of the union are one u32.
    unsafe { s.AsUINT32 }
}

/// What the callbacks of one emulation see: the vCPU, its partition and
/// the handler of this `Vcpu::run`. Lives on the vCPU thread's stack for
/// the duration of one `WHvEmulatorTry*Emulation` call.
pub struct CallbackContext<'a, A: WhpApi> {
    pub shared: &'a Shared<A>,
    pub vp: u32,
    pub io: &'a dyn ExitHandler,
    panic: Cell<Option<Box<dyn Any + Send>>>,
}

impl<'a, A: WhpApi> CallbackContext<'a, A> {
    pub fn new(shared: &'a Shared<A>, vp: u32, io: &'a dyn ExitHandler) -> Self {
        Self {
            shared,
            vp,
            io,
            panic: Cell::new(None),
        }
    }

    /// The pointer the emulator hands back to the callbacks.
    pub fn as_ptr(&self) -> *const c_void {
        (self as *const Self).cast()
    }

    /// Re-raises a panic a callback caught.
    pub fn resume_panic(&self) {
        if let Some(p) = self.panic.take() {
            resume_unwind(p);
        }
    }

    /// Runs a callback body, turning a panic into `E_FAIL`.
    fn guarded(&self, f: impl FnOnce() -> HRESULT) -> HRESULT {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(hr) => hr,
            Err(p) => {
                self.panic.set(Some(p));
                E_FAIL
            }
        }
    }

    /// A guest load from `gpa`, routed by address.
    pub fn memory_read(&self, gpa: u64, data: &mut [u8]) {
        if let Some(offset) = ioapic_offset(gpa) {
            self.shared.ioapic_read(offset, data);
        } else if self.shared.mem.address_in_range(GuestAddress(gpa)) {
            if self.shared.mem.read_slice(data, GuestAddress(gpa)).is_err() {
                data.fill(0xff);
            }
        } else {
            self.io.mmio_read(gpa, data);
        }
    }

    /// A guest store to `gpa`, routed by address.
    pub fn memory_write(&self, gpa: u64, data: &[u8]) {
        if let Some(offset) = ioapic_offset(gpa) {
            self.shared.ioapic_write(offset, data);
        } else if self.shared.mem.address_in_range(GuestAddress(gpa)) {
            if let Err(e) = self.shared.mem.write_slice(data, GuestAddress(gpa)) {
                log::warn!("vCPU {}: emulated store to RAM at {gpa:#x}: {e}", self.vp);
            }
        } else {
            self.io.mmio_write(gpa, data);
        }
    }
}

fn ioapic_offset(gpa: u64) -> Option<u64> {
    let offset = gpa.checked_sub(layout::IOAPIC_ADDR)?;
    (offset < ioapic::MMIO_SIZE).then_some(offset)
}

/// The callback table for an emulator whose context is a
/// `CallbackContext<A>`.
pub fn callbacks<A: WhpApi>() -> WHV_EMULATOR_CALLBACKS {
    WHV_EMULATOR_CALLBACKS {
        Size: std::mem::size_of::<WHV_EMULATOR_CALLBACKS>() as u32,
        Reserved: 0,
        WHvEmulatorIoPortCallback: Some(io_port::<A>),
        WHvEmulatorMemoryCallback: Some(memory::<A>),
        WHvEmulatorGetVirtualProcessorRegisters: Some(get_registers::<A>),
        WHvEmulatorSetVirtualProcessorRegisters: Some(set_registers::<A>),
        WHvEmulatorTranslateGvaPage: Some(translate_gva_page::<A>),
    }
}

/// # Safety
///
/// `context` is the `CallbackContext<A>` passed to the emulation call,
/// still live; `access` points to a valid access record.
unsafe extern "system" fn io_port<A: WhpApi>(
    context: *const c_void,
    access: *mut WHV_EMULATOR_IO_ACCESS_INFO,
) -> HRESULT {
    // SAFETY: per this function's contract.
    let (ctx, access) = unsafe { (&*context.cast::<CallbackContext<A>>(), &mut *access) };
    ctx.guarded(|| {
        let size = usize::from(access.AccessSize);
        if !matches!(size, 1 | 2 | 4) {
            return E_INVALIDARG;
        }
        let mut bytes = access.Data.to_le_bytes();
        if access.Direction == DIRECTION_WRITE {
            ctx.io.pio_write(access.Port, &bytes[..size]);
        } else {
            bytes = [0; 4];
            ctx.io.pio_read(access.Port, &mut bytes[..size]);
            access.Data = u32::from_le_bytes(bytes);
        }
        S_OK
    })
}

/// # Safety
///
/// As for `io_port`.
unsafe extern "system" fn memory<A: WhpApi>(
    context: *const c_void,
    access: *mut WHV_EMULATOR_MEMORY_ACCESS_INFO,
) -> HRESULT {
    // SAFETY: per this function's contract.
    let (ctx, access) = unsafe { (&*context.cast::<CallbackContext<A>>(), &mut *access) };
    ctx.guarded(|| {
        let size = usize::from(access.AccessSize);
        if !(1..=access.Data.len()).contains(&size) {
            return E_INVALIDARG;
        }
        let data = &mut access.Data[..size];
        if access.Direction == DIRECTION_WRITE {
            ctx.memory_write(access.GpaAddress, data);
        } else {
            ctx.memory_read(access.GpaAddress, data);
        }
        S_OK
    })
}

/// # Safety
///
/// `context` as for `io_port`; `names` and `values` point to `count`
/// elements each.
unsafe extern "system" fn get_registers<A: WhpApi>(
    context: *const c_void,
    names: *const WHV_REGISTER_NAME,
    count: u32,
    values: *mut WHV_REGISTER_VALUE,
) -> HRESULT {
    // SAFETY: per this function's contract.
    let (ctx, names, values) = unsafe {
        (
            &*context.cast::<CallbackContext<A>>(),
            std::slice::from_raw_parts(names, count as usize),
            std::slice::from_raw_parts_mut(values, count as usize),
        )
    };
    ctx.guarded(
        || match ctx.shared.api.get_registers(ctx.vp, names, values) {
            Ok(()) => S_OK,
            Err(e) => e.hresult(),
        },
    )
}

/// # Safety
///
/// As for `get_registers`.
unsafe extern "system" fn set_registers<A: WhpApi>(
    context: *const c_void,
    names: *const WHV_REGISTER_NAME,
    count: u32,
    values: *const WHV_REGISTER_VALUE,
) -> HRESULT {
    // SAFETY: per this function's contract.
    let (ctx, names, values) = unsafe {
        (
            &*context.cast::<CallbackContext<A>>(),
            std::slice::from_raw_parts(names, count as usize),
            std::slice::from_raw_parts(values, count as usize),
        )
    };
    ctx.guarded(
        || match ctx.shared.api.set_registers(ctx.vp, names, values) {
            Ok(()) => S_OK,
            Err(e) => e.hresult(),
        },
    )
}

/// # Safety
///
/// `context` as for `io_port`; `result` and `gpa` are valid to write.
unsafe extern "system" fn translate_gva_page<A: WhpApi>(
    context: *const c_void,
    gva: u64,
    flags: WHV_TRANSLATE_GVA_FLAGS,
    result: *mut WHV_TRANSLATE_GVA_RESULT_CODE,
    gpa: *mut u64,
) -> HRESULT {
    // SAFETY: per this function's contract.
    let (ctx, result, gpa) = unsafe {
        (
            &*context.cast::<CallbackContext<A>>(),
            &mut *result,
            &mut *gpa,
        )
    };
    ctx.guarded(|| match ctx.shared.api.translate_gva(ctx.vp, gva, flags) {
        Ok((code, translated)) => {
            *result = code;
            *gpa = translated;
            S_OK
        }
        Err(e) => e.hresult(),
    })
}
