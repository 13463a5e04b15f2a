//! The system-root policy, calling the `FileSystem` methods directly over a temp tree.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{stat64, CreateIn, FsOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, ZeroCopyReader, ROOT_ID};
use fuse_backend_rs::file_traits::FileReadWriteVolatile;
use fuse_backend_rs::passthrough::PassthroughFs;

use super::passthrough;
use crate::devices::virtio::fs::{Levers, PolicyFs};

type Fs = PolicyFs<PassthroughFs>;

/// A fake host root:
/// usr/bin/tool, usr/lib/, lib -> usr/lib, etc/{passwd, shadow, hard-shadow (hard link),
/// ssh/ssh_host_ed25519_key{,.pub}, ssl/private/key.pem}, home/user/.ssh/id, root/.
fn host_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for d in [
        "usr/bin",
        "usr/lib",
        "etc/ssh",
        "etc/ssl/private",
        "home/user/.ssh",
        "root",
    ] {
        fs::create_dir_all(p.join(d)).unwrap();
    }
    fs::write(p.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::write(p.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(p.join("etc/shadow"), b"root:$6$secret:::::::\n").unwrap();
    fs::hard_link(p.join("etc/shadow"), p.join("etc/hard-shadow")).unwrap();
    fs::write(p.join("etc/ssh/ssh_host_ed25519_key"), b"PRIVATE").unwrap();
    fs::write(
        p.join("etc/ssh/ssh_host_ed25519_key.pub"),
        b"ssh-ed25519 AAAA",
    )
    .unwrap();
    fs::write(p.join("etc/ssl/private/key.pem"), b"PRIVATE").unwrap();
    fs::write(p.join("home/user/.ssh/id"), b"PRIVATE").unwrap();
    symlink("usr/lib", p.join("lib")).unwrap();
    dir
}

fn system_root(root: &Path) -> Fs {
    let fs = PolicyFs::system_root(passthrough(root), root).unwrap();
    fs.init(FsOptions::empty()).unwrap();
    fs
}

fn ctx() -> Context {
    Context::new()
}

fn c(name: &str) -> CString {
    CString::new(name).unwrap()
}

/// A lookup as the guest sees it: a negative entry (node id 0) is ENOENT
/// with a cache lifetime.
fn lookup(fs: &Fs, parent: u64, name: &str) -> io::Result<Entry> {
    match fs.lookup(&ctx(), parent, &c(name))? {
        e if e.inode == 0 => {
            assert!(!e.entry_timeout.is_zero(), "negative entries are cached");
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        }
        e => Ok(e),
    }
}

fn errno<T: std::fmt::Debug>(res: io::Result<T>) -> i32 {
    res.unwrap_err().raw_os_error().unwrap()
}

fn readdir_names(fs: &Fs, dir: u64) -> Vec<String> {
    let (handle, _) = fs.opendir(&ctx(), dir, 0).unwrap();
    let handle = handle.unwrap_or(0);
    let mut names = Vec::new();
    fs.readdir(&ctx(), dir, handle, 8192, 0, &mut |d| {
        names.push(String::from_utf8_lossy(d.name).into_owned());
        Ok(1)
    })
    .unwrap();
    fs.releasedir(&ctx(), dir, 0, handle).unwrap();
    names.sort();
    names
}

/// readdirplus, then forgets every returned entry as the kernel eventually would.
fn readdirplus_names(fs: &Fs, dir: u64) -> Vec<(String, Entry)> {
    let (handle, _) = fs.opendir(&ctx(), dir, 0).unwrap();
    let handle = handle.unwrap_or(0);
    let mut entries = Vec::new();
    fs.readdirplus(&ctx(), dir, handle, 8192, 0, &mut |d, e| {
        entries.push((String::from_utf8_lossy(d.name).into_owned(), e));
        Ok(1)
    })
    .unwrap();
    fs.releasedir(&ctx(), dir, 0, handle).unwrap();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

fn id(st: &stat64) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

#[test]
fn allowlisted_names_resolve_and_read() {
    let root = host_root();
    let fs = system_root(root.path());
    let usr = lookup(&fs, ROOT_ID, "usr").unwrap();
    let bin = lookup(&fs, usr.inode, "bin").unwrap();
    let tool = lookup(&fs, bin.inode, "tool").unwrap();
    let meta = fs::metadata(root.path().join("usr/bin/tool")).unwrap();
    assert_eq!(id(&tool.attr), (meta.dev(), meta.ino()));
    let (handle, _, _) = fs
        .open(&ctx(), tool.inode, libc::O_RDONLY as u32, 0)
        .unwrap();
    fs.release(&ctx(), tool.inode, 0, handle.unwrap(), false, false, None)
        .unwrap();
    let (st, _) = fs.getattr(&ctx(), tool.inode, None).unwrap();
    assert_eq!(st.st_size, 10);

    let lib = lookup(&fs, ROOT_ID, "lib").unwrap();
    assert_eq!(fs.readlink(&ctx(), lib.inode).unwrap(), b"usr/lib");
    lookup(&fs, ROOT_ID, "etc").unwrap();
    // Allowlisted but absent on this host.
    assert_eq!(errno(lookup(&fs, ROOT_ID, "opt")), libc::ENOENT);
}

#[test]
fn names_outside_the_allowlist_do_not_exist() {
    let root = host_root();
    let fs = system_root(root.path());
    for name in ["home", "root", ".", "..", "tmp", "usr/bin"] {
        assert_eq!(errno(lookup(&fs, ROOT_ID, name)), libc::ENOENT, "{name}");
    }
    assert_eq!(readdir_names(&fs, ROOT_ID), ["etc", "lib", "usr"]);
    let plus: Vec<String> = readdirplus_names(&fs, ROOT_ID)
        .into_iter()
        .map(|(name, e)| {
            fs.forget(&ctx(), e.inode, 1);
            name
        })
        .collect();
    assert_eq!(plus, ["etc", "lib", "usr"]);
}

#[test]
fn secrets_are_masked_even_through_hard_links() {
    let root = host_root();
    let fs = system_root(root.path());
    let etc = lookup(&fs, ROOT_ID, "etc").unwrap();
    assert_eq!(errno(lookup(&fs, etc.inode, "shadow")), libc::ENOENT);
    assert_eq!(errno(lookup(&fs, etc.inode, "hard-shadow")), libc::ENOENT);
    lookup(&fs, etc.inode, "passwd").unwrap();
    let ssh = lookup(&fs, etc.inode, "ssh").unwrap();
    assert_eq!(
        errno(lookup(&fs, ssh.inode, "ssh_host_ed25519_key")),
        libc::ENOENT
    );
    lookup(&fs, ssh.inode, "ssh_host_ed25519_key.pub").unwrap();
    let ssl = lookup(&fs, etc.inode, "ssl").unwrap();
    assert_eq!(errno(lookup(&fs, ssl.inode, "private")), libc::ENOENT);

    assert_eq!(readdir_names(&fs, etc.inode), ["passwd", "ssh", "ssl"]);
    assert_eq!(readdir_names(&fs, ssh.inode), ["ssh_host_ed25519_key.pub"]);
    assert!(readdir_names(&fs, ssl.inode).is_empty());
    let plus = readdirplus_names(&fs, etc.inode);
    let names: Vec<&str> = plus.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["passwd", "ssh", "ssl"]);
    for (_, e) in &plus {
        fs.forget(&ctx(), e.inode, 1);
    }
}

#[test]
fn secrets_created_or_replaced_after_start_stay_hidden() {
    let root = host_root();
    let fs = system_root(root.path());
    let p = root.path();
    // passwd(1) style: a new file renamed over /etc/shadow gets a new inode.
    fs::write(p.join("etc/nshadow"), b"root:$6$new:::::::\n").unwrap();
    fs::rename(p.join("etc/nshadow"), p.join("etc/shadow")).unwrap();
    // Secrets that did not exist when the share started.
    fs::write(p.join("etc/gshadow"), b"root:::\n").unwrap();
    fs::write(p.join("etc/ssh/ssh_host_rsa_key"), b"PRIVATE").unwrap();

    let etc = lookup(&fs, ROOT_ID, "etc").unwrap();
    assert_eq!(errno(lookup(&fs, etc.inode, "shadow")), libc::ENOENT);
    assert_eq!(errno(lookup(&fs, etc.inode, "gshadow")), libc::ENOENT);
    let ssh = lookup(&fs, etc.inode, "ssh").unwrap();
    assert_eq!(
        errno(lookup(&fs, ssh.inode, "ssh_host_rsa_key")),
        libc::ENOENT
    );
    assert_eq!(readdir_names(&fs, etc.inode), ["passwd", "ssh", "ssl"]);
    let plus = readdirplus_names(&fs, ssh.inode);
    let names: Vec<&str> = plus.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ssh_host_ed25519_key.pub"]);
    for (_, e) in &plus {
        fs.forget(&ctx(), e.inode, 1);
    }
}

#[test]
fn masked_and_listed_inodes_are_forgotten_and_cannot_be_named() {
    let root = host_root();
    let fs = system_root(root.path());
    let shadow = fs::metadata(root.path().join("etc/shadow")).unwrap();
    let etc = lookup(&fs, ROOT_ID, "etc").unwrap();
    // PassthroughFs looks up every listed entry (shadow included) to list it.
    readdir_names(&fs, ROOT_ID);
    readdir_names(&fs, etc.inode);
    let plus = readdirplus_names(&fs, etc.inode);
    for (_, e) in &plus {
        fs.forget(&ctx(), e.inode, 1);
    }
    lookup(&fs, etc.inode, "shadow").unwrap_err();

    for ino in 2..200 {
        if ino == etc.inode {
            continue;
        }
        // The guest cannot name an inode it was not given...
        assert_eq!(errno(fs.getattr(&ctx(), ino, None)), libc::EBADF, "{ino}");
        assert_eq!(errno(lookup(&fs, ino, "id")), libc::EBADF, "{ino}");
        // ...and the inner fs holds no lookup count on anything but the root and etc.
        if let Ok((st, _)) = fs.inner().getattr(&ctx(), ino, None) {
            panic!("inode {ino} ({:?}) leaked", id(&st));
        }
    }
    assert_ne!(id(&etc.attr), (shadow.dev(), shadow.ino()));
    // Forgetting more than was given is clamped; with its count gone, etc cannot be named.
    fs.forget(&ctx(), etc.inode, 5);
    assert_eq!(errno(fs.getattr(&ctx(), etc.inode, None)), libc::EBADF);
}

#[test]
fn dotdot_cannot_escape_the_root() {
    let root = host_root();
    let fs = system_root(root.path());
    let usr = lookup(&fs, ROOT_ID, "usr").unwrap();
    let bin = lookup(&fs, usr.inode, "bin").unwrap();
    assert_eq!(lookup(&fs, usr.inode, "..").unwrap().inode, ROOT_ID);
    assert_eq!(lookup(&fs, bin.inode, "..").unwrap().inode, usr.inode);
    let etc = lookup(&fs, ROOT_ID, "etc").unwrap();
    assert_eq!(lookup(&fs, etc.inode, "..").unwrap().inode, ROOT_ID);
    assert_eq!(errno(lookup(&fs, usr.inode, "../home")), libc::EINVAL);
    assert_eq!(errno(lookup(&fs, ROOT_ID, "..")), libc::ENOENT);
    // The root reached through ".." is still the filtered root.
    assert_eq!(errno(lookup(&fs, ROOT_ID, "home")), libc::ENOENT);
}

struct NoData;

impl io::Read for NoData {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

impl ZeroCopyReader for NoData {
    fn read_to(
        &mut self,
        _f: &mut dyn FileReadWriteVolatile,
        _count: usize,
        _off: u64,
    ) -> io::Result<usize> {
        Ok(0)
    }
}

#[test]
fn every_mutation_is_erofs() {
    let root = host_root();
    let fs = system_root(root.path());
    let x = ctx();
    let etc = lookup(&fs, ROOT_ID, "etc").unwrap();
    let passwd = lookup(&fs, etc.inode, "passwd").unwrap();
    let name: &CStr = c"new";
    let erofs = libc::EROFS;

    assert_eq!(errno(fs.mkdir(&x, etc.inode, name, 0o755, 0)), erofs);
    assert_eq!(
        errno(fs.mknod(&x, etc.inode, name, libc::S_IFREG | 0o644, 0, 0)),
        erofs
    );
    assert_eq!(errno(fs.symlink(&x, c"passwd", etc.inode, name)), erofs);
    assert_eq!(errno(fs.link(&x, passwd.inode, etc.inode, name)), erofs);
    assert_eq!(errno(fs.unlink(&x, etc.inode, c"passwd")), erofs);
    assert_eq!(errno(fs.rmdir(&x, ROOT_ID, c"etc")), erofs);
    assert_eq!(
        errno(fs.rename(&x, etc.inode, c"passwd", etc.inode, name, 0)),
        erofs
    );
    let args = CreateIn {
        flags: libc::O_WRONLY as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    assert_eq!(errno(fs.create(&x, etc.inode, name, args)), erofs);
    // SAFETY: stat64 is plain old data; all zeroes is a valid value.
    let attr: stat64 = unsafe { std::mem::zeroed() };
    assert_eq!(
        errno(fs.setattr(&x, passwd.inode, attr, None, SetattrValid::MODE)),
        erofs
    );
    assert_eq!(
        errno(fs.setxattr(&x, passwd.inode, c"user.x", b"1", 0)),
        erofs
    );
    assert_eq!(errno(fs.removexattr(&x, passwd.inode, c"user.x")), erofs);
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_RDONLY | libc::O_APPEND,
        libc::O_RDONLY | libc::O_CREAT,
    ] {
        assert_eq!(
            errno(fs.open(&x, passwd.inode, flags as u32, 0)),
            erofs,
            "{flags:#x}"
        );
    }
    assert_eq!(errno(fs.access(&x, passwd.inode, libc::W_OK as u32)), erofs);
    fs.access(&x, passwd.inode, libc::R_OK as u32).unwrap();

    let (handle, _, _) = fs.open(&x, passwd.inode, libc::O_RDONLY as u32, 0).unwrap();
    let handle = handle.unwrap();
    assert_eq!(
        errno(fs.write(
            &x,
            passwd.inode,
            handle,
            &mut NoData,
            1,
            0,
            None,
            false,
            0,
            0
        )),
        erofs
    );
    assert_eq!(
        errno(fs.fallocate(&x, passwd.inode, handle, 0, 0, 4096)),
        erofs
    );
    fs.release(&x, passwd.inode, 0, handle, false, false, None)
        .unwrap();

    // Nothing changed on the host.
    assert_eq!(
        fs::read(root.path().join("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    assert!(!root.path().join("etc/new").exists());
}

#[test]
fn workspace_policy_passes_writes_through() {
    let dir = tempfile::tempdir().unwrap();
    let fs = PolicyFs::passthrough(passthrough(dir.path()), true);
    fs.init(FsOptions::empty()).unwrap();
    // A guest user the host does not have: with squashed credentials the files are created
    // as the VMM's own user instead of failing to switch to uid 4321 (EPERM when not root).
    let x = Context {
        uid: 4321,
        gid: 4321,
        pid: 1,
    };
    let sub = fs.mkdir(&x, ROOT_ID, c"sub", 0o755, 0).unwrap();
    fs::write(dir.path().join("probe"), b"").unwrap();
    let me = fs::metadata(dir.path().join("probe")).unwrap().uid();
    assert_eq!(fs::metadata(dir.path().join("sub")).unwrap().uid(), me);
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (file, handle, _, _) = fs.create(&x, sub.inode, c"f", args).unwrap();
    if let Some(h) = handle {
        // None: zero-message open, the descriptor is cached per inode.
        fs.release(&x, file.inode, 0, h, false, false, None)
            .unwrap();
    }
    assert!(dir.path().join("sub/f").is_file());
    // No allowlist, nothing hidden.
    fs::create_dir(dir.path().join("home")).unwrap();
    lookup(&fs, ROOT_ID, "home").unwrap();
}

#[test]
fn no_device_nodes_and_no_set_id_bits_in_a_share() {
    let dir = tempfile::tempdir().unwrap();
    let fs = PolicyFs::passthrough(passthrough(dir.path()), true);
    fs.init(FsOptions::empty()).unwrap();
    let x = ctx();
    // Creating device nodes is refused; FIFOs are fine.
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        assert_eq!(
            errno(fs.mknod(&x, ROOT_ID, c"dev", kind | 0o666, 0x0801, 0)),
            libc::EPERM
        );
    }
    assert!(!dir.path().join("dev").exists());
    fs.mknod(&x, ROOT_ID, c"fifo", libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    // Set-ID bits are stripped on create, mknod and chmod; setgid stays on directories.
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o6755,
        umask: 0,
        fuse_flags: 0,
    };
    let (f, h, _, _) = fs.create(&x, ROOT_ID, c"prog", args).unwrap();
    if let Some(h) = h {
        // None: zero-message open, the descriptor is cached per inode.
        fs.release(&x, f.inode, 0, h, false, false, None).unwrap();
    }
    let mode = |p: &str| fs::metadata(dir.path().join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("prog"), 0o755);
    let mut attr: stat64 = f.attr;
    attr.st_mode = libc::S_IFREG | 0o4755;
    fs.setattr(&x, f.inode, attr, None, SetattrValid::MODE)
        .unwrap();
    assert_eq!(mode("prog"), 0o755, "chmod u+s is dropped");
    let d = fs.mkdir(&x, ROOT_ID, c"shared", 0o775, 0).unwrap();
    let mut dattr: stat64 = d.attr;
    dattr.st_mode = libc::S_IFDIR | 0o2775;
    fs.setattr(&x, d.inode, dattr, None, SetattrValid::MODE)
        .unwrap();
    assert_eq!(mode("shared"), 0o2775, "setgid directories are harmless");
    dattr.st_mode = libc::S_IFDIR | 0o4775;
    fs.setattr(&x, d.inode, dattr, None, SetattrValid::MODE)
        .unwrap();
    assert_eq!(mode("shared"), 0o775);
}

#[test]
fn host_device_nodes_in_a_share_cannot_be_opened() {
    // Making a device node on the host needs root; as root it must be refused.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "host_device_nodes_in_a_share_cannot_be_opened: needs root to create a node; not run"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = CString::new(dir.path().join("null").to_str().unwrap()).unwrap();
    // SAFETY: mknod on a NUL-terminated path inside our temporary directory.
    let rc = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    // Zero-message open (the default): the guest sends no OPEN, and the first
    // request on the node (handle 0) is where the server opens the file.
    let fs = PolicyFs::passthrough(passthrough(dir.path()), false);
    fs.init(FsOptions::empty()).unwrap();
    let e = lookup(&fs, ROOT_ID, "null").unwrap();
    assert_eq!(
        errno(fs.open(&ctx(), e.inode, libc::O_RDWR as u32, 0)),
        libc::ENOSYS
    );
    assert_eq!(errno(fs.fsync(&ctx(), e.inode, false, 0)), libc::EACCES);
    assert_eq!(fs.cached_open_files(), 0);
    // With OPEN answered, OPEN itself is refused.
    let fs = PolicyFs::passthrough(passthrough(dir.path()), false).with_levers(Levers {
        no_open: false,
        ..Levers::default()
    });
    fs.init(FsOptions::empty()).unwrap();
    let e = lookup(&fs, ROOT_ID, "null").unwrap();
    assert_eq!(
        errno(fs.open(&ctx(), e.inode, libc::O_RDWR as u32, 0)),
        libc::EACCES
    );
}

#[test]
fn the_root_answers_no_xattrs_so_the_guest_stops_asking() {
    let root = host_root();
    let fs = system_root(root.path());
    let tool = lookup(&fs, lookup(&fs, ROOT_ID, "usr").unwrap().inode, "bin")
        .and_then(|bin| lookup(&fs, bin.inode, "tool"))
        .unwrap();
    assert_eq!(
        fs.getxattr(&ctx(), tool.inode, c"security.capability", 0)
            .err()
            .and_then(|e| e.raw_os_error())
            .unwrap(),
        libc::ENOSYS
    );
    assert_eq!(
        fs.listxattr(&ctx(), tool.inode, 0)
            .err()
            .and_then(|e| e.raw_os_error())
            .unwrap(),
        libc::ENOSYS
    );
    // Inodes the guest was never given are still refused first.
    assert_eq!(
        fs.getxattr(&ctx(), 999_999, c"user.x", 0)
            .err()
            .and_then(|e| e.raw_os_error())
            .unwrap(),
        libc::EBADF
    );
}

#[test]
fn init_asks_for_parallel_dirops_and_async_reads_as_the_levers_say() {
    let dir = tempfile::tempdir().unwrap();
    let both = FsOptions::ASYNC_READ | FsOptions::PARALLEL_DIROPS;
    let capable = both | FsOptions::BIG_WRITES;
    let granted = |levers: Levers| {
        PolicyFs::passthrough(passthrough(dir.path()), true)
            .with_levers(levers)
            .init(capable)
            .unwrap()
    };
    // The workspace's defaults: parallel dirops, synchronous (polled) reads.
    let d = granted(Levers::default());
    assert!(
        d.contains(FsOptions::PARALLEL_DIROPS | FsOptions::BIG_WRITES),
        "{d:?}"
    );
    assert!(!d.contains(FsOptions::ASYNC_READ), "{d:?}");
    let async_read = granted(Levers::default().apply("+async_read").unwrap());
    assert!(
        async_read.contains(both | FsOptions::BIG_WRITES),
        "{async_read:?}"
    );
    let serial = granted(Levers::default().apply("-parallel_dirops").unwrap());
    assert!(!serial.intersects(both), "{serial:?}");
    // READDIRPLUS, and by default only where the guest sees it pays
    // (READDIRPLUS_AUTO); `always_plus` leaves the choice out.
    let plus = FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO;
    assert!(d.contains(plus), "{d:?}");
    let always = granted(Levers::default().apply("+always_plus").unwrap());
    assert!(always.contains(FsOptions::DO_READDIRPLUS), "{always:?}");
    assert!(!always.contains(FsOptions::READDIRPLUS_AUTO), "{always:?}");
    // The read-only root keeps both, whatever the levers.
    let root = PolicyFs::system_root(passthrough(dir.path()), dir.path())
        .unwrap()
        .with_levers(Levers::default().apply("-parallel_dirops").unwrap());
    let r = root.init(capable).unwrap();
    assert!(r.contains(both), "{r:?}");
    // ... unless root_poll makes its reads synchronous, to be polled for.
    let root = PolicyFs::system_root(passthrough(dir.path()), dir.path())
        .unwrap()
        .with_levers(Levers::default().apply("+root_poll").unwrap());
    let r = root.init(capable).unwrap();
    assert!(!r.contains(FsOptions::ASYNC_READ), "{r:?}");
    assert!(r.contains(FsOptions::PARALLEL_DIROPS), "{r:?}");
    // A guest that does not offer them is not granted them.
    let plain = PolicyFs::passthrough(passthrough(dir.path()), true)
        .init(FsOptions::empty())
        .unwrap();
    assert!(!plain.intersects(both), "{plain:?}");
}

#[test]
fn the_root_lists_without_opendir_and_still_masks() {
    // As device.rs configures the root: OPENDIR answered ENOSYS once, then
    // READDIR(PLUS) by node with handle 0.
    let root = host_root();
    let inner =
        fuse_backend_rs::passthrough::PassthroughFs::new(fuse_backend_rs::passthrough::Config {
            no_opendir: true,
            ..super::passthrough_config(root.path())
        })
        .unwrap();
    let fs = PolicyFs::system_root(inner, root.path()).unwrap();
    let granted = fs.init(FsOptions::ZERO_MESSAGE_OPENDIR).unwrap();
    assert!(granted.contains(FsOptions::ZERO_MESSAGE_OPENDIR));
    let etc = lookup(&fs, ROOT_ID, "etc").unwrap();
    assert_eq!(errno(fs.opendir(&ctx(), etc.inode, 0)), libc::ENOSYS);
    let mut names = Vec::new();
    fs.readdir(&ctx(), etc.inode, 0, 8192, 0, &mut |d| {
        names.push(String::from_utf8_lossy(d.name).into_owned());
        Ok(1)
    })
    .unwrap();
    names.retain(|n| n != "." && n != "..");
    names.sort();
    assert_eq!(names, ["passwd", "ssh", "ssl"]);
    let mut plus = Vec::new();
    fs.readdirplus(&ctx(), etc.inode, 0, 8192, 0, &mut |d, e| {
        plus.push((String::from_utf8_lossy(d.name).into_owned(), e.inode));
        Ok(1)
    })
    .unwrap();
    plus.retain(|(n, _)| n != "." && n != "..");
    plus.sort();
    let plus_names: Vec<&str> = plus.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(plus_names, ["passwd", "ssh", "ssl"]);
    for (_, ino) in plus {
        fs.forget(&ctx(), ino, 1);
    }
    // The root directory itself lists its allowlist as before.
    let mut top = Vec::new();
    fs.readdir(&ctx(), ROOT_ID, 0, 8192, 0, &mut |d| {
        top.push(String::from_utf8_lossy(d.name).into_owned());
        Ok(1)
    })
    .unwrap();
    top.sort();
    assert_eq!(top, ["etc", "lib", "usr"]);
}

#[test]
fn the_root_device_grants_zero_message_opendir_and_the_workspace_does_not() {
    use super::fuse_driver::{exchange, guest_memory, init_offering, share, Driver};
    use crate::devices::virtio::fs::SharePolicy;
    use fuse_backend_rs::abi::fuse_abi::{Opcode, OpenIn, OpenOut, OutHeader};
    use vm_memory::ByteValued;
    // FUSE_NO_OPENDIR_SUPPORT in fuse_init_in.flags.
    const NO_OPENDIR_SUPPORT: u32 = 1 << 24;
    let dir = host_root();
    let mem = guest_memory();
    for (policy, zero_message) in [
        (SharePolicy::SystemRoot, true),
        (SharePolicy::Workspace, false),
    ] {
        let dev = share(dir.path(), policy);
        let mut drv = Driver::new(&mem);
        let mut q = drv.queue();
        let (flags, _) = init_offering(&dev, &mut drv, &mut q, NO_OPENDIR_SUPPORT, 0);
        assert_eq!(flags & NO_OPENDIR_SUPPORT != 0, zero_message, "{policy:?}");
        let open_in = OpenIn::default();
        let reply = (std::mem::size_of::<OutHeader>() + std::mem::size_of::<OpenOut>()) as u32;
        let r = exchange(&dev, &mut drv, &mut q, |d| {
            vec![d.request(Opcode::Opendir, ROOT_ID, open_in.as_slice(), &[reply])]
        });
        let want = if zero_message { -libc::ENOSYS } else { 0 };
        assert_eq!(r[0].0, want, "{policy:?}: OPENDIR");
    }
}
