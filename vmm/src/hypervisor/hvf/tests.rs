//! The HVF backend driven by the fake API with the exits a Linux guest makes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::fake::{dabt, exception, hvc, wfi, FakeHvf, Guest};
use super::psci;
use super::*;
use crate::arch::aarch64::{layout, regs};
use crate::hypervisor::aarch64::{
    GicConfig, Reg, SysReg, VcpuAarch64, VmAarch64, CNTV_CTL_ENABLE, CNTV_CTL_IMASK,
    CNTV_CTL_ISTATUS,
};
use crate::hypervisor::{ExitHandler, Hypervisor, Vcpu, VcpuExit, Vm};

const PC: u64 = 0x4008_0000;
const MMIO: u64 = 0x0a00_0070;

/// Records MMIO accesses; loads return the bytes of `load`.
#[derive(Default)]
struct Io {
    writes: Mutex<Vec<(u64, Vec<u8>)>>,
    reads: Mutex<Vec<(u64, usize)>>,
    load: Mutex<u64>,
}

impl ExitHandler for Io {
    fn pio_read(&self, _: u16, _: &mut [u8]) {
        panic!("arm64 has no ports");
    }
    fn pio_write(&self, _: u16, _: &[u8]) {
        panic!("arm64 has no ports");
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.reads.lock().unwrap().push((addr, data.len()));
        let v = self.load.lock().unwrap().to_le_bytes();
        data.copy_from_slice(&v[..data.len()]);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.writes.lock().unwrap().push((addr, data.to_vec()));
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(layout::RAM_START), 0x10_0000)]).unwrap()
}

struct Setup {
    fake: Arc<FakeHvf>,
    vm: HvfVm<FakeHvf>,
}

fn setup() -> Setup {
    let hv = HvfHypervisor::with_api(FakeHvf::default());
    let fake = hv.api.clone();
    fake.ticks
        .store(1_000_000_000, std::sync::atomic::Ordering::Relaxed);
    let vm = hv.create_vm(&mem()).unwrap();
    Setup { fake, vm }
}

/// vCPU 0 (fake handle 0), at `PC`.
fn boot_vcpu(s: &Setup) -> HvfVcpu<FakeHvf> {
    let v = s.vm.create_vcpu(0).unwrap();
    v.set_boot_regs(&regs::boot_regs(PC, 0x5fe0_0000)).unwrap();
    v
}

#[test]
fn vm_maps_ram_and_vcpus_get_mpidr_and_one_vtimer_offset() {
    let s = setup();
    assert_eq!(
        s.fake.calls()[..2],
        ["hv_vm_create()", "hv_vm_map(0x40000000, 0x100000)"]
    );
    let _v0 = s.vm.create_vcpu(0).unwrap();
    let _v17 = s.vm.create_vcpu(17).unwrap();
    assert!(s.fake.called("hv_vcpu_set_sys_reg(1, MpidrEl1, 0x101)"));
    let offsets: Vec<u64> = (0..2)
        .map(|h| s.fake.with_cpu(h, |c| c.vtimer_offset))
        .collect();
    assert_eq!(offsets, [1_000_000_000, 1_000_000_000]);
}

#[test]
fn a_second_vm_in_the_process_is_refused() {
    let hv = HvfHypervisor::with_api(FakeHvf::default());
    let first = hv.create_vm(&mem()).unwrap();
    let err = hv.create_vm(&mem()).err().expect("second VM refused");
    assert!(err.to_string().contains("one per process"), "{err}");
    drop(first);
    assert!(hv.api.called("hv_vm_destroy()"));
    let _third = hv.create_vm(&mem()).expect("the slot is free again");
}

