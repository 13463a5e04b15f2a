//! The flattened device tree an arm64 guest boots with.
//!
//! It describes a QEMU `virt`-compatible machine (see [`super::layout`]):
//! PSCI CPUs, RAM, a GICv3, the architected timer, a PL011 UART and the
//! virtio-mmio windows in use.

use thiserror::Error;
use vm_fdt::FdtWriter;

use super::layout;

/// What goes into the device tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdtConfig {
    /// Number of vCPUs (1..=[`layout::MAX_VCPUS`]).
    pub cpus: u8,
    /// Bytes of RAM from [`layout::RAM_START`].
    pub memory_size: u64,
    /// Kernel command line (`/chosen/bootargs`).
    pub cmdline: String,
    /// Initramfs guest address and size.
    pub initrd: Option<(u64, u64)>,
    /// virtio-mmio windows in use: window address and SPI number.
    pub virtio_mmio: Vec<(u64, u32)>,
}

/// Errors building the device tree.
#[derive(Debug, Error)]
pub enum FdtError {
    /// vm-fdt refused a node or property (a NUL in the command line, say).
    #[error("writing FDT node {node}: {source}")]
    Write { node: String, source: vm_fdt::Error },
    /// No vCPUs, or more than the GIC redistributor region holds.
    #[error("{0} vCPUs requested; 1 to {max} are supported", max = layout::MAX_VCPUS)]
    Cpus(u8),
    /// RAM size is zero or does not fit the memory map.
    #[error("{0:#x} bytes of RAM do not fit the arm64 memory map (at most {max:#x})", max = layout::MAX_RAM_SIZE)]
    MemorySize(u64),
    /// The initramfs lies (partly) outside RAM.
    #[error("initramfs at {addr:#x} ({size} bytes) is not inside guest RAM")]
    InitrdOutsideRam { addr: u64, size: u64 },
    /// A virtio-mmio window's SPI is not a valid SPI number.
    #[error("virtio-mmio window at {addr:#x}: SPI {spi} is out of range (at most {max})", max = layout::MAX_SPI)]
    VirtioSpi { addr: u64, spi: u32 },
    /// The blob is larger than the arm64 boot protocol allows.
    #[error("FDT is {0} bytes; the arm64 boot protocol allows at most {max}", max = layout::FDT_MAX_SIZE)]
    TooLarge(usize),
}

/// phandle of the GIC.
pub const GIC_PHANDLE: u32 = 1;
/// phandle of the fixed `apb_pclk` clock.
pub const CLOCK_PHANDLE: u32 = 2;

/// `interrupts` cell 0: shared peripheral interrupt.
pub const GIC_SPI: u32 = 0;
/// `interrupts` cell 0: private peripheral interrupt.
pub const GIC_PPI: u32 = 1;
/// `interrupts` cell 2: rising edge.
pub const IRQ_TYPE_EDGE_RISING: u32 = 1;
/// `interrupts` cell 2: active-high level.
pub const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

/// Node name of the UART, which `/chosen/stdout-path` points at.
pub fn uart_node_name() -> String {
    format!("pl011@{:x}", layout::UART_ADDR)
}

/// Builds the device tree blob for `cfg`.
pub fn create_fdt(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    validate(cfg)?;
    let mut fdt = FdtWriter::new().map_err(werr("header"))?;
    let root = fdt.begin_node("").map_err(werr("/"))?;
    root_props(&mut fdt).map_err(werr("/"))?;
    cpus(&mut fdt, cfg.cpus).map_err(werr("/cpus"))?;
    psci(&mut fdt).map_err(werr("/psci"))?;
    memory(&mut fdt, cfg.memory_size).map_err(werr("/memory"))?;
    chosen(&mut fdt, cfg).map_err(werr("/chosen"))?;
    gic(&mut fdt, cfg.cpus).map_err(werr("GIC"))?;
    timer(&mut fdt).map_err(werr("/timer"))?;
    clock(&mut fdt).map_err(werr("/apb-pclk"))?;
    uart(&mut fdt).map_err(werr("UART"))?;
    for &(addr, spi) in &cfg.virtio_mmio {
        virtio_mmio(&mut fdt, addr, spi).map_err(|source| FdtError::Write {
            node: format!("virtio_mmio@{addr:x}"),
            source,
        })?;
    }
    fdt.end_node(root).map_err(werr("/"))?;
    let blob = fdt.finish().map_err(werr("(finish)"))?;
    if blob.len() as u64 > layout::FDT_MAX_SIZE {
        return Err(FdtError::TooLarge(blob.len()));
    }
    Ok(blob)
}

