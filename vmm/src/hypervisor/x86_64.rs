//! x86_64 register state and the x86_64 extension traits of the hypervisor
//! API. The types are hutch's own, so that KVM, WHP and HVF backends convert
//! from them rather than the other way round.

use super::HvError;

/// A segment register with its hidden descriptor cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    pub db: bool,
    pub s: bool,
    pub l: bool,
    pub g: bool,
    pub avl: bool,
}

/// GDTR / IDTR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Control, segment and descriptor-table registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// General-purpose registers, RIP and RFLAGS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// One CPUID leaf/subleaf.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// Backend-specific flags (KVM: `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`).
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// x86_64 operations on a VM.
pub trait VmX86_64 {
    /// Creates the in-kernel (or emulated) PIC, IOAPIC and PIT.
    fn setup_irqchip(&self) -> Result<(), HvError>;
    /// The CPUID leaves the hypervisor can expose.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>, HvError>;
}

/// x86_64 operations on a vCPU.
pub trait VcpuX86_64 {
    fn set_regs(&self, regs: &Regs) -> Result<(), HvError>;
    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<(), HvError>;
    /// Sets the x87 control word and MXCSR to their reset values.
    fn init_fpu(&self) -> Result<(), HvError>;
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), HvError>;
    /// Sets MSRs; returns how many the hypervisor accepted.
    fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<usize, HvError>;
    /// Programs LINT0 as ExtINT and LINT1 as NMI in the local APIC.
    fn set_lapic_lints(&self) -> Result<(), HvError>;
}