#[test]
fn a_failed_vm_create_frees_the_slot_and_names_the_call() {
    let hv = HvfHypervisor::with_api(FakeHvf::default());
    hv.api.fail_next("hv_vm_create", 0xfae9_4007);
    let err = hv.create_vm(&mem()).err().unwrap();
    assert_eq!(err.to_string(), "hv_vm_create: HV_DENIED (0xfae94007)");
    hv.api.fail_next("hv_vm_map", 0xfae9_4003);
    let err = hv.create_vm(&mem()).err().unwrap();
    assert!(err.to_string().contains("0x40000000"), "{err}");
    assert!(hv.api.called("hv_vm_destroy()"));
    hv.create_vm(&mem()).expect("slot freed after each failure");
}

#[test]
fn gic_comes_before_vcpus_and_spis_are_intids() {
    let s = setup();
    let cfg = GicConfig {
        dist_addr: layout::GIC_DIST_ADDR,
        redist_addr: layout::GIC_REDIST_ADDR,
        vcpus: 2,
    };
    assert_eq!(
        <HvfVm<FakeHvf> as VmAarch64>::GIC_ORDER,
        crate::hypervisor::aarch64::GicOrder::BeforeVcpus
    );
    s.vm.create_gic(&cfg).unwrap();
    assert!(s.fake.called("hv_gic_create(0x8000000, 0x80a0000)"));
    assert!(s.vm.create_gic(&cfg).is_err(), "only once");
    s.vm.finalize_gic().unwrap();
    s.vm.set_spi(layout::virtio_mmio_spi(0), true).unwrap();
    assert!(s.fake.called("hv_gic_set_spi(48, true)"));

    let big = setup();
    big.fake
        .redist_region
        .store(200 * 0x2_0000, std::sync::atomic::Ordering::Relaxed);
    let err = big.vm.create_gic(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("0x9000000") && err.contains("0x1900000"),
        "{err}"
    );

    let late = setup_fresh_with_vcpu();
    let err = late.vm.create_gic(&cfg).unwrap_err();
    assert!(err.to_string().contains("before the first vCPU"), "{err}");
    assert!(!late.fake.called("hv_gic_create"));
}

fn setup_fresh_with_vcpu() -> Setup {
    let s = setup();
    drop(s.vm.create_vcpu(0).unwrap());
    s
}

#[test]
fn mmio_stores_of_each_size_reach_the_handler_and_advance_pc() {
    for size_log2 in 0..4u64 {
        let s = setup();
        let mut v = boot_vcpu(&s);
        s.fake.script(
            0,
            [Guest::exits(exception(
                dabt(size_log2, 5, true, size_log2 == 3, false),
                MMIO,
            ))
            .reg(Reg::X(5), 0x1122_3344_5566_7788)],
        );
        let io = Io::default();
        assert_eq!(v.run(&io).unwrap(), VcpuExit::Mmio);
        let size = 1usize << size_log2;
        let expect = 0x1122_3344_5566_7788u64.to_le_bytes()[..size].to_vec();
        assert_eq!(*io.writes.lock().unwrap(), vec![(MMIO, expect)]);
        assert_eq!(s.fake.reg(0, Reg::Pc), PC + 4, "size {size}");
    }
}

#[test]
fn a_store_from_xzr_writes_zero() {
    let s = setup();
    let mut v = boot_vcpu(&s);
    s.fake.script(
        0,
        [Guest::exits(exception(
            dabt(2, 31, true, false, false),
            MMIO,
        ))],
    );
    let io = Io::default();
    v.run(&io).unwrap();
    assert_eq!(*io.writes.lock().unwrap(), vec![(MMIO, vec![0; 4])]);
}

