//! Plain READDIR for the workspace without a lookup per entry.
//!
//! PassthroughFs answers READDIR by looking every entry up (an `openat`, a
//! `statx` and an inode-table insert and removal per name) only to report its
//! own node id as `d_ino`; a 10k-entry directory cost about 0.7 ms per 4 KiB
//! request. A READDIR needs none of that: the guest's FUSE client passes
//! `d_ino` through to `getdents` and never uses it as a node id. So for every
//! directory the guest opens, hutch opens a second descriptor of its own and
//! answers READDIR straight from `getdents64`, reporting the host inode
//! number as READDIRPLUS does. READDIRPLUS reads the same stream and looks
//! each name up through PassthroughFs (`PolicyFs::readdirplus`), so the
//! guest gets one listing, "." and ".." included as the host lists them,
//! whichever of the two requests it sends for a chunk.
//!
//! The descriptor is opened by the directory's current host path, found from
//! PassthroughFs's O_PATH descriptor, with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` from the share's root, and
//! kept only if it is the same directory (device and inode) as the one the
//! guest opened. Anything else (a rename race, a deleted directory, a path
//! outside the share) leaves the handle on PassthroughFs's slower path.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuse_backend_rs::api::filesystem::DirEntry;
use fuse_backend_rs::passthrough::PassthroughFs;

/// A file system that can name an inode's current host path.
pub trait HostPath {
    /// The host path of `inode` now (it may have moved since lookup).
    fn host_path(&self, inode: u64) -> io::Result<PathBuf>;
}

impl HostPath for PassthroughFs {
    fn host_path(&self, inode: u64) -> io::Result<PathBuf> {
        self.readlinkat_proc_file(inode)
    }
}

/// The workspace's own directory descriptors, by the handle PassthroughFs
/// gave the guest.
#[derive(Debug)]
pub struct DirStreams {
    root: OwnedFd,
    root_path: PathBuf,
    open: Mutex<HashMap<u64, Arc<Mutex<Stream>>>>,
}

