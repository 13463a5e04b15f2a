//! The WHP calls the backend makes, as a trait ([`WhpApi`]) so the exit
//! handling runs against a fake in tests, and [`WinHv`], the real one over
//! windows-sys (`winhvplatform.dll`, `winhvemulation.dll`).
//!
//! Nothing in this file's [`WinHv`] has run: on Linux the WHv* symbols are
//! declared but never called (see docs/porting/whp.md).

use std::ffi::c_void;
use std::mem::size_of;

use windows_sys::core::HRESULT;
use windows_sys::Win32::System::Hypervisor::{
    WHvCancelRunVirtualProcessor, WHvCapabilityCodeHypervisorPresent, WHvCreatePartition,
    WHvCreateVirtualProcessor, WHvDeletePartition, WHvDeleteVirtualProcessor,
    WHvEmulatorCreateEmulator, WHvEmulatorDestroyEmulator, WHvEmulatorTryIoEmulation,
    WHvEmulatorTryMmioEmulation, WHvGetCapability, WHvGetVirtualProcessorRegisters, WHvMapGpaRange,
    WHvRequestInterrupt, WHvRunVirtualProcessor, WHvSetPartitionProperty,
    WHvSetVirtualProcessorRegisters, WHvSetupPartition, WHvTranslateGva, WHV_CAPABILITY,
    WHV_EMULATOR_CALLBACKS, WHV_EMULATOR_STATUS, WHV_INTERRUPT_CONTROL, WHV_MAP_GPA_RANGE_FLAGS,
    WHV_MEMORY_ACCESS_CONTEXT, WHV_PARTITION_HANDLE, WHV_PARTITION_PROPERTY_CODE,
    WHV_REGISTER_NAME, WHV_REGISTER_VALUE, WHV_RUN_VP_EXIT_CONTEXT, WHV_TRANSLATE_GVA_FLAGS,
    WHV_TRANSLATE_GVA_RESULT, WHV_TRANSLATE_GVA_RESULT_CODE, WHV_VP_EXIT_CONTEXT,
    WHV_X64_IO_PORT_ACCESS_CONTEXT,
};

use super::WhpError;

/// An instruction emulator (`WHV_EMULATOR_HANDLE`).
pub type EmulatorHandle = *mut c_void;

