//! Loads the kernel, initramfs and command line into guest memory and writes
//! the boot structures, in the order the boot protocol needs them.

use std::fs::File;
use std::io::Read;

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::regs::Entry;
use crate::arch::x86_64::zero_page::{self, Initrd};
use crate::arch::x86_64::{gdt, layout, mptable, paging, pvh, ArchError};
use crate::engine::{EngineError, VmSpec};

/// Offset of the 64-bit entry point in a loaded bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;

/// The kernel command line with the native VMM's device entries appended.
pub fn cmdline(spec: &VmSpec) -> String {
    let mut c = spec.cmdline.clone();
    // One window per share, then the vsock device's (devices.rs, same order).
    let windows = spec.shares.len() + usize::from(spec.vsock.is_some());
    for i in 0..windows {
        c.push_str(&format!(
            " virtio_mmio.device=4K@{:#x}:{}",
            layout::virtio_mmio_addr(i),
            layout::VIRTIO_FIRST_IRQ + i as u32
        ));
    }
    c
}

fn is_elf(path: &std::path::Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    File::open(path)?.read_exact(&mut magic)?;
    Ok(&magic == b"\x7fELF")
}

/// Loads everything; returns how the boot vCPU enters the kernel.
pub fn load(mem: &GuestMemoryMmap, spec: &VmSpec) -> Result<Entry, EngineError> {
    let path = &spec.kernel;
    let kerr = |source| EngineError::Kernel {
        path: path.clone(),
        source,
    };
    let ferr = |e: linux_loader::loader::Error| EngineError::KernelFormat {
        path: path.clone(),
        reason: e.to_string(),
    };
    let elf = is_elf(path).map_err(kerr)?;
    let mut file = File::open(path).map_err(kerr)?;
    if elf {
        if let Some(entry) = try_map_elf(mem, spec, &file).map_err(kerr)? {
            return Ok(entry);
        }
    }
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let (result, setup_header) = if elf {
        let r = Elf::load(mem, None, &mut file, himem).map_err(ferr)?;
        (r, None)
    } else {
        let r = BzImage::load(mem, None, &mut file, himem).map_err(ferr)?;
        let h = r.setup_header;
        (r, h)
    };

    let initrd = write_cmdline_and_initrd(mem, spec, result.kernel_end)?;
    mptable::write(mem, spec.cpus)?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) if elf && spec.prefer_pvh => {
            pvh_entry(mem, spec, addr.0, initrd)?
        }
        _ => {
            let entry = if elf {
                result.kernel_load.0
            } else {
                result.kernel_load.0 + BZIMAGE_64BIT_ENTRY
            };
            linux64_entry(mem, spec, entry, setup_header, initrd)?
        }
    };
    Ok(entry)
}

/// The zero-copy path for an ELF kernel (see `elf_map`); `None` when the
/// image does not allow it.
fn try_map_elf(
    mem: &GuestMemoryMmap,
    spec: &VmSpec,
    file: &File,
) -> std::io::Result<Option<Entry>> {
    let Some(info) = super::elf_map::parse_file(file) else {
        return Ok(None);
    };
    if !super::elf_map::mappable(&info, mem) {
        return Ok(None);
    }
    super::elf_map::map(file, &info, mem)?;
    let initrd = write_cmdline_and_initrd(mem, spec, info.end).map_err(std::io::Error::other)?;
    mptable::write(mem, spec.cpus).map_err(std::io::Error::other)?;
    let entry = match info.pvh_entry {
        Some(pvh) if spec.prefer_pvh => pvh_entry(mem, spec, pvh, initrd),
        _ => linux64_entry(mem, spec, info.entry, None, initrd),
    }
    .map_err(std::io::Error::other)?;
    Ok(Some(entry))
}

fn pvh_entry(
    mem: &GuestMemoryMmap,
    spec: &VmSpec,
    entry: u64,
    initrd: Option<Initrd>,
) -> Result<Entry, EngineError> {
    gdt::write(mem, &gdt::GDT_32)?;
    let start_info = pvh::write(mem, spec.memory, initrd)?;
    Ok(Entry::Pvh { entry, start_info })
}

fn linux64_entry(
    mem: &GuestMemoryMmap,
    spec: &VmSpec,
    entry: u64,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    initrd: Option<Initrd>,
) -> Result<Entry, EngineError> {
    gdt::write(mem, &gdt::GDT_64)?;
    let cr3 = paging::write(mem)?;
    let params = zero_page::build(setup_header, spec.memory, cmdline(spec).len(), initrd);
    zero_page::write(mem, &params)?;
    Ok(Entry::Linux64 { entry, cr3 })
}

fn write_cmdline_and_initrd(
    mem: &GuestMemoryMmap,
    spec: &VmSpec,
    kernel_end: u64,
) -> Result<Option<Initrd>, EngineError> {
    let cmd = cmdline(spec);
    if cmd.len() + 1 > layout::CMDLINE_MAX {
        return Err(ArchError::CmdlineTooLong {
            len: cmd.len() + 1,
            max: layout::CMDLINE_MAX,
        }
        .into());
    }
    let mut bytes = cmd.clone().into_bytes();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_ADDR))
        .map_err(crate::arch::x86_64::write_err(
            "command line",
            GuestAddress(layout::CMDLINE_ADDR),
        ))
        .map_err(EngineError::Arch)?;

    match &spec.initrd {
        Some(data) => Ok(Some(place_initrd(mem, data, spec.memory, kernel_end)?)),
        None => Ok(None),
    }
}

