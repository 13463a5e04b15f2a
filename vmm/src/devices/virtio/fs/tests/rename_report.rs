//! Renames without a target lookup (rename_report.rs) through the queue:
//! INIT grants the private flag only when offered on the workspace, a marked
//! RENAME2 answers the node id it replaced (0 for a new name), the host's
//! own errors come back unchanged, and bad requests are refused.

use std::ffi::CString;
use std::fs;
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{EntryOut, Opcode, OutHeader, Rename2In, ROOT_ID};
use vm_memory::ByteValued;

use super::fuse_driver::{
    exchange, granted, guest_memory, init_ext, share as device, Driver, Pending,
};
use crate::devices::virtio::fs::create_lookup::FUSE_HUTCH_CREATE_LOOKUP;
use crate::devices::virtio::fs::rename_report::{
    FUSE_HUTCH_RENAME_REPORT, FUSE_RENAME2, FUSE_RENAME_HUTCH_REPORT,
};
use crate::devices::virtio::fs::{FsDevice, SharePolicy};

const GRANT: u32 = (FUSE_HUTCH_RENAME_REPORT >> 32) as u32;
const CREATE_GRANT: u32 = (FUSE_HUTCH_CREATE_LOOKUP >> 32) as u32;
const REPORT_REPLY: u32 = (size_of::<OutHeader>() + 8) as u32;

/// INIT offering `flags2`; the reply's `flags2`.
fn init(dev: &FsDevice, drv: &mut Driver<'_>, q: &mut virtio_queue::Queue, flags2: u32) -> u32 {
    init_ext(dev, drv, q, flags2).1
}

/// RENAME2 in the root directory, with `names` as the raw bytes after
/// `fuse_rename2_in`.
fn rename_raw(d: &mut Driver<'_>, names: &[u8], flags: u32, reply: u32) -> Pending {
    let args = Rename2In {
        newdir: ROOT_ID,
        flags,
        padding: 0,
    };
    let mut body = args.as_slice().to_vec();
    body.extend_from_slice(names);
    d.request_raw(FUSE_RENAME2, ROOT_ID, &body, &[reply])
}

fn rename(d: &mut Driver<'_>, old: &str, new: &str, flags: u32) -> Pending {
    let mut names = CString::new(old).unwrap().into_bytes_with_nul();
    names.extend_from_slice(CString::new(new).unwrap().as_bytes_with_nul());
    rename_raw(d, &names, flags | FUSE_RENAME_HUTCH_REPORT, REPORT_REPLY)
}

fn lookup(d: &mut Driver<'_>, name: &str) -> Pending {
    let name = CString::new(name).unwrap();
    let reply = (size_of::<OutHeader>() + size_of::<EntryOut>()) as u32;
    d.request(Opcode::Lookup, ROOT_ID, name.as_bytes_with_nul(), &[reply])
}

fn replaced(body: &[u8]) -> u64 {
    assert_eq!(body.len(), 8, "the reply carries the replaced node id");
    u64::from_le_bytes(body.try_into().unwrap())
}

#[test]
fn init_grants_the_flag_only_when_offered_on_the_workspace() {
    let both = GRANT | CREATE_GRANT;
    for (policy, offered, want) in [
        (SharePolicy::Workspace, GRANT, GRANT),
        (SharePolicy::Workspace, both, both),
        (SharePolicy::Workspace, CREATE_GRANT, CREATE_GRANT),
        (SharePolicy::Workspace, 0, 0),
        (SharePolicy::SystemRoot, both, 0),
    ] {
        assert_eq!(
            granted(policy, offered) & both,
            want,
            "{policy:?} offered {offered:#x}"
        );
    }
}

