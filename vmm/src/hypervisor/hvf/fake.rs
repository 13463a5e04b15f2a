//! A fake Hypervisor.framework for the tests: each vCPU replays a script of
//! guest steps (register changes, then an exit), and every call is logged.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::api::{Exit, HvfApi};
use super::esr;
use super::HvfError;
use crate::hypervisor::aarch64::{Reg, SysReg};

/// What the guest does on one `hv_vcpu_run`: change registers, then exit.
#[derive(Debug, Clone)]
pub struct Guest {
    pub regs: Vec<(Reg, u64)>,
    pub sys: Vec<(SysReg, u64)>,
    pub exit: Exit,
}

impl Guest {
    pub fn exits(exit: Exit) -> Self {
        Self {
            regs: Vec::new(),
            sys: Vec::new(),
            exit,
        }
    }

    pub fn reg(mut self, reg: Reg, value: u64) -> Self {
        self.regs.push((reg, value));
        self
    }

    pub fn sys(mut self, reg: SysReg, value: u64) -> Self {
        self.sys.push((reg, value));
        self
    }
}

/// An exception exit with syndrome `esr` at guest physical `ipa`.
pub fn exception(esr: u64, ipa: u64) -> Exit {
    Exit::Exception {
        syndrome: esr,
        virtual_address: 0xffff_0000_0000_0000 | ipa,
        physical_address: ipa,
    }
}

/// A data-abort syndrome as the hardware builds it (ISV set).
pub fn dabt(size_log2: u64, reg: u8, write: bool, sf: bool, sse: bool) -> u64 {
    (u64::from(esr::EC_DABT_LOWER) << 26)
        | (1 << 25)
        | (1 << 24)
        | (size_log2 << 22)
        | (u64::from(sse) << 21)
        | (u64::from(reg) << 16)
        | (u64::from(sf) << 15)
        | (u64::from(write) << 6)
        | 0x07
}

/// `HVC #0`.
pub fn hvc() -> Exit {
    exception((u64::from(esr::EC_HVC64) << 26) | (1 << 25), 0)
}

/// `WFI`.
pub fn wfi() -> Exit {
    exception((u64::from(esr::EC_WFX) << 26) | (1 << 25), 0)
}

#[derive(Debug, Default)]
pub struct FakeCpu {
    pub regs: HashMap<Reg, u64>,
    pub sys: HashMap<SysReg, u64>,
    pub script: VecDeque<Guest>,
    pub vtimer_masked: bool,
    pub vtimer_offset: u64,
    pub runs: usize,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<String>,
    next_handle: u64,
    cpus: HashMap<u64, FakeCpu>,
    /// `hv_*` name -> status its next call returns.
    fail: HashMap<&'static str, i32>,
}

/// The fake. Its VM flag is its own, so tests do not collide on the real
/// process-wide one.
#[derive(Debug, Default)]
pub struct FakeHvf {
    flag: AtomicBool,
    /// What `host_ticks` returns (1 tick = 1 ns).
    pub ticks: AtomicU64,
    /// What `gic_redistributor_region_size` returns (0: 64 vCPUs' worth).
    pub redist_region: AtomicU64,
    state: Mutex<State>,
}

/// A fake vCPU handle.
#[derive(Debug)]
pub struct FakeVcpu(pub u64);

impl FakeHvf {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn call(&self, name: &'static str, args: String) -> Result<(), HvfError> {
        let mut s = self.lock();
        s.calls.push(format!("{name}({args})"));
        match s.fail.remove(name) {
            Some(code) => Err(HvfError::Status(code)),
            None => Ok(()),
        }
    }

    /// Every call so far, as `name(args)`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Whether a call starting with `prefix` was made.
    pub fn called(&self, prefix: &str) -> bool {
        self.calls().iter().any(|c| c.starts_with(prefix))
    }

    /// Makes the next call of `name` fail with `code`.
    pub fn fail_next(&self, name: &'static str, code: u32) {
        self.lock().fail.insert(name, code as i32);
    }

    /// Queues guest steps on the vCPU with handle `h`.
    pub fn script(&self, h: u64, steps: impl IntoIterator<Item = Guest>) {
        self.lock().cpus.entry(h).or_default().script.extend(steps);
    }

    /// Inspects or changes the fake vCPU `h`.
    pub fn with_cpu<R>(&self, h: u64, f: impl FnOnce(&mut FakeCpu) -> R) -> R {
        f(self.lock().cpus.entry(h).or_default())
    }

    pub fn reg(&self, h: u64, reg: Reg) -> u64 {
        self.with_cpu(h, |c| c.regs.get(&reg).copied().unwrap_or(0))
    }

    pub fn set(&self, h: u64, reg: Reg, value: u64) {
        self.with_cpu(h, |c| c.regs.insert(reg, value));
    }

    pub fn set_sys(&self, h: u64, reg: SysReg, value: u64) {
        self.with_cpu(h, |c| c.sys.insert(reg, value));
    }
}

