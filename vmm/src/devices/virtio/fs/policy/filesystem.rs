//! `PolicyFs`'s `FileSystem` implementation: each FUSE request the server
//! decodes, checked against the share's rules (see the parent module) and
//! handed to PassthroughFs, the zero-message-open handles, the tmpfile nodes
//! or hutch's own READDIR.

use super::*;

#[allow(clippy::too_many_arguments)]
impl<F: FileSystem<Inode = u64, Handle = u64> + HostPath> FileSystem for PolicyFs<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // PassthroughFs asks for little; the server enables only flags both
        // sides want. See docs/fs-levers.md for what each one is worth.
        let mut flags = self.inner.init(capable)? | (capable & EXTRA_INIT_FLAGS);
        if self.restrict.is_some() {
            // The read-only root: the guest keeps symlink targets in its page
            // cache (every exec resolves /bin, /lib64 and library links).
            flags |= capable & FsOptions::CACHE_SYMLINKS;
            if self.levers.root_poll {
                flags.remove(FsOptions::ASYNC_READ);
            }
        } else {
            // The workspace's levers (the root keeps both flags).
            if !self.levers.async_read {
                flags.remove(FsOptions::ASYNC_READ);
            }
            if !self.levers.parallel_dirops {
                flags.remove(FsOptions::PARALLEL_DIROPS);
            }
            if self.levers.always_plus {
                flags.remove(FsOptions::READDIRPLUS_AUTO);
            }
        }
        Ok(flags)
    }

    fn destroy(&self) {
        self.inner.destroy();
        if let Some(r) = &self.restrict {
            r.issued.clear();
        }
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let Some(r) = &self.restrict else {
            return match self.inner.lookup(ctx, parent, name) {
                Ok(entry) => Ok(self.xattr_hint(ctx, entry, None)),
                Err(e) if self.levers.negative && e.raw_os_error() == Some(libc::ENOENT) => {
                    Ok(negative_entry_for(self.levers.timeout))
                }
                Err(e) => Err(e),
            };
        };
        r.check(parent)?;
        if parent == ROOT_ID && !ROOT_ALLOWLIST.contains(&name) {
            return Ok(negative_entry());
        }
        if r.dir_id(parent)
            .is_some_and(|dir| r.masked.hides_name(dir, name.to_bytes()))
        {
            return Ok(negative_entry());
        }
        match self.inner.lookup(ctx, parent, name) {
            Ok(entry) => match self.admit(ctx, r, entry) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(negative_entry()),
                other => other,
            },
            // Misses in the read-only root (every PATH search) are cached by
            // the guest for as long as names are.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(negative_entry()),
            Err(e) => Err(e),
        }
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        if is_tmp(inode) {
            return self.tmp.forget(inode, count);
        }
        let count = match &self.restrict {
            Some(r) => r.issued.forget(inode, count),
            None => count,
        };
        if count > 0 {
            self.inner.forget(ctx, inode, count);
            if self.open_files.holds(inode) {
                self.drop_forgotten(ctx, &[inode]);
            }
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        let requests = match &self.restrict {
            Some(r) => requests
                .into_iter()
                .map(|(inode, count)| (inode, r.issued.forget(inode, count)))
                .filter(|&(_, count)| count > 0)
                .collect(),
            None => {
                let (tmp, named): (Vec<_>, Vec<_>) =
                    requests.into_iter().partition(|&(inode, _)| is_tmp(inode));
                for (inode, count) in tmp {
                    self.tmp.forget(inode, count);
                }
                named
            }
        };
        let held: Vec<u64> = requests
            .iter()
            .map(|&(inode, _)| inode)
            .filter(|&inode| self.open_files.holds(inode))
            .collect();
        self.inner.batch_forget(ctx, requests);
        self.drop_forgotten(ctx, &held);
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        if is_tmp(inode) {
            return Ok((self.tmp.getattr(inode)?, self.levers.timeout));
        }
        self.check(inode)?;
        let handle = handle.filter(|&h| h != 0 || !self.zero_open());
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        let mut attr = attr;
        if is_tmp(inode) {
            attr.st_mode = safe_mode(attr.st_mode, false);
            return Ok((self.tmp.setattr(inode, &attr, valid)?, self.levers.timeout));
        }
        let handle = match handle {
            Some(0) if self.zero_open() => self.open_files.get(inode, Access::Write),
            other => other,
        };
        if valid.contains(SetattrValid::MODE) {
            let (st, _) = self.inner.getattr(ctx, inode, handle)?;
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            attr.st_mode = safe_mode(attr.st_mode, is_dir);
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.check(inode)?;
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.symlink(&self.creds(ctx), linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        // Only regular files, FIFOs and sockets: a device node created by the
        // guest would be a real device on the host.
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            _ => return Err(err(libc::EPERM)),
        }
        self.inner.mknod(
            &self.creds(ctx),
            inode,
            name,
            safe_mode(mode, false),
            rdev,
            umask,
        )
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner
            .mkdir(&self.creds(ctx), parent, name, safe_mode(mode, true), umask)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.writable()?;
        if is_tmp(inode) {
            let dir = self.host_dir(ctx, newparent)?;
            return self.tmp.link(inode, &dir, newname, self.levers.timeout);
        }
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        if self.restrict.is_some() {
            self.check(inode)?;
            let flags = flags as i32;
            if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & WRITE_OPEN_FLAGS != 0 {
                return Err(err(libc::EROFS));
            }
        }
        if self.zero_open() {
            // Zero-message open: see openfiles.rs.
            return Err(err(libc::ENOSYS));
        }
        if is_tmp(inode) {
            return Ok((Some(self.tmp.open(inode)?), OpenOptions::empty(), None));
        }
        self.not_a_device(ctx, inode)?;
        self.inner
            .open(ctx, inode, without_noatime(flags), fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.writable()?;
        let or_lookup = args.fuse_flags & FUSE_OPEN_HUTCH_LOOKUP != 0;
        let args = CreateIn {
            mode: safe_mode(args.mode, false),
            fuse_flags: args.fuse_flags & !FUSE_OPEN_HUTCH_LOOKUP,
            ..args
        };
        if or_lookup && self.levers.create_lookup && args.flags & libc::O_EXCL as u32 == 0 {
            // The guest has not looked the name up (create_lookup.rs): create
            // it exclusively, or answer with the entry of what is there.
            let excl = CreateIn {
                flags: args.flags | libc::O_EXCL as u32,
                ..args
            };
            match self.create_file(ctx, parent, name, excl) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    match self.lookup(ctx, parent, name) {
                        Ok(entry) if entry.inode == 0 => {} // removed in between
                        Ok(entry) if entry.attr.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                            // The guest looks a directory up itself (one alias per directory).
                            self.forget(ctx, entry.inode, 1);
                            return Err(e);
                        }
                        Ok(entry) => {
                            // SAFETY: `OpenOptions` is a plain u32 bit set; the unknown bit
                            // is hutch's private flag, which the server copies into the reply.
                            let exists =
                                unsafe { OpenOptions::from_bits_unchecked(FOPEN_HUTCH_EXISTS) };
                            return Ok((entry, None, exists, None));
                        }
                        Err(l) if l.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(l) => return Err(l),
                    }
                    // Removed in between: create it as asked.
                }
                other => return other.map(|(e, h, o, p)| (self.xattr_hint(ctx, e, None), h, o, p)),
            }
        }
        self.create_file(ctx, parent, name, args)
            .map(|(e, h, o, p)| (self.xattr_hint(ctx, e, None), h, o, p))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        if is_tmp(handle) || is_tmp(inode) {
            return self.tmp.read(inode, handle, w, size, offset);
        }
        self.check(inode)?;
        let handle = self.file_handle(ctx, inode, handle, Access::Read)?;
        let flags = self.request_flags(flags);
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        // The guest's writeback may send the file's mtime along (wb_coherent.rs).
        let mtime = wb_coherent::carried_mtime(fuse_flags, lock_owner);
        let lock_owner = if mtime.is_some() { None } else { lock_owner };
        let written = if is_tmp(handle) || is_tmp(inode) {
            self.tmp.write(inode, handle, r, size, offset)?
        } else {
            let host_handle = self.file_handle(ctx, inode, handle, Access::Write)?;
            self.inner.write(
                ctx,
                inode,
                host_handle,
                r,
                size,
                offset,
                lock_owner,
                delayed_write,
                self.request_flags(flags),
                fuse_flags,
            )?
        };
        if let Some(st) = mtime {
            self.setattr(ctx, inode, st, Some(handle), SetattrValid::MTIME)?;
        }
        Ok(written)
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        if self.restrict.is_some() {
            // Nothing to flush in a read-only view; ENOSYS makes the guest
            // stop sending FLUSH on every close for the whole mount.
            return Err(err(libc::ENOSYS));
        }
        if !self.levers.flush {
            // The workspace's lever: see levers.rs.
            return Err(err(libc::ENOSYS));
        }
        if is_tmp(handle) || is_tmp(inode) || (handle == 0 && self.zero_open()) {
            return Ok(());
        }
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        if is_tmp(handle) || is_tmp(inode) {
            return self.tmp.fsync(inode, handle, datasync);
        }
        self.check(inode)?;
        let handle = self.any_handle(ctx, inode, handle)?;
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        if is_tmp(handle) || is_tmp(inode) {
            return self.tmp.fallocate(inode, handle, mode, offset, length);
        }
        let handle = self.file_handle(ctx, inode, handle, Access::Write)?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        // Only frees a handle the guest opened; never refused, so nothing leaks.
        if handle == 0 && self.zero_open() {
            // A file created before the guest learned that OPEN is not
            // answered: its descriptor is cached per inode (openfiles.rs).
            return Ok(());
        }
        if is_tmp(handle) {
            self.tmp.release(handle);
            return Ok(());
        }
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        if is_tmp(inode) {
            return self.inner.statfs(ctx, ROOT_ID);
        }
        self.check(inode)?;
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        if name == FILE_CAPS_XATTR {
            // `setcap` in the guest would leave a program that gains capabilities when a
            // host user runs it (the VMM runs as root in CI and may set it).
            return Err(err(libc::EPERM));
        }
        if is_tmp(inode) {
            return Err(err(libc::EOPNOTSUPP));
        }
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.check(inode)?;
        if self.restrict.is_some() {
            // The read-only root shows no extended attributes: ENOSYS once
            // and the guest stops asking (it read security.capability at
            // every exec and overlayfs's own attributes at every lookup).
            return Err(err(libc::ENOSYS));
        }
        if is_tmp(inode) {
            return self.tmp.getxattr(inode);
        }
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.check(inode)?;
        if self.restrict.is_some() {
            return Err(err(libc::ENOSYS));
        }
        if is_tmp(inode) {
            return self.tmp.listxattr(inode, size);
        }
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        if is_tmp(inode) {
            return Err(err(libc::EOPNOTSUPP));
        }
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.check(inode)?;
        let (handle, mut opts) = self.inner.opendir(ctx, inode, flags)?;
        if self.restrict.is_some() || (self.dirs.is_none() && !self.levers.cache_dir) {
            // Nothing below needs the directory's attributes.
            return Ok((handle, opts));
        }
        let st = self.inner.getattr(ctx, inode, None).map(|(st, _)| st);
        if let (Some(dirs), Some(h), Ok(st)) = (&self.dirs, handle, &st) {
            if let Ok(path) = self.inner.host_path(inode) {
                dirs.open(h, inode, &path, (st.st_dev, st.st_ino));
            }
        }
        if self.levers.cache_dir && st.is_ok_and(|st| settled(&st)) {
            opts |= OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE;
        }
        Ok((handle, opts))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let Some(r) = &self.restrict else {
            if let Some(done) = self.dirs.as_ref().and_then(|d| {
                d.read(
                    handle,
                    size,
                    offset,
                    false,
                    &mut |dirent, _, ahead| {
                        // Looked up for a READDIRPLUS that did not come.
                        if let Some(e) = ahead {
                            self.inner.forget(ctx, e.inode, 1);
                        }
                        add_entry(dirent)
                    },
                    &mut |ino| self.inner.forget(ctx, ino, 1),
                )
            }) {
                return done;
            }
            return self
                .inner
                .readdir(ctx, inode, handle, size, offset, add_entry);
        };
        r.check(inode)?;
        if inode == ROOT_ID {
            return self.list_root(ctx, r, offset, &mut |dirent, entry| {
                let res = add_entry(dirent);
                self.inner.forget(ctx, entry.inode, 1);
                res
            });
        }
        // PassthroughFs's readdir looks every entry up anyway (for d_ino); going through
        // readdirplus costs the same and gives us the attributes to recognise secrets by.
        let dir = r.dir_id(inode);
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |dirent, entry| {
                if r.masked.hides(dir, dirent.name, &entry.attr) {
                    self.inner.forget(ctx, entry.inode, 1);
                    return Ok(1);
                }
                let res = add_entry(dirent);
                // On Ok(0) PassthroughFs forgets the entry itself.
                if !matches!(res, Ok(0)) {
                    self.inner.forget(ctx, entry.inode, 1);
                }
                res
            })
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let Some(r) = &self.restrict else {
            if let Some(done) = self.dirs.as_ref().and_then(|d| {
                d.read(
                    handle,
                    size,
                    offset,
                    true,
                    &mut |dirent, dir_fd, ahead| {
                        self.plus_entry(ctx, inode, dirent, dir_fd, ahead, add_entry)
                    },
                    &mut |ino| self.inner.forget(ctx, ino, 1),
                )
            }) {
                return done;
            }
            return self
                .inner
                .readdirplus(ctx, inode, handle, size, offset, add_entry);
        };
        r.check(inode)?;
        if inode == ROOT_ID {
            return self.list_root(ctx, r, offset, &mut |dirent, entry| {
                let (ino, id) = (entry.inode, file_id(&entry.attr));
                let res = add_entry(dirent, entry);
                match res {
                    Ok(n) if n > 0 => r.issued.issue(ino, id),
                    _ => self.inner.forget(ctx, ino, 1),
                }
                res
            });
        }
        let dir = r.dir_id(inode);
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |dirent, entry| {
                if r.masked.hides(dir, dirent.name, &entry.attr) {
                    self.inner.forget(ctx, entry.inode, 1);
                    return Ok(1);
                }
                let (ino, id) = (entry.inode, file_id(&entry.attr));
                match add_entry(dirent, entry) {
                    // PassthroughFs forgets the entry itself.
                    Ok(0) => Ok(0),
                    Ok(n) => {
                        r.issued.issue(ino, id);
                        Ok(n)
                    }
                    Err(e) => {
                        self.inner.forget(ctx, ino, 1);
                        Err(e)
                    }
                }
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.check(inode)?;
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        if let Some(dirs) = &self.dirs {
            dirs.close(handle, &mut |ino| self.inner.forget(ctx, ino, 1));
        }
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn setupmapping(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        if self.restrict.is_some() {
            return Err(err(libc::ENOSYS));
        }
        self.inner
            .setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: u64,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        if self.restrict.is_some() {
            return Err(err(libc::ENOSYS));
        }
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if self.restrict.is_some() {
            self.check(inode)?;
            if mask as i32 & libc::W_OK != 0 {
                return Err(err(libc::EROFS));
            }
        }
        if is_tmp(inode) {
            return self.tmp.exists(inode);
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        if is_tmp(handle) || is_tmp(inode) {
            return self.tmp.lseek(inode, handle, offset, whence);
        }
        self.check(inode)?;
        let handle = self.any_handle(ctx, inode, handle)?;
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.check(inode)?;
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.check(inode)?;
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.check(inode)?;
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        if self.restrict.is_some() {
            return Err(err(libc::ENOTTY));
        }
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        self.check(inode)?;
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        khandle: u64,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.check(inode)?;
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
