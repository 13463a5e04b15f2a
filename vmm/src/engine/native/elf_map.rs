//! Zero-copy loading of an ELF `vmlinux`: each `PT_LOAD` segment is mapped
//! from the file straight into guest RAM (`MAP_PRIVATE | MAP_FIXED`), so the
//! kernel's pages come from the page cache when the guest first touches them
//! instead of being copied at start-up (about 9 ms for this kernel's 12 MB).
//!
//! Applies when every segment's file offset and physical address share their
//! page offset and lie inside one RAM region; otherwise the caller copies
//! with linux-loader. Writes by the guest stay private (copy on write); the
//! kernel cache replaces images by rename, so a mapped file never changes.

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PAGE: u64 = 4096;

/// A segment to map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// What the ELF file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub entry: u64,
    pub pvh_entry: Option<u64>,
    pub segments: Vec<Segment>,
    /// End of the highest segment in guest-physical memory.
    pub end: u64,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Parses a little-endian ELF64 image held in memory. `None` if it is not one.
pub fn parse(img: &[u8]) -> Option<ElfInfo> {
    parse_with(img, |off, len| {
        img.get(off as usize..(off as usize).checked_add(len)?)
            .map(<[u8]>::to_vec)
    })
}

/// Parses the ELF64 file's header, program headers and PVH note, reading
/// only those parts of the file.
pub fn parse_file(file: &File) -> Option<ElfInfo> {
    use std::os::unix::fs::FileExt;
    let read_at = |off: u64, len: usize| {
        let mut b = vec![0u8; len];
        file.read_exact_at(&mut b, off).ok().map(|_| b)
    };
    let ehdr = read_at(0, 64)?;
    let phoff = u64_at(&ehdr, 32)?;
    let phend = phoff.checked_add(u64::from(u16_at(&ehdr, 54)?) * u64::from(u16_at(&ehdr, 56)?))?;
    if phend > 1 << 20 {
        return None;
    }
    let head = read_at(0, phend as usize)?;
    parse_with(&head, read_at)
}

fn parse_with(head: &[u8], read_at: impl Fn(u64, usize) -> Option<Vec<u8>>) -> Option<ElfInfo> {
    if head.get(0..4)? != b"\x7fELF" || *head.get(4)? != 2 || *head.get(5)? != 1 {
        return None;
    }
    let entry = u64_at(head, 24)?;
    let phoff = u64_at(head, 32)? as usize;
    let phentsize = u16_at(head, 54)? as usize;
    let phnum = u16_at(head, 56)? as usize;
    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let kind = u32_at(head, ph)?;
        let offset = u64_at(head, ph + 8)?;
        let paddr = u64_at(head, ph + 24)?;
        let filesz = u64_at(head, ph + 32)?;
        let memsz = u64_at(head, ph + 40)?;
        match kind {
            PT_LOAD if memsz > 0 => segments.push(Segment {
                offset,
                paddr,
                filesz,
                memsz,
            }),
            PT_NOTE if pvh_entry.is_none() && filesz <= 1 << 20 => {
                pvh_entry = read_at(offset, filesz as usize).and_then(|n| find_pvh_note(&n));
            }
            _ => {}
        }
    }
    let end = segments.iter().map(|s| s.paddr + s.memsz).max()?;
    Some(ElfInfo {
        entry,
        pvh_entry,
        segments,
        end,
    })
}

fn find_pvh_note(notes: &[u8]) -> Option<u64> {
    let mut o = 0;
    let align = |n: usize| (n + 3) & !3;
    while o + 12 <= notes.len() {
        let namesz = u32_at(notes, o)? as usize;
        let descsz = u32_at(notes, o + 4)? as usize;
        let kind = u32_at(notes, o + 8)?;
        let name = notes.get(o + 12..o + 12 + namesz)?;
        let desc_at = o + 12 + align(namesz);
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            return match descsz {
                4 => u32_at(notes, desc_at).map(u64::from),
                8 => u64_at(notes, desc_at),
                _ => None,
            };
        }
        o = desc_at + align(descsz);
    }
    None
}

/// Whether every segment can be mapped: page-congruent and inside RAM.
pub fn mappable(info: &ElfInfo, mem: &GuestMemoryMmap) -> bool {
    info.segments.iter().all(|s| {
        s.offset % PAGE == s.paddr % PAGE
            && s.filesz <= s.memsz
            && mem.find_region(GuestAddress(s.paddr)).is_some_and(|r| {
                let start = r.start_addr().0;
                s.paddr + s.memsz <= start + r.len()
            })
    })
}