/// The WHP functions hutch uses, on one partition. `vp` is the vCPU index.
pub trait WhpApi: Send + Sync + 'static {
    /// `WHvSetPartitionProperty` with the property's bytes.
    fn set_property(&self, code: WHV_PARTITION_PROPERTY_CODE, value: &[u8])
        -> Result<(), WhpError>;
    /// `WHvSetupPartition`.
    fn setup(&self) -> Result<(), WhpError>;
    /// `WHvMapGpaRange`. `slot` only names the region in errors.
    ///
    /// # Safety
    ///
    /// `host` must point to `size` bytes that stay mapped until the
    /// partition is deleted.
    unsafe fn map_gpa_range(
        &self,
        slot: u32,
        host: *const u8,
        gpa: u64,
        size: u64,
        flags: WHV_MAP_GPA_RANGE_FLAGS,
    ) -> Result<(), WhpError>;
    /// `WHvCreateVirtualProcessor`.
    fn create_vp(&self, vp: u32) -> Result<(), WhpError>;
    /// `WHvDeleteVirtualProcessor`.
    fn delete_vp(&self, vp: u32) -> Result<(), WhpError>;
    /// `WHvRunVirtualProcessor`: runs until the next exit.
    fn run_vp(&self, vp: u32) -> Result<WHV_RUN_VP_EXIT_CONTEXT, WhpError>;
    /// `WHvCancelRunVirtualProcessor`: makes a running (or the next) run return `Canceled`.
    fn cancel_run_vp(&self, vp: u32) -> Result<(), WhpError>;
    /// `WHvGetVirtualProcessorRegisters`; `values` has one slot per name.
    fn get_registers(
        &self,
        vp: u32,
        names: &[WHV_REGISTER_NAME],
        values: &mut [WHV_REGISTER_VALUE],
    ) -> Result<(), WhpError>;
    /// `WHvSetVirtualProcessorRegisters`.
    fn set_registers(
        &self,
        vp: u32,
        names: &[WHV_REGISTER_NAME],
        values: &[WHV_REGISTER_VALUE],
    ) -> Result<(), WhpError>;
    /// `WHvTranslateGva`: the result code and, on success, the GPA.
    fn translate_gva(
        &self,
        vp: u32,
        gva: u64,
        flags: WHV_TRANSLATE_GVA_FLAGS,
    ) -> Result<(WHV_TRANSLATE_GVA_RESULT_CODE, u64), WhpError>;
    /// `WHvRequestInterrupt`.
    fn request_interrupt(&self, interrupt: &WHV_INTERRUPT_CONTROL) -> Result<(), WhpError>;
    /// `WHvEmulatorCreateEmulator`.
    fn create_emulator(
        &self,
        callbacks: &WHV_EMULATOR_CALLBACKS,
    ) -> Result<EmulatorHandle, WhpError>;
    /// `WHvEmulatorDestroyEmulator`.
    ///
    /// # Safety
    ///
    /// `emulator` comes from [`WhpApi::create_emulator`] and is not used
    /// again.
    unsafe fn destroy_emulator(&self, emulator: EmulatorHandle);
    /// `WHvEmulatorTryIoEmulation`: decodes the port instruction and calls
    /// the emulator's callbacks with `context`.
    ///
    /// # Safety
    ///
    /// `emulator` comes from [`WhpApi::create_emulator`] and `context` is
    /// what its callbacks expect, live for the whole call.
    unsafe fn try_io_emulation(
        &self,
        emulator: EmulatorHandle,
        context: *const c_void,
        vp_context: &WHV_VP_EXIT_CONTEXT,
        access: &WHV_X64_IO_PORT_ACCESS_CONTEXT,
    ) -> Result<WHV_EMULATOR_STATUS, WhpError>;
    /// `WHvEmulatorTryMmioEmulation`, likewise for a memory access.
    ///
    /// # Safety
    ///
    /// As for [`WhpApi::try_io_emulation`].
    unsafe fn try_mmio_emulation(
        &self,
        emulator: EmulatorHandle,
        context: *const c_void,
        vp_context: &WHV_VP_EXIT_CONTEXT,
        access: &WHV_MEMORY_ACCESS_CONTEXT,
    ) -> Result<WHV_EMULATOR_STATUS, WhpError>;
}

fn check(hr: HRESULT, func: &'static str) -> Result<(), WhpError> {
    if hr >= 0 {
        Ok(())
    } else {
        Err(WhpError::Partition { func, hr })
    }
}

fn check_vp(hr: HRESULT, vcpu: u32, func: &'static str) -> Result<(), WhpError> {
    if hr >= 0 {
        Ok(())
    } else {
        Err(WhpError::Vcpu { vcpu, func, hr })
    }
}

/// Whether WHP is installed and enabled (`WHvGetCapability`).
pub fn hypervisor_present() -> Result<bool, WhpError> {
    let mut cap = WHV_CAPABILITY::default();
    let mut written = 0u32;
    // SAFETY: the buffer is a live WHV_CAPABILITY of the size passed, and
    // `written` is a valid u32 to write to.
    let hr = unsafe {
        WHvGetCapability(
            WHvCapabilityCodeHypervisorPresent,
            (&mut cap as *mut WHV_CAPABILITY).cast(),
            size_of::<WHV_CAPABILITY>() as u32,
            &mut written,
        )
    };
    check(hr, "WHvGetCapability")?;
    // SAFETY: for HypervisorPresent WHP writes the BOOL member; the rest of
    // the union was zeroed by Default.
    Ok(unsafe { cap.HypervisorPresent } != 0)
}

/// A WHP partition, deleted when dropped.
#[derive(Debug)]
pub struct WinHv {
    partition: WHV_PARTITION_HANDLE,
}

impl WinHv {
    /// `WHvCreatePartition`.
    pub fn create() -> Result<Self, WhpError> {
        let mut partition: WHV_PARTITION_HANDLE = 0;
        // SAFETY: WHvCreatePartition writes one handle to a valid pointer.
        let hr = unsafe { WHvCreatePartition(&mut partition) };
        check(hr, "WHvCreatePartition")?;
        Ok(Self { partition })
    }
}