/// Puts the initramfs at the top of low RAM, page aligned, above the kernel.
fn place_initrd(
    mem: &GuestMemoryMmap,
    data: &crate::engine::initramfs::Initramfs,
    mem_size: u64,
    kernel_end: u64,
) -> Result<Initrd, EngineError> {
    let limit = layout::low_ram_end(mem_size);
    let size = data.len() as u64;
    let too_large = ArchError::InitrdTooLarge { size, limit };
    let addr = limit.checked_sub(size).ok_or(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(ArchError::InitrdTooLarge { size, limit }.into());
    }
    let werr = |at: u64| {
        move |e| {
            EngineError::Arch(crate::arch::x86_64::write_err(
                "initramfs",
                GuestAddress(at),
            )(e))
        }
    };
    mem.write_slice(&data.head, GuestAddress(addr))
        .map_err(werr(addr))?;
    let init_at = addr + data.head.len() as u64;
    // Map init's pages from hutch's own file when it is page aligned there
    // and in the archive; copy otherwise.
    let mapped = data.init.as_ptr() == crate::guest_init::INIT.as_ptr()
        && crate::guest_init::file_location()
            .and_then(|(f, off)| {
                super::elf_map::map_file(mem, init_at, &f, off, data.init.len() as u64).ok()
            })
            .is_some();
    if !mapped {
        mem.write_slice(data.init, GuestAddress(init_at))
            .map_err(werr(init_at))?;
        crate::guest_init::release_pages();
    }
    let tail_at = init_at + data.init.len() as u64;
    // The tail, then zeros to the end of its page (a mapped last page holds
    // whatever followed init in the file).
    let page_end = (tail_at + data.tail.len() as u64).next_multiple_of(4096);
    let mut tail = data.tail.clone();
    tail.resize((page_end - tail_at) as usize, 0);
    if page_end <= limit {
        mem.write_slice(&tail, GuestAddress(tail_at))
            .map_err(werr(tail_at))?;
    } else {
        mem.write_slice(&data.tail, GuestAddress(tail_at))
            .map_err(werr(tail_at))?;
    }
    Ok(Initrd { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::fs::{ShareConfig, SharePolicy};

    fn spec(shares: usize) -> VmSpec {
        let mut s = VmSpec::new(
            "/nonexistent".into(),
            "console=ttyS0 reboot=t".into(),
            std::time::Instant::now(),
        );
        s.memory = 256 << 20;
        s.shares = (0..shares)
            .map(|i| ShareConfig {
                tag: format!("t{i}"),
                source: "/tmp".into(),
                policy: SharePolicy::Workspace,
            })
            .collect();
        s
    }

    #[test]
    fn cmdline_announces_one_virtio_mmio_window_per_share() {
        assert_eq!(cmdline(&spec(0)), "console=ttyS0 reboot=t");
        assert_eq!(
            cmdline(&spec(2)),
            "console=ttyS0 reboot=t virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        let mut s = spec(2);
        s.vsock = Some("/run/v.sock".into());
        assert!(
            cmdline(&s).ends_with(" virtio_mmio.device=4K@0xd0002000:7"),
            "the vsock device takes the window after the shares"
        );
    }

    #[test]
    fn cmdline_and_initrd_are_written_and_checked() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap();
        let mut s = spec(1);
        s.initrd = Some(crate::engine::initramfs::build(
            b"\x7fELF",
            &hutch_proto::RunSpec {
                detached: true,
                ..Default::default()
            },
        ));
        let rd = write_cmdline_and_initrd(&mem, &s, 0x200_0000)
            .unwrap()
            .unwrap();
        assert_eq!(rd.addr % 4096, 0);
        assert!(rd.addr + rd.size <= 256 << 20);
        let mut got = vec![0u8; rd.size as usize];
        mem.read_slice(&mut got, GuestAddress(rd.addr)).unwrap();
        assert_eq!(got, s.initrd.as_ref().unwrap().to_vec());
        let mut c = vec![0u8; cmdline(&s).len() + 1];
        mem.read_slice(&mut c, GuestAddress(layout::CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&c[..c.len() - 1], cmdline(&s).as_bytes());
        assert_eq!(c[c.len() - 1], 0, "NUL-terminated");
        // A command line over the kernel's limit is refused.
        s.cmdline = "x".repeat(layout::CMDLINE_MAX);
        assert!(matches!(
            write_cmdline_and_initrd(&mem, &s, 0x200_0000),
            Err(EngineError::Arch(ArchError::CmdlineTooLong { .. }))
        ));
        // An initramfs that does not fit above the kernel is refused.
        s.cmdline = "ok".into();
        assert!(write_cmdline_and_initrd(&mem, &s, (256 << 20) - 100).is_err());
    }
}
