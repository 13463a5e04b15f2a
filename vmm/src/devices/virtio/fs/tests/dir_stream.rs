//! Reading ahead in big listings (dir_stream.rs): the listing the guest gets
//! is the host's, whether the worker reads ahead between requests or not,
//! a listing kept open at its end still sees names created since, and the
//! entries looked up ahead for READDIRPLUS are the right names' and are
//! all given back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, ListxattrReply, OpenOptions, ROOT_ID,
};
use fuse_backend_rs::passthrough::PassthroughFs;

use crate::devices::virtio::fs::{DirStreams, HostPath, PolicyFs};

type Fs = PolicyFs<PassthroughFs>;

fn workspace(root: &Path, prefetch: bool) -> Fs {
    let inner = super::passthrough(root);
    let dirs = DirStreams::new(root).unwrap().with_prefetch(prefetch, true);
    let fs = PolicyFs::passthrough(inner, true).with_dir_streams(dirs);
    fs.init(FsOptions::empty()).unwrap();
    fs
}

/// `n` files with 40-byte names: 64 bytes of `linux_dirent64` each.
fn big_dir(root: &Path, n: usize) {
    for i in 0..n {
        fs::write(root.join(format!("{i:06}-{}", "n".repeat(33))), "").unwrap();
    }
}

/// Lists the share's root in READDIR replies of at most `size` bytes as the
/// guest does, calling `between` after each answer; returns the names, the
/// offset after the last entry and the open handle.
fn list(fs: &Fs, size: u32, between: &mut dyn FnMut(&Fs)) -> (BTreeSet<String>, u64, u64) {
    let ctx = Context::new();
    let handle = fs.opendir(&ctx, ROOT_ID, 0).unwrap().0.unwrap();
    let (mut names, mut offset) = (BTreeSet::new(), 0);
    loop {
        let (mut got, mut used) = (0, 0);
        fs.readdir(&ctx, ROOT_ID, handle, size, offset, &mut |e| {
            // A `fuse_dirent` and its name, 8-byte aligned, as the reply holds.
            let len = (24 + e.name.len() + 7) & !7;
            if used + len > size as usize {
                return Ok(0);
            }
            used += len;
            let name = String::from_utf8(e.name.to_vec()).unwrap();
            assert!(names.insert(name), "an entry came twice");
            offset = e.offset;
            got += 1;
            Ok(1)
        })
        .unwrap();
        between(fs);
        if got == 0 {
            return (names, offset, handle);
        }
    }
}

/// Adds what one `read_ahead` did to `total`.
fn add(total: &mut (u64, u64), (batches, names): (u64, u64)) {
    total.0 += batches;
    total.1 += names;
}

fn host_names(root: &Path) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.extend([".".to_owned(), "..".to_owned()]);
    names
}

#[test]
fn a_big_listing_read_ahead_between_requests_is_the_hosts() {
    let dir = tempfile::tempdir().unwrap();
    big_dir(dir.path(), 3000);
    let want = host_names(dir.path());

    let fs = workspace(dir.path(), true);
    let mut ahead = (0, 0);
    let (got, ..) = list(&fs, 32 * 1024, &mut |fs| {
        add(&mut ahead, fs.read_ahead(true))
    });
    assert_eq!(got, want);
    let (read_ahead, looked_up) = ahead;
    assert!(
        read_ahead >= 3,
        "192 KiB of entries: {read_ahead} batches read ahead"
    );
    assert_eq!(looked_up, 0, "plain READDIR looks nothing up");

    // Asked for but dropped (a worker that interrupts after returning):
    // the next request reads for itself.
    let fs = workspace(dir.path(), true);
    let mut ahead = (0, 0);
    let (got, ..) = list(&fs, 32 * 1024, &mut |fs| {
        add(&mut ahead, fs.read_ahead(false))
    });
    assert_eq!(got, want);
    assert_eq!(ahead, (0, 0));

    // Small requests (stock FUSE's 4 KiB) and the lever off list the same.
    let fs = workspace(dir.path(), true);
    let mut ahead = (0, 0);
    let listed = list(&fs, 4096, &mut |fs| add(&mut ahead, fs.read_ahead(true)));
    assert_eq!(listed.0, want);
    assert!(ahead.0 >= 3, "4 KiB requests: {ahead:?}");
    let fs = workspace(dir.path(), false);
    let mut ahead = (0, 0);
    let listed = list(&fs, 32 * 1024, &mut |fs| {
        add(&mut ahead, fs.read_ahead(true))
    });
    assert_eq!(listed.0, want);
    assert_eq!(ahead, (0, 0), "lever off");
}

