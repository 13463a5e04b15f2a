//! FUSE_TMPFILE (the guest's O_TMPFILE) through the queue: an unnamed host
//! file, written, read, linked to a name, and freed.

use std::ffi::CString;
use std::fs;
use std::mem::size_of;
use std::os::unix::fs::MetadataExt;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, ForgetIn, GetattrIn, LinkIn, Opcode, OpenOut, OutHeader, ReadIn,
    ReleaseIn, WriteIn, ROOT_ID,
};
use vm_memory::ByteValued;

use super::fuse_driver::{exchange, guest_memory, Driver, Pending};
use crate::devices::virtio::fs::{FsDevice, ShareConfig, SharePolicy};

const FUSE_TMPFILE: u32 = 51;
const ENTRY_OPEN_REPLY: u32 =
    (size_of::<OutHeader>() + size_of::<EntryOut>() + size_of::<OpenOut>()) as u32;

fn device(dir: &tempfile::TempDir, policy: SharePolicy) -> FsDevice {
    FsDevice::new(ShareConfig {
        tag: "work".into(),
        source: dir.path().into(),
        policy,
    })
    .unwrap()
}

fn tmpfile(drv: &mut Driver<'_>, parent: u64, flags: i32) -> Pending {
    let args = CreateIn {
        flags: (libc::O_RDWR | flags) as u32,
        mode: 0o4755,
        umask: 0o022,
        fuse_flags: 0,
    };
    let mut body = args.as_slice().to_vec();
    body.extend_from_slice(b"/\0");
    drv.request_raw(FUSE_TMPFILE, parent, &body, &[ENTRY_OPEN_REPLY])
}

fn link(drv: &mut Driver<'_>, node: u64, name: &str) -> Pending {
    let mut body = LinkIn { oldnodeid: node }.as_slice().to_vec();
    body.extend_from_slice(CString::new(name).unwrap().as_bytes_with_nul());
    let reply = (size_of::<OutHeader>() + size_of::<EntryOut>()) as u32;
    drv.request(Opcode::Link, ROOT_ID, &body, &[reply])
}

fn names(dir: &tempfile::TempDir) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn an_unnamed_file_is_written_linked_read_and_freed() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(&dir, SharePolicy::Workspace);
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![d.init(), tmpfile(d, ROOT_ID, 0)]
    });
    assert_eq!(r[1].0, 0, "TMPFILE failed");
    let entry: EntryOut = Driver::parse(&r[1].1);
    let opened: OpenOut = Driver::parse(&r[1].1[size_of::<EntryOut>()..]);
    assert_ne!(entry.nodeid, 0);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);
    // umask applied, set-user-ID stripped: never a set-ID file on the host.
    assert_eq!(entry.attr.mode & 0o7777, 0o755);
    assert!(names(&dir).is_empty(), "an unnamed file has no name");
    assert_eq!(dev.tmp_files(), 1);

    let data = b"anonymous";
    let w = WriteIn {
        fh: opened.fh,
        size: data.len() as u32,
        ..Default::default()
    };
    let mut body = w.as_slice().to_vec();
    body.extend_from_slice(data);
    let attr_reply = (size_of::<OutHeader>() + size_of::<AttrOut>()) as u32;
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![
            d.request(Opcode::Write, entry.nodeid, &body, &[64]),
            d.request(
                Opcode::Getattr,
                entry.nodeid,
                GetattrIn::default().as_slice(),
                &[attr_reply],
            ),
        ]
    });
    assert_eq!((r[0].0, r[1].0), (0, 0));
    let attr: AttrOut = Driver::parse(&r[1].1);
    assert_eq!(attr.attr.size, data.len() as u64);
    assert_eq!(attr.attr.ino, entry.attr.ino);

    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![link(d, entry.nodeid, "named")]
    });
    assert_eq!(r[0].0, 0, "LINK failed");
    let named: EntryOut = Driver::parse(&r[0].1);
    // The same node: the guest keeps one inode (and page cache) for the file.
    assert_eq!(named.nodeid, entry.nodeid);
    assert_eq!(named.attr.nlink, 1);
    let host = dir.path().join("named");
    assert_eq!(fs::read(&host).unwrap(), data);
    assert_eq!(fs::metadata(&host).unwrap().nlink(), 1);

    let read = ReadIn {
        fh: opened.fh,
        size: 64,
        ..Default::default()
    };
    let release = ReleaseIn {
        fh: opened.fh,
        ..Default::default()
    };
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![
            d.request(
                Opcode::Read,
                entry.nodeid,
                read.as_slice(),
                &[size_of::<OutHeader>() as u32, 64],
            ),
            d.request(Opcode::Release, entry.nodeid, release.as_slice(), &[64]),
            // TMPFILE and LINK each counted one lookup.
            d.request(
                Opcode::Forget,
                entry.nodeid,
                ForgetIn { nlookup: 2 }.as_slice(),
                &[],
            ),
        ]
    });
    assert_eq!((r[0].0, r[1].0), (0, 0));
    assert_eq!(r[0].1, data);
    assert_eq!(dev.tmp_files(), 0);
    // The name outlives the unnamed node.
    assert_eq!(fs::read(&host).unwrap(), data);
    assert_eq!(names(&dir), ["named"]);
}

#[test]
fn bad_tmpfile_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("file"), b"x").unwrap();
    let dev = device(&dir, SharePolicy::Workspace);
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    let look = {
        let reply = (size_of::<OutHeader>() + size_of::<EntryOut>()) as u32;
        move |d: &mut Driver<'_>| d.request(Opcode::Lookup, ROOT_ID, b"file\0", &[reply])
    };
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![
            d.init(),
            look(d),
            // O_EXCL: may never be linked.
            tmpfile(d, ROOT_ID, libc::O_EXCL),
            // A truncated body: no fuse_create_in.
            d.request_raw(FUSE_TMPFILE, ROOT_ID, &[0; 4], &[ENTRY_OPEN_REPLY]),
            // A node id that was never given.
            tmpfile(d, 999_999, 0),
        ]
    });
    let file: EntryOut = Driver::parse(&r[1].1);
    assert_eq!(r[2].0, 0);
    let excl: EntryOut = Driver::parse(&r[2].1);
    assert_eq!(r[3].0, -libc::EINVAL);
    assert_ne!(r[4].0, 0);

    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![
            // Not a directory.
            tmpfile(d, file.nodeid, 0),
            link(d, excl.nodeid, "excl"),
            link(d, excl.nodeid, "a/b"),
            link(d, excl.nodeid, ".."),
            // A node id in the unnamed range that does not exist.
            link(d, excl.nodeid + 100, "ghost"),
        ]
    });
    assert_eq!(r[0].0, -libc::ENOTDIR);
    assert_eq!(r[1].0, -libc::ENOENT, "an O_EXCL file was linked");
    assert_eq!(r[2].0, -libc::EINVAL);
    assert_eq!(r[3].0, -libc::EINVAL);
    assert_eq!(r[4].0, -libc::EBADF);
    assert_eq!(names(&dir), ["file"]);
    assert_eq!(dev.malformed_chains(), 0);
}

#[test]
fn the_system_root_refuses_unnamed_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("usr")).unwrap();
    let dev = device(&dir, SharePolicy::SystemRoot);
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![d.init(), tmpfile(d, ROOT_ID, 0)]
    });
    assert_eq!(r[1].0, -libc::EROFS);
    assert_eq!(dev.tmp_files(), 0);
}
