//! Zero-message open (openfiles.rs) through the queue: OPEN answered ENOSYS,
//! then READ and WRITE with handle 0 served by descriptors cached per inode,
//! and given back when the guest forgets the inode.

use std::ffi::CString;
use std::fs;
use std::mem::size_of;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, ForgetIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, WriteIn, ROOT_ID,
};
use vm_memory::ByteValued;

use super::fuse_driver::{exchange, guest_memory, Driver, Pending};
use crate::devices::virtio::fs::{FsDevice, ShareConfig, SharePolicy};

const ENTRY_REPLY: u32 = (size_of::<OutHeader>() + size_of::<EntryOut>()) as u32;

fn device(dir: &Path) -> FsDevice {
    FsDevice::new(ShareConfig {
        tag: "work".into(),
        source: dir.into(),
        policy: SharePolicy::Workspace,
    })
    .unwrap()
}

fn lookup(d: &mut Driver<'_>, name: &str) -> Pending {
    let name = CString::new(name).unwrap();
    d.request(
        Opcode::Lookup,
        ROOT_ID,
        name.as_bytes_with_nul(),
        &[ENTRY_REPLY],
    )
}

fn create(d: &mut Driver<'_>, name: &str, flags: i32, mode: u32) -> Pending {
    let args = CreateIn {
        flags: flags as u32,
        mode,
        umask: 0,
        fuse_flags: 0,
    };
    let mut body = args.as_slice().to_vec();
    body.extend_from_slice(CString::new(name).unwrap().as_bytes_with_nul());
    let reply = ENTRY_REPLY + size_of::<OpenOut>() as u32;
    d.request(Opcode::Create, ROOT_ID, &body, &[reply])
}

fn write(d: &mut Driver<'_>, node: u64, offset: u64, data: &[u8], flags: i32) -> Pending {
    let w = WriteIn {
        fh: 0,
        offset,
        size: data.len() as u32,
        flags: flags as u32,
        ..Default::default()
    };
    let mut body = w.as_slice().to_vec();
    body.extend_from_slice(data);
    d.request(Opcode::Write, node, &body, &[64])
}

fn read(d: &mut Driver<'_>, node: u64) -> Pending {
    let r = ReadIn {
        fh: 0,
        size: 64,
        ..Default::default()
    };
    d.request(
        Opcode::Read,
        node,
        r.as_slice(),
        &[size_of::<OutHeader>() as u32, 64],
    )
}

fn forget(d: &mut Driver<'_>, node: u64) -> Pending {
    d.request(
        Opcode::Forget,
        node,
        ForgetIn { nlookup: 1 }.as_slice(),
        &[],
    )
}

/// How many of this process's descriptors name something beneath `dir`.
fn fds_beneath(dir: &Path) -> usize {
    let prefix = format!("{}/", dir.canonicalize().unwrap().display());
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with(&prefix))
        .count()
}

