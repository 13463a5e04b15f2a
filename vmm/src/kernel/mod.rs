//! The guest kernel: built once from Debian's `linux-source-6.1` with the
//! recipe in `guest/kernel/` (embedded here), cached outside the repository
//! under a key made of the source version and the recipe's hash.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// The recipe files, as (relative path, content).
pub const RECIPE: &[(&str, &str)] = &[
    ("build.sh", include_str!("../../../guest/kernel/build.sh")),
    (
        "hutch.config",
        include_str!("../../../guest/kernel/hutch.config"),
    ),
    (
        "patches/0001-x86-alternative-skip-int3-selftest.patch",
        include_str!("../../../guest/kernel/patches/0001-x86-alternative-skip-int3-selftest.patch"),
    ),
];
/// Debian package with the kernel source.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
const DEFAULT_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// Errors finding or building the kernel.
#[derive(Debug, Error)]
pub enum KernelError {
    #[error("kernel source {0} not found: install it with `apt-get install -y linux-source-6.1`")]
    NoSource(PathBuf),
    #[error("kernel build prerequisites are missing (see the apt-get line above)")]
    MissingPrereqs,
    #[error("kernel build failed (exit status {status}); full log in {log}")]
    BuildFailed { status: i32, log: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cached kernel for this recipe; run `hutch kernel build`")]
    NotBuilt,
    #[error("HUTCH_KERNEL_DIR={0} does not hold vmlinux, bzImage and config")]
    Missing(PathBuf),
}

/// A built kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImages {
    /// Cache directory holding the images.
    pub dir: PathBuf,
}

impl KernelImages {
    /// ELF image with the PVH note (the native engine's default).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    /// Compressed bzImage (the qemu engine's default).
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }
    fn complete(&self) -> bool {
        ["vmlinux", "bzImage", "config"]
            .iter()
            .all(|f| self.dir.join(f).is_file())
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Io { what, path, source }
}

/// Root of hutch's cache: `$HUTCH_CACHE_DIR`, `$XDG_CACHE_HOME/hutch` or `~/.cache/hutch`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("HUTCH_CACHE_DIR") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hutch");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".cache").join("hutch")
}

/// The source tarball (`$HUTCH_KERNEL_SOURCE` overrides).
pub fn source_tarball() -> PathBuf {
    std::env::var_os("HUTCH_KERNEL_SOURCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TARBALL))
}

/// Hash of the embedded recipe (script, fragment, patches).
pub fn recipe_hash() -> String {
    let mut h = Sha256::new();
    for (name, content) in RECIPE {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(content.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Identity of the source tarball: its size and modification time (a new
/// `linux-source-6.1` package changes both). Read with one `stat`, so a
/// cache lookup costs no process start.
pub fn source_version(tarball: &Path) -> Result<String, KernelError> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(tarball).map_err(|_| KernelError::NoSource(tarball.to_path_buf()))?;
    Ok(format!("{}-{}", meta.size(), meta.mtime()))
}

/// Where the kernel for the current source and recipe lives (built or not).
pub fn cache_dir() -> Result<PathBuf, KernelError> {
    let tarball = source_tarball();
    let version = source_version(&tarball)?;
    let mut h = Sha256::new();
    h.update(version.as_bytes());
    h.update(recipe_hash().as_bytes());
    let key: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(cache_root().join("kernel").join(format!("linux-6.1-{key}")))
}

/// A prebuilt kernel directory named by `$HUTCH_KERNEL_DIR` (holding
/// `vmlinux`, `bzImage` and `config`), which replaces the cache.
fn override_dir() -> Option<KernelImages> {
    std::env::var_os("HUTCH_KERNEL_DIR").map(|d| KernelImages {
        dir: PathBuf::from(d),
    })
}

/// The cached kernel, if it was built.
pub fn cached() -> Result<Option<KernelImages>, KernelError> {
    if let Some(k) = override_dir() {
        return if k.complete() {
            Ok(Some(k))
        } else {
            Err(KernelError::Missing(k.dir))
        };
    }
    let k = KernelImages { dir: cache_dir()? };
    Ok(k.complete().then_some(k))
}

/// Builds the kernel into the cache (unless it is there), printing progress.
/// `jobs` defaults to the number of CPUs.
pub fn build(jobs: Option<usize>, force: bool) -> Result<KernelImages, KernelError> {
    if let Some(k) = override_dir() {
        return if k.complete() {
            Ok(k)
        } else {
            Err(KernelError::Missing(k.dir))
        };
    }
    let tarball = source_tarball();
    let dir = cache_dir()?;
    let k = KernelImages { dir: dir.clone() };
    let root = cache_root().join("kernel");
    std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
    // One build at a time per cache, across processes.
    let lock_path = root.join(".build.lock");
    let lock = std::fs::File::create(&lock_path).map_err(io("creating", &lock_path))?;
    // SAFETY: flock on a file descriptor we own; it is released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io("locking", &lock_path)(std::io::Error::last_os_error()));
    }
    if k.complete() && !force {
        return Ok(k);
    }
    let work = root.join(format!(
        ".build-{}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let recipe = work.join("recipe");
    for (name, content) in RECIPE {
        let p = recipe.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::write(&p, content).map_err(io("writing", &p))?;
    }
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    eprintln!(
        "hutch: building the guest kernel (Linux 6.1 from {}) into {}",
        tarball.display(),
        dir.display()
    );
    eprintln!("hutch: this happens once per kernel recipe and takes a few minutes");
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let status = Command::new("bash")
        .arg(recipe.join("build.sh"))
        .arg(&tarball)
        .arg(work.join("src"))
        .arg(&dir)
        .arg(recipe.join("hutch.config"))
        .arg(jobs.to_string())
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(io("running", &recipe.join("build.sh")))?;
    match status.code() {
        Some(0) if k.complete() => {
            // The extracted tree is ~1.5 GiB; the images are all we keep.
            let _ = std::fs::remove_dir_all(&work);
            Ok(k)
        }
        Some(3) => Err(KernelError::MissingPrereqs),
        code => Err(KernelError::BuildFailed {
            status: code.unwrap_or(-1),
            log: work.join("src").join("build.log"),
        }),
    }
}

/// The cached kernel, building it first if needed.
pub fn ensure() -> Result<KernelImages, KernelError> {
    match cached()? {
        Some(k) => Ok(k),
        None => build(None, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/kernel");
        let mut on_disk = vec!["build.sh".to_string(), "hutch.config".to_string()];
        for e in std::fs::read_dir(dir.join("patches")).unwrap() {
            on_disk.push(format!(
                "patches/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
        on_disk.sort();
        let mut embedded: Vec<String> = RECIPE.iter().map(|r| r.0.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add new recipe files to RECIPE");
        for (name, content) in RECIPE {
            assert_eq!(
                &std::fs::read_to_string(dir.join(name)).unwrap(),
                content,
                "{name}"
            );
        }
    }

    #[test]
    fn recipe_hash_is_stable_and_short() {
        assert_eq!(recipe_hash(), recipe_hash());
        assert_eq!(recipe_hash().len(), 12);
    }

    #[test]
    fn missing_source_names_the_package() {
        let e = source_version(Path::new("/nonexistent/linux.tar.xz")).unwrap_err();
        assert!(
            e.to_string()
                .contains("apt-get install -y linux-source-6.1"),
            "{e}"
        );
    }
}
