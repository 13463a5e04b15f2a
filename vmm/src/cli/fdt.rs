//! `hutch fdt` (hidden, feature `aarch64`): writes the device tree hutch
//! generates for an arm64 guest to a file, so a test can boot it under
//! `qemu-system-aarch64 -M virt,gic-version=3 -dtb FILE` (whose device
//! addresses hutch's arm64 layout follows).

use std::path::PathBuf;

use clap::Args;

use super::size::parse_size;
use crate::arch::aarch64::fdt::{create_fdt, FdtConfig};
use crate::arch::aarch64::layout;
use crate::kernel::Arch;

/// `hutch fdt`.
#[derive(Debug, Args)]
pub struct FdtArgs {
    /// Guest architecture (only arm64 has a device tree).
    #[arg(long, value_enum, default_value = "arm64")]
    pub arch: Arch,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Guest memory, e.g. 512M.
    #[arg(long, short = 'm', default_value = "512M")]
    pub memory: String,
    /// Kernel command line (/chosen/bootargs).
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Describe an initramfs of this many bytes, placed where hutch puts it.
    #[arg(long, value_name = "BYTES")]
    pub initrd_size: Option<u64>,
    /// A virtio-mmio window: ADDR:SPI, e.g. 0x0a000000:16 (repeatable).
    #[arg(long = "virtio-mmio", value_name = "ADDR:SPI", value_parser = parse_mmio)]
    pub virtio_mmio: Vec<(u64, u32)>,
    /// Output file.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

/// Parses `ADDR:SPI`; ADDR in hex (`0x...`) or decimal, SPI in decimal.
fn parse_mmio(s: &str) -> Result<(u64, u32), String> {
    let bad = || format!("{s:?}: expected ADDR:SPI, e.g. 0x0a000000:16");
    let (addr, spi) = s.split_once(':').ok_or_else(bad)?;
    let addr = match addr.strip_prefix("0x").or_else(|| addr.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => addr.parse(),
    }
    .map_err(|_| bad())?;
    Ok((addr, spi.parse().map_err(|_| bad())?))
}

fn fdt_config(a: &FdtArgs) -> Result<FdtConfig, String> {
    if a.arch != Arch::Arm64 {
        return Err("only --arch arm64 guests are described by a device tree".into());
    }
    if a.cpus == 0 {
        return Err("--cpus 0: a guest needs at least one CPU".into());
    }
    let memory_size = parse_size(&a.memory).map_err(|e| e.to_string())?;
    let initrd = match a.initrd_size {
        Some(size) => Some((
            layout::initrd_addr(memory_size, size, layout::RAM_START).map_err(|e| e.to_string())?,
            size,
        )),
        None => None,
    };
    Ok(FdtConfig {
        cpus: a.cpus,
        memory_size,
        cmdline: a.cmdline.clone(),
        initrd,
        virtio_mmio: a.virtio_mmio.clone(),
    })
}

/// Runs `hutch fdt`.
pub fn main(a: FdtArgs) -> i32 {
    let result = fdt_config(&a).and_then(|cfg| create_fdt(&cfg).map_err(|e| e.to_string()));
    match result.and_then(|blob| {
        std::fs::write(&a.output, blob).map_err(|e| format!("writing {}: {e}", a.output.display()))
    }) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hutch: fdt: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_windows_parse() {
        assert_eq!(parse_mmio("0x0a000000:16"), Ok((0x0a00_0000, 16)));
        assert_eq!(parse_mmio("167772672:17"), Ok((0x0a00_0200, 17)));
        assert!(parse_mmio("0x0a000000").is_err());
        assert!(parse_mmio("zz:1").is_err());
        assert!(parse_mmio("0x10:-1").is_err());
    }

    #[test]
    fn config_from_args() {
        let a = FdtArgs {
            arch: Arch::Arm64,
            cpus: 2,
            memory: "512M".into(),
            cmdline: "console=ttyAMA0".into(),
            initrd_size: Some(10_000),
            virtio_mmio: vec![(0x0a00_0000, 16)],
            output: PathBuf::from("/dev/null"),
        };
        let c = fdt_config(&a).unwrap();
        assert_eq!((c.cpus, c.memory_size), (2, 512 << 20));
        let (addr, size) = c.initrd.unwrap();
        assert_eq!(size, 10_000);
        assert!(addr + size <= layout::fdt_addr(512 << 20).unwrap());
        assert!(fdt_config(&FdtArgs {
            arch: Arch::X86_64,
            ..a
        })
        .is_err());
    }
}