impl HvfApi for FakeHvf {
    type Vcpu = FakeVcpu;
    const PAGE_SIZE: u64 = 0x1000;

    fn vm_flag(&self) -> &AtomicBool {
        &self.flag
    }

    fn vm_create(&self) -> Result<(), HvfError> {
        self.call("hv_vm_create", String::new())
    }

    fn vm_destroy(&self) -> Result<(), HvfError> {
        self.call("hv_vm_destroy", String::new())
    }

    unsafe fn vm_map(&self, _host: *mut u8, ipa: u64, size: u64) -> Result<(), HvfError> {
        self.call("hv_vm_map", format!("{ipa:#x}, {size:#x}"))
    }

    fn gic_create(&self, dist: u64, redist: u64) -> Result<(), HvfError> {
        self.call("hv_gic_create", format!("{dist:#x}, {redist:#x}"))
    }

    fn gic_redistributor_region_size(&self) -> Result<u64, HvfError> {
        Ok(match self.redist_region.load(Ordering::Relaxed) {
            0 => 64 * 0x2_0000,
            n => n,
        })
    }

    fn gic_set_spi(&self, intid: u32, level: bool) -> Result<(), HvfError> {
        self.call("hv_gic_set_spi", format!("{intid}, {level}"))
    }

    fn gic_set_ppi_pending(&self, vcpu: &FakeVcpu, intid: u32) -> Result<(), HvfError> {
        self.call(
            "hv_gic_set_redistributor_reg",
            format!("{}, GICR_ISPENDR0, {:#x}", vcpu.0, 1u64 << intid),
        )
    }

    fn vcpus_exit(&self, vcpus: &[u64]) -> Result<(), HvfError> {
        self.call("hv_vcpus_exit", format!("{vcpus:?}"))
    }

    fn vcpu_create(&self) -> Result<FakeVcpu, HvfError> {
        self.call("hv_vcpu_create", String::new())?;
        let mut s = self.lock();
        let h = s.next_handle;
        s.next_handle += 1;
        s.cpus.entry(h).or_default();
        Ok(FakeVcpu(h))
    }

    fn vcpu_destroy(&self, vcpu: &FakeVcpu) -> Result<(), HvfError> {
        self.call("hv_vcpu_destroy", format!("{}", vcpu.0))
    }

    fn vcpu_handle(&self, vcpu: &FakeVcpu) -> u64 {
        vcpu.0
    }

    fn vcpu_run(&self, vcpu: &FakeVcpu) -> Result<Exit, HvfError> {
        self.call("hv_vcpu_run", format!("{}", vcpu.0))?;
        self.with_cpu(vcpu.0, |c| {
            c.runs += 1;
            let Some(step) = c.script.pop_front() else {
                return Ok(Exit::Canceled);
            };
            c.regs.extend(step.regs);
            c.sys.extend(step.sys);
            Ok(step.exit)
        })
    }

    fn get_reg(&self, vcpu: &FakeVcpu, reg: Reg) -> Result<u64, HvfError> {
        Ok(match reg {
            Reg::X(31) => 0,
            Reg::X(n) if n > 31 => return Err(HvfError::NoSuchRegister(n)),
            _ => self.reg(vcpu.0, reg),
        })
    }

    fn set_reg(&self, vcpu: &FakeVcpu, reg: Reg, value: u64) -> Result<(), HvfError> {
        match reg {
            Reg::X(31) => {}
            Reg::X(n) if n > 31 => return Err(HvfError::NoSuchRegister(n)),
            _ => self.set(vcpu.0, reg, value),
        }
        Ok(())
    }

    fn get_sys_reg(&self, vcpu: &FakeVcpu, reg: SysReg) -> Result<u64, HvfError> {
        Ok(self.with_cpu(vcpu.0, |c| c.sys.get(&reg).copied().unwrap_or(0)))
    }

    fn set_sys_reg(&self, vcpu: &FakeVcpu, reg: SysReg, value: u64) -> Result<(), HvfError> {
        self.call(
            "hv_vcpu_set_sys_reg",
            format!("{}, {reg:?}, {value:#x}", vcpu.0),
        )?;
        self.set_sys(vcpu.0, reg, value);
        Ok(())
    }

    fn set_vtimer_mask(&self, vcpu: &FakeVcpu, masked: bool) -> Result<(), HvfError> {
        self.call("hv_vcpu_set_vtimer_mask", format!("{}, {masked}", vcpu.0))?;
        self.with_cpu(vcpu.0, |c| c.vtimer_masked = masked);
        Ok(())
    }

    fn set_vtimer_offset(&self, vcpu: &FakeVcpu, offset: u64) -> Result<(), HvfError> {
        self.with_cpu(vcpu.0, |c| c.vtimer_offset = offset);
        Ok(())
    }

    fn host_ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    fn ticks_to_duration(&self, ticks: u64) -> Duration {
        Duration::from_nanos(ticks)
    }
}
