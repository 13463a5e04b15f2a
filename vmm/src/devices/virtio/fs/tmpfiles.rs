//! Unnamed files on the workspace: FUSE_TMPFILE, the guest's `open(dir, O_TMPFILE)`.
//!
//! fuse-backend-rs does not know the opcode, so the device answers it itself
//! (`FsDevice::handle_chain` → `PolicyFs::tmpfile`): the host file is opened with
//! O_TMPFILE in the parent directory (a descriptor opened beneath the share's root,
//! identity-checked, see dirs.rs), and the guest gets a node id and a file handle from a
//! range PassthroughFs never issues (bit 63 set; its inode numbers stop at 56 bits and
//! its handles count up from 1). `PolicyFs` serves every request on those ids from the
//! one host descriptor held here. LINK gives the file a name (`linkat` of
//! `/proc/self/fd/N`, which works for an O_TMPFILE file) and answers with the same node,
//! so the guest keeps one inode (and one page cache) for it; a later LOOKUP of the name
//! gets an ordinary PassthroughFs inode. The file is gone when the guest has forgotten
//! the node and released every handle, unless it was linked.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Entry, GetxattrReply, ListxattrReply, ZeroCopyReader, ZeroCopyWriter,
};

/// The bit that marks node ids and handles of unnamed files.
pub const TMP_BIT: u64 = 1 << 63;

/// Whether `id` (a node id or a handle) belongs to an unnamed file.
pub fn is_tmp(id: u64) -> bool {
    id & TMP_BIT != 0
}

/// One unnamed file: the host descriptor (always read-write; the guest's
/// kernel checks each open's access mode itself).
#[derive(Debug)]
struct Node {
    file: File,
}

impl Node {
    /// The descriptor as the `&mut File` fuse-backend-rs's copy helpers take.
    fn file_mut(&self) -> ManuallyDrop<File> {
        // SAFETY: the descriptor stays open while `self` (held by the caller
        // through an Arc) lives, and ManuallyDrop never closes this second
        // owner. Only positioned reads and writes go through it, so sharing
        // the open file description is harmless.
        ManuallyDrop::new(unsafe { File::from_raw_fd(self.file.as_raw_fd()) })
    }
}