#[test]
fn a_small_listing_is_not_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    big_dir(dir.path(), 40);
    let fs = workspace(dir.path(), true);
    let mut ahead = (0, 0);
    let (got, ..) = list(&fs, 32 * 1024, &mut |fs| {
        add(&mut ahead, fs.read_ahead(true))
    });
    assert_eq!(got, host_names(dir.path()));
    assert_eq!(ahead, (0, 0));
}

/// What a host descriptor read to its end shows of a name created then.
fn host_sees_late_name(root: &Path) -> Vec<String> {
    let dir = fs::File::open(root).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let getdents = |buf: &mut [u8]| {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        assert!(n >= 0, "{}", std::io::Error::last_os_error());
        n as usize
    };
    while getdents(&mut buf) > 0 {}
    fs::write(root.join("late"), "").unwrap();
    let n = getdents(&mut buf);
    let mut names = Vec::new();
    let mut at = 0;
    while at < n {
        let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
        let name = std::ffi::CStr::from_bytes_until_nul(&buf[at + 19..at + reclen]).unwrap();
        names.push(name.to_str().unwrap().to_owned());
        at += reclen;
    }
    fs::remove_file(root.join("late")).unwrap();
    names
}

/// A listing kept open at its end shows a name created after the end was
/// read ahead just as a host descriptor does (tmpfs before Linux 6.14 and
/// ext4 show it; later tmpfs does not).
#[test]
fn a_listing_at_its_end_sees_what_the_host_sees_of_a_later_name() {
    let dir = tempfile::tempdir().unwrap();
    big_dir(dir.path(), 3000);
    let want = host_sees_late_name(dir.path());
    for prefetch in [true, false] {
        let fs = workspace(dir.path(), prefetch);
        let ctx = Context::new();
        let (_, end, handle) = list(&fs, 32 * 1024, &mut |fs| {
            fs.read_ahead(true);
        });
        fs::write(dir.path().join("late"), "").unwrap();
        let mut late = Vec::new();
        fs.readdir(&ctx, ROOT_ID, handle, 32 * 1024, end, &mut |e| {
            late.push(String::from_utf8(e.name.to_vec()).unwrap());
            Ok(1)
        })
        .unwrap();
        assert_eq!(late, want, "prefetch {prefetch}");
        fs.releasedir(&ctx, ROOT_ID, 0, handle).unwrap();
        fs::remove_file(dir.path().join("late")).unwrap();
    }
    eprintln!("a host descriptor at its end showed {want:?} of a later name");
}

/// PassthroughFs, counting the lookups each node id holds.
struct Counting {
    inner: PassthroughFs,
    held: Mutex<HashMap<u64, i64>>,
}

impl Counting {
    fn held(&self) -> i64 {
        self.held.lock().unwrap().values().sum()
    }
}

impl HostPath for Counting {
    fn host_path(&self, inode: u64) -> io::Result<PathBuf> {
        self.inner.host_path(inode)
    }
}

impl FileSystem for Counting {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let entry = self.inner.lookup(ctx, parent, name)?;
        *self.held.lock().unwrap().entry(entry.inode).or_default() += 1;
        Ok(entry)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        *self.held.lock().unwrap().entry(inode).or_default() -= count as i64;
        self.inner.forget(ctx, inode, count)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(libc::stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }
}

/// One READDIRPLUS answer of at most 32 KiB from `offset`, as the guest
/// gets it: `each` sees every entry sent. Returns how many there were.
fn plus_answer(
    fs: &PolicyFs<Counting>,
    handle: u64,
    offset: u64,
    each: &mut dyn FnMut(&DirEntry, &Entry),
) -> usize {
    let (mut got, mut used) = (0, 0);
    fs.readdirplus(
        &Context::new(),
        ROOT_ID,
        handle,
        32 * 1024,
        offset,
        &mut |d, e| {
            // A `fuse_entry_out`, a `fuse_dirent` and its name, 8-byte aligned.
            let len = 128 + ((24 + d.name.len() + 7) & !7);
            if used + len > 32 * 1024 {
                return Ok(0);
            }
            used += len;
            each(&d, &e);
            got += 1;
            Ok(1)
        },
    )
    .unwrap();
    got
}