fn werr(node: &'static str) -> impl FnOnce(vm_fdt::Error) -> FdtError {
    move |source| FdtError::Write {
        node: node.to_string(),
        source,
    }
}

fn validate(cfg: &FdtConfig) -> Result<(), FdtError> {
    if cfg.cpus == 0 || cfg.cpus > layout::MAX_VCPUS {
        return Err(FdtError::Cpus(cfg.cpus));
    }
    if cfg.memory_size == 0 || cfg.memory_size > layout::MAX_RAM_SIZE {
        return Err(FdtError::MemorySize(cfg.memory_size));
    }
    if let Some((addr, size)) = cfg.initrd {
        let ram_end = layout::RAM_START + cfg.memory_size;
        let inside = addr >= layout::RAM_START
            && addr
                .checked_add(size)
                .is_some_and(|initrd_end| initrd_end <= ram_end);
        if !inside {
            return Err(FdtError::InitrdOutsideRam { addr, size });
        }
    }
    if let Some(&(addr, spi)) = cfg.virtio_mmio.iter().find(|(_, s)| *s > layout::MAX_SPI) {
        return Err(FdtError::VirtioSpi { addr, spi });
    }
    Ok(())
}

type R = Result<(), vm_fdt::Error>;

fn root_props(fdt: &mut FdtWriter) -> R {
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "hutch")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)
}

fn cpus(fdt: &mut FdtWriter, count: u8) -> R {
    let cpus = fdt.begin_node("cpus")?;
    // MPIDRs have no Aff2/Aff3 here, so one cell holds them.
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for id in 0..count {
        let mpidr = layout::mpidr(id);
        let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string_list(
            "compatible",
            vec!["arm,cortex-a57".into(), "arm,armv8".into()],
        )?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u32("reg", mpidr as u32)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)
}

fn psci(fdt: &mut FdtWriter) -> R {
    let node = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(node)
}

fn memory(fdt: &mut FdtWriter, size: u64) -> R {
    let node = fdt.begin_node(&format!("memory@{:x}", layout::RAM_START))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[layout::RAM_START, size])?;
    fdt.end_node(node)
}

fn chosen(fdt: &mut FdtWriter, cfg: &FdtConfig) -> R {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &cfg.cmdline)?;
    if let Some((addr, size)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", addr)?;
        fdt.property_u64("linux,initrd-end", addr + size)?;
    }
    fdt.property_string("stdout-path", &format!("/{}", uart_node_name()))?;
    fdt.end_node(node)
}

fn gic(fdt: &mut FdtWriter, cpus: u8) -> R {
    let node = fdt.begin_node(&format!("intc@{:x}", layout::GIC_DIST_ADDR))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    // Interrupt providers declare #address-cells (dtc warns otherwise);
    // QEMU virt writes the same, ready for an ITS child node.
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_array_u64(
        "reg",
        &[
            layout::GIC_DIST_ADDR,
            layout::GIC_DIST_SIZE,
            layout::GIC_REDIST_ADDR,
            layout::gic_redist_size(cpus),
        ],
    )?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(node)
}

fn timer(fdt: &mut FdtWriter) -> R {
    let node = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let cells: Vec<u32> = layout::TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.property_null("always-on")?;
    fdt.end_node(node)
}

fn clock(fdt: &mut FdtWriter) -> R {
    let node = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", layout::APB_PCLK_HZ)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    fdt.end_node(node)
}

fn uart(fdt: &mut FdtWriter) -> R {
    let node = fdt.begin_node(&uart_node_name())?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u64("reg", &[layout::UART_ADDR, layout::UART_SIZE])?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_SPI, layout::UART_SPI, IRQ_TYPE_LEVEL_HIGH],
    )?;
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    fdt.end_node(node)
}

fn virtio_mmio(fdt: &mut FdtWriter, addr: u64, spi: u32) -> R {
    let node = fdt.begin_node(&format!("virtio_mmio@{addr:x}"))?;
    fdt.property_string("compatible", "virtio,mmio")?;
    fdt.property_array_u64("reg", &[addr, layout::VIRTIO_MMIO_SIZE])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, spi, IRQ_TYPE_EDGE_RISING])?;
    fdt.property_null("dma-coherent")?;
    fdt.end_node(node)
}

#[cfg(test)]
#[path = "fdt_tests.rs"]
mod tests;