#[test]
fn mmio_loads_write_the_register_back_with_sign_extension() {
    // (size_log2, SF, SSE, device value, expected Xt)
    let cases = [
        (0, true, true, 0x80, 0xffff_ffff_ffff_ff80u64), // LDRSB Xt
        (0, false, true, 0x80, 0xffff_ff80),             // LDRSB Wt
        (0, false, false, 0x80, 0x80),                   // LDRB
        (1, true, true, 0x8001, 0xffff_ffff_ffff_8001),  // LDRSH Xt
        (2, false, false, 0x8000_0001, 0x8000_0001),     // LDR Wt
        (2, true, true, 0x8000_0001, 0xffff_ffff_8000_0001), // LDRSW
        (3, true, false, 0x0123_4567_89ab_cdef, 0x0123_4567_89ab_cdef), // LDR Xt
    ];
    for (size_log2, sf, sse, device, expect) in cases {
        let s = setup();
        let mut v = boot_vcpu(&s);
        s.fake.set(0, Reg::X(7), 0xdead_beef_dead_beef);
        s.fake.script(
            0,
            [Guest::exits(exception(
                dabt(size_log2, 7, false, sf, sse),
                MMIO,
            ))],
        );
        let io = Io::default();
        *io.load.lock().unwrap() = device;
        assert_eq!(v.run(&io).unwrap(), VcpuExit::Mmio);
        assert_eq!(*io.reads.lock().unwrap(), vec![(MMIO, 1 << size_log2)]);
        assert_eq!(
            s.fake.reg(0, Reg::X(7)),
            expect,
            "size {} sf {sf} sse {sse}",
            1 << size_log2
        );
        assert_eq!(s.fake.reg(0, Reg::Pc), PC + 4);
    }
}

#[test]
fn a_data_abort_without_syndrome_is_refused_naming_the_address() {
    let s = setup();
    let mut v = boot_vcpu(&s);
    let no_isv = dabt(3, 1, false, true, false) & !(1 << 24);
    s.fake.script(0, [Guest::exits(exception(no_isv, MMIO))]);
    let io = Io::default();
    let err = v.run(&io).unwrap_err().to_string();
    assert!(err.starts_with("vCPU 0: emulating MMIO"), "{err}");
    assert!(err.contains("0xa000070") && err.contains("ISV=0"), "{err}");
    assert!(io.reads.lock().unwrap().is_empty());
    assert_eq!(
        s.fake.reg(0, Reg::Pc),
        PC,
        "PC left at the faulting instruction"
    );
}

#[test]
fn psci_version_and_unknown_calls_answer_in_x0_without_moving_pc() {
    let s = setup();
    let mut v = boot_vcpu(&s);
    s.fake
        .script(0, [Guest::exits(hvc()).reg(Reg::X(0), 0x8400_0000)]);
    assert_eq!(v.run(&Io::default()).unwrap(), VcpuExit::Interrupted);
    assert_eq!(s.fake.reg(0, Reg::X(0)), 0x1_0000);
    assert_eq!(
        s.fake.reg(0, Reg::Pc),
        PC,
        "HVC's return address is already past it"
    );

    s.fake
        .script(0, [Guest::exits(hvc()).reg(Reg::X(0), 0x8000_0000)]);
    v.run(&Io::default()).unwrap();
    assert_eq!(s.fake.reg(0, Reg::X(0)), u64::MAX, "NOT_SUPPORTED (-1)");
}