impl Drop for WinHv {
    fn drop(&mut self) {
        // SAFETY: the handle came from WHvCreatePartition and is deleted once.
        let hr = unsafe { WHvDeletePartition(self.partition) };
        if hr < 0 {
            log::warn!("WHvDeletePartition: HRESULT {hr:#010x}");
        }
    }
}

impl WhpApi for WinHv {
    fn set_property(
        &self,
        code: WHV_PARTITION_PROPERTY_CODE,
        value: &[u8],
    ) -> Result<(), WhpError> {
        // SAFETY: the buffer is `value`, valid for its length during the call.
        let hr = unsafe {
            WHvSetPartitionProperty(
                self.partition,
                code,
                value.as_ptr().cast(),
                value.len() as u32,
            )
        };
        check(hr, "WHvSetPartitionProperty")
    }

    fn setup(&self) -> Result<(), WhpError> {
        // SAFETY: a live partition handle; no pointers.
        let hr = unsafe { WHvSetupPartition(self.partition) };
        check(hr, "WHvSetupPartition")
    }

    unsafe fn map_gpa_range(
        &self,
        slot: u32,
        host: *const u8,
        gpa: u64,
        size: u64,
        flags: WHV_MAP_GPA_RANGE_FLAGS,
    ) -> Result<(), WhpError> {
        // SAFETY: the caller guarantees `host` maps `size` bytes for the
        // partition's lifetime.
        let hr = unsafe { WHvMapGpaRange(self.partition, host.cast(), gpa, size, flags) };
        if hr < 0 {
            return Err(WhpError::MapGpa {
                slot,
                gpa,
                size,
                hr,
            });
        }
        Ok(())
    }

    fn create_vp(&self, vp: u32) -> Result<(), WhpError> {
        // SAFETY: a live partition handle; no pointers.
        let hr = unsafe { WHvCreateVirtualProcessor(self.partition, vp, 0) };
        check_vp(hr, vp, "WHvCreateVirtualProcessor")
    }

    fn delete_vp(&self, vp: u32) -> Result<(), WhpError> {
        // SAFETY: a live partition handle; no pointers.
        let hr = unsafe { WHvDeleteVirtualProcessor(self.partition, vp) };
        check_vp(hr, vp, "WHvDeleteVirtualProcessor")
    }

    fn run_vp(&self, vp: u32) -> Result<WHV_RUN_VP_EXIT_CONTEXT, WhpError> {
        let mut exit = WHV_RUN_VP_EXIT_CONTEXT::default();
        // SAFETY: the exit context buffer is live and of the size passed.
        let hr = unsafe {
            WHvRunVirtualProcessor(
                self.partition,
                vp,
                (&mut exit as *mut WHV_RUN_VP_EXIT_CONTEXT).cast(),
                size_of::<WHV_RUN_VP_EXIT_CONTEXT>() as u32,
            )
        };
        check_vp(hr, vp, "WHvRunVirtualProcessor")?;
        Ok(exit)
    }

    fn cancel_run_vp(&self, vp: u32) -> Result<(), WhpError> {
        // SAFETY: a live partition handle; no pointers.
        let hr = unsafe { WHvCancelRunVirtualProcessor(self.partition, vp, 0) };
        check_vp(hr, vp, "WHvCancelRunVirtualProcessor")
    }

    fn get_registers(
        &self,
        vp: u32,
        names: &[WHV_REGISTER_NAME],
        values: &mut [WHV_REGISTER_VALUE],
    ) -> Result<(), WhpError> {
        assert_eq!(names.len(), values.len(), "one value per register name");
        // SAFETY: both arrays hold `names.len()` elements and live for the call.
        let hr = unsafe {
            WHvGetVirtualProcessorRegisters(
                self.partition,
                vp,
                names.as_ptr(),
                names.len() as u32,
                values.as_mut_ptr(),
            )
        };
        check_vp(hr, vp, "WHvGetVirtualProcessorRegisters")
    }

