//! The writable root: an overlay whose lower layer is the read-only system
//! share and whose upper layer is a tmpfs in guest RAM, made the guest's `/`
//! the way `switch_root` does it. Writes anywhere in the root (`/usr/local`,
//! `/etc`, a new `/srv`) land in the tmpfs and vanish with the guest; the
//! share refuses every mutation, so the host never changes. The initramfs
//! (init's own files) stays underneath, out of the new root's reach.

use std::path::{Path, PathBuf};

use crate::mounts::{chroot_to_cwd, detach, mkdir_mode, mkdir_p, mount, move_mount, MountError};

/// Where the tmpfs holding the overlay's upper and work directories is
/// mounted while the overlay is built (detached before the switch).
pub const UPPER_FS: &str = "/.hutch/upper";
/// Where the overlay is mounted before it is moved onto `/`.
pub const NEW_ROOT: &str = "/.hutch/root";
/// The kernel file systems init mounted on the initramfs; they move along.
pub const KERNEL_FS: &[&str] = &["/dev", "/proc", "/sys"];
/// How much of guest RAM the root's writes may take (tmpfs `size=`).
pub const UPPER_SIZE: &str = "50%";
/// Directories (and modes) the new root gets before anything runs: the
/// FHS's world-writable `/var/tmp`, which the share (it has no `/var`) lacks.
pub const SKELETON: &[(&str, u32)] = &[("var/tmp", 0o1777)];

/// The upper and work directories inside the upper tmpfs (overlayfs wants
/// both on one file system, and neither inside the other).
pub fn layers(upper_fs: &Path) -> (PathBuf, PathBuf) {
    (upper_fs.join("root"), upper_fs.join("work"))
}

/// overlayfs mount options; `\`, `,` and `:` in the paths are escaped with
/// `\`, which is how overlayfs reads them.
pub fn options(lower: &Path, upper: &Path, work: &Path) -> String {
    let esc = |p: &Path| {
        let mut out = String::new();
        for c in p.to_string_lossy().chars() {
            if matches!(c, '\\' | ',' | ':') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    format!(
        "lowerdir={},upperdir={},workdir={}",
        esc(lower),
        esc(upper),
        esc(work)
    )
}

/// `(from, to)` for each kernel file system moved into `new_root`.
pub fn moves(new_root: &Path) -> Vec<(PathBuf, PathBuf)> {
    KERNEL_FS
        .iter()
        .map(|fs| {
            let from = PathBuf::from(fs);
            let to = new_root.join(fs.trim_start_matches('/'));
            (from, to)
        })
        .collect()
}

/// Mounts the upper tmpfs at [`UPPER_FS`] and the overlay of `lower` at
/// [`NEW_ROOT`]. On failure the tmpfs is taken down again, so the caller can
/// fall back to the read-only root.
pub fn mount_root(lower: &Path) -> Result<(), MountError> {
    let upper_fs = Path::new(UPPER_FS);
    mkdir_p(upper_fs)?;
    let data = format!("mode=0755,size={UPPER_SIZE}");
    mount(
        "tmpfs (overlay upper)",
        "tmpfs",
        upper_fs,
        Some("tmpfs"),
        0,
        Some(&data),
    )?;
    let built = overlay(lower, upper_fs);
    if built.is_err() {
        let _ = detach(upper_fs);
    }
    built
}

fn overlay(lower: &Path, upper_fs: &Path) -> Result<(), MountError> {
    let (upper, work) = layers(upper_fs);
    mkdir_mode(&upper, 0o755)?;
    mkdir_p(&work)?;
    let new_root = Path::new(NEW_ROOT);
    mkdir_p(new_root)?;
    let what = format!("overlay (lower {})", lower.display());
    let data = options(lower, &upper, &work);
    mount(&what, "overlay", new_root, Some("overlay"), 0, Some(&data))
}

/// Makes `new_root` the root: detaches `lower` and the upper tmpfs from the
/// initramfs (the overlay holds its own references to its layers), creates
/// the [`SKELETON`], moves the kernel file systems in, moves `new_root` onto
/// `/` and chroots into it.
pub fn switch_root(new_root: &Path, lower: &Path) -> Result<(), MountError> {
    detach(lower)?;
    detach(Path::new(UPPER_FS))?;
    for (dir, mode) in SKELETON {
        mkdir_mode(&new_root.join(dir), *mode)?;
    }
    for (from, to) in moves(new_root) {
        mkdir_p(&to)?;
        move_mount(&from, &to)?;
    }
    std::env::set_current_dir(new_root).map_err(|err| MountError::Chroot {
        path: new_root.display().to_string(),
        err,
    })?;
    move_mount(new_root, Path::new("/"))?;
    chroot_to_cwd(new_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_three_layers() {
        let (upper, work) = layers(Path::new(UPPER_FS));
        assert_eq!(
            options(Path::new("/.hutch/sys"), &upper, &work),
            "lowerdir=/.hutch/sys,upperdir=/.hutch/upper/root,workdir=/.hutch/upper/work"
        );
    }

    #[test]
    fn options_escape_separators() {
        let o = options(Path::new("/a,b:c\\d"), Path::new("/u"), Path::new("/w"));
        assert_eq!(o, "lowerdir=/a\\,b\\:c\\\\d,upperdir=/u,workdir=/w");
    }

    #[test]
    fn layers_are_siblings_on_one_fs() {
        let (upper, work) = layers(Path::new("/x"));
        assert_eq!(upper.parent(), work.parent());
        assert!(!upper.starts_with(&work) && !work.starts_with(&upper));
    }

    #[test]
    fn kernel_fs_move_under_the_new_root() {
        let got = moves(Path::new(NEW_ROOT));
        let want: Vec<_> = [
            ("/dev", "/.hutch/root/dev"),
            ("/proc", "/.hutch/root/proc"),
            ("/sys", "/.hutch/root/sys"),
        ]
        .iter()
        .map(|(a, b)| (PathBuf::from(a), PathBuf::from(b)))
        .collect();
        assert_eq!(got, want);
    }
}