#[test]
fn psci_cpu_on_starts_the_target_at_its_entry_with_the_context_id() {
    let s = setup();
    let mut v0 = boot_vcpu(&s);
    let mut v1 = s.vm.create_vcpu(1).unwrap();
    let io = Io::default();

    // Powered off until someone calls CPU_ON: run returns without entering.
    let t = Instant::now();
    assert_eq!(v1.run(&io).unwrap(), VcpuExit::Interrupted);
    assert!(t.elapsed() >= OFF_PARK / 2);
    assert_eq!(s.fake.with_cpu(1, |c| c.runs), 0);

    let cpu_on = |target: u64| {
        Guest::exits(hvc())
            .reg(Reg::X(0), u64::from(psci::CPU_ON_64))
            .reg(Reg::X(1), target)
            .reg(Reg::X(2), 0x4010_2000)
            .reg(Reg::X(3), 0xc0de)
    };
    s.fake.script(0, [cpu_on(layout::mpidr(1))]);
    v0.run(&io).unwrap();
    assert_eq!(s.fake.reg(0, Reg::X(0)), 0, "SUCCESS");
    assert_eq!(
        s.vm.pending_cpu_on(),
        vec![CpuOnRequest {
            vcpu: 1,
            entry: 0x4010_2000,
            context_id: 0xc0de
        }]
    );
    s.fake.script(0, [cpu_on(layout::mpidr(1))]);
    v0.run(&io).unwrap();
    assert_eq!(s.fake.reg(0, Reg::X(0)) as i64, psci::ON_PENDING);
    s.fake.script(0, [cpu_on(0x55)]);
    v0.run(&io).unwrap();
    assert_eq!(s.fake.reg(0, Reg::X(0)) as i64, psci::INVALID_PARAMETERS);

    assert_eq!(v1.run(&io).unwrap(), VcpuExit::Interrupted);
    assert_eq!(s.fake.reg(1, Reg::Pc), 0x4010_2000);
    assert_eq!(s.fake.reg(1, Reg::X(0)), 0xc0de);
    assert_eq!(s.fake.reg(1, Reg::Pstate), regs::PSTATE_BOOT);
    assert_eq!(s.fake.with_cpu(1, |c| c.runs), 1, "entered the guest");
    assert_eq!(s.vm.power(1), Some(Power::On));
    assert!(s.vm.pending_cpu_on().is_empty());

    s.fake.script(0, [cpu_on(layout::mpidr(1))]);
    v0.run(&io).unwrap();
    assert_eq!(s.fake.reg(0, Reg::X(0)) as i64, psci::ALREADY_ON);
}

#[test]
fn a_cpu_on_starts_a_secondary_parked_on_its_own_thread() {
    let s = setup();
    let mut v0 = boot_vcpu(&s);
    let fake = s.fake.clone();
    let vm = Arc::new(s.vm);
    let vm1 = vm.clone();
    let t = std::thread::spawn(move || {
        let mut v1 = vm1.create_vcpu(1).unwrap();
        let start = Instant::now();
        // Parks up to OFF_PARK, returns Interrupted; repeat until started.
        while fake.with_cpu(1, |c| c.runs) == 0 && start.elapsed() < Duration::from_secs(20) {
            v1.run(&Io::default()).unwrap();
        }
        fake.reg(1, Reg::Pc)
    });
    std::thread::sleep(Duration::from_millis(10));
    s.fake.script(
        0,
        [Guest::exits(hvc())
            .reg(Reg::X(0), u64::from(psci::CPU_ON_64))
            .reg(Reg::X(1), 1)
            .reg(Reg::X(2), 0x4000_1000)],
    );
    v0.run(&Io::default()).unwrap();
    assert_eq!(t.join().unwrap(), 0x4000_1000);
}

#[test]
fn system_off_and_reset_stop_the_vm() {
    let s = setup();
    let mut v = boot_vcpu(&s);
    s.fake.script(
        0,
        [Guest::exits(hvc()).reg(Reg::X(0), u64::from(psci::SYSTEM_OFF))],
    );
    assert_eq!(v.run(&Io::default()).unwrap(), VcpuExit::SystemShutdown);
    s.fake.script(
        0,
        [Guest::exits(hvc()).reg(Reg::X(0), u64::from(psci::SYSTEM_RESET))],
    );
    assert_eq!(v.run(&Io::default()).unwrap(), VcpuExit::SystemReset);
}