/// A READDIRPLUS listing of the root as the guest reads one (offset 0
/// first); `between` runs after each answer. Returns each name's entry
/// inode number and node id.
fn list_plus(
    fs: &PolicyFs<Counting>,
    handle: u64,
    between: &mut dyn FnMut(&PolicyFs<Counting>),
) -> BTreeMap<String, (u64, u64)> {
    let (mut names, mut offset) = (BTreeMap::new(), 0);
    loop {
        let got = plus_answer(fs, handle, offset, &mut |d, e| {
            let name = String::from_utf8(d.name.to_vec()).unwrap();
            let ids = (e.attr.st_ino, e.inode);
            assert!(names.insert(name, ids).is_none(), "an entry came twice");
            offset = d.offset;
        });
        between(fs);
        if got == 0 {
            return names;
        }
    }
}

#[test]
fn readdirplus_entries_looked_up_ahead_are_the_names_own_and_all_given_back() {
    let dir = tempfile::tempdir().unwrap();
    big_dir(dir.path(), 3000);
    let inner = super::passthrough(dir.path());
    let counting = Counting {
        inner,
        held: Mutex::default(),
    };
    let dirs = DirStreams::new(dir.path())
        .unwrap()
        .with_prefetch(true, true);
    let fs = PolicyFs::passthrough(counting, true).with_dir_streams(dirs);
    fs.init(FsOptions::empty()).unwrap();
    let ctx = Context::new();

    let handle = fs.opendir(&ctx, ROOT_ID, 0).unwrap().0.unwrap();
    let mut ahead = (0, 0);
    let got = list_plus(&fs, handle, &mut |fs| add(&mut ahead, fs.read_ahead(true)));
    assert_eq!(got.len(), 3002);
    for (name, (ino, _)) in &got {
        let host = fs::symlink_metadata(dir.path().join(name)).unwrap();
        assert_eq!(*ino, host.ino(), "{name}: the entry is its own");
    }
    let (_, looked_up) = ahead;
    assert!(looked_up > 2000, "{looked_up} names looked up ahead");

    // The guest holds one lookup per entry it got; the server holds no
    // more once the guest forgets them and the listing is closed.
    let sent = got.values().filter(|(_, node)| *node != 0).count() as i64;
    assert_eq!(fs.inner().held(), sent);
    fs.releasedir(&ctx, ROOT_ID, 0, handle).unwrap();
    for (_, node) in got.values().filter(|(_, node)| *node != 0) {
        fs.forget(&ctx, *node, 1);
    }
    assert_eq!(fs.inner().held(), 0, "every lookup given back");

    // Entries looked up ahead and then not sent are given back whatever
    // comes next: RELEASEDIR, a plain READDIR of those names, a rewind.
    for next in ["releasedir", "readdir", "rewind"] {
        let handle = fs.opendir(&ctx, ROOT_ID, 0).unwrap().0.unwrap();
        let (mut sent, offset) = plus_chunks(&fs, handle, 4);
        assert!(
            fs.inner().held() > sent.len() as i64,
            "{next}: entries wait ahead"
        );
        match next {
            "readdir" => fs
                .readdir(&ctx, ROOT_ID, handle, 4096, offset, &mut |_| Ok(1))
                .unwrap(),
            "rewind" => {
                let (rewound, _) = plus_chunks(&fs, handle, 1);
                sent.extend(rewound);
            }
            _ => {}
        }
        fs.releasedir(&ctx, ROOT_ID, 0, handle).unwrap();
        for node in sent {
            fs.forget(&ctx, node, 1);
        }
        assert_eq!(fs.inner().held(), 0, "{next}: every lookup given back");
    }
}

/// `n` READDIRPLUS answers of 32 KiB from offset 0 with reading ahead
/// between them; the node ids sent and the offset reached.
fn plus_chunks(fs: &PolicyFs<Counting>, handle: u64, n: usize) -> (Vec<u64>, u64) {
    let (mut sent, mut offset) = (Vec::new(), 0);
    for _ in 0..n {
        plus_answer(fs, handle, offset, &mut |d, e| {
            if e.inode != 0 {
                sent.push(e.inode);
            }
            offset = d.offset;
        });
        let _ = fs.read_ahead(true);
    }
    (sent, offset)
}
