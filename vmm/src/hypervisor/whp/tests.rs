//! The WHP backend driven through the fake platform (`fake.rs`): partition
//! set-up, the exit loop, the emulator callbacks reaching an
//! [`ExitHandler`], CPUID and MSR exits, the IOAPIC and irqfds, and the
//! engine's own vCPU code running a WHP vCPU.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use windows_sys::Win32::Foundation::S_OK;
use windows_sys::Win32::System::Hypervisor::{
    WHvMapGpaRangeFlagExecute, WHvMapGpaRangeFlagRead, WHvMapGpaRangeFlagWrite,
    WHvPartitionPropertyCodeCpuidExitList, WHvPartitionPropertyCodeExtendedVmExits,
    WHvPartitionPropertyCodeLocalApicEmulationMode, WHvPartitionPropertyCodeProcessorCount,
    WHvRegisterPendingEvent, WHvRunVpExitReasonCanceled, WHvRunVpExitReasonException,
    WHvRunVpExitReasonInvalidVpRegisterValue, WHvRunVpExitReasonUnrecoverableException,
    WHvRunVpExitReasonUnsupportedFeature, WHvRunVpExitReasonX64ApicEoi, WHvRunVpExitReasonX64Halt,
    WHvX64InterruptTypeFixed, WHvX64InterruptTypeLowestPriority, WHvX64InterruptTypeNmi,
    WHvX64LocalApicEmulationModeXApic, WHvX64RegisterApicLvtLint0, WHvX64RegisterApicLvtLint1,
    WHvX64RegisterCr0, WHvX64RegisterCs, WHvX64RegisterEfer, WHvX64RegisterFpControlStatus,
    WHvX64RegisterLstar, WHvX64RegisterR8, WHvX64RegisterRax, WHvX64RegisterRbx, WHvX64RegisterRcx,
    WHvX64RegisterRdx, WHvX64RegisterRflags, WHvX64RegisterRip, WHvX64RegisterRsi,
    WHvX64RegisterXmmControlStatus, WHV_EMULATOR_MEMORY_ACCESS_INFO, WHV_RUN_VP_EXIT_CONTEXT,
};

use super::emulator::{callbacks, CallbackContext, DIRECTION_WRITE};
use super::fake::{self, FakeApi, Requested};
use super::ioapic::{DeliveryMode, Interrupt};
use super::partition::interrupt_control;
use super::vcpu::pending_gp;
use super::{WhpError, WhpVcpu, WhpVm};
use crate::arch::x86_64::layout;
use crate::hypervisor::x86_64::{CpuidEntry, Regs, Segment, SpecialRegs, VcpuX86_64, VmX86_64};
use crate::hypervisor::{ExitHandler, HvError, Vcpu, VcpuExit, Vm};

const MMIO: u64 = layout::VIRTIO_MMIO_BASE;
const IOAPIC: u64 = layout::IOAPIC_ADDR;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    PioRead(u16, usize),
    PioWrite(u16, Vec<u8>),
    MmioRead(u64, usize),
    MmioWrite(u64, Vec<u8>),
}
use Access::*;

/// An ExitHandler that records every access and answers reads with `reply`.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<Access>>,
    reply: Vec<u8>,
}

impl Recorder {
    fn replying(reply: &[u8]) -> Self {
        Self {
            reply: reply.to_vec(),
            ..Default::default()
        }
    }

    fn take(&self) -> Vec<Access> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    fn fill(&self, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.reply.get(i).copied().unwrap_or(0);
        }
    }
}

impl ExitHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.fill(data);
        self.log.lock().unwrap().push(PioRead(port, data.len()));
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.log.lock().unwrap().push(PioWrite(port, data.to_vec()));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.fill(data);
        self.log.lock().unwrap().push(MmioRead(addr, data.len()));
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(MmioWrite(addr, data.to_vec()));
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(0x10_0000), 0x1_0000),
    ])
    .unwrap()
}

fn vm(vcpus: u8) -> WhpVm<FakeApi> {
    WhpVm::with_api(FakeApi::default(), &mem(), vcpus).unwrap()
}

fn vm_and_vcpu() -> (WhpVm<FakeApi>, WhpVcpu<FakeApi>) {
    let vm = vm(1);
    let v = vm.create_vcpu(0).unwrap();
    (vm, v)
}

/// Runs one scripted exit and then a halt (for exits `run` handles inside).
fn run_then_halt(vm: &WhpVm<FakeApi>, v: &mut WhpVcpu<FakeApi>, exit: WHV_RUN_VP_EXIT_CONTEXT) {
    vm.api().push_exit(exit);
    vm.api().push_exit(fake::exit(WHvRunVpExitReasonX64Halt));
    assert_eq!(v.run(&Recorder::default()).unwrap(), VcpuExit::Hlt);
}

