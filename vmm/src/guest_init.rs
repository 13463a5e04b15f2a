//! The guest's PID 1, built by `build.rs` and carried inside `hutch`.

/// Page alignment for the embedded binary, so its pages in `hutch`'s own
/// file can be mapped straight into guest memory.
#[repr(C, align(4096))]
struct PageAligned<T: ?Sized>(T);

const INIT_LEN: usize = include_bytes!(concat!(env!("OUT_DIR"), "/hutch-init")).len();
static INIT_STORE: PageAligned<[u8; INIT_LEN]> =
    PageAligned(*include_bytes!(concat!(env!("OUT_DIR"), "/hutch-init")));

/// The static `hutch-init` binary.
pub static INIT: &[u8] = &INIT_STORE.0;

/// Where `INIT` lives in this process's executable file: (file, offset).
/// `None` if it cannot be told (then callers copy the bytes instead).
pub fn file_location() -> Option<(std::fs::File, u64)> {
    let addr = INIT.as_ptr() as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, _perms, offset) = (f.next()?, f.next()?, f.next()?);
        let (_dev, _inode) = (f.next()?, f.next()?);
        let path = f.next().unwrap_or("");
        let (a, b) = range.split_once('-')?;
        let (a, b) = (
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(b, 16).ok()?,
        );
        if addr >= a && addr + INIT.len() as u64 <= b && std::path::Path::new(path) == exe {
            let off = u64::from_str_radix(offset, 16).ok()? + (addr - a);
            let file = std::fs::File::open("/proc/self/exe").ok()?;
            return off.is_multiple_of(4096).then_some((file, off));
        }
    }
    None
}

/// Drops `INIT`'s pages from this process's resident set once they have been
/// copied to the guest: they are file-backed and read-only, so a later read
/// simply faults them in again from the page cache.
pub fn release_pages() {
    let start = INIT.as_ptr() as usize;
    let page = 4096;
    let first = start.next_multiple_of(page);
    let last = (start + INIT.len()) / page * page;
    if last > first {
        // SAFETY: [first, last) lies inside the read-only static `INIT`, part
        // of this binary's file-backed image; MADV_DONTNEED on such pages only
        // drops their residency, and their content is unchanged on the next read.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            )
        };
    }
}