#[test]
fn wfi_skips_the_instruction_and_parks_until_the_timer_is_due() {
    let s = setup();
    let mut v = boot_vcpu(&s);
    // The guest's virtual count is host ticks minus the VM's offset: 0 now.
    // Timer armed 300 µs ahead: park that long (under WFI_MAX_PARK).
    s.fake.script(
        0,
        [Guest::exits(wfi())
            .sys(SysReg::CntvCtlEl0, CNTV_CTL_ENABLE)
            .sys(SysReg::CntvCvalEl0, 300_000)],
    );
    let t = Instant::now();
    assert_eq!(v.run(&Io::default()).unwrap(), VcpuExit::Interrupted);
    assert!(t.elapsed() >= Duration::from_micros(300));
    assert_eq!(v.last_wfi_park, Some(Duration::from_micros(300)));
    assert_eq!(s.fake.reg(0, Reg::Pc), PC + 4);
    assert_eq!(
        s.fake.with_cpu(0, |c| c.runs),
        2,
        "re-entered after the wait"
    );

    // Masked timer: only an interrupt (or the bound) ends the wait.
    s.fake.script(
        0,
        [Guest::exits(wfi()).sys(SysReg::CntvCtlEl0, CNTV_CTL_ENABLE | CNTV_CTL_IMASK)],
    );
    v.run(&Io::default()).unwrap();
    assert_eq!(v.last_wfi_park, Some(WFI_MAX_PARK));

    // Already due: no wait at all.
    s.fake.script(
        0,
        [Guest::exits(wfi())
            .sys(SysReg::CntvCtlEl0, CNTV_CTL_ENABLE)
            .sys(SysReg::CntvCvalEl0, 0)],
    );
    v.run(&Io::default()).unwrap();
    assert_eq!(v.last_wfi_park, Some(Duration::ZERO));
    assert_eq!(s.fake.reg(0, Reg::Pc), PC + 12);
}

#[test]
fn wfe_is_skipped_without_waiting() {
    let s = setup();
    let mut v = boot_vcpu(&s);
    let wfe = exception((u64::from(super::esr::EC_WFX) << 26) | (1 << 25) | 1, 0);
    s.fake.script(0, [Guest::exits(wfe)]);
    v.run(&Io::default()).unwrap();
    assert_eq!(v.last_wfi_park, None);
    assert_eq!(s.fake.reg(0, Reg::Pc), PC + 4);
}

#[test]
fn timer_wait_reads_ctl_and_cval() {
    use super::vcpu::{timer_wait, TimerWait};
    assert_eq!(timer_wait(0, 100, 0), TimerWait::Never);
    assert_eq!(
        timer_wait(CNTV_CTL_ENABLE | CNTV_CTL_IMASK, 100, 0),
        TimerWait::Never
    );
    assert_eq!(timer_wait(CNTV_CTL_ENABLE, 100, 40), TimerWait::In(60));
    assert_eq!(timer_wait(CNTV_CTL_ENABLE, 100, 100), TimerWait::Due);
}

#[test]
fn vtimer_activation_masks_raises_the_ppi_and_unmasks_once_handled() {
    let s = setup();
    let mut v = boot_vcpu(&s);
    let fired = CNTV_CTL_ENABLE | CNTV_CTL_ISTATUS;
    s.fake.script(
        0,
        [Guest::exits(Exit::VtimerActivated).sys(SysReg::CntvCtlEl0, fired)],
    );
    assert_eq!(v.run(&Io::default()).unwrap(), VcpuExit::Interrupted);
    assert!(v.vtimer_masked());
    assert!(s.fake.called("hv_vcpu_set_vtimer_mask(0, true)"));
    assert!(s
        .fake
        .called("hv_gic_set_redistributor_reg(0, GICR_ISPENDR0, 0x8000000)"));

    // The guest has not handled it yet (still firing): stays masked.
    v.run(&Io::default()).unwrap();
    assert!(v.vtimer_masked());
    assert!(!s.fake.called("hv_vcpu_set_vtimer_mask(0, false)"));

    // The guest's handler re-armed the timer (ISTATUS clear): unmask
    // before the next entry.
    s.fake.set_sys(0, SysReg::CntvCtlEl0, CNTV_CTL_ENABLE);
    v.run(&Io::default()).unwrap();
    assert!(!v.vtimer_masked());
    assert!(s.fake.with_cpu(0, |c| !c.vtimer_masked));
    let calls = s.fake.calls();
    let unmask = calls
        .iter()
        .position(|c| c == "hv_vcpu_set_vtimer_mask(0, false)")
        .unwrap();
    assert!(
        calls[unmask + 1].starts_with("hv_vcpu_run"),
        "unmasked right before entering: {calls:?}"
    );
}

