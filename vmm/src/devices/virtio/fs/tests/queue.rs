//! The queue path: real FUSE requests in guest memory through `FsDevice::process_queue`.

use std::ffi::CString;
use std::fs;
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, EntryOut, GetattrIn, InitOut, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ROOT_ID,
};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::fuse_driver::{guest_memory, Desc, Driver, Pending, MEM_SIZE, QUEUE_LEN};
use crate::devices::virtio::fs::poll::Drain;
use crate::devices::virtio::fs::{FsDevice, ShareConfig, SharePolicy};

const CONTENT: &[u8] = b"hello from the host workspace\n";

fn workspace() -> (tempfile::TempDir, FsDevice) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("hello.txt"), CONTENT).unwrap();
    let dev = FsDevice::new(ShareConfig {
        tag: "work".into(),
        source: dir.path().into(),
        policy: SharePolicy::Workspace,
    })
    .unwrap();
    (dir, dev)
}

/// Asserts that exactly the chains of `pending` were used, in order, with the lengths their
/// headers announce, and that each reply succeeded; returns the bodies.
fn expect_ok(drv: &mut Driver<'_>, pending: &[Pending]) -> Vec<Vec<u8>> {
    let used = drv.used();
    assert_eq!(used.len(), pending.len(), "used ring: {used:?}");
    pending
        .iter()
        .zip(used)
        .map(|(p, (id, len))| {
            let (header, body) = drv.reply(p);
            assert_eq!(id, u32::from(p.head));
            assert_eq!(header.unique, p.unique);
            assert_eq!(header.error, 0, "request {} failed", p.unique);
            assert_eq!(len, header.len);
            body
        })
        .collect()
}

fn lookup(drv: &mut Driver<'_>, parent: u64, name: &str) -> Pending {
    let name = CString::new(name).unwrap();
    let reply = (size_of::<OutHeader>() + size_of::<EntryOut>()) as u32;
    drv.request(Opcode::Lookup, parent, name.as_bytes_with_nul(), &[reply])
}

fn getattr(drv: &mut Driver<'_>, node: u64) -> Pending {
    let reply = (size_of::<OutHeader>() + size_of::<AttrOut>()) as u32;
    drv.request(
        Opcode::Getattr,
        node,
        GetattrIn::default().as_slice(),
        &[reply],
    )
}

#[test]
fn init_lookup_getattr_open_read() {
    let (_dir, dev) = workspace();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();

    let init = drv.init();
    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    let out: InitOut = Driver::parse(&expect_ok(&mut drv, &[init])[0]);
    assert_eq!(out.major, 7);
    assert!(out.minor >= 31);

    let look = lookup(&mut drv, ROOT_ID, "hello.txt");
    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    let entry: EntryOut = Driver::parse(&expect_ok(&mut drv, &[look])[0]);
    assert_ne!(entry.nodeid, 0);
    assert_eq!(entry.attr.size, CONTENT.len() as u64);

    // GETATTR and OPEN in one kick: both are processed. OPEN gets ENOSYS
    // (zero-message open: the guest stops sending OPEN and RELEASE), and
    // READ then comes with handle 0.
    let attr = getattr(&mut drv, entry.nodeid);
    let open_in = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let open = drv.request(
        Opcode::Open,
        entry.nodeid,
        open_in.as_slice(),
        &[(size_of::<OutHeader>() + size_of::<OpenOut>()) as u32],
    );
    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    assert_eq!(drv.used().len(), 2);
    let (header, body) = drv.reply(&attr);
    assert_eq!(header.error, 0);
    let attr: AttrOut = Driver::parse(&body);
    assert_eq!(attr.attr.size, CONTENT.len() as u64);
    assert_eq!(attr.attr.ino, entry.attr.ino);
    let (header, _) = drv.reply(&open);
    assert_eq!(header.error, -libc::ENOSYS);

    // READ into a chain whose writable part is split: header, then data.
    let read_in = ReadIn {
        fh: 0,
        offset: 0,
        size: 4096,
        ..Default::default()
    };
    let read = drv.request(
        Opcode::Read,
        entry.nodeid,
        read_in.as_slice(),
        &[size_of::<OutHeader>() as u32, 4096],
    );
    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    let data = expect_ok(&mut drv, &[read]).remove(0);
    assert_eq!(data, CONTENT);
    assert_eq!(dev.malformed_chains(), 0);
}

