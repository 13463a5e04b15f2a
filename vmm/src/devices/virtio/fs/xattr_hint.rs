//! Entries that say whether a file has extended attributes.
//!
//! `ls -l` asks for two extended attributes of every file it lists
//! (`security.selinux`, and `system.nfs4_acl` since the guest has no POSIX
//! ACLs), and each was a GETXATTR round trip answered ENODATA: 400 files
//! cost 800 requests, and `ls -la` took over twice as long as on virtiofsd,
//! whose default turns xattrs off (the guest stops asking after one ENOSYS).
//! The workspace keeps xattrs (the conformance suite sets `user.*` ones), so
//! hutch's guest kernel (patch 0008) offers the private INIT flag
//! [`FUSE_HUTCH_NOXATTR`]; when the workspace grants it, `PolicyFs` marks
//! each LOOKUP, READDIRPLUS and CREATE entry with
//! [`FUSE_ATTR_HUTCH_XATTR_KNOWN`], plus [`FUSE_ATTR_HUTCH_NO_XATTR`] when
//! the host file has none (one `listxattr` of size 0), and the guest answers
//! getxattr and listxattr itself until those attributes expire. A host
//! change shows within the attribute timeout; a setxattr from the guest
//! clears the guest's record. Symlinks are not marked (the host call would
//! follow them).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// INIT flag (bit 29 of `flags2`): entries may say whether there are xattrs.
pub const FUSE_HUTCH_NOXATTR: u64 = 1 << 61;
/// `fuse_attr.flags`: this entry says whether the inode has xattrs.
pub const FUSE_ATTR_HUTCH_XATTR_KNOWN: u32 = 1 << 30;
/// `fuse_attr.flags`: and it has none.
pub const FUSE_ATTR_HUTCH_NO_XATTR: u32 = 1 << 31;

/// `listxattrat(2)`, Linux 6.13: the same number on x86_64 and aarch64
/// (libc does not name it for x86_64 yet).
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Set once the host kernel answered ENOSYS to `listxattrat`.
static NO_LISTXATTRAT: AtomicBool = AtomicBool::new(false);

/// Bytes of xattr names that `name` in directory `dir` has, not following a
/// symlink; `None` where the host kernel has no `listxattrat` (the caller
/// then asks PassthroughFs, which lists through `/proc/self/fd/N`).
///
/// A READDIRPLUS entry is marked from its name in the directory stream the
/// listing is read from: one path step, where PassthroughFs's
/// `listxattr("/proc/self/fd/N")` walks procfs and follows a magic link
/// (about 1.0 µs against 2.9 µs per file on the 2-CPU development host).
/// A host rename between the entry's lookup and this call can mark the
/// entry with another file's answer; the guest keeps it no longer than the
/// attribute timeout, the bound every host change already has.
pub fn names_len_at(dir: BorrowedFd<'_>, name: &CStr) -> Option<io::Result<usize>> {
    if NO_LISTXATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: listxattrat reads the NUL-terminated `name` and, with a null
    // list and size 0, writes nothing; `dir` is a live descriptor.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            std::ptr::null_mut::<libc::c_char>(),
            0usize,
        )
    };
    if r >= 0 {
        return Some(Ok(r as usize));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOSYS) {
        NO_LISTXATTRAT.store(true, Ordering::Relaxed);
        return None;
    }
    Some(Err(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn names_len_at_counts_a_files_xattrs_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        std::fs::write(dir.path().join("marked"), b"x").unwrap();
        let marked =
            CString::new(dir.path().join("marked").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: NUL-terminated path, name and value of the sizes passed.
        let set = unsafe {
            libc::setxattr(
                marked.as_ptr(),
                c"user.hutch".as_ptr(),
                b"1".as_ptr().cast(),
                1,
                0,
            )
        };
        let d = File::open(dir.path()).unwrap();
        let Some(plain) = names_len_at(d.as_fd(), c"plain") else {
            eprintln!("SKIPPED: this host kernel has no listxattrat");
            return;
        };
        assert_eq!(plain.unwrap(), 0);
        if set == 0 {
            let n = names_len_at(d.as_fd(), c"marked").unwrap().unwrap();
            assert_eq!(n, b"user.hutch\0".len());
        } else {
            eprintln!("user xattrs refused here: {}", io::Error::last_os_error());
        }
        let missing = names_len_at(d.as_fd(), c"missing").unwrap().unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    }
}
