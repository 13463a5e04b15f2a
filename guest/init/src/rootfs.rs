//! The guest's root file system: an overlay of the host's system directories
//! (the read-only share) under a tmpfs (see [`crate::overlay`]), or, where
//! overlayfs fails or `hutch.root=ro` asks for it, the initramfs with those
//! directories bound in read-only; then tmpfs where programs write, and the
//! workspace.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hutch_proto::{RunSpec, ROOT_TAG, WORKSPACE_TAG};

use crate::mounts::{detach, mkdir_p, mount, remount_root_readonly, tmpfs, MountError};
use crate::sys::{path, show};
use crate::{console, overlay};

/// Where the read-only system share is mounted: the overlay's lower layer,
/// or the source of the read-only binds over `/`.
pub const SYS_DIR: &str = "/.hutch/sys";

/// Read-ahead of the read-only root share, in KiB: one READ of the largest
/// size the server takes (FUSE MAX_PAGES, 256 pages), where Linux starts a
/// FUSE mount at 128 KiB. A cold `cargo build` read rustc's libraries in
/// 2,400 root READs instead of 4,700 (docs/fs-levers.md, session 14).
pub const ROOT_READ_AHEAD_KB: u32 = 1024;

/// The sysfs file that holds the read-ahead of the file system on device
/// `dev` (its backing device info, `MAJOR:MINOR`).
pub fn read_ahead_file(dev: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    ))
}

/// Sets the read-ahead of the file system mounted at `dir` to `kb` KiB.
fn set_read_ahead(dir: &Path, kb: u32) -> Result<(), MountError> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::metadata(dir)
        .map(|m| read_ahead_file(m.dev()))
        .map_err(|err| MountError::ReadAhead {
            path: show(dir.as_os_str().as_bytes()),
            err,
        })?;
    std::fs::write(&file, kb.to_string()).map_err(|err| MountError::ReadAhead {
        path: show(file.as_os_str().as_bytes()),
        err,
    })
}

/// Top-level names of the share that are never bound over `/`: they hold the
/// kernel file systems and init's own files.
pub const RESERVED: &[&[u8]] = &[b".hutch", b"dev", b"hutch", b"proc", b"sys"];

/// What a top-level entry of the share is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory: bound read-only at `/NAME`.
    Dir,
    /// A symlink with this target text: recreated at `/NAME`.
    Symlink(Vec<u8>),
    /// Anything else: skipped.
    Other,
}

/// One step of spreading the share over `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create symlink `link` with target text `target`.
    Symlink { link: PathBuf, target: Vec<u8> },
    /// mkdir `dst`, bind `src` there (recursive), remount the bind read-only.
    BindReadOnly { src: PathBuf, dst: PathBuf },
}

/// Plans the symlinks and binds for the share's entries `(name, kind)`,
/// sorted by name; reserved names and names that are not one path component
/// are skipped.
pub fn plan(sys_dir: &Path, entries: &[(Vec<u8>, EntryKind)]) -> Vec<Action> {
    let mut entries: Vec<_> = entries.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let root = Path::new("/");
    entries
        .into_iter()
        .filter(|(name, _)| {
            !name.is_empty()
                && name != b"."
                && name != b".."
                && !name.contains(&b'/')
                && !RESERVED.contains(&name.as_slice())
        })
        .filter_map(|(name, kind)| {
            let dst = root.join(path(name));
            match kind {
                EntryKind::Dir => Some(Action::BindReadOnly {
                    src: sys_dir.join(path(name)),
                    dst,
                }),
                EntryKind::Symlink(target) => Some(Action::Symlink {
                    link: dst,
                    target: target.clone(),
                }),
                EntryKind::Other => None,
            }
        })
        .collect()
}