/// Maps every segment of `file` into `mem`, then clears what lies past each
/// segment's file bytes in its last page. Call only when [`mappable`].
pub fn map(file: &File, info: &ElfInfo, mem: &GuestMemoryMmap) -> std::io::Result<()> {
    for s in &info.segments {
        if s.filesz == 0 {
            continue;
        }
        let skew = s.paddr % PAGE;
        let len = (s.filesz + skew).div_ceil(PAGE) * PAGE;
        map_file(mem, s.paddr - skew, file, s.offset - skew, len)?;
        // File bytes past the segment would otherwise show through.
        let file_end = s.paddr + s.filesz;
        let page_end = (s.paddr - skew) + len;
        let zeros = vec![0u8; (page_end - file_end) as usize];
        mem.write_slice(&zeros, GuestAddress(file_end))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// Maps `len` bytes of `file` at `offset` (page aligned) over guest memory at
/// `gpa` (page aligned), copy-on-write. The last page is mapped whole.
pub fn map_file(
    mem: &GuestMemoryMmap,
    gpa: u64,
    file: &File,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    if !gpa.is_multiple_of(PAGE) || !offset.is_multiple_of(PAGE) {
        return Err(std::io::Error::other("unaligned file mapping"));
    }
    let region = mem
        .find_region(GuestAddress(gpa))
        .ok_or_else(|| std::io::Error::other("mapping outside guest RAM"))?;
    let len = len.div_ceil(PAGE) * PAGE;
    let in_region = gpa - region.start_addr().0;
    if in_region + len > region.len() {
        return Err(std::io::Error::other("mapping past the end of guest RAM"));
    }
    let host = region
        .get_host_address(MemoryRegionAddress(in_region))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // SAFETY: [gpa, gpa + len) was checked to lie inside this region, whose
    // host mapping `mem` owns for the VM's lifetime; MAP_FIXED replaces just
    // those pages with a private view of the file.
    let p = unsafe {
        libc::mmap(
            host.cast(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 with two PT_LOADs and a Xen PVH note.
    fn elf() -> Vec<u8> {
        let mut b = vec![0u8; 3 * 4096];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&3u16.to_le_bytes());
        let ph =
            |b: &mut Vec<u8>, i: usize, kind: u32, off: u64, paddr: u64, fsz: u64, msz: u64| {
                let o = 64 + i * 56;
                b[o..o + 4].copy_from_slice(&kind.to_le_bytes());
                b[o + 8..o + 16].copy_from_slice(&off.to_le_bytes());
                b[o + 24..o + 32].copy_from_slice(&paddr.to_le_bytes());
                b[o + 32..o + 40].copy_from_slice(&fsz.to_le_bytes());
                b[o + 40..o + 48].copy_from_slice(&msz.to_le_bytes());
            };
        ph(&mut b, 0, PT_LOAD, 4096, 0x20_0000, 100, 100);
        ph(&mut b, 1, PT_LOAD, 8192, 0x30_0000, 10, 8192);
        ph(&mut b, 2, PT_NOTE, 1024, 0, 24, 24);
        // note: namesz 4, descsz 4, type 18, "Xen\0", entry
        b[1024..1028].copy_from_slice(&4u32.to_le_bytes());
        b[1028..1032].copy_from_slice(&4u32.to_le_bytes());
        b[1032..1036].copy_from_slice(&18u32.to_le_bytes());
        b[1036..1040].copy_from_slice(b"Xen\0");
        b[1040..1044].copy_from_slice(&0x20_0040u32.to_le_bytes());
        b[4096..4196].fill(0xaa);
        b[4196..8192].fill(0xee); // junk past segment 0 in its page
        b[8192..8202].fill(0xbb);
        b[8202..].fill(0xee);
        b
    }

    #[test]
    fn parses_segments_and_pvh_entry() {
        let i = parse(&elf()).unwrap();
        assert_eq!(i.entry, 0x20_0000);
        assert_eq!(i.pvh_entry, Some(0x20_0040));
        assert_eq!(i.segments.len(), 2);
        assert_eq!(i.end, 0x30_0000 + 8192);
        assert!(parse(b"not an elf").is_none());
        let mut truncated = elf();
        truncated.truncate(100);
        assert!(parse(&truncated).is_none(), "program headers past the end");
    }

    #[test]
    fn maps_file_bytes_and_zeroes_the_rest() {
        let img = elf();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&img).unwrap();
        assert_eq!(
            parse_file(&f),
            parse(&img),
            "reading parts of the file = parsing all of it"
        );
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let info = parse(&img).unwrap();
        assert!(mappable(&info, &mem));
        map(&f, &info, &mem).unwrap();
        let mut seg0 = vec![0u8; 4096];
        mem.read_slice(&mut seg0, GuestAddress(0x20_0000)).unwrap();
        assert!(seg0[..100].iter().all(|b| *b == 0xaa));
        assert!(
            seg0[100..].iter().all(|b| *b == 0),
            "tail of the page cleared"
        );
        let mut seg1 = vec![1u8; 8192];
        mem.read_slice(&mut seg1, GuestAddress(0x30_0000)).unwrap();
        assert!(seg1[..10].iter().all(|b| *b == 0xbb));
        assert!(seg1[10..].iter().all(|b| *b == 0), "bss is zero");
        // Guest writes stay private.
        mem.write_obj(0x55u8, GuestAddress(0x20_0000)).unwrap();
        let mut again = vec![0u8; 1];
        std::io::Read::read_exact(
            &mut std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(4096))
                .map(|_| &f)
                .unwrap(),
            &mut again,
        )
        .unwrap();
        assert_eq!(again[0], 0xaa);
    }

    #[test]
    fn refuses_segments_outside_ram_or_misaligned() {
        let img = elf();
        let info = parse(&img).unwrap();
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        assert!(!mappable(&info, &small));
        let mut skewed = info.clone();
        skewed.segments[0].offset += 1;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        assert!(!mappable(&skewed, &mem));
    }
}
