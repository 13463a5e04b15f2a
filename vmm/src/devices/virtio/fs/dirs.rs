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
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuse_backend_rs::passthrough::PassthroughFs;

use super::dir_stream::{AddEntry, LookUp, Stream};

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
    /// Read ahead in big listings (lever `dir_prefetch`, dir_stream.rs).
    prefetch: bool,
    /// And look names up ahead for READDIRPLUS (lever `lookup_ahead`).
    look_ahead: bool,
    /// Streams that asked to read ahead once the answer is out.
    wanting: Mutex<Vec<Arc<Mutex<Stream>>>>,
    /// Whether `wanting` may be non-empty (so a request need not lock it).
    any_wanting: AtomicBool,
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
            prefetch: false,
            look_ahead: false,
            wanting: Mutex::default(),
            any_wanting: AtomicBool::new(false),
        })
    }

    /// Reads ahead in big listings (dir_stream.rs) when `on`, and looks
    /// names up ahead for READDIRPLUS too when `look_ahead`; the device
    /// then calls [`DirStreams::read_ahead`] after each answer.
    pub fn with_prefetch(mut self, on: bool, look_ahead: bool) -> Self {
        self.prefetch = on;
        self.look_ahead = on && look_ahead;
        self
    }

    /// Reads the next batch of, and looks names up ahead in, each listing
    /// that asked for it since the last call (dir_stream.rs); with `run`
    /// false only forgets the asking. For the worker, once its answers are
    /// out: the guest is busy with the last chunk meanwhile. `forget` gives
    /// back entries looked up ahead that went stale. Returns the batches
    /// read and the names looked up.
    pub fn read_ahead(
        &self,
        run: bool,
        look_up: &mut LookUp<'_>,
        forget: &mut dyn FnMut(u64),
    ) -> (u64, u64) {
        let (mut batches, mut names) = (0, 0);
        // Called after every answer: a plain load when nothing waits.
        if !self.any_wanting.load(Ordering::Relaxed)
            || !self.any_wanting.swap(false, Ordering::Acquire)
        {
            return (batches, names);
        }
        let wanting = std::mem::take(&mut *self.wanting.lock().unwrap_or_else(|p| p.into_inner()));
        for stream in wanting.into_iter().filter(|_| run) {
            let mut stream = stream.lock().unwrap_or_else(|p| p.into_inner());
            let mut counted = |dir: u64, fd: BorrowedFd<'_>, name: &[u8]| {
                let entry = look_up(dir, fd, name);
                names += u64::from(entry.is_some());
                entry
            };
            // An error is met again, and answered, by the next READDIR.
            batches += u64::from(stream.read_ahead(&mut counted));
            stream.orphans.drain(..).for_each(&mut *forget);
        }
        (batches, names)
    }

    /// Opens a descriptor for `handle`, the guest's open of the directory at
    /// `host_path` whose identity is `(dev, ino)`. Returns whether READDIR on
    /// the handle now takes the fast path.
    pub fn open(&self, handle: u64, inode: u64, host_path: &Path, id: (u64, u64)) -> bool {
        let Some(file) = self.dir(host_path, id) else {
            return false;
        };
        self.lock().insert(
            handle,
            Arc::new(Mutex::new(Stream::new(file, inode, self.look_ahead))),
        );
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

    /// Forgets `handle` (RELEASEDIR), and through `forget` the entries
    /// looked up ahead that its listing never sent.
    pub fn close(&self, handle: u64, forget: &mut dyn FnMut(u64)) {
        if let Some(stream) = self.lock().remove(&handle) {
            let orphans = stream.lock().unwrap_or_else(|p| p.into_inner()).close();
            orphans.into_iter().for_each(forget);
        }
    }

    /// How many handles take the fast path (for tests).
    #[cfg(test)]
    pub fn open_handles(&self) -> usize {
        self.lock().len()
    }

    /// Answers READDIR (READDIRPLUS if `plus`) on `handle` from `offset`,
    /// or `None` when the handle has no descriptor of ours. `add_entry` gets
    /// each name with its directory and the entry looked up ahead for it, if
    /// any (dir_stream.rs); `forget` gives back entries looked up ahead that
    /// no request will send.
    pub fn read(
        &self,
        handle: u64,
        size: u32,
        offset: u64,
        plus: bool,
        add_entry: &mut AddEntry<'_>,
        forget: &mut dyn FnMut(u64),
    ) -> Option<io::Result<()>> {
        let dir = self.lock().get(&handle).cloned()?;
        let mut stream = dir.lock().unwrap_or_else(|p| p.into_inner());
        let res = stream.read(size, offset, plus, add_entry);
        stream.orphans.drain(..).for_each(&mut *forget);
        if self.prefetch && stream.wants_ahead() {
            drop(stream);
            self.wanting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(dir);
            self.any_wanting.store(true, Ordering::Release);
        }
        Some(res)
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