// ---- partition and vCPU set-up ----

#[test]
fn partition_is_configured_before_setup_and_every_region_is_mapped() {
    let vm = vm(3);
    let s = vm.api().state();
    let pos = |f: &str| s.calls.iter().position(|c| *c == f).unwrap();
    let last_property = s
        .calls
        .iter()
        .rposition(|c| *c == "WHvSetPartitionProperty")
        .unwrap();
    assert!(last_property < pos("WHvSetupPartition"));
    assert!(pos("WHvSetupPartition") < pos("WHvMapGpaRange"));
    let prop = |code| {
        s.properties
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        prop(WHvPartitionPropertyCodeProcessorCount),
        3u32.to_le_bytes()
    );
    assert_eq!(
        prop(WHvPartitionPropertyCodeLocalApicEmulationMode),
        WHvX64LocalApicEmulationModeXApic.to_le_bytes()
    );
    let exits = prop(WHvPartitionPropertyCodeExtendedVmExits);
    assert_eq!(
        u64::from_le_bytes(exits.try_into().unwrap()),
        0b11,
        "CPUID and MSR exits"
    );
    let leaves: Vec<u32> = prop(WHvPartitionPropertyCodeCpuidExitList)
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(leaves, vec![1, 0xa, 0xb, 0x1f]);
    let rwx = WHvMapGpaRangeFlagRead | WHvMapGpaRangeFlagWrite | WHvMapGpaRangeFlagExecute;
    assert_eq!(
        s.mapped,
        vec![(0, 0, 0x1_0000, rwx), (1, 0x10_0000, 0x1_0000, rwx)]
    );
}

#[test]
fn a_failed_mapping_names_the_function_slot_and_address() {
    let api = FakeApi::default();
    api.state().fail = Some("WHvMapGpaRange");
    let err = WhpVm::with_api(api, &mem(), 1).err().unwrap();
    assert!(matches!(
        err,
        WhpError::MapGpa {
            slot: 0,
            gpa: 0,
            size: 0x1_0000,
            ..
        }
    ));
    let msg = HvError::from(err).to_string();
    assert!(
        msg.contains("slot 0") && msg.contains("WHvMapGpaRange"),
        "{msg}"
    );
}

#[test]
fn vcpus_are_created_up_to_the_processor_count_and_deleted_on_drop() {
    let vm = vm(2);
    let v0 = vm.create_vcpu(0).unwrap();
    let v1 = vm.create_vcpu(1).unwrap();
    assert_eq!((v0.id(), v1.id()), (0, 1));
    let msg = vm.create_vcpu(2).err().unwrap().to_string();
    assert!(
        msg.contains("vCPU 2") && msg.contains("WHvCreateVirtualProcessor"),
        "{msg}"
    );
    {
        let s = vm.api().state();
        assert_eq!(s.vps.len(), 2);
        assert_eq!(s.emulators.len(), 2, "one emulator per vCPU");
    }
    drop(v0);
    drop(v1);
    let s = vm.api().state();
    assert!(s.vps.is_empty());
    assert_eq!(s.deleted_vps, vec![0, 1]);
    assert_eq!(s.destroyed_emulators, 2);
}

#[test]
fn a_vcpu_whose_emulator_fails_is_deleted_again() {
    let vm = vm(1);
    vm.api().state().fail = Some("WHvEmulatorCreateEmulator");
    let msg = vm.create_vcpu(0).err().unwrap().to_string();
    assert!(msg.contains("WHvEmulatorCreateEmulator"), "{msg}");
    assert!(vm.api().state().vps.is_empty());
}

