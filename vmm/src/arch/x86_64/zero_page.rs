//! The Linux boot protocol's `boot_params` ("zero page"): e820 map, command
//! line and initramfs location, plus the setup header from a bzImage.

use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

use super::{layout, write_err, ArchError};

/// `boot_params` made writable into guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct BootParams(pub boot_params);

// SAFETY: `boot_params` is a bindgen `repr(C)` struct of integers and arrays
// of integers: every bit pattern is valid and it has no pointers.
unsafe impl ByteValued for BootParams {}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Where the initramfs was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

/// Builds the zero page. `header` is the bzImage's setup header, or `None`
/// for an ELF kernel entered at its 64-bit entry.
pub fn build(
    header: Option<setup_header>,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<Initrd>,
) -> BootParams {
    let mut p = BootParams::default();
    if let Some(h) = header {
        p.0.hdr = h;
    }
    p.0.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.0.hdr.header = KERNEL_HDR_MAGIC;
    p.0.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.0.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    p.0.hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
    p.0.hdr.cmdline_size = cmdline_len as u32;
    if let Some(rd) = initrd {
        p.0.hdr.ramdisk_image = rd.addr as u32;
        p.0.hdr.ramdisk_size = rd.size as u32;
    }
    let map = layout::memory_map(mem_size);
    for (i, e) in map.iter().enumerate() {
        p.0.e820_table[i].addr = e.addr;
        p.0.e820_table[i].size = e.size;
        p.0.e820_table[i].type_ = e.kind;
    }
    p.0.e820_entries = map.len() as u8;
    p
}

/// Writes the zero page at [`layout::ZERO_PAGE_ADDR`].
pub fn write<M: GuestMemory>(mem: &M, params: &BootParams) -> Result<(), ArchError> {
    let at = GuestAddress(layout::ZERO_PAGE_ADDR);
    mem.write_obj(*params, at)
        .map_err(write_err("zero page", at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn zero_page_has_magic_cmdline_initrd_and_e820() {
        let rd = Initrd {
            addr: 0x1f00_0000,
            size: 0x1234,
        };
        let p = build(None, 512 << 20, 100, Some(rd));
        let h = p.0.hdr;
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!({ h.header }, 0x5372_6448);
        assert_eq!({ h.cmd_line_ptr }, layout::CMDLINE_ADDR as u32);
        assert_eq!({ h.cmdline_size }, 100);
        assert_eq!({ h.ramdisk_image }, 0x1f00_0000);
        assert_eq!({ h.ramdisk_size }, 0x1234);
        assert_eq!(p.0.e820_entries, 3);
        let last = p.0.e820_table[2];
        assert_eq!({ last.addr }, layout::HIMEM_START);
        assert_eq!({ last.addr } + { last.size }, 512 << 20);
        assert_eq!({ last.type_ }, layout::E820_RAM);
    }

    #[test]
    fn keeps_bzimage_header_fields() {
        let h = setup_header {
            setup_sects: 27,
            version: 0x20f,
            ..Default::default()
        };
        let p = build(Some(h), 256 << 20, 1, None);
        assert_eq!({ p.0.hdr.setup_sects }, 27);
        assert_eq!({ p.0.hdr.version }, 0x20f);
        assert_eq!({ p.0.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn writes_at_the_zero_page_address() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem, &build(None, 1 << 20, 5, None)).unwrap();
        // boot_flag lives at offset 0x1fe of the zero page.
        let flag: u16 = mem
            .read_obj(GuestAddress(layout::ZERO_PAGE_ADDR + 0x1fe))
            .unwrap();
        assert_eq!(flag, 0xaa55);
        let entries: u8 = mem
            .read_obj(GuestAddress(layout::ZERO_PAGE_ADDR + 0x1e8))
            .unwrap();
        assert_eq!(entries, 2);
    }
}
