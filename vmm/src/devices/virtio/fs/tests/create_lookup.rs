//! One-request O_CREAT opens (create_lookup.rs) through the queue: INIT
//! grants hutch's private flag only when the guest offers it, and a marked
//! CREATE creates a new name but answers an existing one with its entry,
//! without opening, truncating or following it.

use std::ffi::CString;
use std::fs;
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, EntryOut, Opcode, OpenOut, OutHeader, ROOT_ID};
use vm_memory::ByteValued;

use super::fuse_driver::{
    exchange, guest_memory, init_ext as init, share as device, Driver, Pending,
};
use crate::devices::virtio::fs::create_lookup::{
    FOPEN_HUTCH_EXISTS, FUSE_HUTCH_CREATE_LOOKUP, FUSE_OPEN_HUTCH_LOOKUP,
};
use crate::devices::virtio::fs::SharePolicy;

const INIT_EXT: u32 = 1 << 30;
const GRANT: u32 = (FUSE_HUTCH_CREATE_LOOKUP >> 32) as u32;

fn create(d: &mut Driver<'_>, name: &str, flags: i32, marked: bool) -> Pending {
    let args = CreateIn {
        flags: flags as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: if marked { FUSE_OPEN_HUTCH_LOOKUP } else { 0 },
    };
    let mut body = args.as_slice().to_vec();
    body.extend_from_slice(CString::new(name).unwrap().as_bytes_with_nul());
    let reply = (size_of::<OutHeader>() + size_of::<EntryOut>() + size_of::<OpenOut>()) as u32;
    d.request(Opcode::Create, ROOT_ID, &body, &[reply])
}

#[test]
fn init_grants_the_flag_only_when_offered_on_the_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let mem = guest_memory();

    let dev = device(dir.path(), SharePolicy::Workspace);
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    let (flags, flags2) = init(&dev, &mut drv, &mut q, GRANT);
    assert_ne!(flags & INIT_EXT, 0);
    assert_eq!(flags2 & GRANT, GRANT, "offered: granted");

    let dev = device(dir.path(), SharePolicy::Workspace);
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    let (_, flags2) = init(&dev, &mut drv, &mut q, 0);
    assert_eq!(flags2 & GRANT, 0, "not offered: not granted");

    // The read-only root creates nothing.
    let dev = device(dir.path(), SharePolicy::SystemRoot);
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    let (_, flags2) = init(&dev, &mut drv, &mut q, GRANT);
    assert_eq!(flags2 & GRANT, 0, "system root: not granted");
}

#[test]
fn marked_create_creates_or_answers_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("kept"), b"host bytes").unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    std::os::unix::fs::symlink("target", root.join("link")).unwrap();
    let dev = device(root, SharePolicy::Workspace);
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    init(&dev, &mut drv, &mut q, GRANT);

    let trunc = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![
            create(d, "new", trunc, true),
            create(d, "kept", trunc, true),
            create(d, "link", trunc, true),
            create(d, "sub", trunc, true),
            create(d, "kept", trunc | libc::O_EXCL, true),
        ]
    });
    let open_out = |body: &[u8]| -> OpenOut { Driver::parse(&body[size_of::<EntryOut>()..]) };

    // A new name is created (and opened) as CREATE always did.
    assert_eq!(r[0].0, 0);
    assert_eq!(open_out(&r[0].1).open_flags & FOPEN_HUTCH_EXISTS, 0);
    assert!(root.join("new").is_file());

    // An existing file: its entry, flagged, with nothing opened or truncated.
    assert_eq!(r[1].0, 0);
    let kept: EntryOut = Driver::parse(&r[1].1);
    assert_ne!(kept.nodeid, 0);
    assert_eq!(kept.attr.size, 10);
    assert_eq!(open_out(&r[1].1).open_flags, FOPEN_HUTCH_EXISTS);
    assert_eq!(open_out(&r[1].1).fh, 0);
    assert_eq!(fs::read(root.join("kept")).unwrap(), b"host bytes");

    // A symlink is answered, not followed: its target is not created.
    assert_eq!(r[2].0, 0);
    let link: EntryOut = Driver::parse(&r[2].1);
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(open_out(&r[2].1).open_flags, FOPEN_HUTCH_EXISTS);
    assert!(!root.join("target").exists());

    // A directory is left to the guest's own LOOKUP; O_EXCL is honoured.
    assert_eq!(r[3].0, -libc::EEXIST);
    assert_eq!(r[4].0, -libc::EEXIST);

    // Unmarked, CREATE keeps its stock meaning: open (and truncate) what exists.
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![create(d, "kept", trunc, false)]
    });
    assert_eq!(r[0].0, 0);
    assert_eq!(open_out(&r[0].1).open_flags & FOPEN_HUTCH_EXISTS, 0);
    assert_eq!(fs::read(root.join("kept")).unwrap(), b"");
}