#[test]
fn malformed_chains_are_consumed_and_the_queue_keeps_working() {
    let (_dir, dev) = workspace();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    let init = drv.init();
    dev.process_queue(&mem, &mut queue).unwrap();
    expect_ok(&mut drv, &[init]);

    let buf = drv.alloc(4096);
    let reply = drv.alloc(4096);
    // 1. Readable descriptor outside guest memory.
    let outside = drv.add_chain(&[Desc::read(MEM_SIZE + 0x1000, 64), Desc::write(reply, 64)]);
    // 2. Readable descriptor running past the end of guest memory.
    let straddle = drv.add_chain(&[Desc::read(MEM_SIZE - 8, 64), Desc::write(reply, 64)]);
    // 3. Only a readable descriptor, too short for a fuse_in_header.
    let short = drv.add_chain(&[Desc::read(buf, 8)]);
    // 4. Only a writable descriptor.
    let write_only = drv.add_chain(&[Desc::write(reply, 4096)]);
    // 5. A descriptor that links to itself.
    let looped_at = drv.next_desc();
    let looped = drv.add_raw(&[RawDescriptor::from(SplitDescriptor::new(
        buf,
        64,
        VRING_DESC_F_NEXT as u16,
        looped_at,
    ))]);
    // 6. A valid request after all of them.
    let attr = getattr(&mut drv, ROOT_ID);

    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    let used = drv.used();
    let heads: Vec<u32> = [outside, straddle, short, write_only, looped, attr.head]
        .into_iter()
        .map(u32::from)
        .collect();
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads);
    assert!(used[..5].iter().all(|&(_, len)| len == 0), "{used:?}");
    assert_eq!(dev.malformed_chains(), 5);
    let (header, _) = drv.reply(&attr);
    assert_eq!(header.error, 0);
    assert_eq!(used[5].1, header.len);

    // And the queue still serves requests afterwards.
    let again = getattr(&mut drv, ROOT_ID);
    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    expect_ok(&mut drv, &[again]);
}

#[test]
fn bad_heads_and_a_corrupt_avail_index_do_not_hang() {
    let (_dir, dev) = workspace();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    queue.set_event_idx(true);
    let init = drv.init();
    dev.process_queue(&mem, &mut queue).unwrap();
    expect_ok(&mut drv, &[init]);

    // A head index beyond the descriptor table: consumed, nothing to give back.
    drv.push_avail(QUEUE_LEN + 5);
    let attr = getattr(&mut drv, ROOT_ID);
    dev.process_queue(&mem, &mut queue).unwrap();
    expect_ok(&mut drv, &[attr]);
    assert_eq!(queue.next_avail(), 3);

    // An avail index more than a queue ahead: refused without spinning.
    let idx: u16 = drv.vq.avail().idx().load();
    drv.vq.avail().idx().store(idx.wrapping_add(QUEUE_LEN + 1));
    assert!(!dev.process_queue(&mem, &mut queue).unwrap());
    assert!(drv.used().is_empty());
}

#[test]
fn event_idx_suppresses_notifications_as_the_driver_asks() {
    let (_dir, dev) = workspace();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    queue.set_event_idx(true);

    // used_event = 0: the first used element crosses it.
    let init = drv.init();
    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    expect_ok(&mut drv, &[init]);
    // The device asks to be kicked for the next available entry.
    assert_eq!(drv.avail_event(), 1);

    // used_event still 0: no interrupt for the second one.
    let attr = getattr(&mut drv, ROOT_ID);
    assert!(!dev.process_queue(&mem, &mut queue).unwrap());
    expect_ok(&mut drv, &[attr]);
    assert_eq!(drv.avail_event(), 2);

    // The driver wants an interrupt when used index passes 2.
    drv.set_used_event(2);
    let attr = getattr(&mut drv, ROOT_ID);
    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    expect_ok(&mut drv, &[attr]);

    // Nothing available: nothing to notify.
    assert!(!dev.process_queue(&mem, &mut queue).unwrap());
}

