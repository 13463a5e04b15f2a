//! Write-through WRITEs that answer the file's attributes (write_attr.rs)
//! through the queue: INIT grants the private flag only when offered on the
//! workspace; a marked WRITE writes the data and answers the attributes
//! after it, saying "unchanged" only when the file had the mtime and size
//! the guest sent; errors and unmarked WRITEs keep their stock replies.

use std::ffi::CString;
use std::fs;
use std::mem::size_of;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, EntryOut, Opcode, OpenIn, OpenOut, OutHeader, WriteIn, WriteOut, ROOT_ID,
};
use vm_memory::ByteValued;

use super::fuse_driver::{
    exchange, granted, guest_memory, init_ext, share as device, Driver, Pending,
};
use crate::devices::virtio::fs::write_attr::{
    nanos, FUSE_HUTCH_WRITE_ATTR, FUSE_WRITE_HUTCH_ATTR, FUSE_WRITE_HUTCH_UNCHANGED,
};
use crate::devices::virtio::fs::SharePolicy;

const GRANT: u32 = (FUSE_HUTCH_WRITE_ATTR >> 32) as u32;
const PLAIN_REPLY: usize = size_of::<WriteOut>();
const ATTR_REPLY: usize = size_of::<WriteOut>() + size_of::<AttrOut>();

fn lookup(d: &mut Driver<'_>, name: &str) -> Pending {
    let name = CString::new(name).unwrap();
    let reply = (size_of::<OutHeader>() + size_of::<EntryOut>()) as u32;
    d.request(Opcode::Lookup, ROOT_ID, name.as_bytes_with_nul(), &[reply])
}

/// A WRITE at `offset`; `view` is the (mtime ns, size) the guest holds, and
/// marks the request.
fn write(
    d: &mut Driver<'_>,
    node: u64,
    offset: u64,
    data: &[u8],
    view: Option<(u64, u64)>,
) -> Pending {
    let (lock_owner, padding, marked) = view.map_or((0, 0, 0), |(ns, size)| {
        (ns, size as u32, FUSE_WRITE_HUTCH_ATTR)
    });
    let w = WriteIn {
        fh: 0,
        offset,
        size: data.len() as u32,
        fuse_flags: marked,
        lock_owner,
        flags: libc::O_RDWR as u32,
        padding,
    };
    let mut body = w.as_slice().to_vec();
    body.extend_from_slice(data);
    let reply = (size_of::<OutHeader>() + ATTR_REPLY) as u32;
    d.request(Opcode::Write, node, &body, &[reply])
}

/// The host file's (mtime ns, size): what a guest that just heard holds.
fn view(path: &Path) -> (u64, u64) {
    let m = fs::metadata(path).unwrap();
    (nanos(m.mtime(), m.mtime_nsec()) as u64, m.size())
}

/// A workspace over `root` with the grant taken, `f` opened, and its node id.
fn setup<'a>(
    root: &Path,
    mem: &'a vm_memory::GuestMemoryMmap,
) -> (
    crate::devices::virtio::fs::FsDevice,
    Driver<'a>,
    virtio_queue::Queue,
    u64,
) {
    let dev = device(root, SharePolicy::Workspace);
    let mut drv = Driver::new(mem);
    let mut q = drv.queue();
    let (_, flags2) = init_ext(&dev, &mut drv, &mut q, GRANT);
    assert_eq!(flags2 & GRANT, GRANT, "the workspace grants the flag");
    let r = exchange(&dev, &mut drv, &mut q, |d| vec![lookup(d, "f")]);
    assert_eq!(r[0].0, 0);
    let node = Driver::parse::<EntryOut>(&r[0].1).nodeid;
    let open_in = OpenIn {
        flags: libc::O_RDWR as u32,
        ..Default::default()
    };
    let reply = (size_of::<OutHeader>() + size_of::<OpenOut>()) as u32;
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![d.request(Opcode::Open, node, open_in.as_slice(), &[reply])]
    });
    assert!(r[0].0 == 0 || r[0].0 == -libc::ENOSYS, "OPEN: {}", r[0].0);
    (dev, drv, q, node)
}

fn answer(body: &[u8]) -> (WriteOut, Option<AttrOut>) {
    let out: WriteOut = Driver::parse(&body[..PLAIN_REPLY]);
    let attr = (body.len() == ATTR_REPLY).then(|| Driver::parse(&body[PLAIN_REPLY..]));
    (out, attr)
}