#[test]
fn trapped_system_registers_read_as_zero() {
    let s = setup();
    let mut v = boot_vcpu(&s);
    // MRS x3, OSLSR_EL1
    let esr = (u64::from(super::esr::EC_SYS64) << 26)
        | (1 << 25)
        | (2 << 20)
        | (4 << 17)
        | (1 << 10)
        | (3 << 5)
        | (1 << 1)
        | 1;
    s.fake.set(0, Reg::X(3), 77);
    s.fake.script(0, [Guest::exits(exception(esr, 0))]);
    v.run(&Io::default()).unwrap();
    assert_eq!(s.fake.reg(0, Reg::X(3)), 0);
    assert_eq!(s.fake.reg(0, Reg::Pc), PC + 4);
}

#[test]
fn kicks_cancel_and_odd_exits() {
    let s = setup();
    let mut v = boot_vcpu(&s);
    s.fake
        .script(0, [Guest::exits(hvc()).reg(Reg::X(0), 0x8400_0000)]);
    s.vm.kick(0).unwrap();
    assert!(s.fake.called("hv_vcpus_exit([0])"));
    assert_eq!(v.run(&Io::default()).unwrap(), VcpuExit::Interrupted);
    assert_eq!(
        s.fake.with_cpu(0, |c| c.runs),
        0,
        "a kick pending: not entered"
    );
    // Next run enters again.
    v.run(&Io::default()).unwrap();
    assert_eq!(s.fake.reg(0, Reg::X(0)), 0x1_0000);

    s.fake.script(0, [Guest::exits(Exit::Unknown(3))]);
    assert!(matches!(v.run(&Io::default()).unwrap(), VcpuExit::Unhandled(m) if m.contains('3')));

    let iabt = (u64::from(super::esr::EC_IABT_LOWER) << 26) | (1 << 25) | 0x07;
    s.fake
        .script(0, [Guest::exits(exception(iabt, 0x3000_0000))]);
    let err = v.run(&Io::default()).unwrap_err().to_string();
    assert!(
        err.contains("0x30000000") && err.contains("vCPU 0"),
        "{err}"
    );

    s.fake.script(0, [Guest::exits(exception(0x3c << 26, 0))]);
    let err = v.run(&Io::default()).unwrap_err().to_string();
    assert!(err.contains("exception class 0x3c"), "{err}");

    s.fake.fail_next("hv_vcpu_run", 0xfae9_4004);
    let err = v.run(&Io::default()).unwrap_err().to_string();
    assert_eq!(
        err,
        "vCPU 0: hv_vcpu_run: HV_ILLEGAL_GUEST_STATE (0xfae94004)"
    );
}

#[test]
fn dropping_a_vcpu_destroys_it() {
    let s = setup();
    drop(boot_vcpu(&s));
    assert!(s.fake.called("hv_vcpu_destroy(0)"));
    assert_eq!(s.vm.power(0), None);
}

#[test]
fn irqfd_raises_an_edge_on_the_spi() {
    let s = setup();
    let evt = EventFd::new(0).unwrap();
    s.vm.register_irqfd(&evt, 16).unwrap();
    s.vm.register_ioeventfd(&evt, 0x0a00_0050, 0).unwrap();
    evt.write(1).unwrap();
    let t = Instant::now();
    while !s.fake.called("hv_gic_set_spi(48, false)") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            s.fake.calls()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let calls = s.fake.calls();
    let up = calls
        .iter()
        .position(|c| c == "hv_gic_set_spi(48, true)")
        .unwrap();
    assert_eq!(calls[up + 1], "hv_gic_set_spi(48, false)");
    drop(s.vm); // joins the irqfd thread
}