/// Lists the top level of the share (symlinks are not followed).
pub fn read_entries(dir: &Path) -> Result<Vec<(Vec<u8>, EntryKind)>, MountError> {
    let err = |err| MountError::ReadDir {
        path: dir.to_string_lossy().into_owned(),
        err,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let ty = entry.file_type().map_err(err)?;
        let kind = if ty.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(err)?;
            EntryKind::Symlink(target.as_os_str().as_bytes().to_vec())
        } else if ty.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::Other
        };
        out.push((entry.file_name().as_bytes().to_vec(), kind));
    }
    Ok(out)
}

/// Carries out one planned action.
pub fn apply(action: &Action) -> Result<(), MountError> {
    match action {
        Action::Symlink { link, target } => symlink(link, target),
        Action::BindReadOnly { src, dst } => {
            mkdir_p(dst)?;
            let what = format!("bind of {}", src.display());
            mount(&what, src, dst, None, libc::MS_BIND | libc::MS_REC, None)?;
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NODEV;
            mount(
                &format!("{what} (read-only remount)"),
                "none",
                dst,
                None,
                flags,
                None,
            )
        }
    }
}

/// Creates a symlink; an empty directory or other symlink in the way is
/// replaced, the same symlink already there is fine.
fn symlink(link: &Path, target: &[u8]) -> Result<(), MountError> {
    let err = |err| MountError::Symlink {
        link: link.display().to_string(),
        target: show(target),
        err,
    };
    match std::os::unix::fs::symlink(path(target), link) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_link(link).is_ok_and(|t| t.as_os_str().as_bytes() == target) {
                return Ok(());
            }
            let _ = std::fs::remove_dir(link).or_else(|_| std::fs::remove_file(link));
            std::os::unix::fs::symlink(path(target), link).map_err(err)
        }
        r => r.map_err(err),
    }
}

/// Kernel command-line word that asks for the read-only root.
pub const READ_ONLY_ARG: &str = "hutch.root=ro";

/// Whether `cmdline` (the kernel's) asks for the read-only root.
pub fn read_only_requested(cmdline: &[u8]) -> bool {
    cmdline
        .split(|b| b.is_ascii_whitespace())
        .any(|w| w == READ_ONLY_ARG.as_bytes())
}

