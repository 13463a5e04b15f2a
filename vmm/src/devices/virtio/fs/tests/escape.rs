//! The workspace share against requests a hostile guest kernel could send (a well-behaved
//! FUSE client resolves `..` and symlinks itself and never sends them): none reaches a host
//! file outside the share. The same attempts through a real guest are in
//! `tests/fs_security.rs`.

use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, GetxattrReply, ROOT_ID};
use fuse_backend_rs::passthrough::PassthroughFs;

use crate::devices::virtio::fs::PolicyFs;

type Fs = PolicyFs<PassthroughFs>;

const SECRET: &[u8] = b"HOST-SECRET-OUTSIDE-THE-SHARE";

/// `outer/secret` (with a `user.secret` xattr) next to the share `outer/ws`, which holds
/// `sub/` and a symlink `up` -> `../secret`.
struct Layout {
    outer: tempfile::TempDir,
}

impl Layout {
    fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        let secret = outer.path().join("secret");
        fs::write(&secret, SECRET).unwrap();
        xattr_set(&secret, "user.secret", SECRET);
        fs::create_dir_all(outer.path().join("ws/sub")).unwrap();
        symlink("../secret", outer.path().join("ws/up")).unwrap();
        Self { outer }
    }

    fn ws(&self) -> std::path::PathBuf {
        self.outer.path().join("ws")
    }

    fn fs(&self) -> Fs {
        let inner = super::passthrough(&self.ws());
        let fs = PolicyFs::passthrough(inner, true);
        fs.init(FsOptions::empty()).unwrap();
        fs
    }
}

