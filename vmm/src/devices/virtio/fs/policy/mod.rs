//! `PolicyFs`: the `FileSystem` the device serves, wrapped around PassthroughFs.
//!
//! For a workspace share it only delegates, creating files as the VMM's own user (see
//! "uid/gid mapping" in docs/architecture.md), and refuses what would reach past the share
//! or plant privileges on the host: device nodes, set-ID bits, file capabilities. For the
//! system-root share it is the guard: read-only,
//! only the allowlisted names at the root, secrets masked, and only inodes the guest was
//! given may be named.

use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

use super::create_lookup::{FOPEN_HUTCH_EXISTS, FUSE_OPEN_HUTCH_LOOKUP};
use super::dirs::{DirStreams, HostPath};
use super::inodes::IssuedInodes;
use super::levers::{Levers, SETTLED};
use super::openfiles::{Access, OpenFiles, Released};
use super::secrets::{file_id, FileId, MaskedFiles};
use super::tmpfiles::{is_tmp, TmpFiles};
use super::wb_coherent;
use super::xattr_hint::{self, FUSE_ATTR_HUTCH_NO_XATTR, FUSE_ATTR_HUTCH_XATTR_KNOWN};

mod filesystem;

/// The only names that exist at the root of the system-root share.
pub const ROOT_ALLOWLIST: &[&CStr] = &[
    c"usr", c"bin", c"sbin", c"lib", c"lib32", c"lib64", c"libx32", c"etc", c"opt",
];

/// Open flags that would let the guest change a file.
const WRITE_OPEN_FLAGS: i32 = libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT;

/// The extended attribute that gives a program file capabilities when it is run: as
/// dangerous on the host as a set-user-ID bit.
const FILE_CAPS_XATTR: &CStr = c"security.capability";

/// FUSE_INIT flags hutch asks for on top of PassthroughFs's own:
/// - ASYNC_READ: the guest may have several reads of a file in flight;
/// - PARALLEL_DIROPS: lookups and readdirs in one directory run concurrently;
/// - BIG_WRITES and MAX_PAGES: requests up to 1 MiB instead of 4 KiB;
/// - AUTO_INVAL_DATA: the guest drops cached pages when a file's mtime or
///   size changed on the host (coherence with host edits).
const EXTRA_INIT_FLAGS: FsOptions = FsOptions::ASYNC_READ
    .union(FsOptions::PARALLEL_DIROPS)
    .union(FsOptions::BIG_WRITES)
    .union(FsOptions::MAX_PAGES)
    .union(FsOptions::AUTO_INVAL_DATA);

/// How long the guest caches a name the read-only root does not have.
const NEGATIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// "No such entry" for as long as the root caches names.
fn negative_entry() -> Entry {
    negative_entry_for(NEGATIVE_TIMEOUT)
}

/// "No such entry", with a lifetime: a FUSE entry with node id 0.
fn negative_entry_for(timeout: std::time::Duration) -> Entry {
    Entry {
        inode: 0,
        generation: 0,
        // SAFETY: `stat64` is a plain C struct of integers; all zeroes is valid.
        attr: unsafe { std::mem::zeroed() },
        attr_flags: 0,
        attr_timeout: std::time::Duration::ZERO,
        entry_timeout: timeout,
    }
}

/// `mode` without set-user-ID, and without set-group-ID except on directories
/// (where it only makes new entries inherit the group): a guest that runs as
/// root must not leave set-ID programs on the host.
fn safe_mode(mode: u32, is_dir: bool) -> u32 {
    let strip = if is_dir {
        libc::S_ISUID
    } else {
        libc::S_ISUID | libc::S_ISGID
    };
    mode & !strip
}

/// `flags` without O_NOATIME. Guest opens (its exec, for one) can carry it, and the host
/// refuses it (EPERM) on files the VMM does not own: every program in the root view when
/// hutch is not root. READ and WRITE repeat the open flags, and PassthroughFs re-applies
/// them to the file with F_SETFL, so they lose it too.
fn without_noatime(flags: u32) -> u32 {
    flags & !(libc::O_NOATIME as u32)
}