#[test]
fn init_grants_the_flag_only_when_offered_on_the_workspace() {
    assert_eq!(granted(SharePolicy::Workspace, GRANT) & GRANT, GRANT);
    assert_eq!(granted(SharePolicy::Workspace, 0) & GRANT, 0, "not offered");
    assert_eq!(
        granted(SharePolicy::SystemRoot, GRANT) & GRANT,
        0,
        "the root writes nothing"
    );
}

#[test]
fn marked_write_answers_the_attributes_and_whether_the_file_was_as_the_guest_knew() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, "0123456789").unwrap();
    let mem = guest_memory();
    let (dev, mut drv, mut q, node) = setup(dir.path(), &mem);

    // The guest's view is the file's: unchanged, and the new attributes.
    let known = view(&f);
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![write(d, node, 8, b"abcdef", Some(known))]
    });
    assert_eq!(r[0].0, 0);
    let (out, attr) = answer(&r[0].1);
    assert_eq!(out.size, 6);
    assert_eq!(out.padding, FUSE_WRITE_HUTCH_UNCHANGED);
    let attr = attr.expect("the attributes follow fuse_write_out");
    assert_eq!(fs::read(&f).unwrap(), b"01234567abcdef");
    let after = fs::metadata(&f).unwrap();
    assert_eq!(attr.attr.size, 14);
    assert_eq!(attr.attr.ino, after.ino());
    assert_eq!(
        (attr.attr.mtime as i64, i64::from(attr.attr.mtimensec)),
        (after.mtime(), after.mtime_nsec())
    );
    assert!(attr.attr_valid > 0, "the workspace's attribute timeout");

    // The answered attributes are the next view; a host edit in between
    // (same size, a later mtime) makes the next WRITE "changed".
    let next = (
        nanos(attr.attr.mtime as i64, attr.attr.mtimensec.into()) as u64,
        attr.attr.size,
    );
    assert_eq!(next, view(&f));
    fs::write(&f, "HOST-EDIT-0000").unwrap();
    // Set the mtime outright: a coarse clock may leave it equal.
    let later = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(next.0 + 1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_ne!(view(&f).0, next.0, "the host edit moved the mtime");
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![write(d, node, 0, b"g", Some(next))]
    });
    assert_eq!(r[0].0, 0);
    let (out, attr) = answer(&r[0].1);
    assert_eq!((out.size, out.padding), (1, 0), "not unchanged");
    assert_eq!(attr.expect("attributes either way").attr.size, 14);
    assert_eq!(fs::read(&f).unwrap(), b"gOST-EDIT-0000");

    // A size the guest does not know (a host truncate) is a change too.
    let now = view(&f);
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![write(d, node, 0, b"h", Some((now.0, now.1 + 1)))]
    });
    assert_eq!(answer(&r[0].1).0.padding, 0, "another size");
    assert_eq!(fs::read(&f).unwrap(), b"hOST-EDIT-0000");
}

#[test]
fn unmarked_writes_and_errors_keep_their_stock_replies() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, "data").unwrap();
    let mem = guest_memory();
    let (dev, mut drv, mut q, node) = setup(dir.path(), &mem);

    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![
            write(d, node, 4, b"+plain", None),
            // A node id the server never gave out.
            write(d, 0xdead_beef, 0, b"x", Some(view(&f))),
        ]
    });
    assert_eq!(r[0].0, 0);
    assert_eq!(r[0].1.len(), PLAIN_REPLY, "no attributes unless asked");
    assert_eq!(answer(&r[0].1).0.size, 6);
    assert_eq!(fs::read(&f).unwrap(), b"data+plain");
    assert!(r[1].0 < 0, "an unknown node: {}", r[1].0);
    assert!(r[1].1.is_empty(), "an error carries no body");

    // A marked WRITE whose size claims more data than the request holds.
    let w = WriteIn {
        size: 4096,
        fuse_flags: FUSE_WRITE_HUTCH_ATTR,
        ..Default::default()
    };
    let mut body = w.as_slice().to_vec();
    body.extend_from_slice(b"short");
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![d.request(Opcode::Write, node, &body, &[256])]
    });
    assert_eq!(r[0].0, -libc::EINVAL);
    assert_eq!(fs::read(&f).unwrap(), b"data+plain", "nothing written");
}