fn xattr_set(path: &std::path::Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated path and name, a value buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

fn ctx() -> Context {
    Context::new()
}

fn errno<T>(r: io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// A lookup as the guest sees it: a negative entry (node id 0) is ENOENT.
fn lookup(fs: &Fs, parent: u64, name: &CStr) -> io::Result<Entry> {
    match fs.lookup(&ctx(), parent, name)? {
        e if e.inode == 0 => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        e => Ok(e),
    }
}

fn ino(e: &Entry) -> u64 {
    // st_ino is u64 on every Linux target stat64 exists for.
    #[allow(clippy::unnecessary_cast)]
    let ino = e.attr.st_ino as u64;
    ino
}

/// Opens `inode` for reading through the share (and closes it again).
fn open(fs: &Fs, inode: u64) -> io::Result<()> {
    let (handle, _, _) = fs.open(&ctx(), inode, libc::O_RDONLY as u32, 0)?;
    fs.release(&ctx(), inode, 0, handle.unwrap_or(0), false, false, None)
}

#[test]
fn dotdot_at_the_root_is_the_root() {
    let l = Layout::new();
    let fs = l.fs();
    let ws_ino = fs::metadata(l.ws()).unwrap().ino();
    let up = fs.lookup(&ctx(), ROOT_ID, c"..").unwrap();
    assert_eq!(ino(&up), ws_ino, "LOOKUP(root, \"..\") stays at the root");
    assert_eq!(up.inode, ROOT_ID);
    assert_eq!(errno(lookup(&fs, up.inode, c"secret")), libc::ENOENT);
    // Up from a subdirectory twice: the root again, never its host parent.
    let sub = fs.lookup(&ctx(), ROOT_ID, c"sub").unwrap();
    let p1 = fs.lookup(&ctx(), sub.inode, c"..").unwrap();
    assert_eq!(ino(&p1), ws_ino);
    let p2 = fs.lookup(&ctx(), p1.inode, c"..").unwrap();
    assert_eq!(ino(&p2), ws_ino);
    assert_eq!(errno(lookup(&fs, p2.inode, c"secret")), libc::ENOENT);
    // Many forgets of the root do not make it forgettable (a new inode for the root
    // directory would let "..") escape).
    fs.forget(&ctx(), ROOT_ID, u64::MAX);
    let again = fs.lookup(&ctx(), sub.inode, c"..").unwrap();
    assert_eq!(again.inode, ROOT_ID);
    let up2 = fs.lookup(&ctx(), again.inode, c"..").unwrap();
    assert_eq!(ino(&up2), ws_ino);
}

#[test]
fn names_with_slashes_or_dots_are_refused() {
    let l = Layout::new();
    let fs = l.fs();
    let x = ctx();
    for name in [c"../secret", c"sub/../../secret", c"/etc/passwd"] {
        assert_eq!(errno(lookup(&fs, ROOT_ID, name)), libc::EINVAL, "{name:?}");
    }
    let file = {
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (e, h, _, _) = fs.create(&x, ROOT_ID, c"f", args).unwrap();
        if let Some(h) = h {
            // None: zero-message open, the descriptor is cached per inode.
            fs.release(&x, e.inode, 0, h, false, false, None).unwrap();
        }
        e
    };
    let outside: [&CStr; 3] = [c"..", c"../planted", c"a/b"];
    for name in outside {
        assert_eq!(errno(fs.link(&x, file.inode, ROOT_ID, name)), libc::EINVAL);
        assert_eq!(
            errno(fs.rename(&x, ROOT_ID, c"f", ROOT_ID, name, 0)),
            libc::EINVAL
        );
        assert_eq!(errno(fs.symlink(&x, c"t", ROOT_ID, name)), libc::EINVAL);
        assert_eq!(errno(fs.mkdir(&x, ROOT_ID, name, 0o755, 0)), libc::EINVAL);
        assert_eq!(
            errno(fs.mknod(&x, ROOT_ID, name, libc::S_IFIFO | 0o644, 0, 0)),
            libc::EINVAL
        );
    }
    assert!(!l.outer.path().join("planted").exists());
    assert_eq!(fs::read(l.outer.path().join("secret")).unwrap(), SECRET);
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let l = Layout::new();
    let fs = l.fs();
    let x = ctx();
    // The host-planted `up` and guest-made links shaped like /proc magic links are links:
    // their text comes back, opening them is refused, nothing is resolved on the host.
    let up = fs.lookup(&x, ROOT_ID, c"up").unwrap();
    assert_eq!(fs.readlink(&x, up.inode).unwrap(), b"../secret");
    assert!(
        open(&fs, up.inode).is_err(),
        "a symlink inode is not opened"
    );
    for (name, text) in [
        (c"pfd", c"/proc/self/fd/3"),
        (c"proot", c"../../proc/self/root/etc/shadow"),
        (c"pcwd", c"/proc/self/cwd/../secret"),
    ] {
        let e = fs.symlink(&x, text, ROOT_ID, name).unwrap();
        assert_eq!(fs.readlink(&x, e.inode).unwrap(), text.to_bytes());
        assert!(open(&fs, e.inode).is_err(), "{name:?} was opened");
        let host = fs::read_link(l.ws().join(name.to_str().unwrap())).unwrap();
        assert_eq!(host.as_os_str().as_encoded_bytes(), text.to_bytes());
    }
    // Extended attributes of a symlink are the link's own (PassthroughFs goes through
    // /proc/self/fd/N, which must not continue to the target).
    match fs.getxattr(&x, up.inode, c"user.secret", 4096) {
        Ok(GetxattrReply::Value(v)) => assert_ne!(v, SECRET, "xattr read through a symlink"),
        Ok(GetxattrReply::Count(n)) => panic!("xattr of the target has {n} bytes"),
        Err(_) => {}
    }
    assert!(fs.setxattr(&x, up.inode, c"user.planted", b"1", 0).is_err());
    let p = std::ffi::CString::new(l.outer.path().join("secret").to_str().unwrap()).unwrap();
    let mut buf = [0u8; 8];
    // SAFETY: NUL-terminated path and name, `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c"user.planted".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(
        n < 0,
        "setxattr went through the symlink to the host secret"
    );
}

#[test]
fn file_capabilities_cannot_be_planted() {
    let l = Layout::new();
    let fs = l.fs();
    let x = ctx();
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o755,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, h, _, _) = fs.create(&x, ROOT_ID, c"prog", args).unwrap();
    if let Some(h) = h {
        // None: zero-message open, the descriptor is cached per inode.
        fs.release(&x, e.inode, 0, h, false, false, None).unwrap();
    }
    // A VFS_CAP_REVISION_2 blob granting CAP_SETUID (what `setcap cap_setuid+ep` writes).
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&(1u32 << 7).to_le_bytes());
    cap.extend_from_slice(&[0u8; 12]);
    assert_eq!(
        errno(fs.setxattr(&x, e.inode, c"security.capability", &cap, 0)),
        libc::EPERM
    );
    // Other xattrs still work.
    fs.setxattr(&x, e.inode, c"user.note", b"ok", 0).unwrap();
}