/// Builds the root file system for `spec` (see the module docs); `writable`
/// says to try the overlay root. devpts and `/dev/shm` failures, and an
/// overlay root that could not be built, are returned in the warning list,
/// not as errors.
pub fn build(spec: &RunSpec, writable: bool) -> Result<Vec<MountError>, MountError> {
    let sys = Path::new(SYS_DIR);
    mkdir_p(sys)?;
    let what = format!("virtiofs tag {ROOT_TAG} (read-only)");
    mount(
        &what,
        ROOT_TAG,
        sys,
        Some("virtiofs"),
        libc::MS_RDONLY | libc::MS_NODEV,
        None,
    )?;
    console::trace("root share mounted");
    let mut warnings = Vec::new();
    if let Err(e) = set_read_ahead(sys, ROOT_READ_AHEAD_KB) {
        warnings.push(e);
    }
    let overlaid = writable
        && match overlay::mount_root(sys) {
            Ok(()) => true,
            Err(e) => {
                warnings.push(MountError::ReadOnlyRoot(Box::new(e)));
                false
            }
        };
    if overlaid {
        console::trace("overlay mounted");
        overlay::switch_root(Path::new(overlay::NEW_ROOT), sys)?;
        console::trace("root switched to the overlay");
    } else {
        for action in plan(sys, &read_entries(sys)?) {
            apply(&action)?;
        }
    }
    tmpfs(Path::new("/tmp"), "1777")?;
    tmpfs(Path::new("/run"), "0755")?;
    if !spec.home.is_empty() {
        tmpfs(path(&spec.home), "0700")?;
    }
    let pts = Path::new("/dev/pts");
    let devpts = mkdir_p(pts).and_then(|()| {
        let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
        mount(
            "devpts",
            "devpts",
            pts,
            Some("devpts"),
            flags,
            Some("gid=5,mode=620,ptmxmode=666"),
        )
    });
    warnings.extend(devpts.err());
    warnings.extend(tmpfs(Path::new("/dev/shm"), "1777").err());
    if !spec.workspace.is_empty() {
        let ws = path(&spec.workspace);
        mkdir_p(ws)?;
        let what = format!("virtiofs tag {WORKSPACE_TAG}");
        mount(
            &what,
            WORKSPACE_TAG,
            ws,
            Some("virtiofs"),
            libc::MS_NODEV,
            None,
        )?;
    }
    if !overlaid {
        warnings.extend(detach(sys).err());
        // Best effort, as before the overlay: rootfs may refuse.
        let _ = remount_root_readonly();
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_is_set_in_the_devices_bdi() {
        assert_eq!(
            read_ahead_file(libc::makedev(0, 13)),
            Path::new("/sys/class/bdi/0:13/read_ahead_kb")
        );
        assert_eq!(
            read_ahead_file(libc::makedev(259, 1048576)),
            Path::new("/sys/class/bdi/259:1048576/read_ahead_kb")
        );
        // Not a sysfs path here: the error names the file.
        let e = set_read_ahead(Path::new("/nonexistent-hutch-dir"), 1024).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-hutch-dir"), "{e}");
    }

    #[test]
    fn read_only_root_on_request() {
        assert!(read_only_requested(b"console=ttyS0 hutch.root=ro quiet"));
        assert!(!read_only_requested(b"console=ttyS0 hutch.root=rox"));
        assert!(!read_only_requested(b""));
    }

    fn e(name: &str, kind: EntryKind) -> (Vec<u8>, EntryKind) {
        (name.as_bytes().to_vec(), kind)
    }

    #[test]
    fn debian_like_share() {
        let sys = Path::new(SYS_DIR);
        let entries = [
            e("usr", EntryKind::Dir),
            e("bin", EntryKind::Symlink(b"usr/bin".to_vec())),
            e("lib64", EntryKind::Symlink(b"usr/lib64".to_vec())),
            e("etc", EntryKind::Dir),
            e("dev", EntryKind::Dir),
            e("proc", EntryKind::Dir),
            e("README", EntryKind::Other),
            e("a/b", EntryKind::Dir),
            e("..", EntryKind::Dir),
            e("opt", EntryKind::Dir),
        ];
        let bind = |n: &str| Action::BindReadOnly {
            src: sys.join(n),
            dst: Path::new("/").join(n),
        };
        let link = |n: &str, t: &str| Action::Symlink {
            link: Path::new("/").join(n),
            target: t.as_bytes().to_vec(),
        };
        assert_eq!(
            plan(sys, &entries),
            [
                link("bin", "usr/bin"),
                bind("etc"),
                link("lib64", "usr/lib64"),
                bind("opt"),
                bind("usr")
            ]
        );
    }

    #[test]
    fn reads_entries_without_following_links() {
        let dir = std::env::temp_dir().join(format!("hutch-init-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.join("dangling")).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
        let mut got = read_entries(&dir).unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            got,
            [
                e("bin", EntryKind::Symlink(b"usr/bin".to_vec())),
                e("dangling", EntryKind::Symlink(b"/nowhere".to_vec())),
                e("file", EntryKind::Other),
                e("usr", EntryKind::Dir),
            ]
        );
    }

    #[test]
    fn symlink_replaces_empty_dir_and_accepts_same_link() {
        let dir = std::env::temp_dir().join(format!("hutch-init-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let link = dir.join("bin");
        apply(&Action::Symlink {
            link: link.clone(),
            target: b"usr/bin".to_vec(),
        })
        .unwrap();
        apply(&Action::Symlink {
            link: link.clone(),
            target: b"usr/bin".to_vec(),
        })
        .unwrap();
        let t = std::fs::read_link(&link).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(t, Path::new("usr/bin"));
    }
}
