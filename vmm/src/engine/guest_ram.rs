//! The qemu engine's guest RAM: a memfd that hutch creates and QEMU maps
//! (`memory-backend-file` on `/proc/self/fd/N`), instead of one QEMU
//! creates itself, so that hutch can allocate its tail ahead of the guest.
//!
//! The guest kernel's first big write is its `struct page` array, 64 bytes
//! per 4 KiB page, which memblock places at the top of memory: the end of
//! the memfd. Each 4 KiB the guest touches there is a host page fault that
//! allocates and zeroes a page, on the vCPU's thread (about 48,000 of them
//! for the default 12 GiB here). [`GuestRam::allocate_tail`] allocates that
//! range with `fallocate` on another thread while QEMU starts, so the
//! guest's faults only map pages that are already there.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use super::EngineError;

/// The memfd's name (it shows in `/proc/PID/fd` as `/memfd:hutch-guest-ram`).
const NAME: &CStr = c"hutch-guest-ram";

/// Bytes of guest memory per byte of its `struct page` array (a 64-byte
/// struct for each 4 KiB page).
const MEMMAP_RATIO: u64 = 4096 / 64;

/// Guest memory backed by a memfd of hutch's.
#[derive(Debug)]
pub struct GuestRam {
    fd: OwnedFd,
    size: u64,
}

impl GuestRam {
    /// A memfd of `size` bytes, close-on-exec (QEMU's `pre_exec` keeps it).
    pub fn new(size: u64) -> Result<Self, EngineError> {
        let err = |source| EngineError::Io {
            what: format!("creating {size} bytes of guest memory (memfd)"),
            source,
        };
        // SAFETY: NAME is a NUL-terminated string; the flags are constants.
        let raw = unsafe { libc::memfd_create(NAME.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: memfd_create just returned this descriptor, owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = libc::off_t::try_from(size)
            .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        // SAFETY: ftruncate on a descriptor we own; no memory is passed.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(GuestRam { fd, size })
    }

    /// The descriptor QEMU inherits.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The path QEMU opens to map it: its own copy of the descriptor.
    pub fn qemu_path(&self) -> String {
        format!("/proc/self/fd/{}", self.raw_fd())
    }

    /// Hands a copy of the memfd to a helper process (`hutch-ram-free`)
    /// that closes it once hutch has exited (its end of a pipe closes).
    /// QEMU and the backends then only unmap guest memory when a run ends,
    /// and the pages, hundreds of MiB with the default memory, are freed in
    /// the helper after hutch has returned: at 12 GiB, the guest's exit
    /// status came 21–27 ms before hutch's end instead of 51–62. For a
    /// process that runs one guest (every hutch process does): the copy
    /// lives as long as hutch. Without a helper (fork failed) the pages are
    /// freed as before.
    pub fn free_after_exit(&self) {
        let fd = self.fd.as_raw_fd();
        if let Some((wr, _pid)) =
            crate::exit_watch::fork_until_exit(c"hutch-ram-free", Some(fd), |_| {})
        {
            // hutch's end stays open until hutch exits; the child, reparented
            // by then, is reaped by init.
            std::mem::forget(wr);
        }
    }

    /// Allocates the last [`memmap_tail`] bytes on a thread of its own, then
    /// closes hutch's descriptor (QEMU and the backends keep theirs). A
    /// failure (no memory to spare) only loses the head start.
    pub fn allocate_tail(self) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let tail = memmap_tail(self.size);
            let (Ok(off), Ok(len)) = (
                libc::off_t::try_from(self.size - tail),
                libc::off_t::try_from(tail),
            ) else {
                return;
            };
            // SAFETY: fallocate on a descriptor we own, within its size.
            unsafe { libc::fallocate(self.fd.as_raw_fd(), 0, off, len) };
        })
    }
}

/// How much of the top of `size` bytes of guest memory the guest kernel's
/// `struct page` array takes: 1/64, in whole 2 MiB.
pub fn memmap_tail(size: u64) -> u64 {
    (size / MEMMAP_RATIO) & !((2 << 20) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_struct_page_array() {
        assert_eq!(memmap_tail(12 << 30), 192 << 20);
        assert_eq!(memmap_tail(512 << 20), 8 << 20);
        assert_eq!(memmap_tail(100 << 20), 0, "under 2 MiB rounds to none");
    }

    #[test]
    fn the_memfd_has_the_size_and_its_tail_gets_allocated() {
        let ram = GuestRam::new(256 << 20).unwrap();
        let dup = std::fs::File::open(ram.qemu_path()).unwrap();
        assert_eq!(dup.metadata().unwrap().len(), 256 << 20);
        let st = dup.metadata().unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::blocks(&st),
            0,
            "nothing allocated yet"
        );
        ram.allocate_tail().join().unwrap();
        let st = dup.metadata().unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::blocks(&st) * 512,
            memmap_tail(256 << 20)
        );
    }
}