#[test]
fn marked_rename_reports_the_inode_it_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (name, content) in [("a", "A"), ("b", "B"), ("known", "K"), ("c", "C")] {
        fs::write(root.join(name), content).unwrap();
    }
    fs::write(root.join("unknown"), "U").unwrap();
    fs::hard_link(root.join("known"), root.join("known-link")).unwrap();
    let dev = device(root, SharePolicy::Workspace);
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    init(&dev, &mut drv, &mut q, GRANT);

    // The guest holds `known` (through its other name); not `unknown`.
    let r = exchange(&dev, &mut drv, &mut q, |d| vec![lookup(d, "known-link")]);
    assert_eq!(r[0].0, 0);
    let known: EntryOut = Driver::parse(&r[0].1);

    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![
            rename(d, "a", "fresh", 0),
            rename(d, "b", "known", 0),
            rename(d, "c", "unknown", 0),
        ]
    });
    // A new name replaced nothing.
    assert_eq!(r[0].0, 0);
    assert_eq!(replaced(&r[0].1), 0);
    assert_eq!(fs::read_to_string(root.join("fresh")).unwrap(), "A");
    // Over a file the guest holds: that node id, and the rename happened.
    assert_eq!(r[1].0, 0);
    assert_eq!(replaced(&r[1].1), known.nodeid);
    assert_eq!(fs::read_to_string(root.join("known")).unwrap(), "B");
    assert_eq!(fs::read_to_string(root.join("known-link")).unwrap(), "K");
    // Over a file it never looked up: some id, given back by the server.
    assert_eq!(r[2].0, 0);
    assert_ne!(replaced(&r[2].1), 0);
    assert_eq!(fs::read_to_string(root.join("unknown")).unwrap(), "C");
    assert!(!root.join("a").exists() && !root.join("b").exists());

    // The guest's node id still works, and looks up the same as before.
    let r = exchange(&dev, &mut drv, &mut q, |d| vec![lookup(d, "known-link")]);
    assert_eq!(Driver::parse::<EntryOut>(&r[0].1).nodeid, known.nodeid);
}

#[test]
fn marked_rename_keeps_the_hosts_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("file"), "f").unwrap();
    fs::write(root.join("other"), "o").unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::create_dir(root.join("full")).unwrap();
    fs::write(root.join("full/x"), "x").unwrap();
    fs::create_dir(root.join("dir")).unwrap();
    let dev = device(root, SharePolicy::Workspace);
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    init(&dev, &mut drv, &mut q, GRANT);

    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![
            rename(d, "file", "empty", 0),
            rename(d, "dir", "file", 0),
            rename(d, "dir", "full", 0),
            rename(d, "file", "other", libc::RENAME_NOREPLACE),
            rename(d, "missing", "x", 0),
        ]
    });
    let errors: Vec<i32> = r.iter().map(|(e, _)| -e).collect();
    assert_eq!(
        errors,
        [
            libc::EISDIR,
            libc::ENOTDIR,
            libc::ENOTEMPTY,
            libc::EEXIST,
            libc::ENOENT
        ]
    );
    assert_eq!(fs::read_to_string(root.join("other")).unwrap(), "o");

    // A directory over an empty one is replaced, and reported.
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![rename(d, "dir", "empty", 0)]
    });
    assert_eq!(r[0].0, 0);
    assert_ne!(replaced(&r[0].1), 0);
    assert!(root.join("empty").is_dir() && !root.join("dir").exists());

    // Unmarked, RENAME2 keeps its stock empty reply.
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![rename_raw(
            d,
            b"file\0moved\0",
            0,
            size_of::<OutHeader>() as u32,
        )]
    });
    assert_eq!(r[0], (0, Vec::new()));
    assert!(root.join("moved").is_file());
}

#[test]
fn malformed_marked_renames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("file"), "f").unwrap();
    let dev = device(root, SharePolicy::Workspace);
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    init(&dev, &mut drv, &mut q, GRANT);

    let long = "n".repeat(600);
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![
            // No NUL after the second name, one name only, an empty name.
            rename_raw(d, b"file\0new", FUSE_RENAME_HUTCH_REPORT, REPORT_REPLY),
            rename_raw(d, b"file\0", FUSE_RENAME_HUTCH_REPORT, REPORT_REPLY),
            rename_raw(d, b"\0new\0", FUSE_RENAME_HUTCH_REPORT, REPORT_REPLY),
            rename(d, "file", &long, 0),
            rename(d, "file", "../escaped", 0),
        ]
    });
    let errors: Vec<i32> = r.iter().map(|(e, _)| -e).collect();
    assert_eq!(
        errors,
        [
            libc::EINVAL,
            libc::EINVAL,
            libc::EINVAL,
            libc::ENAMETOOLONG,
            libc::EINVAL
        ]
    );
    assert!(root.join("file").is_file());
    assert!(!dir.path().parent().unwrap().join("escaped").exists());

    // The read-only root renames nothing, marked or not.
    let dev = device(root, SharePolicy::SystemRoot);
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    init(&dev, &mut drv, &mut q, GRANT);
    let r = exchange(&dev, &mut drv, &mut q, |d| vec![rename(d, "file", "x", 0)]);
    assert_ne!(r[0].0, 0);
    assert!(root.join("file").is_file());
}
