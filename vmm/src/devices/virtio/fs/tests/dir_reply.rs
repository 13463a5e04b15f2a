//! Listings answered from one buffer (dir_reply.rs), through the device:
//! READDIR and READDIRPLUS answers in 4 KiB chunks hold every name of the
//! host's listing once, laid out as FUSE lays them out (8-byte aligned,
//! the header's length the sum of the entries), READDIRPLUS entries with
//! the file's own attributes; a chain with less room than the request asks
//! for and an unknown handle are errors, not answers.

use std::collections::BTreeMap;
use std::mem::size_of;
use std::os::unix::fs::MetadataExt;

use fuse_backend_rs::abi::fuse_abi::{
    Dirent, EntryOut, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ROOT_ID,
};
use vm_memory::ByteValued;

use super::fuse_driver::{exchange, guest_memory, init_ext, share, Driver};
use crate::devices::virtio::fs::{FsDevice, SharePolicy};

const CHUNK: u32 = 4096;

fn read_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}

/// One entry of an answer.
struct Listed {
    name: String,
    ino: u64,
    off: u64,
    /// READDIRPLUS: the entry's node id and attribute inode.
    entry: Option<(u64, u64)>,
}

/// Every entry of one answer, checking the layout.
fn entries(body: &[u8], plus: bool) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let entry = plus.then(|| {
            let e: EntryOut = Driver::parse(&body[at..]);
            at += size_of::<EntryOut>();
            (e.nodeid, e.attr.ino)
        });
        let d: Dirent = Driver::parse(&body[at..]);
        let name_at = at + size_of::<Dirent>();
        let name = &body[name_at..name_at + d.namelen as usize];
        out.push(Listed {
            name: String::from_utf8(name.to_vec()).unwrap(),
            ino: d.ino,
            off: d.off,
            entry,
        });
        let padded = (size_of::<Dirent>() + d.namelen as usize + 7) & !7;
        assert!(
            body[name_at + d.namelen as usize..at + padded]
                .iter()
                .all(|b| *b == 0),
            "padding is zeroes"
        );
        at += padded;
    }
    assert_eq!(at, body.len(), "the answer ends on an entry's end");
    out
}

/// Lists the root through `op` in 4 KiB answers; name → (d_ino, entry).
fn list(
    dev: &FsDevice,
    drv: &mut Driver<'_>,
    q: &mut virtio_queue::Queue,
    op: Opcode,
) -> BTreeMap<String, (u64, Option<(u64, u64)>)> {
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let reply = (size_of::<OutHeader>() + size_of::<OpenOut>()) as u32;
    let r = exchange(dev, drv, q, |d| {
        vec![d.request(Opcode::Opendir, ROOT_ID, open.as_slice(), &[reply])]
    });
    assert_eq!(r[0].0, 0);
    let fh = Driver::parse::<OpenOut>(&r[0].1).fh;
    let (mut names, mut offset) = (BTreeMap::new(), 0);
    loop {
        let r = exchange(dev, drv, q, |d| {
            let body = read_in(fh, offset, CHUNK);
            vec![d.request(op, ROOT_ID, &body, &[size_of::<OutHeader>() as u32 + CHUNK])]
        });
        assert_eq!(r[0].0, 0, "{op:?} at {offset}");
        let got = entries(&r[0].1, matches!(op, Opcode::Readdirplus));
        if got.is_empty() {
            return names;
        }
        assert!(r[0].1.len() <= CHUNK as usize);
        for e in got {
            let seen = names.insert(e.name, (e.ino, e.entry));
            assert!(seen.is_none(), "a name came twice");
            offset = e.off;
        }
    }
}

#[test]
fn listings_from_one_buffer_are_the_hosts_and_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..300 {
        let name = format!("file-{i:03}-{}", "x".repeat(i % 40));
        std::fs::write(dir.path().join(name), "").unwrap();
    }
    let mem = guest_memory();
    let dev = share(dir.path(), SharePolicy::Workspace);
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue();
    init_ext(&dev, &mut drv, &mut q, 0);

    let plain = list(&dev, &mut drv, &mut q, Opcode::Readdir);
    let plus = list(&dev, &mut drv, &mut q, Opcode::Readdirplus);
    assert_eq!(plain.len(), 302, "300 files, . and ..");
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        plus.keys().collect::<Vec<_>>()
    );
    for (name, (ino, entry)) in &plus {
        let host = std::fs::symlink_metadata(dir.path().join(name)).unwrap();
        assert_eq!(*ino, host.ino(), "{name}");
        assert_eq!(plain[name].0, host.ino(), "{name}");
        let (node, attr_ino) = entry.unwrap();
        if name != "." && name != ".." {
            assert!(node != 0, "{name} has a node");
            assert_eq!(attr_ino, host.ino(), "{name}: its own attributes");
        }
    }

    // A chain with less room than the size asked for, and a handle that
    // was never opened.
    let r = exchange(&dev, &mut drv, &mut q, |d| {
        vec![
            d.request(Opcode::Readdir, ROOT_ID, &read_in(1, 0, CHUNK), &[64]),
            d.request(
                Opcode::Readdirplus,
                ROOT_ID,
                &read_in(u64::MAX, 0, CHUNK),
                &[size_of::<OutHeader>() as u32 + CHUNK],
            ),
        ]
    });
    assert_eq!(r[0].0, -libc::ENOMEM);
    assert!(r[1].0 < 0, "an unknown handle: {}", r[1].0);
}