#[test]
fn register_setup_goes_to_whp_registers() {
    let (vm, v) = vm_and_vcpu();
    let api = vm.api();
    v.set_regs(&Regs {
        rip: 0x100_0000,
        rsi: 0x7000,
        rflags: 2,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(api.reg(0, WHvX64RegisterRip), 0x100_0000);
    assert_eq!(api.reg(0, WHvX64RegisterRsi), 0x7000);
    assert_eq!(api.reg(0, WHvX64RegisterRflags), 2);

    let cs = Segment {
        selector: 0x10,
        type_: 0xb,
        s: true,
        present: true,
        l: true,
        g: true,
        limit: 0xffff_ffff,
        ..Default::default()
    };
    v.set_sregs(&SpecialRegs {
        cs,
        cr0: 0x8000_0033,
        efer: 0xd01,
        ..Default::default()
    })
    .unwrap();
    // WHV_X64_SEGMENT_REGISTER: Base:64, Limit:32, Selector:16, Attributes:16.
    let seg = api.reg128(0, WHvX64RegisterCs);
    assert_eq!((seg >> 64) as u32, 0xffff_ffff);
    assert_eq!((seg >> 96) as u16, 0x10);
    assert_eq!((seg >> 112) as u16, 0xa09b);
    assert_eq!(api.reg(0, WHvX64RegisterCr0), 0x8000_0033);
    assert_eq!(api.reg(0, WHvX64RegisterEfer), 0xd01);

    v.init_fpu().unwrap();
    assert_eq!(api.reg128(0, WHvX64RegisterFpControlStatus) as u16, 0x37f);
    let xmm = api.reg128(0, WHvX64RegisterXmmControlStatus);
    assert_eq!(((xmm >> 64) as u32, (xmm >> 96) as u32), (0x1f80, 0xffff));

    api.set_reg(0, WHvX64RegisterApicLvtLint0, 0x1_0000);
    api.set_reg(0, WHvX64RegisterApicLvtLint1, 0x1_0000);
    v.set_lapic_lints().unwrap();
    assert_eq!(api.reg(0, WHvX64RegisterApicLvtLint0), 0x1_0700, "ExtINT");
    assert_eq!(api.reg(0, WHvX64RegisterApicLvtLint1), 0x1_0400, "NMI");
}

#[test]
fn set_msrs_takes_register_and_emulated_msrs_only() {
    let (vm, mut v) = vm_and_vcpu();
    let boot = crate::arch::x86_64::msr::boot_msrs();
    assert_eq!(v.set_msrs(&boot).unwrap(), boot.len());
    assert_eq!(v.set_msrs(&[(0x1234, 1), (0xc000_0082, 0xabc)]).unwrap(), 1);
    assert_eq!(vm.api().reg(0, WHvX64RegisterLstar), 0xabc);
    // MISC_ENABLE lives in the table: the guest reads what set_msrs wrote.
    v.set_msrs(&[(0x1a0, 0x5_0000_0001)]).unwrap();
    run_then_halt(&vm, &mut v, fake::msr_exit(0x1a0, None, 0x100));
    assert_eq!(vm.api().reg(0, WHvX64RegisterRax), 1);
    assert_eq!(vm.api().reg(0, WHvX64RegisterRdx), 5);
}

// ---- port and MMIO exits through the emulator callbacks ----

#[test]
fn out_through_the_emulator_reaches_the_handler() {
    let (vm, mut v) = vm_and_vcpu();
    let api = vm.api();
    let io = Recorder::default();
    api.set_reg(0, WHvX64RegisterRax, 0xdead_beef_cafe_1241);
    for (i, (port, size)) in [(0x3f8u16, 1u8), (0x510, 2), (0xcf8, 4)]
        .into_iter()
        .enumerate()
    {
        api.push_exit(fake::io_exit(port, size, true, 0x1000 + i as u64));
        assert_eq!(v.run(&io).unwrap(), VcpuExit::Io);
    }
    assert_eq!(
        io.take(),
        vec![
            PioWrite(0x3f8, vec![0x41]),
            PioWrite(0x510, vec![0x41, 0x12]),
            PioWrite(0xcf8, vec![0x41, 0x12, 0xfe, 0xca]),
        ]
    );
    assert_eq!(api.reg(0, WHvX64RegisterRip), 0x1003, "RIP past `out`");
    assert_eq!(
        api.reg(0, WHvX64RegisterRax),
        0xdead_beef_cafe_1241,
        "OUT leaves RAX"
    );
}

#[test]
fn in_through_the_emulator_fills_rax() {
    let (vm, mut v) = vm_and_vcpu();
    let api = vm.api();
    let io = Recorder::replying(&[0x60, 0x61, 0x62, 0x63]);
    api.set_reg(0, WHvX64RegisterRax, u64::MAX);
    api.push_exit(fake::io_exit(0x3fd, 1, false, 0x2000));
    assert_eq!(v.run(&io).unwrap(), VcpuExit::Io);
    assert_eq!(
        api.reg(0, WHvX64RegisterRax),
        0xffff_ffff_ffff_ff60,
        "AL only"
    );
    assert_eq!(api.reg(0, WHvX64RegisterRip), 0x2001);
    api.push_exit(fake::io_exit(0x3fc, 2, false, 0x2001));
    v.run(&io).unwrap();
    assert_eq!(
        api.reg(0, WHvX64RegisterRax),
        0xffff_ffff_ffff_6160,
        "AX only"
    );
    api.push_exit(fake::io_exit(0xcfc, 4, false, 0x2002));
    v.run(&io).unwrap();
    assert_eq!(
        api.reg(0, WHvX64RegisterRax),
        0x6362_6160,
        "EAX zero-extends"
    );
    assert_eq!(
        io.take(),
        vec![PioRead(0x3fd, 1), PioRead(0x3fc, 2), PioRead(0xcfc, 4)]
    );
}

#[test]
fn mmio_writes_of_each_size_reach_the_handler() {
    let (vm, mut v) = vm_and_vcpu();
    let api = vm.api();
    let io = Recorder::default();
    let rbx: u64 = 0x1122_3344_5566_7788;
    api.set_reg(0, WHvX64RegisterRbx, rbx);
    let cases: [(&[u8], usize); 4] = [
        (&[0x88, 0x18], 1),       // mov [rax], bl
        (&[0x66, 0x89, 0x18], 2), // mov [rax], bx
        (&[0x89, 0x18], 4),       // mov [rax], ebx
        (&[0x48, 0x89, 0x18], 8), // mov [rax], rbx
    ];
    for (insn, size) in cases {
        let rip = 0x3000 + size as u64 * 0x10;
        api.push_exit(fake::mmio_exit(MMIO + 0x70, insn, rip));
        assert_eq!(v.run(&io).unwrap(), VcpuExit::Mmio);
        assert_eq!(
            io.take(),
            vec![MmioWrite(MMIO + 0x70, rbx.to_le_bytes()[..size].to_vec())],
            "{size}-byte store"
        );
        assert_eq!(api.reg(0, WHvX64RegisterRip), rip + insn.len() as u64);
    }
}

#[test]
fn mmio_reads_fill_the_destination_register() {
    let (vm, mut v) = vm_and_vcpu();
    let api = vm.api();
    let io = Recorder::replying(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
    api.set_reg(0, WHvX64RegisterRcx, u64::MAX);
    api.push_exit(fake::mmio_exit(MMIO, &[0x8b, 0x08], 0x4000)); // mov ecx, [rax]
    assert_eq!(v.run(&io).unwrap(), VcpuExit::Mmio);
    assert_eq!(api.reg(0, WHvX64RegisterRcx), 0xefbe_adde);
    assert_eq!(api.reg(0, WHvX64RegisterRip), 0x4002);
    api.set_reg(0, WHvX64RegisterRcx, u64::MAX);
    api.push_exit(fake::mmio_exit(MMIO + 1, &[0x8a, 0x08], 0x4002)); // mov cl, [rax]
    v.run(&io).unwrap();
    assert_eq!(api.reg(0, WHvX64RegisterRcx), 0xffff_ffff_ffff_ffde);
    api.push_exit(fake::mmio_exit(MMIO + 8, &[0x4c, 0x8b, 0x00], 0x4004)); // mov r8, [rax]
    v.run(&io).unwrap();
    assert_eq!(api.reg(0, WHvX64RegisterR8), 0x0403_0201_efbe_adde);
    assert_eq!(
        io.take(),
        vec![
            MmioRead(MMIO, 4),
            MmioRead(MMIO + 1, 1),
            MmioRead(MMIO + 8, 8)
        ]
    );
}

#[test]
fn accesses_the_emulator_cannot_handle_are_errors_naming_the_address() {
    let (vm, mut v) = vm_and_vcpu();
    let io = Recorder::default();
    vm.api()
        .push_exit(fake::mmio_exit(MMIO + 4, &[0x0f, 0x0b], 0x5000));
    let msg = v.run(&io).err().unwrap().to_string();
    assert!(
        msg.contains("vCPU 0")
            && msg.contains("WHvEmulatorTryMmioEmulation")
            && msg.contains("0xd0000004"),
        "{msg}"
    );
    // A 3-byte port access makes the I/O callback fail.
    vm.api().push_exit(fake::io_exit(0x80, 3, true, 0x5000));
    let msg = v.run(&io).err().unwrap().to_string();
    assert!(
        msg.contains("WHvEmulatorTryIoEmulation") && msg.contains("port 0x80"),
        "{msg}"
    );
    assert!(io.take().is_empty());
}

#[test]
fn the_memory_callback_routes_ram_ioapic_and_mmio() {
    let vm = vm(1);
    let io = Recorder::replying(&[0xaa; 8]);
    let ctx = CallbackContext::new(vm.shared(), 0, &io);
    let memory = callbacks::<FakeApi>().WHvEmulatorMemoryCallback.unwrap();
    let access = |gpa: u64, write: Option<[u8; 4]>| {
        let mut a = WHV_EMULATOR_MEMORY_ACCESS_INFO {
            GpaAddress: gpa,
            Direction: if write.is_some() { DIRECTION_WRITE } else { 0 },
            AccessSize: 4,
            Data: [0; 8],
        };
        a.Data[..4].copy_from_slice(&write.unwrap_or_default());
        // SAFETY: `ctx` is a live CallbackContext<FakeApi>, the context
        // these callbacks take, and `a` a live access record.
        assert_eq!(unsafe { memory(ctx.as_ptr(), &mut a) }, S_OK);
        u32::from_le_bytes(a.Data[..4].try_into().unwrap())
    };
    // Guest RAM (a string instruction's RAM operand) goes to guest memory.
    access(0x10_0010, Some([1, 2, 3, 4]));
    assert_eq!(
        vm.shared()
            .mem
            .read_obj::<u32>(GuestAddress(0x10_0010))
            .unwrap(),
        0x0403_0201
    );
    assert_eq!(access(0x10_0010, None), 0x0403_0201);
    // The IOAPIC window goes to the IOAPIC.
    access(IOAPIC, Some([1, 0, 0, 0]));
    assert_eq!(access(IOAPIC + 0x10, None), 0x0017_0011, "IOAPIC version");
    // Everything else is the handler's.
    assert_eq!(access(MMIO, None), 0xaaaa_aaaa);
    assert_eq!(io.take(), vec![MmioRead(MMIO, 4)]);
}

#[test]
#[should_panic(expected = "device panicked")]
fn a_panic_in_the_handler_unwinds_out_of_run_not_through_whp() {
    struct Panics;
    impl ExitHandler for Panics {
        fn pio_read(&self, _: u16, _: &mut [u8]) {}
        fn pio_write(&self, _: u16, _: &[u8]) {
            panic!("device panicked");
        }
        fn mmio_read(&self, _: u64, _: &mut [u8]) {}
        fn mmio_write(&self, _: u64, _: &[u8]) {}
    }
    let (vm, mut v) = vm_and_vcpu();
    vm.api().push_exit(fake::io_exit(0x3f8, 1, true, 0));
    let _ = v.run(&Panics);
}

// ---- exits answered inside run: CPUID, MSR ----

#[test]
fn cpuid_is_answered_from_the_table_with_rip_advanced() {
    let (vm, mut v) = vm_and_vcpu();
    let api = vm.api();
    v.set_cpuid(&[
        CpuidEntry {
            function: 0xb,
            index: 1,
            flags: 1,
            eax: 1,
            ebx: 2,
            ecx: 0x201,
            edx: 3,
        },
        CpuidEntry {
            function: 1,
            eax: 0x806c1,
            ebx: 0x0300_0800,
            ecx: (1 << 31) | 1,
            edx: 1 << 28,
            ..Default::default()
        },
    ])
    .unwrap();
    let regs = |api: &FakeApi| {
        [
            WHvX64RegisterRax,
            WHvX64RegisterRbx,
            WHvX64RegisterRcx,
            WHvX64RegisterRdx,
        ]
        .map(|r| api.reg(0, r))
    };
    run_then_halt(&vm, &mut v, fake::cpuid_exit(0xb, 1, [9; 4], 0x6000));
    assert_eq!(regs(api), [1, 2, 0x201, 3]);
    assert_eq!(api.reg(0, WHvX64RegisterRip), 0x6002);
    // Leaf 1: the table's APIC id and hutch's bits, WHP's SSE3.
    run_then_halt(&vm, &mut v, fake::cpuid_exit(1, 0, [0, 0, 1, 0], 0x6002));
    assert_eq!(regs(api), [0x806c1, 0x0300_0800, (1 << 31) | 1, 1 << 28]);
    // Not in the table: WHP's default answer.
    run_then_halt(&vm, &mut v, fake::cpuid_exit(0xb, 2, [5, 6, 7, 8], 0x6004));
    assert_eq!(regs(api), [5, 6, 7, 8]);
    assert_eq!(api.reg(0, WHvX64RegisterRip), 0x6006);
}

#[test]
fn pending_gp_is_an_exception_event_with_error_code() {
    let e = pending_gp();
    assert_eq!(e & 1, 1, "EventPending");
    assert_eq!((e >> 1) & 7, 0, "EventType exception");
    assert_eq!((e >> 8) & 1, 1, "DeliverErrorCode");
    assert_eq!((e >> 16) & 0xffff, 13, "vector #GP");
    assert_eq!(e >> 32, 0, "error code 0, no parameter");
}

#[test]
fn unknown_msrs_inject_gp_and_leave_rip() {
    let (vm, mut v) = vm_and_vcpu();
    let api = vm.api();
    for (index, value) in [(0xdead, None), (0xdead, Some(5)), (0x3a, Some(0))] {
        api.state().registers.remove(&(0, WHvRegisterPendingEvent));
        run_then_halt(&vm, &mut v, fake::msr_exit(index, value, 0x7000));
        assert_eq!(
            api.reg128(0, WHvRegisterPendingEvent),
            pending_gp(),
            "MSR {index:#x} {value:?}"
        );
        assert_eq!(api.reg(0, WHvX64RegisterRip), 0x7000, "#GP is a fault");
    }
}

#[test]
fn known_msrs_are_read_and_written() {
    let (vm, mut v) = vm_and_vcpu();
    let api = vm.api();
    run_then_halt(&vm, &mut v, fake::msr_exit(0x1a0, None, 0x100));
    assert_eq!(api.reg(0, WHvX64RegisterRax), 1, "fast strings");
    assert_eq!(api.reg(0, WHvX64RegisterRdx), 0);
    assert_eq!(api.reg(0, WHvX64RegisterRip), 0x102);
    run_then_halt(
        &vm,
        &mut v,
        fake::msr_exit(0x1a0, Some(0x1_0000_0081), 0x102),
    );
    run_then_halt(&vm, &mut v, fake::msr_exit(0x1a0, None, 0x104));
    assert_eq!(api.reg(0, WHvX64RegisterRax), 0x81);
    assert_eq!(api.reg(0, WHvX64RegisterRdx), 1);
    // An MSR WHP keeps as a register goes through it.
    let lstar = 0xffff_ffff_8100_0000;
    run_then_halt(&vm, &mut v, fake::msr_exit(0xc000_0082, Some(lstar), 0x106));
    assert_eq!(api.reg(0, WHvX64RegisterLstar), lstar);
    run_then_halt(&vm, &mut v, fake::msr_exit(0xc000_0082, None, 0x108));
    assert_eq!(api.reg(0, WHvX64RegisterRax), 0x8100_0000);
    assert_eq!(api.reg(0, WHvX64RegisterRdx), 0xffff_ffff);
    assert_eq!(api.reg(0, WHvX64RegisterRip), 0x10a);
    assert_eq!(api.reg128(0, WHvRegisterPendingEvent), 0, "no #GP");
}

// ---- exits that return ----

#[test]
fn halt_returns_hlt() {
    let (vm, mut v) = vm_and_vcpu();
    vm.api().push_exit(fake::exit(WHvRunVpExitReasonX64Halt));
    assert_eq!(v.run(&Recorder::default()).unwrap(), VcpuExit::Hlt);
}

#[test]
fn a_kick_cancels_the_run() {
    let (vm, mut v) = vm_and_vcpu();
    vm.kick_vcpu(0).unwrap();
    assert_eq!(v.run(&Recorder::default()).unwrap(), VcpuExit::Interrupted);
    assert!(vm
        .api()
        .state()
        .calls
        .contains(&"WHvCancelRunVirtualProcessor"));
    vm.api().push_exit(fake::exit(WHvRunVpExitReasonCanceled));
    assert_eq!(v.run(&Recorder::default()).unwrap(), VcpuExit::Interrupted);
}

#[test]
fn failures_and_unknown_exits() {
    let (vm, mut v) = vm_and_vcpu();
    let api = vm.api();
    let io = Recorder::default();
    let mut at = |reason, rip| {
        let mut e = fake::exit(reason);
        e.VpContext.Rip = rip;
        api.push_exit(e);
        v.run(&io)
    };
    assert_eq!(
        at(WHvRunVpExitReasonUnrecoverableException, 0).unwrap(),
        VcpuExit::Shutdown,
        "a triple fault"
    );
    let msg = at(WHvRunVpExitReasonInvalidVpRegisterValue, 0xfff0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("vCPU 0") && msg.contains("WHvRunVirtualProcessor") && msg.contains("0xfff0"),
        "{msg}"
    );
    let msg = at(WHvRunVpExitReasonUnsupportedFeature, 0x10)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("unsupported feature"), "{msg}");
    assert_eq!(
        at(WHvRunVpExitReasonException, 0x20).unwrap(),
        VcpuExit::Unhandled("WHvRunVpExitReasonException at RIP 0x20".into())
    );
    assert_eq!(
        at(0x7777, 0).unwrap(),
        VcpuExit::Unhandled("WHvRunVpExitReason 0x7777 at RIP 0x0".into())
    );
    api.state().fail = Some("WHvRunVirtualProcessor");
    let msg = v.run(&io).err().unwrap().to_string();
    assert!(
        msg.contains("vCPU 0: WHvRunVirtualProcessor: HRESULT 0x80004005"),
        "{msg}"
    );
}

// ---- IOAPIC and interrupt requests ----

/// A guest `mov [rax], ebx` of `value` to IOAPIC register `offset`.
fn ioapic_store(vm: &WhpVm<FakeApi>, v: &mut WhpVcpu<FakeApi>, offset: u64, value: u32) {
    vm.api().set_reg(0, WHvX64RegisterRbx, u64::from(value));
    vm.api()
        .push_exit(fake::mmio_exit(IOAPIC + offset, &[0x89, 0x18], 0x8000));
    assert_eq!(v.run(&Recorder::default()).unwrap(), VcpuExit::Mmio);
}

/// Programs redirection entry `pin` through IOREGSEL/IOWIN.
fn program(vm: &WhpVm<FakeApi>, v: &mut WhpVcpu<FakeApi>, pin: u32, low: u32, dest: u8) {
    ioapic_store(vm, v, 0, 0x10 + 2 * pin + 1);
    ioapic_store(vm, v, 0x10, u32::from(dest) << 24);
    ioapic_store(vm, v, 0, 0x10 + 2 * pin);
    ioapic_store(vm, v, 0x10, low);
}

const LEVEL: u32 = 1 << 15;
const MASKED: u32 = 1 << 16;

#[test]
fn the_guest_programs_the_ioapic_and_a_gsi_becomes_an_interrupt_request() {
    let (vm, mut v) = vm_and_vcpu();
    let io = Recorder::default();
    program(&vm, &mut v, 4, 0x34, 0);
    // Read the entry back: IOREGSEL, then `mov ecx, [rax]` from IOWIN.
    ioapic_store(&vm, &mut v, 0, 0x18);
    vm.api()
        .push_exit(fake::mmio_exit(IOAPIC + 0x10, &[0x8b, 0x08], 0x8000));
    v.run(&io).unwrap();
    assert_eq!(vm.api().reg(0, WHvX64RegisterRcx), 0x34);
    assert!(io.take().is_empty(), "the IOAPIC never reaches the devices");
    assert!(vm.api().interrupts().is_empty());

    vm.set_gsi_level(4, true).unwrap();
    vm.set_gsi_level(4, false).unwrap();
    // Logical destination 0x3, lowest priority.
    program(&vm, &mut v, 5, (1 << 11) | (1 << 8) | 0x35, 0x3);
    vm.shared().pulse_gsi(5).unwrap();
    assert_eq!(
        vm.api().interrupts(),
        vec![
            Requested {
                kind: WHvX64InterruptTypeFixed,
                logical: false,
                level: false,
                destination: 0,
                vector: 0x34
            },
            Requested {
                kind: WHvX64InterruptTypeLowestPriority,
                logical: true,
                level: false,
                destination: 3,
                vector: 0x35
            },
        ]
    );
}

#[test]
fn masked_and_unprogrammed_entries_request_nothing() {
    let (vm, mut v) = vm_and_vcpu();
    program(&vm, &mut v, 4, MASKED | 0x34, 0);
    vm.set_gsi_level(4, true).unwrap();
    vm.shared().pulse_gsi(9).unwrap();
    assert!(vm.api().interrupts().is_empty());
    let msg = vm.set_gsi_level(24, true).err().unwrap().to_string();
    assert!(msg.contains("GSI 24"), "{msg}");
}

#[test]
fn level_entries_wait_for_the_apic_eoi_exit() {
    let (vm, mut v) = vm_and_vcpu();
    program(&vm, &mut v, 10, LEVEL | 0x5a, 1);
    let eoi = |vm: &WhpVm<FakeApi>, v: &mut WhpVcpu<FakeApi>| {
        let mut e = fake::exit(WHvRunVpExitReasonX64ApicEoi);
        e.Anonymous.ApicEoi.InterruptVector = 0x5a;
        run_then_halt(vm, v, e);
    };
    vm.set_gsi_level(10, true).unwrap();
    assert_eq!(vm.api().interrupts().len(), 1);
    assert!(vm.api().interrupts()[0].level);
    vm.set_gsi_level(10, true).unwrap();
    assert_eq!(vm.api().interrupts().len(), 1, "remote IRR holds it");
    eoi(&vm, &mut v);
    assert_eq!(
        vm.api().interrupts().len(),
        2,
        "still asserted at EOI: again"
    );
    vm.set_gsi_level(10, false).unwrap();
    eoi(&vm, &mut v);
    assert_eq!(vm.api().interrupts().len(), 2, "deasserted at EOI: done");
    vm.set_gsi_level(10, true).unwrap();
    assert_eq!(vm.api().interrupts().len(), 3);
}

#[test]
fn interrupt_control_encodes_whp_types_and_drops_what_whp_cannot_send() {
    let i = Interrupt {
        vector: 2,
        destination: 7,
        logical: false,
        level: true,
        mode: DeliveryMode::Nmi,
    };
    let r = Requested::from(&interrupt_control(&i).unwrap());
    assert_eq!(
        (r.kind, r.level, r.destination, r.vector),
        (WHvX64InterruptTypeNmi, true, 7, 2)
    );
    for mode in [
        DeliveryMode::ExtInt,
        DeliveryMode::Smi,
        DeliveryMode::Reserved(3),
    ] {
        assert!(interrupt_control(&Interrupt { mode, ..i }).is_none());
    }
}

#[test]
fn irqfd_threads_pulse_the_gsi() {
    let vm = vm(1);
    // Pin 4: destination APIC 0 (high dword), then fixed, edge, vector 0x34.
    let shared = vm.shared();
    shared.ioapic_write(0, &0x19u32.to_le_bytes());
    shared.ioapic_write(0x10, &0u32.to_le_bytes());
    shared.ioapic_write(0, &0x18u32.to_le_bytes());
    shared.ioapic_write(0x10, &0x34u32.to_le_bytes());
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.register_irqfd(&evt, 4).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for want in 1..=2 {
        evt.write(1).unwrap();
        while vm.api().interrupts().len() < want {
            assert!(
                Instant::now() < deadline,
                "irqfd never requested the interrupt"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(vm.api().interrupts()[1].vector, 0x34);
    let msg = vm.register_irqfd(&evt, 24).err().unwrap().to_string();
    assert!(msg.contains("GSI 24"), "{msg}");
    drop(vm); // joins the thread
}

#[test]
fn ioeventfds_register_nothing() {
    let vm = vm(1);
    let calls = vm.api().state().calls.len();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.register_ioeventfd(&evt, MMIO + 0x50, 0).unwrap();
    assert_eq!(vm.api().state().calls.len(), calls);
    vm.setup_irqchip().unwrap();
}

// ---- the engine's vCPU code on a WHP vCPU ----

/// A port device that records the bytes written to it.
struct PortLog(Arc<Mutex<Vec<Vec<u8>>>>);

impl crate::devices::bus::BusDevice for PortLog {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0.lock().unwrap().push(data.to_vec());
    }
}

#[test]
fn the_engines_vcpu_threads_run_a_whp_vcpu_to_a_triple_fault() {
    use crate::arch::x86_64::regs::Entry;
    use crate::control::{RunControl, StopReason};
    use crate::devices::bus::Buses;
    use crate::engine::native::vcpu::run_all;

    let vm = Arc::new(vm(1));
    let ctl = Arc::new(RunControl::new(Instant::now()));
    let written = Arc::new(Mutex::new(Vec::new()));
    let mut buses = Buses::default();
    buses
        .pio
        .insert(0x80, 1, Arc::new(Mutex::new(PortLog(written.clone()))))
        .unwrap();
    // The guest: CPUID leaf 1, `out 0x80, al`, then a triple fault.
    let api = vm.api();
    api.push_exit(fake::cpuid_exit(1, 0, [0, 0, 0, 0], 0x1000));
    api.push_exit(fake::io_exit(0x80, 1, true, 0x1002));
    api.push_exit(fake::exit(WHvRunVpExitReasonUnrecoverableException));
    let entry = Entry::Pvh {
        entry: 0x1000,
        start_info: 0x6000,
    };
    // configure() (CPUID table, MSRs, LINTs, FPU, boot registers) and the
    // run loop, on the vCPU's own thread, exactly as on KVM.
    run_all(vm.clone(), 1, entry, Arc::new(buses), ctl.clone());
    assert_eq!(
        ctl.reason(),
        Some(StopReason::GuestShutdown("shutdown (triple fault)"))
    );
    // CPUID leaf 1 came from the patched table: one vCPU, APIC id 0.
    let rbx = api.reg(0, WHvX64RegisterRbx);
    assert_eq!((rbx >> 16) & 0xff, 1);
    assert_eq!(rbx >> 24, 0);
    // AL (CPUID left leaf 1's EAX in RAX) went out through the bus.
    let leaf1 = VmX86_64::supported_cpuid(vm.as_ref()).unwrap()[0];
    assert_eq!(leaf1.function, 1);
    assert_eq!(api.reg(0, WHvX64RegisterRax), u64::from(leaf1.eax));
    assert_eq!(*written.lock().unwrap(), vec![vec![leaf1.eax as u8]]);
    assert_eq!(api.reg(0, WHvX64RegisterRip), 0x1003);
    assert_eq!(
        api.state().deleted_vps,
        vec![0],
        "the vCPU thread dropped its vCPU"
    );
}