    fn set_registers(
        &self,
        vp: u32,
        names: &[WHV_REGISTER_NAME],
        values: &[WHV_REGISTER_VALUE],
    ) -> Result<(), WhpError> {
        assert_eq!(names.len(), values.len(), "one value per register name");
        // SAFETY: both arrays hold `names.len()` elements and live for the call.
        let hr = unsafe {
            WHvSetVirtualProcessorRegisters(
                self.partition,
                vp,
                names.as_ptr(),
                names.len() as u32,
                values.as_ptr(),
            )
        };
        check_vp(hr, vp, "WHvSetVirtualProcessorRegisters")
    }

    fn translate_gva(
        &self,
        vp: u32,
        gva: u64,
        flags: WHV_TRANSLATE_GVA_FLAGS,
    ) -> Result<(WHV_TRANSLATE_GVA_RESULT_CODE, u64), WhpError> {
        let mut result = WHV_TRANSLATE_GVA_RESULT::default();
        let mut gpa = 0u64;
        // SAFETY: `result` and `gpa` are live locals to write to.
        let hr = unsafe { WHvTranslateGva(self.partition, vp, gva, flags, &mut result, &mut gpa) };
        check_vp(hr, vp, "WHvTranslateGva")?;
        Ok((result.ResultCode, gpa))
    }

    fn request_interrupt(&self, interrupt: &WHV_INTERRUPT_CONTROL) -> Result<(), WhpError> {
        // SAFETY: `interrupt` is a live WHV_INTERRUPT_CONTROL of the size passed.
        let hr = unsafe {
            WHvRequestInterrupt(
                self.partition,
                interrupt,
                size_of::<WHV_INTERRUPT_CONTROL>() as u32,
            )
        };
        check(hr, "WHvRequestInterrupt")
    }

    fn create_emulator(
        &self,
        callbacks: &WHV_EMULATOR_CALLBACKS,
    ) -> Result<EmulatorHandle, WhpError> {
        let mut emulator: EmulatorHandle = std::ptr::null_mut();
        // SAFETY: `callbacks` is a filled WHV_EMULATOR_CALLBACKS (WHP copies
        // it) and `emulator` a live pointer to write the handle to.
        let hr = unsafe { WHvEmulatorCreateEmulator(callbacks, &mut emulator) };
        check(hr, "WHvEmulatorCreateEmulator")?;
        Ok(emulator)
    }

    unsafe fn destroy_emulator(&self, emulator: EmulatorHandle) {
        // SAFETY: the caller guarantees a handle from
        // WHvEmulatorCreateEmulator, destroyed once.
        let hr = unsafe { WHvEmulatorDestroyEmulator(emulator) };
        if hr < 0 {
            log::warn!("WHvEmulatorDestroyEmulator: HRESULT {hr:#010x}");
        }
    }

    unsafe fn try_io_emulation(
        &self,
        emulator: EmulatorHandle,
        context: *const c_void,
        vp_context: &WHV_VP_EXIT_CONTEXT,
        access: &WHV_X64_IO_PORT_ACCESS_CONTEXT,
    ) -> Result<WHV_EMULATOR_STATUS, WhpError> {
        let mut status = WHV_EMULATOR_STATUS::default();
        // SAFETY: the caller guarantees `emulator` and `context`; the exit
        // structures and `status` are live for the call.
        let hr = unsafe {
            WHvEmulatorTryIoEmulation(emulator, context, vp_context, access, &mut status)
        };
        check(hr, "WHvEmulatorTryIoEmulation")?;
        Ok(status)
    }

    unsafe fn try_mmio_emulation(
        &self,
        emulator: EmulatorHandle,
        context: *const c_void,
        vp_context: &WHV_VP_EXIT_CONTEXT,
        access: &WHV_MEMORY_ACCESS_CONTEXT,
    ) -> Result<WHV_EMULATOR_STATUS, WhpError> {
        let mut status = WHV_EMULATOR_STATUS::default();
        // SAFETY: as in try_io_emulation.
        let hr = unsafe {
            WHvEmulatorTryMmioEmulation(emulator, context, vp_context, access, &mut status)
        };
        check(hr, "WHvEmulatorTryMmioEmulation")?;
        Ok(status)
    }
}
