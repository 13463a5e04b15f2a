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
    for i in 0..spec.shares.len() {
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
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let (result, setup_header) = if elf {
        let r = Elf::load(mem, None, &mut file, himem).map_err(ferr)?;
        (r, None)
    } else {
        let r = BzImage::load(mem, None, &mut file, himem).map_err(ferr)?;
        let h = r.setup_header;
        (r, h)
    };

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
        .map_err(crate::arch::x86_64::write_err("command line", GuestAddress(layout::CMDLINE_ADDR)))
        .map_err(EngineError::Arch)?;

    let initrd = match &spec.initrd {
        Some(data) => Some(place_initrd(mem, data, spec.memory, result.kernel_end)?),
        None => None,
    };

    mptable::write(mem, spec.cpus)?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) if elf && spec.prefer_pvh => {
            gdt::write(mem, &gdt::GDT_32)?;
            let start_info = pvh::write(mem, spec.memory, initrd)?;
            Entry::Pvh {
                entry: addr.0,
                start_info,
            }
        }
        _ => {
            gdt::write(mem, &gdt::GDT_64)?;
            let cr3 = paging::write(mem)?;
            let params = zero_page::build(setup_header, spec.memory, cmd.len(), initrd);
            zero_page::write(mem, &params)?;
            let entry = if elf {
                result.kernel_load.0
            } else {
                result.kernel_load.0 + BZIMAGE_64BIT_ENTRY
            };
            Entry::Linux64 { entry, cr3 }
        }
    };
    Ok(entry)
}

/// Puts the initramfs at the top of low RAM, page aligned, above the kernel.
fn place_initrd(mem: &GuestMemoryMmap, data: &[u8], mem_size: u64, kernel_end: u64) -> Result<Initrd, EngineError> {
    let limit = layout::low_ram_end(mem_size);
    let size = data.len() as u64;
    let too_large = ArchError::InitrdTooLarge { size, limit };
    let addr = limit.checked_sub(size).ok_or(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(ArchError::InitrdTooLarge { size, limit }.into());
    }
    mem.write_slice(data, GuestAddress(addr))
        .map_err(crate::arch::x86_64::write_err("initramfs", GuestAddress(addr)))
        .map_err(EngineError::Arch)?;
    Ok(Initrd { addr, size })
}