/// Whether `st`'s mtime is at least [`SETTLED`] in the past (see levers.rs).
fn settled(st: &stat64) -> bool {
    let mtime = std::time::UNIX_EPOCH
        + Duration::new(
            st.st_mtime.max(0) as u64,
            st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        );
    std::time::SystemTime::now()
        .duration_since(mtime)
        .is_ok_and(|age| age >= SETTLED)
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// The system-root share's restrictions.
#[derive(Debug)]
struct Restrictions {
    masked: MaskedFiles,
    issued: IssuedInodes,
    /// Host identity of the share's root directory.
    root: FileId,
}

impl Restrictions {
    fn check(&self, inode: u64) -> io::Result<()> {
        if self.issued.contains(inode) {
            Ok(())
        } else {
            Err(err(libc::EBADF))
        }
    }

    /// Host identity of a directory the guest names.
    fn dir_id(&self, inode: u64) -> Option<FileId> {
        if inode == ROOT_ID {
            Some(self.root)
        } else {
            self.issued.identity(inode)
        }
    }
}

/// A `FileSystem` that applies a share's policy and delegates everything else to `F`.
#[derive(Debug)]
pub struct PolicyFs<F> {
    inner: F,
    squash_creds: bool,
    restrict: Option<Restrictions>,
    levers: Levers,
    dirs: Option<DirStreams>,
    /// Unnamed files (O_TMPFILE) the guest holds; workspace with DirStreams only.
    tmp: TmpFiles,
    /// The handles serving a guest that sends no OPEN (lever `no_open`).
    open_files: OpenFiles,
    /// Whether entries say if a file has xattrs (xattr_hint.rs): set when
    /// INIT grants it.
    xattr_hint: AtomicBool,
}

impl<F> PolicyFs<F> {
    /// Serves `inner` as is (workspace share). With `squash_creds`, files are created as the
    /// VMM's own user instead of switching to the guest caller's uid/gid (which only root may
    /// do, and which would leave files owned by other host users).
    pub fn passthrough(inner: F, squash_creds: bool) -> Self {
        Self {
            inner,
            squash_creds,
            restrict: None,
            levers: Levers::default(),
            dirs: None,
            tmp: TmpFiles::default(),
            open_files: OpenFiles::default(),
            xattr_hint: AtomicBool::new(false),
        }
    }

    /// Serves `inner`, a PassthroughFs on `source`, as the guest's read-only system root.
    /// Scans `source` for the secrets to mask.
    pub fn system_root(inner: F, source: &Path) -> io::Result<Self> {
        let meta = fs::metadata(source)?;
        Ok(Self {
            inner,
            squash_creds: false,
            restrict: Some(Restrictions {
                masked: MaskedFiles::scan(source),
                issued: IssuedInodes::default(),
                root: (meta.dev(), meta.ino()),
            }),
            levers: Levers::default(),
            dirs: None,
            tmp: TmpFiles::default(),
            open_files: OpenFiles::default(),
            xattr_hint: AtomicBool::new(false),
        })
    }

    /// From now on, workspace entries say whether a file has xattrs
    /// (xattr_hint.rs): the guest's INIT asked for it and it was granted.
    pub fn grant_xattr_hint(&self) {
        if self.restrict.is_none() && self.levers.xattr_hint {
            self.xattr_hint.store(true, Ordering::Relaxed);
        }
    }

    /// Applies the workspace levers (FLUSH answered or not, negative
    /// entries); the system root keeps its own fixed caching.
    pub fn with_levers(mut self, levers: Levers) -> Self {
        self.levers = levers;
        self
    }

    /// Answers plain READDIR on the workspace from descriptors of its own
    /// (see dirs.rs); the system root keeps its filtered listing.
    pub fn with_dir_streams(mut self, dirs: DirStreams) -> Self {
        if self.restrict.is_none() {
            self.dirs = Some(dirs);
        }
        self
    }

    /// How many directory handles take the fast READDIR path.
    #[cfg(test)]
    pub fn fast_dir_handles(&self) -> usize {
        self.dirs.as_ref().map_or(0, DirStreams::open_handles)
    }

    /// How many unnamed (O_TMPFILE) files the guest holds.
    #[cfg(test)]
    pub fn tmp_files(&self) -> usize {
        self.tmp.len()
    }

    /// How many inodes have handles cached for a guest that sends no OPEN.
    #[cfg(test)]
    pub fn cached_open_files(&self) -> usize {
        self.open_files.len()
    }

    /// How many secret files the restricted view masks by identity (0 for a workspace).
    pub fn masked_files(&self) -> usize {
        self.restrict.as_ref().map_or(0, |r| r.masked.len())
    }

    /// The wrapped file system.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// Whether this is the restricted (system-root) view.
    pub fn is_restricted(&self) -> bool {
        self.restrict.is_some()
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> PolicyFs<F> {
    /// Reads ahead in the big listings that asked for it (dir_stream.rs);
    /// for a worker whose answers are out. `run` false drops the requests
    /// instead: a worker that cannot tell the guest first reads no further.
    /// Returns the batches read and the names looked up.
    pub fn read_ahead(&self, run: bool) -> (u64, u64) {
        let Some(dirs) = &self.dirs else {
            return (0, 0);
        };
        let ctx = Context::new();
        dirs.read_ahead(
            run,
            // Any failure is left to the request, which answers it.
            &mut |dir, dir_fd, name| self.plus_lookup(&ctx, dir, dir_fd, name).ok(),
            &mut |ino| self.inner.forget(&ctx, ino, 1),
        )
    }

    /// A READDIRPLUS entry for `name` in `dir`, whose descriptor is
    /// `dir_fd`: the lookup with its xattr mark. For the request that sends
    /// it, or ahead of that request (dir_stream.rs).
    fn plus_lookup(
        &self,
        ctx: &Context,
        dir: u64,
        dir_fd: BorrowedFd<'_>,
        name: &[u8],
    ) -> io::Result<Entry> {
        let name = std::ffi::CString::new(name).map_err(|_| err(libc::EIO))?;
        let entry = self.inner.lookup(ctx, dir, &name)?;
        Ok(self.xattr_hint(ctx, entry, Some((dir_fd, &name))))
    }

    /// Fails with EBADF for inodes the guest was never given (restricted view only).
    fn check(&self, inode: u64) -> io::Result<()> {
        match &self.restrict {
            Some(r) => r.check(inode),
            None => Ok(()),
        }
    }

    /// Whether OPEN is answered ENOSYS so that the guest stops sending OPEN
    /// and RELEASE (workspace, lever `no_open`; the read-only root gets the
    /// same from PassthroughFs itself).
    fn zero_open(&self) -> bool {
        self.restrict.is_none() && self.levers.no_open
    }

    /// The inner handle that serves a request the guest sent on `inode` with
    /// `handle`: the guest's own, or (handle 0, zero-message open) one cached
    /// for the inode, opened here on first use (openfiles.rs).
    fn file_handle(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        access: Access,
    ) -> io::Result<u64> {
        if handle != 0 || !self.zero_open() {
            return Ok(handle);
        }
        if let Some(h) = self.open_files.get(inode, access) {
            return Ok(h);
        }
        self.not_a_device(ctx, inode)?;
        let mut flags = match access {
            Access::Read => libc::O_RDONLY,
            Access::Write => libc::O_RDWR,
        } as u32;
        let mut opened = self.retry_out_of_fds(ctx, || self.inner.open(ctx, inode, flags, 0));
        if access == Access::Write
            && matches!(&opened, Err(e) if e.raw_os_error() == Some(libc::EACCES))
        {
            // A write-only file (mode 0200): the guest's kernel allowed the write.
            flags = libc::O_WRONLY as u32;
            opened = self.retry_out_of_fds(ctx, || self.inner.open(ctx, inode, flags, 0));
        }
        let (Some(h), _, _) = opened? else {
            return Err(err(libc::EBADF));
        };
        let (chosen, released) = self.open_files.adopt(inode, h, flags, false, Some(access));
        self.release_all(ctx, released);
        chosen.ok_or_else(|| err(libc::EBADF))
    }

    /// A cached handle of `inode` for FSYNC or LSEEK, which any access mode allows.
    fn any_handle(&self, ctx: &Context, inode: u64, handle: u64) -> io::Result<u64> {
        if handle != 0 || !self.zero_open() {
            return Ok(handle);
        }
        match self.open_files.get(inode, Access::Write) {
            Some(h) => Ok(h),
            None => self.file_handle(ctx, inode, handle, Access::Read),
        }
    }

    /// Gives `released` handles back to the inner file system.
    fn release_all(&self, ctx: &Context, released: Released) {
        for (inode, h) in released {
            if let Err(e) = self.inner.release(ctx, inode, 0, h, false, false, None) {
                log::debug!("virtio-fs: releasing cached handle {h} of inode {inode}: {e}");
            }
        }
    }

    /// After FORGETs: gives back the cached handles of those inodes. The
    /// guest forgets an inode when it evicts it, with all its lookups at
    /// once; were one still in use, its next request would open it again.
    fn drop_forgotten(&self, ctx: &Context, inodes: &[u64]) {
        for &inode in inodes {
            let released = self.open_files.take(inode);
            self.release_all(ctx, released);
        }
    }

    /// Runs `open` once more after giving every cached handle back, if it
    /// failed for want of descriptors.
    fn retry_out_of_fds<T>(
        &self,
        ctx: &Context,
        mut open: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        match open() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let released = self.open_files.drain();
                if released.is_empty() {
                    return Err(e);
                }
                log::debug!(
                    "virtio-fs: out of descriptors, giving back {} cached handles",
                    released.len()
                );
                self.release_all(ctx, released);
                open()
            }
            other => other,
        }
    }

    /// The open flags a READ or WRITE carries, as the host descriptor gets
    /// them (PassthroughFs applies them with F_SETFL): without O_NOATIME,
    /// and, for a cached descriptor, without O_DIRECT (the guest's direct
    /// I/O bypasses its own cache; the host's is still used, as it is for
    /// descriptors PassthroughFs opens, which drop O_DIRECT).
    fn request_flags(&self, flags: u32) -> u32 {
        let flags = without_noatime(flags);
        if self.zero_open() {
            flags & !(libc::O_DIRECT as u32)
        } else {
            flags
        }
    }

    /// Fails with EROFS in the restricted view.
    fn writable(&self) -> io::Result<()> {
        if self.restrict.is_some() {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// The context creating calls run with.
    fn creds(&self, ctx: &Context) -> Context {
        if self.squash_creds {
            Context {
                uid: 0,
                gid: 0,
                ..*ctx
            }
        } else {
            *ctx
        }
    }

    /// Refuses to open host device nodes: a guest must never reach a host
    /// disk or terminal through a node that appears in a share.
    fn not_a_device(&self, ctx: &Context, inode: u64) -> io::Result<()> {
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFCHR | libc::S_IFBLK => Err(err(libc::EACCES)),
            _ => Ok(()),
        }
    }

    /// Hands `entry` (one inner lookup count) to the guest, unless it is a secret.
    fn admit(&self, ctx: &Context, r: &Restrictions, entry: Entry) -> io::Result<Entry> {
        if r.masked.contains(&entry.attr) {
            self.inner.forget(ctx, entry.inode, 1);
            return Err(err(libc::ENOENT));
        }
        r.issued.issue(entry.inode, file_id(&entry.attr));
        Ok(entry)
    }

    /// Lists the root of the restricted view: the allowlisted names that exist, in allowlist
    /// order, entry `i` having offset `i + 1`. `emit` owns the inner lookup count of each entry
    /// it is given (it must forget or issue it); `Ok(0)` from it means the buffer is full.
    fn list_root(
        &self,
        ctx: &Context,
        r: &Restrictions,
        offset: u64,
        emit: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut added = false;
        for (i, name) in ROOT_ALLOWLIST.iter().enumerate().skip(start) {
            let Ok(entry) = self.inner.lookup(ctx, ROOT_ID, name) else {
                continue;
            };
            if r.masked.contains(&entry.attr) {
                self.inner.forget(ctx, entry.inode, 1);
                continue;
            }
            let dirent = DirEntry {
                ino: entry.attr.st_ino,
                offset: i as u64 + 1,
                type_: (entry.attr.st_mode & libc::S_IFMT) >> 12,
                name: name.to_bytes(),
            };
            match emit(dirent, entry) {
                Ok(0) => break,
                Ok(_) => added = true,
                Err(e) if !added => return Err(e),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// `entry` with its attribute flags saying whether the host file has
    /// any extended attribute, once granted (xattr_hint.rs). Not for
    /// symlinks, which the host call would follow. `at` is the entry's
    /// directory and name where the caller holds them (a READDIRPLUS
    /// listing): one `listxattrat` then, instead of a walk through procfs.
    fn xattr_hint(
        &self,
        ctx: &Context,
        mut entry: Entry,
        at: Option<(BorrowedFd<'_>, &CStr)>,
    ) -> Entry {
        if entry.inode == 0
            || is_tmp(entry.inode)
            || entry.attr.st_mode & libc::S_IFMT == libc::S_IFLNK
            || !self.xattr_hint.load(Ordering::Relaxed)
        {
            return entry;
        }
        let len = match at.and_then(|(dir, name)| xattr_hint::names_len_at(dir, name)) {
            Some(len) => len,
            None => match self.inner.listxattr(ctx, entry.inode, 0) {
                Ok(ListxattrReply::Count(n)) => Ok(n as usize),
                Ok(_) => return entry,
                Err(e) => Err(e),
            },
        };
        match len {
            Ok(0) => entry.attr_flags |= FUSE_ATTR_HUTCH_XATTR_KNOWN | FUSE_ATTR_HUTCH_NO_XATTR,
            Ok(_) => entry.attr_flags |= FUSE_ATTR_HUTCH_XATTR_KNOWN,
            Err(_) => {}
        }
        entry
    }

    /// One READDIRPLUS entry of the workspace from our own directory stream
    /// (dirs.rs): "." and ".." go out as names only (node id 0, which the
    /// guest never links), every other name with what a LOOKUP answers. A
    /// name removed on the host since it was listed is left out.
    fn plus_entry(
        &self,
        ctx: &Context,
        dir: u64,
        dirent: DirEntry,
        dir_fd: BorrowedFd<'_>,
        ahead: Option<Entry>,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if dirent.name == b"." || dirent.name == b".." {
            let mut entry = negative_entry_for(Duration::ZERO);
            entry.attr.st_ino = dirent.ino;
            entry.attr.st_mode = libc::S_IFDIR;
            return add_entry(dirent, entry);
        }
        let entry = match ahead {
            Some(entry) => entry,
            None => match self.plus_lookup(ctx, dir, dir_fd, dirent.name) {
                Ok(entry) => entry,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(1),
                Err(e) => return Err(e),
            },
        };
        let ino = entry.inode;
        let res = add_entry(dirent, entry);
        // Not sent (the reply is full) or failed: the guest never got it.
        if !matches!(res, Ok(n) if n > 0) {
            self.inner.forget(ctx, ino, 1);
        }
        res
    }

    /// RENAME for a guest that did not look the target up
    /// (rename_report.rs): renames, and returns the node id of the inode the
    /// rename replaced, 0 if none. The id comes from a lookup of the target
    /// just before the rename (given back right after), so a host change in
    /// between can make it stale; the guest only marks that inode's
    /// attributes stale, which is harmless for any inode.
    pub fn rename_reporting(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<u64> {
        self.writable()?;
        let replaced = if flags & libc::RENAME_NOREPLACE != 0 {
            None
        } else {
            self.inner
                .lookup(ctx, newdir, newname)
                .ok()
                .map(|entry| entry.inode)
                .filter(|&id| id != 0)
        };
        let renamed = self
            .inner
            .rename(ctx, olddir, oldname, newdir, newname, flags);
        if let Some(id) = replaced {
            self.inner.forget(ctx, id, 1);
        }
        renamed.map(|()| replaced.unwrap_or(0))
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64> + HostPath> PolicyFs<F> {
    /// A host descriptor of the workspace directory `inode`, opened beneath
    /// the share's root and identity-checked (dirs.rs).
    fn host_dir(&self, ctx: &Context, inode: u64) -> io::Result<fs::File> {
        let dirs = self.dirs.as_ref().ok_or_else(|| err(libc::ENOSYS))?;
        let path = self.inner.host_path(inode)?;
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        dirs.dir(&path, (st.st_dev, st.st_ino))
            .ok_or_else(|| err(libc::ENOENT))
    }

    /// FUSE_TMPFILE (fuse-backend-rs has no such call; the device routes it
    /// here): an unnamed file in the directory `parent`, see tmpfiles.rs.
    /// Returns its entry and an open handle. ENOSYS where unsupported makes
    /// the guest answer EOPNOTSUPP from then on.
    pub fn tmpfile(&self, ctx: &Context, parent: u64, args: CreateIn) -> io::Result<(Entry, u64)> {
        self.writable()?;
        if is_tmp(parent) {
            return Err(err(libc::ENOTDIR));
        }
        let dir = self.host_dir(ctx, parent)?;
        let mode = safe_mode(args.mode & !args.umask, false);
        self.tmp.create(&dir, args.flags, mode, self.levers.timeout)
    }

    /// CREATE as the guest asked it (its mode already made safe).
    fn create_file(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let creds = self.creds(ctx);
        // Only a zero-message-open table can be out of descriptors to give back.
        let (entry, handle, opts, passthrough) =
            self.retry_out_of_fds(ctx, || self.inner.create(&creds, parent, name, args))?;
        if !self.zero_open() {
            return Ok((entry, handle, opts, passthrough));
        }
        // The guest gets handle 0 and will not release it; the descriptor
        // CREATE opened serves the new file (openfiles.rs).
        if let Some(h) = handle {
            let (_, released) = self
                .open_files
                .adopt(entry.inode, h, args.flags, true, None);
            self.release_all(ctx, released);
        }
        Ok((entry, None, opts, passthrough))
    }
}
