//! A KVM vCPU: register setup and the `KVM_RUN` exit translation.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};

use crate::hypervisor::x86_64::{
    CpuidEntry, DescriptorTable, Regs, Segment, SpecialRegs, VcpuX86_64,
};
use crate::hypervisor::{ExitHandler, HvError, Vcpu, VcpuExit};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

/// A KVM vCPU.
pub struct KvmVcpu {
    id: u8,
    fd: VcpuFd,
}

impl KvmVcpu {
    pub(super) fn new(id: u8, fd: VcpuFd) -> Self {
        Self { id, fd }
    }

    fn err(&self, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HvError {
        let vcpu = self.id;
        move |e| HvError::Vcpu {
            vcpu,
            op,
            source: e.into(),
        }
    }
}

fn kvm_seg(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present.into(),
        dpl: s.dpl,
        db: s.db.into(),
        s: s.s.into(),
        l: s.l.into(),
        g: s.g.into(),
        avl: s.avl.into(),
        unusable: (!s.present).into(),
        padding: 0,
    }
}

fn kvm_dt(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: d.base,
        limit: d.limit,
        padding: [0; 3],
    }
}

impl Vcpu for KvmVcpu {
    fn id(&self) -> u8 {
        self.id
    }

    fn run(&mut self, io: &dyn ExitHandler) -> Result<VcpuExit, HvError> {
        let id = self.id;
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                KvmExit::IoIn(port, data) => {
                    io.pio_read(port, data);
                    VcpuExit::Io
                }
                KvmExit::IoOut(port, data) => {
                    io.pio_write(port, data);
                    VcpuExit::Io
                }
                KvmExit::MmioRead(addr, data) => {
                    io.mmio_read(addr, data);
                    VcpuExit::Mmio
                }
                KvmExit::MmioWrite(addr, data) => {
                    io.mmio_write(addr, data);
                    VcpuExit::Mmio
                }
                KvmExit::Hlt => VcpuExit::Hlt,
                KvmExit::Shutdown => VcpuExit::Shutdown,
                KvmExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => VcpuExit::SystemShutdown,
                KvmExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => VcpuExit::SystemReset,
                KvmExit::FailEntry(reason, _) => VcpuExit::FailEntry { reason },
                KvmExit::InternalError => {
                    // SAFETY: on KVM_EXIT_INTERNAL_ERROR the kernel filled the
                    // `internal` member of the exit union.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    VcpuExit::InternalError { suberror, rip }
                }
                KvmExit::Intr => VcpuExit::Interrupted,
                other => VcpuExit::Unhandled(format!("{other:?}")),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VcpuExit::Interrupted)
            }
            Err(e) => Err(HvError::Vcpu {
                vcpu: id,
                op: "KVM_RUN",
                source: e.into(),
            }),
        }
    }
}

impl VcpuX86_64 for KvmVcpu {
    fn set_regs(&self, r: &Regs) -> Result<(), HvError> {
        let k = kvm_regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            rip: r.rip,
            rflags: r.rflags,
            ..Default::default()
        };
        self.fd.set_regs(&k).map_err(self.err("KVM_SET_REGS"))
    }

    fn set_sregs(&self, s: &SpecialRegs) -> Result<(), HvError> {
        let mut k = self.fd.get_sregs().map_err(self.err("KVM_GET_SREGS"))?;
        k.cs = kvm_seg(&s.cs);
        k.ds = kvm_seg(&s.ds);
        k.es = kvm_seg(&s.es);
        k.fs = kvm_seg(&s.fs);
        k.gs = kvm_seg(&s.gs);
        k.ss = kvm_seg(&s.ss);
        k.tr = kvm_seg(&s.tr);
        k.gdt = kvm_dt(&s.gdt);
        k.idt = kvm_dt(&s.idt);
        k.cr0 = s.cr0;
        k.cr3 = s.cr3;
        k.cr4 = s.cr4;
        k.efer = s.efer;
        self.fd.set_sregs(&k).map_err(self.err("KVM_SET_SREGS"))
    }

    fn init_fpu(&self) -> Result<(), HvError> {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(self.err("KVM_SET_FPU"))
    }

    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), HvError> {
        let k: Vec<kvm_cpuid_entry2> = entries.iter().map(kvm_cpuid_entry2::from).collect();
        let cpuid = CpuId::from_entries(&k).map_err(|_| HvError::Vcpu {
            vcpu: self.id,
            op: "building CPUID table",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.err("KVM_SET_CPUID2"))
    }

    fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<usize, HvError> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|(index, data)| kvm_msr_entry {
                index: *index,
                data: *data,
                ..Default::default()
            })
            .collect();
        let m = Msrs::from_entries(&entries).map_err(|_| HvError::Vcpu {
            vcpu: self.id,
            op: "building MSR list",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        self.fd.set_msrs(&m).map_err(self.err("KVM_SET_MSRS"))
    }

    fn set_lapic_lints(&self) -> Result<(), HvError> {
        let mut lapic = self.fd.get_lapic().map_err(self.err("KVM_GET_LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let b = &mut lapic.regs[reg..reg + 4];
            let v = u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
            let v = (v & !0x700) | (mode << 8);
            for (d, s) in b.iter_mut().zip(v.to_le_bytes()) {
                *d = s as _;
            }
        }
        self.fd.set_lapic(&lapic).map_err(self.err("KVM_SET_LAPIC"))
    }
}
