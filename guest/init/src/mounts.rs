//! Mount primitives and the kernel file systems init needs first.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys::{check, cpath, cstr};

/// A failed mount-related step, with the path and the errno text.
#[derive(Debug)]
pub enum MountError {
    /// Creating a directory (or its parents) failed.
    Mkdir { path: String, err: io::Error },
    /// A mount call failed; `what` says what was mounted and how.
    Mount {
        what: String,
        target: String,
        err: io::Error,
    },
    /// Listing a directory failed.
    ReadDir { path: String, err: io::Error },
    /// Creating a symlink failed.
    Symlink {
        link: String,
        target: String,
        err: io::Error,
    },
    /// Detaching a mount failed.
    Umount { path: String, err: io::Error },
    /// Changing the root or working directory to `path` failed.
    Chroot { path: String, err: io::Error },
    /// Setting a share's read-ahead through sysfs (`path`) failed.
    /// Reported as a warning.
    ReadAhead { path: String, err: io::Error },
    /// The overlay root could not be set up (the cause says where); the
    /// guest falls back to the read-only root. Reported as a warning.
    ReadOnlyRoot(Box<MountError>),
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mkdir { path, err } => write!(f, "mkdir -p {path}: {err}"),
            Self::Mount { what, target, err } => write!(f, "mount {what} on {target}: {err}"),
            Self::ReadDir { path, err } => write!(f, "list {path}: {err}"),
            Self::Symlink { link, target, err } => write!(f, "symlink {link} -> {target}: {err}"),
            Self::Umount { path, err } => write!(f, "detach {path}: {err}"),
            Self::Chroot { path, err } => write!(f, "change root to {path}: {err}"),
            Self::ReadAhead { path, err } => write!(f, "set read-ahead in {path}: {err}"),
            Self::ReadOnlyRoot(cause) => {
                write!(f, "no writable root, the root is read-only: {cause}")
            }
        }
    }
}

fn show(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `mkdir -p`; an existing directory is fine.
pub fn mkdir_p(path: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(path).map_err(|err| MountError::Mkdir {
        path: show(path),
        err,
    })
}

/// `mkdir -p`, then sets the last directory's mode (`umask` aside).
pub fn mkdir_mode(path: &Path, mode: u32) -> Result<(), MountError> {
    use std::os::unix::fs::PermissionsExt;
    mkdir_p(path)?;
    let perms = std::fs::Permissions::from_mode(mode);
    std::fs::set_permissions(path, perms).map_err(|err| MountError::Mkdir {
        path: show(path),
        err,
    })
}

/// Moves the mount at `from` to `to` (`MS_MOVE`).
pub fn move_mount(from: &Path, to: &Path) -> Result<(), MountError> {
    let what = format!("move of {}", show(from));
    mount(&what, from, to, None, libc::MS_MOVE, None)
}

/// Makes the working directory the root (`chroot(".")`, then `chdir("/")`),
/// as `switch_root` does after moving the new root onto `/`; `shown` names
/// that directory in errors.
pub fn chroot_to_cwd(shown: &Path) -> Result<(), MountError> {
    let err = |err| MountError::Chroot {
        path: show(shown),
        err,
    };
    // SAFETY: the argument is a NUL-terminated literal.
    check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(err)?;
    std::env::set_current_dir("/").map_err(err)
}

/// One `mount(2)` call. `what` describes it for the error message.
pub fn mount(
    what: &str,
    source: impl AsRef<OsStr>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), MountError> {
    raw_mount(source.as_ref(), target, fstype, flags, data).map_err(|err| MountError::Mount {
        what: what.into(),
        target: show(target),
        err,
    })
}

fn raw_mount(
    source: &OsStr,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstr(source.as_bytes())?;
    let target = cpath(target)?;
    let fstype = fstype.map(|s| cstr(s.as_bytes())).transpose()?;
    let data = data.map(|s| cstr(s.as_bytes())).transpose()?;
    // SAFETY: every pointer is a NUL-terminated string alive for the call, or
    // null where mount(2) accepts null.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    })?;
    Ok(())
}

/// Detaches a mount lazily (`MNT_DETACH`).
pub fn detach(path: &Path) -> Result<(), MountError> {
    let c = cpath(path).map_err(|err| MountError::Umount {
        path: show(path),
        err,
    })?;
    // SAFETY: `c` is a NUL-terminated path alive for the call.
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) })
        .map(drop)
        .map_err(|err| MountError::Umount {
            path: show(path),
            err,
        })
}

/// Mounts a tmpfs with the given `mode=` option (nosuid, nodev).
pub fn tmpfs(target: &Path, mode: &str) -> Result<(), MountError> {
    mkdir_p(target)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    mount(
        "tmpfs",
        "tmpfs",
        target,
        Some("tmpfs"),
        flags,
        Some(&format!("mode={mode}")),
    )
}

/// Mounts proc, sysfs and devtmpfs; one that is already mounted (`EBUSY`) is
/// fine. Returns the failures, for the caller to print.
pub fn mount_kernel_fs() -> Vec<MountError> {
    let quiet = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let table = [
        ("proc", "/proc", quiet, None),
        ("sysfs", "/sys", quiet, None),
        ("devtmpfs", "/dev", libc::MS_NOSUID, Some("mode=0755")),
    ];
    let mut errors = Vec::new();
    for (fs, dir, flags, data) in table {
        let dir = Path::new(dir);
        let r =
            mkdir_p(dir).and_then(
                |()| match raw_mount(fs.as_ref(), dir, Some(fs), flags, data) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
                    r => r.map_err(|err| MountError::Mount {
                        what: fs.into(),
                        target: show(dir),
                        err,
                    }),
                },
            );
        errors.extend(r.err());
    }
    errors
}

/// Remounts `/` read-only; an error (rootfs may refuse) is returned, not fatal.
pub fn remount_root_readonly() -> Result<(), MountError> {
    let flags = libc::MS_REMOUNT | libc::MS_RDONLY;
    mount("/ read-only", "none", Path::new("/"), None, flags, None)
}
