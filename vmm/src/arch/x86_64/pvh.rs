//! PVH boot: `hvm_start_info`, the module list (initramfs) and the memory map,
//! written at [`layout::PVH_INFO_ADDR`]. The kernel's PVH entry point is found
//! in the ELF note `XEN_ELFNOTE_PHYS32_ENTRY` by linux-loader.

use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

use super::zero_page::Initrd;
use super::{layout, write_err, ArchError};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModEntry(hvm_modlist_entry);
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MapEntry(hvm_memmap_table_entry);

// SAFETY: bindgen `repr(C)` structs of integers; any bit pattern is valid.
unsafe impl ByteValued for StartInfo {}
// SAFETY: as above.
unsafe impl ByteValued for ModEntry {}
// SAFETY: as above.
unsafe impl ByteValued for MapEntry {}

const START_INFO_SIZE: u64 = std::mem::size_of::<hvm_start_info>() as u64;
const MOD_SIZE: u64 = std::mem::size_of::<hvm_modlist_entry>() as u64;

/// Writes the start info; returns its address (the value for EBX).
pub fn write<M: GuestMemory>(
    mem: &M,
    mem_size: u64,
    initrd: Option<Initrd>,
) -> Result<u64, ArchError> {
    let base = layout::PVH_INFO_ADDR;
    let modlist_addr = base + START_INFO_SIZE;
    let memmap_addr = modlist_addr + MOD_SIZE;
    let map = layout::memory_map(mem_size);

    let mut info = StartInfo::default();
    info.0.magic = XEN_HVM_START_MAGIC;
    info.0.version = 1;
    info.0.cmdline_paddr = layout::CMDLINE_ADDR;
    info.0.memmap_paddr = memmap_addr;
    info.0.memmap_entries = map.len() as u32;
    if let Some(rd) = initrd {
        info.0.nr_modules = 1;
        info.0.modlist_paddr = modlist_addr;
        let mut m = ModEntry::default();
        m.0.paddr = rd.addr;
        m.0.size = rd.size;
        let at = GuestAddress(modlist_addr);
        mem.write_obj(m, at)
            .map_err(write_err("PVH module list", at))?;
    }
    for (i, e) in map.iter().enumerate() {
        let mut me = MapEntry::default();
        me.0.addr = e.addr;
        me.0.size = e.size;
        me.0.type_ = e.kind;
        let at = GuestAddress(memmap_addr + i as u64 * std::mem::size_of::<MapEntry>() as u64);
        mem.write_obj(me, at)
            .map_err(write_err("PVH memory map", at))?;
    }
    let at = GuestAddress(base);
    mem.write_obj(info, at)
        .map_err(write_err("PVH start info", at))?;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn start_info_points_at_cmdline_modules_and_map() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rd = Initrd {
            addr: 0x80000,
            size: 4096,
        };
        let addr = write(&mem, 256 << 20, Some(rd)).unwrap();
        let info: StartInfo = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(info.0.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.0.cmdline_paddr, layout::CMDLINE_ADDR);
        assert_eq!(info.0.nr_modules, 1);
        let m: ModEntry = mem.read_obj(GuestAddress(info.0.modlist_paddr)).unwrap();
        assert_eq!((m.0.paddr, m.0.size), (0x80000, 4096));
        assert_eq!(info.0.memmap_entries, 3);
        let last: MapEntry = mem
            .read_obj(GuestAddress(info.0.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(last.0.addr + last.0.size, 256 << 20);
    }

    #[test]
    fn no_initrd_means_no_modules() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let addr = write(&mem, 64 << 20, None).unwrap();
        let info: StartInfo = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(info.0.nr_modules, 0);
        assert_eq!(info.0.modlist_paddr, 0);
    }
}