impl DirStreams {
    /// For the share rooted at `source`.
    pub fn new(source: &Path) -> io::Result<Self> {
        let root_path = source.canonicalize()?;
        let c = CString::new(root_path.as_os_str().as_bytes())?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: `c` is a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` was just opened and is owned by nothing else.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            root_path,
            open: Mutex::default(),
        })
    }

    /// Opens a descriptor for `handle`, the guest's open of the directory at
    /// `host_path` whose identity is `(dev, ino)`. Returns whether READDIR on
    /// the handle now takes the fast path.
    pub fn open(&self, handle: u64, host_path: &Path, id: (u64, u64)) -> bool {
        let Some(file) = self.dir(host_path, id) else {
            return false;
        };
        self.lock()
            .insert(handle, Arc::new(Mutex::new(Stream::new(file))));
        true
    }

    /// A descriptor of the directory at `host_path`, opened beneath the
    /// share's root without following any symlink, and only if it is still
    /// the directory whose identity is `(dev, ino)`.
    pub fn dir(&self, host_path: &Path, id: (u64, u64)) -> Option<File> {
        let rel = host_path.strip_prefix(&self.root_path).ok()?;
        let file = self.open_beneath(rel)?;
        match file.metadata() {
            Ok(m) if m.is_dir() && (m.dev(), m.ino()) == id => Some(file),
            _ => None,
        }
    }

    /// Forgets `handle` (RELEASEDIR).
    pub fn close(&self, handle: u64) {
        self.lock().remove(&handle);
    }

    /// How many handles take the fast path (for tests).
    #[cfg(test)]
    pub fn open_handles(&self) -> usize {
        self.lock().len()
    }

    /// Answers READDIR on `handle` from `offset`, or `None` when the handle
    /// has no descriptor of ours.
    pub fn read(
        &self,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> Option<io::Result<()>> {
        let dir = self.lock().get(&handle).cloned()?;
        let mut stream = dir.lock().unwrap_or_else(|p| p.into_inner());
        Some(stream.read(size, offset, add_entry))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Mutex<Stream>>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `rel` below the root, never leaving it and following no symlink.
    fn open_beneath(&self, rel: &Path) -> Option<File> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let c = CString::new(rel.as_os_str().as_bytes()).ok()?;
        // SAFETY: `open_how` is plain integers; all zeroes is a valid value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 reads `how` (of the size passed) and the NUL-terminated
        // path; the returned descriptor is checked.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Some(unsafe { File::from_raw_fd(fd as i32) })
    }
}

/// Header of a `linux_dirent64` before its name.
const DIRENT_HEADER: usize = 19;

/// How much one `getdents64` reads: several READDIR replies' worth.
const BATCH: usize = 32 * 1024;

/// One open directory and the entries read from it but not yet sent.
///
/// A READDIR reply (4 KiB) holds fewer entries than a `getdents64` returns,
/// so the next request starts in the middle of what was read. Seeking back
/// there makes ext4 rebuild its hash-order cursor for the directory, which
/// cost more than the read; serving the rest from this buffer when the guest
/// asks for exactly the next offset avoids both the seek and the read.
#[derive(Debug)]
struct Stream {
    file: File,
    buf: Vec<u8>,
    /// Start of the first unsent entry in `buf`.
    at: usize,
    /// The directory offset that entry sits at (what the guest asks for next).
    next_off: u64,
}

impl Stream {
    fn new(file: File) -> Self {
        Self {
            file,
            buf: Vec::new(),
            at: 0,
            next_off: 0,
        }
    }

    /// Reads the next batch from the file's position; false at the end.
    fn fill(&mut self) -> io::Result<bool> {
        self.buf.resize(BATCH, 0);
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                self.file.as_raw_fd(),
                self.buf.as_mut_ptr(),
                self.buf.len(),
            )
        };
        if n < 0 {
            self.buf.clear();
            // The file position is unknown now: the next read seeks.
            self.next_off = u64::MAX;
            return Err(io::Error::last_os_error());
        }
        self.buf.truncate(n as usize);
        self.at = 0;
        Ok(n > 0)
    }

    /// Entries from directory offset `offset` until `add_entry` is full.
    fn read(
        &mut self,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if size == 0 {
            return Ok(());
        }
        if offset != self.next_off || self.at >= self.buf.len() {
            if offset != self.next_off {
                // SAFETY: plain lseek on our own descriptor; checked.
                let r = unsafe {
                    libc::lseek64(
                        self.file.as_raw_fd(),
                        offset as libc::off64_t,
                        libc::SEEK_SET,
                    )
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                self.next_off = offset;
            }
            if !self.fill()? {
                return Ok(());
            }
        }
        let mut added = 0;
        loop {
            if self.at >= self.buf.len() && !self.fill()? {
                return Ok(());
            }
            let rest = &self.buf[self.at..];
            if rest.len() < DIRENT_HEADER {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let ino = u64::from_ne_bytes(rest[0..8].try_into().unwrap_or_default());
            let off = u64::from_ne_bytes(rest[8..16].try_into().unwrap_or_default());
            let reclen = u16::from_ne_bytes([rest[16], rest[17]]) as usize;
            let type_ = rest[18];
            if reclen < DIRENT_HEADER || reclen > rest.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let name = CStr::from_bytes_until_nul(&rest[DIRENT_HEADER..reclen])
                .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?
                .to_bytes();
            // "." and ".." too, as the host lists them (READDIRPLUS on the
            // workspace reads this same stream: one listing for both).
            let entry = DirEntry {
                ino,
                offset: off,
                type_: u32::from(type_),
                name,
            };
            match add_entry(entry) {
                Ok(0) => return Ok(()),
                Ok(_) => added += 1,
                Err(e) if added == 0 => return Err(e),
                Err(_) => return Ok(()),
            }
            self.at += reclen;
            self.next_off = off;
        }
    }
}