#[test]
fn open_is_refused_once_and_handle_zero_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("data"), b"host bytes").unwrap();
    let dev = device(dir.path());
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    let open_in = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![d.init(), lookup(d, "data")]
    });
    assert_eq!(r[1].0, 0);
    let data: EntryOut = Driver::parse(&r[1].1);
    let open_reply = (size_of::<OutHeader>() + size_of::<OpenOut>()) as u32;
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![
            d.request(Opcode::Open, data.nodeid, open_in.as_slice(), &[open_reply]),
            read(d, data.nodeid),
        ]
    });
    assert_eq!(r[0].0, -libc::ENOSYS, "OPEN is answered ENOSYS");
    assert_eq!((r[1].0, r[1].1.as_slice()), (0, &b"host bytes"[..]));
    assert_eq!(dev.cached_open_files(), 1);

    // CREATE hands out handle 0; its descriptor serves the writes.
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![create(d, "new", libc::O_WRONLY, 0o644)]
    });
    assert_eq!(r[0].0, 0);
    let new: EntryOut = Driver::parse(&r[0].1);
    let opened: OpenOut = Driver::parse(&r[0].1[size_of::<EntryOut>()..]);
    assert_eq!(opened.fh, 0);
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![
            write(d, new.nodeid, 0, b"guest", libc::O_WRONLY),
            read(d, new.nodeid),
        ]
    });
    assert_eq!((r[0].0, r[1].0), (0, 0));
    assert_eq!(r[1].1, b"guest");
    assert_eq!(fs::read(dir.path().join("new")).unwrap(), b"guest");

    // The flags of each WRITE still apply: O_APPEND appends at the host's end
    // even when the guest's offset is stale.
    fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("new"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+host"))
        .unwrap();
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![write(
            d,
            new.nodeid,
            0,
            b"+tail",
            libc::O_WRONLY | libc::O_APPEND,
        )]
    });
    assert_eq!(r[0].0, 0);
    assert_eq!(
        fs::read(dir.path().join("new")).unwrap(),
        b"guest+host+tail"
    );

    // Forgetting the inodes gives every descriptor back.
    assert!(fds_beneath(dir.path()) >= 2);
    exchange(&dev, &mut drv, &mut queue, |d| {
        vec![forget(d, data.nodeid), forget(d, new.nodeid)]
    });
    assert_eq!(dev.cached_open_files(), 0);
    assert_eq!(fds_beneath(dir.path()), 0, "descriptors left open");

    // A request on a node the guest does not hold is refused.
    let r = exchange(&dev, &mut drv, &mut queue, |d| vec![read(d, data.nodeid)]);
    assert_eq!(r[0].0, -libc::EBADF);
    assert_eq!(dev.cached_open_files(), 0);
}

/// Restores the calling thread's file system uid when dropped.
struct FsUid(u32);

impl FsUid {
    fn set(uid: u32) -> Self {
        // SAFETY: setfsuid changes only this thread's credentials (the raw
        // syscall; glibc does not broadcast it) and takes no pointers.
        let old = unsafe { libc::syscall(libc::SYS_setfsuid, uid) } as u32;
        FsUid(old)
    }
}

impl Drop for FsUid {
    fn drop(&mut self) {
        // SAFETY: as in `set`.
        unsafe { libc::syscall(libc::SYS_setfsuid, self.0) };
    }
}

#[test]
fn a_read_only_file_stays_writable_through_its_creator() {
    // git writes its objects this way: open(O_CREAT | O_RDWR, 0444), then write.
    // As a host user who is not root, the server could not open such a file
    // for writing again; the descriptor CREATE opened must serve the writes.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("a_read_only_file_stays_writable_through_its_creator: needs root to switch the file system uid; not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let dev = device(dir.path());
    let mem = guest_memory();
    let mut drv = Driver::new(&mem);
    let mut queue = drv.queue();
    // The device runs on this thread, which acts as an unprivileged user from
    // here on (set before the device's first request drops CAP_SETUID).
    let _user = FsUid::set(65534);
    exchange(&dev, &mut drv, &mut queue, |d| vec![d.init()]);
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![create(d, "obj", libc::O_RDWR | libc::O_EXCL, 0o444)]
    });
    assert_eq!(r[0].0, 0, "CREATE");
    let obj: EntryOut = Driver::parse(&r[0].1);
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![write(d, obj.nodeid, 0, b"blob", libc::O_RDWR)]
    });
    assert_eq!(r[0].0, 0, "WRITE through the creating descriptor");
    let host = dir.path().join("obj");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(&host).unwrap()),
        65534
    );
    assert_eq!(fs::read(&host).unwrap(), b"blob");
    assert_eq!(
        fs::metadata(&host).unwrap().permissions().mode() & 0o777,
        0o444
    );
    // Once the guest forgot the file, a new descriptor is opened: refused,
    // which shows that the creating one is what served the write above.
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![forget(d, obj.nodeid), lookup(d, "obj")]
    });
    assert_eq!(r[1].0, 0);
    let again: EntryOut = Driver::parse(&r[1].1);
    let r = exchange(&dev, &mut drv, &mut queue, |d| {
        vec![write(d, again.nodeid, 0, b"more", libc::O_RDWR)]
    });
    assert_eq!(r[0].0, -libc::EACCES);
    assert_eq!(fs::read(&host).unwrap(), b"blob");
}