#[test]
fn indirect_descriptors_are_followed() {
    let (_dir, dev) = workspace();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    let init = drv.init();
    dev.process_queue(&mem, &mut queue).unwrap();
    expect_ok(&mut drv, &[init]);

    // GETATTR(root), its two descriptors in an indirect table.
    let req_len =
        (size_of::<fuse_backend_rs::abi::fuse_abi::InHeader>() + size_of::<GetattrIn>()) as u32;
    let reply_len = (size_of::<OutHeader>() + size_of::<AttrOut>()) as u32;
    let req = drv.alloc(req_len);
    let reply = drv.alloc(reply_len);
    let header = fuse_backend_rs::abi::fuse_abi::InHeader {
        len: req_len,
        opcode: Opcode::Getattr as u32,
        unique: 77,
        nodeid: ROOT_ID,
        ..Default::default()
    };
    mem.write_slice(header.as_slice(), GuestAddress(req))
        .unwrap();
    mem.write_slice(
        GetattrIn::default().as_slice(),
        GuestAddress(req + header.as_slice().len() as u64),
    )
    .unwrap();
    let table = drv.alloc(32);
    let descs = [
        SplitDescriptor::new(req, req_len, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(
            reply,
            reply_len,
            virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
            0,
        ),
    ];
    for (i, d) in descs.iter().enumerate() {
        mem.write_obj(RawDescriptor::from(*d), GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let head = drv.add_raw(&[RawDescriptor::from(SplitDescriptor::new(
        table,
        32,
        virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16,
        0,
    ))]);

    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    let used = drv.used();
    let out: OutHeader = mem.read_obj(GuestAddress(reply)).unwrap();
    assert_eq!(used, vec![(u32::from(head), out.len)]);
    assert_eq!(out.error, 0);
    assert_eq!(out.unique, 77);
}

#[test]
fn system_root_share_applies_its_policy_over_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
    fs::create_dir_all(dir.path().join("home/user")).unwrap();
    let dev = FsDevice::new(ShareConfig {
        tag: "sysroot".into(),
        source: dir.path().into(),
        policy: SharePolicy::SystemRoot,
    })
    .unwrap();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    let init = drv.init();
    let usr = lookup(&mut drv, ROOT_ID, "usr");
    dev.process_queue(&mem, &mut queue).unwrap();
    expect_ok(&mut drv, &[init, usr]);

    let home = lookup(&mut drv, ROOT_ID, "home");
    dev.process_queue(&mem, &mut queue).unwrap();
    let (header, body) = drv.reply(&home);
    // A negative entry: success with node id 0 and a cache lifetime, which the
    // guest turns into ENOENT (and remembers).
    assert_eq!(header.error, 0);
    let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().unwrap());
    assert_eq!(u64_at(0), 0, "nodeid");
    assert_eq!(u64_at(16), 60, "entry_valid seconds");
    assert_eq!(drv.used(), vec![(u32::from(home.head), header.len)]);
}

#[test]
fn config_space_and_features() {
    let (_dir, dev) = workspace();
    let cfg = dev.config_space();
    assert_eq!(&cfg[..4], b"work");
    assert!(cfg[4..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);
    assert_ne!(dev.device_features() & (1 << 32), 0, "VIRTIO_F_VERSION_1");
    assert_eq!(dev.tag(), "work");
}

#[test]
fn bad_share_configs_are_refused_with_their_tag_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let cfg = |tag: &str, source: std::path::PathBuf| ShareConfig {
        tag: tag.into(),
        source,
        policy: SharePolicy::Workspace,
    };
    let err = FsDevice::new(cfg("", dir.path().into())).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = FsDevice::new(cfg(&"t".repeat(37), dir.path().into())).unwrap_err();
    assert!(err.to_string().contains("36"), "{err}");
    let err = FsDevice::new(cfg("ws", dir.path().join("missing"))).unwrap_err();
    assert!(err.to_string().contains("\"ws\"") && err.to_string().contains("missing"));
    let err = FsDevice::new(cfg("ws", file)).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    // 36 bytes exactly is fine.
    FsDevice::new(cfg(&"t".repeat(36), dir.path().into())).unwrap();
}

#[test]
fn with_a_signal_each_used_request_is_announced_at_once() {
    let (_dir, dev) = workspace();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    let init = drv.init();
    assert!(dev.process_queue(&mem, &mut queue).unwrap());
    expect_ok(&mut drv, &[init]);

    // Three requests in one kick: three interrupts, none owed afterwards.
    let pending: Vec<Pending> = (0..3)
        .map(|_| lookup(&mut drv, ROOT_ID, "hello.txt"))
        .collect();
    let mut signals = 0;
    let mut count = || signals += 1;
    let drain = Drain {
        signal: Some(&mut count),
        irq_window: Some(std::time::Duration::ZERO),
        poll: std::time::Duration::ZERO,
    };
    let owed = dev.process_queue_with(&mem, &mut queue, drain).unwrap();
    assert!(!owed);
    assert_eq!(signals, 3);
    assert_eq!(expect_ok(&mut drv, &pending).len(), 3);
}