/// The node ids and handles of the unnamed files the guest holds.
#[derive(Debug, Default)]
pub struct TmpFiles {
    next: AtomicU64,
    /// Node id → the file and the guest's lookup count.
    nodes: Mutex<HashMap<u64, (Arc<Node>, u64)>>,
    /// Handle → the file.
    handles: Mutex<HashMap<u64, Arc<Node>>>,
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fstat(file: &File) -> io::Result<stat64> {
    // SAFETY: `stat64` is a plain C struct of integers; all zeroes is valid.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: fstat64 writes one `stat64` into `st`; the result is checked.
    if unsafe { libc::fstat64(file.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl TmpFiles {
    /// How many unnamed files the guest holds (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.nodes).len()
    }

    fn id(&self) -> u64 {
        TMP_BIT | (self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn node(&self, inode: u64) -> io::Result<Arc<Node>> {
        lock(&self.nodes)
            .get(&inode)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| err(libc::EBADF))
    }

    /// The file behind `handle`, or behind the node `inode` when the handle
    /// is 0 (a guest that stopped sending OPEN, see openfiles.rs).
    fn handle(&self, inode: u64, handle: u64) -> io::Result<Arc<Node>> {
        if handle == 0 {
            return self.node(inode);
        }
        lock(&self.handles)
            .get(&handle)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    /// Opens an unnamed file with `mode` in `dir`. `flags` are the guest's open
    /// flags; only O_EXCL (never linkable) is carried over. Returns the entry
    /// (one lookup) and an open handle.
    pub fn create(
        &self,
        dir: &File,
        flags: u32,
        mode: u32,
        timeout: Duration,
    ) -> io::Result<(Entry, u64)> {
        let mut oflags = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC;
        oflags |= flags as i32 & libc::O_EXCL;
        // SAFETY: a NUL-terminated constant path; the descriptor is checked.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), c".".as_ptr(), oflags, mode & 0o7777) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let node = Arc::new(Node { file });
        let attr = fstat(&node.file)?;
        let (inode, handle) = (self.id(), self.id());
        lock(&self.nodes).insert(inode, (node.clone(), 1));
        lock(&self.handles).insert(handle, node);
        let entry = Entry {
            inode,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: timeout,
            entry_timeout: timeout,
        };
        Ok((entry, handle))
    }

    /// Drops `count` of the guest's lookups of `inode`. At none, the node
    /// goes, with any handle still on it: a guest that sends no RELEASE (see
    /// openfiles.rs) never gives back the handle FUSE_TMPFILE opened, and
    /// one that does has released its handles before the inode is evicted.
    pub fn forget(&self, inode: u64, count: u64) {
        let mut nodes = lock(&self.nodes);
        if let Some((node, lookups)) = nodes.get_mut(&inode) {
            *lookups = lookups.saturating_sub(count);
            if *lookups == 0 {
                let node = node.clone();
                nodes.remove(&inode);
                drop(nodes);
                lock(&self.handles).retain(|_, n| !Arc::ptr_eq(n, &node));
            }
        }
    }

    /// A further open of `inode` (the guest opening `/proc/PID/fd/N`).
    pub fn open(&self, inode: u64) -> io::Result<u64> {
        let node = self.node(inode)?;
        let handle = self.id();
        lock(&self.handles).insert(handle, node);
        Ok(handle)
    }

    /// Frees `handle`.
    pub fn release(&self, handle: u64) {
        lock(&self.handles).remove(&handle);
    }

    /// The attributes of `inode`.
    pub fn getattr(&self, inode: u64) -> io::Result<stat64> {
        fstat(&self.node(inode)?.file)
    }

    /// Applies the `valid` parts of `attr` (mode already made safe by the caller).
    pub fn setattr(&self, inode: u64, attr: &stat64, valid: SetattrValid) -> io::Result<stat64> {
        let node = self.node(inode)?;
        let fd = node.file.as_raw_fd();
        if valid.contains(SetattrValid::MODE) {
            // SAFETY: fchmod on a descriptor we own; the result is checked.
            check(unsafe { libc::fchmod(fd, attr.st_mode & 0o7777) })?;
        }
        if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
            let uid = if valid.contains(SetattrValid::UID) {
                attr.st_uid
            } else {
                u32::MAX
            };
            let gid = if valid.contains(SetattrValid::GID) {
                attr.st_gid
            } else {
                u32::MAX
            };
            // SAFETY: fchown on a descriptor we own; -1 leaves an id as it is.
            check(unsafe { libc::fchown(fd, uid, gid) })?;
        }
        if valid.contains(SetattrValid::SIZE) {
            // SAFETY: ftruncate on a descriptor we own; the result is checked.
            check(unsafe { libc::ftruncate(fd, attr.st_size) })?;
        }
        if valid.intersects(SetattrValid::ATIME | SetattrValid::MTIME) {
            let time = |set: SetattrValid, now: SetattrValid, sec, nsec| {
                if valid.contains(now) {
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_NOW,
                    }
                } else if valid.contains(set) {
                    libc::timespec {
                        tv_sec: sec,
                        tv_nsec: nsec,
                    }
                } else {
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    }
                }
            };
            let times = [
                time(
                    SetattrValid::ATIME,
                    SetattrValid::ATIME_NOW,
                    attr.st_atime,
                    attr.st_atime_nsec,
                ),
                time(
                    SetattrValid::MTIME,
                    SetattrValid::MTIME_NOW,
                    attr.st_mtime,
                    attr.st_mtime_nsec,
                ),
            ];
            // SAFETY: futimens reads two timespecs; the result is checked.
            check(unsafe { libc::futimens(fd, times.as_ptr()) })?;
        }
        fstat(&node.file)
    }

    /// READ on `handle`.
    pub fn read(
        &self,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        let node = self.handle(inode, handle)?;
        let mut file = node.file_mut();
        w.write_from(&mut *file, size as usize, offset)
    }

    /// WRITE on `handle`.
    pub fn write(
        &self,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        let node = self.handle(inode, handle)?;
        let mut file = node.file_mut();
        r.read_to(&mut *file, size as usize, offset)
    }

    /// FSYNC on `handle`.
    pub fn fsync(&self, inode: u64, handle: u64, datasync: bool) -> io::Result<()> {
        let node = self.handle(inode, handle)?;
        if datasync {
            node.file.sync_data()
        } else {
            node.file.sync_all()
        }
    }

    /// FALLOCATE on `handle`.
    pub fn fallocate(
        &self,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let node = self.handle(inode, handle)?;
        let (offset, length) = (
            i64::try_from(offset).map_err(|_| err(libc::EINVAL))?,
            i64::try_from(length).map_err(|_| err(libc::EINVAL))?,
        );
        // SAFETY: fallocate on a descriptor we own; the result is checked.
        check(unsafe { libc::fallocate64(node.file.as_raw_fd(), mode as i32, offset, length) })
    }

    /// LSEEK (SEEK_DATA / SEEK_HOLE) on `handle`.
    pub fn lseek(&self, inode: u64, handle: u64, offset: u64, whence: u32) -> io::Result<u64> {
        let node = self.handle(inode, handle)?;
        let offset = i64::try_from(offset).map_err(|_| err(libc::EINVAL))?;
        // SAFETY: lseek on a descriptor we own; the result is checked.
        let at = unsafe { libc::lseek64(node.file.as_raw_fd(), offset, whence as i32) };
        u64::try_from(at).map_err(|_| io::Error::last_os_error())
    }

    /// Gives `inode` the name `name` in `dir` (LINK). The entry is the same
    /// node (one more lookup): the guest keeps one inode for the file, so
    /// what it wrote through the unnamed descriptor is what it reads through
    /// the name. A later LOOKUP of the name gets PassthroughFs's inode.
    pub fn link(
        &self,
        inode: u64,
        dir: &File,
        name: &CStr,
        timeout: Duration,
    ) -> io::Result<Entry> {
        let bytes = name.to_bytes();
        if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
            return Err(err(libc::EINVAL));
        }
        let node = self.node(inode)?;
        let proc_path = CString::new(format!("/proc/self/fd/{}", node.file.as_raw_fd()))
            .map_err(|_| err(libc::EINVAL))?;
        // SAFETY: both paths are NUL-terminated; the result is checked.
        check(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc_path.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })?;
        let attr = fstat(&node.file)?;
        match lock(&self.nodes).get_mut(&inode) {
            Some((_, lookups)) => *lookups += 1,
            None => return Err(err(libc::EBADF)),
        }
        Ok(Entry {
            inode,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: timeout,
            entry_timeout: timeout,
        })
    }

    /// GETXATTR: an unnamed file has no extended attributes.
    pub fn getxattr(&self, inode: u64) -> io::Result<GetxattrReply> {
        self.node(inode)?;
        Err(err(libc::ENODATA))
    }

    /// LISTXATTR: the empty list.
    pub fn listxattr(&self, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.node(inode)?;
        Ok(if size == 0 {
            ListxattrReply::Count(0)
        } else {
            ListxattrReply::Names(Vec::new())
        })
    }

    /// Whether `inode` is held (ACCESS; the guest's kernel checks the mode).
    pub fn exists(&self, inode: u64) -> io::Result<()> {
        self.node(inode).map(|_| ())
    }
}
