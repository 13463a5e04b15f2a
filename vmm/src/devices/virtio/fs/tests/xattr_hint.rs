//! Entries that say whether a file has extended attributes (xattr_hint.rs):
//! only once INIT grants it, only on the workspace, never for symlinks, and
//! through LOOKUP, READDIRPLUS and CREATE alike.

use std::ffi::CString;
use std::fs;
use std::mem::size_of;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, EntryOut, FsOptions, Opcode, OutHeader, ROOT_ID};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};

use super::fuse_driver::{exchange, guest_memory, init_ext, share as device, Driver, Pending};
use crate::devices::virtio::fs::xattr_hint::{
    FUSE_ATTR_HUTCH_NO_XATTR, FUSE_ATTR_HUTCH_XATTR_KNOWN, FUSE_HUTCH_NOXATTR,
};
use crate::devices::virtio::fs::{DirStreams, FsDevice, PolicyFs, SharePolicy};

const GRANT: u32 = (FUSE_HUTCH_NOXATTR >> 32) as u32;
const NONE: u32 = FUSE_ATTR_HUTCH_XATTR_KNOWN | FUSE_ATTR_HUTCH_NO_XATTR;
const SOME: u32 = FUSE_ATTR_HUTCH_XATTR_KNOWN;
const HINTS: u32 = NONE;

/// INIT offering `flags2`; the reply's `flags2`.
fn init(dev: &FsDevice, drv: &mut Driver<'_>, q: &mut virtio_queue::Queue, flags2: u32) -> u32 {
    init_ext(dev, drv, q, flags2).1
}

/// `tagged` has a user xattr, `plain` none, `link` is a symlink to `plain`.
fn fixture(root: &Path) {
    fs::write(root.join("plain"), "p").unwrap();
    fs::write(root.join("tagged"), "t").unwrap();
    let path = CString::new(root.join("tagged").as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated path and name, a 1-byte value; checked.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.t".as_ptr(),
            c"1".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    std::os::unix::fs::symlink("plain", root.join("link")).unwrap();
}

fn lookup(d: &mut Driver<'_>, name: &str) -> Pending {
    let name = CString::new(name).unwrap();
    let reply = (size_of::<OutHeader>() + size_of::<EntryOut>()) as u32;
    d.request(Opcode::Lookup, ROOT_ID, name.as_bytes_with_nul(), &[reply])
}

/// The hint bits of each name's LOOKUP entry.
fn hints(dev: &FsDevice, drv: &mut Driver<'_>, q: &mut virtio_queue::Queue) -> Vec<u32> {
    let r = exchange(dev, drv, q, |d| {
        ["plain", "tagged", "link"]
            .iter()
            .map(|n| lookup(d, n))
            .collect()
    });
    r.iter()
        .map(|(e, body)| {
            assert_eq!(*e, 0);
            Driver::parse::<EntryOut>(body).attr.flags & HINTS
        })
        .collect()
}

#[test]
fn lookups_say_whether_a_file_has_xattrs_once_granted() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let mem = guest_memory();

    let dev = device(dir.path(), SharePolicy::Workspace);
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    assert_eq!(init(&dev, &mut drv, &mut q, GRANT) & GRANT, GRANT);
    assert_eq!(hints(&dev, &mut drv, &mut q), [NONE, SOME, 0]);

    // Not offered: entries as stock FUSE has them.
    let dev = device(dir.path(), SharePolicy::Workspace);
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    assert_eq!(init(&dev, &mut drv, &mut q, 0) & GRANT, 0);
    assert_eq!(hints(&dev, &mut drv, &mut q), [0, 0, 0]);

    // The read-only root shows no xattrs at all (ENOSYS) and grants nothing.
    let dev = device(dir.path(), SharePolicy::SystemRoot);
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    assert_eq!(init(&dev, &mut drv, &mut q, GRANT) & GRANT, 0);
}

#[test]
fn readdirplus_and_create_entries_are_marked_too() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let inner = super::passthrough(dir.path());
    let fs =
        PolicyFs::passthrough(inner, true).with_dir_streams(DirStreams::new(dir.path()).unwrap());
    fs.init(FsOptions::empty()).unwrap();
    fs.grant_xattr_hint();
    let ctx = Context::new();

    let (h, _) = fs.opendir(&ctx, ROOT_ID, 0).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    fs.readdirplus(&ctx, ROOT_ID, h.unwrap(), 65536, 0, &mut |d, e| {
        seen.insert(
            String::from_utf8(d.name.to_vec()).unwrap(),
            e.attr_flags & HINTS,
        );
        Ok(1)
    })
    .unwrap();
    let want: Vec<(String, u32)> = [
        (".", 0),
        ("..", 0),
        ("link", 0),
        ("plain", NONE),
        ("tagged", SOME),
    ]
    .map(|(n, f)| (n.to_owned(), f))
    .into();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), want);

    let args = CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (entry, ..) = fs.create(&ctx, ROOT_ID, c"new", args).unwrap();
    assert_eq!(entry.attr_flags & HINTS, NONE, "a new file has no xattrs");
}
