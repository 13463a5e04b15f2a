//! The guest kernel: built once from Debian's `linux-source-6.1` with the
//! recipe in `guest/kernel/` (embedded here), cached outside the repository
//! under a key made of the source version and the recipe's hash. There is one
//! recipe per guest architecture: x86_64 (built natively) and arm64
//! (cross-built with `gcc-aarch64-linux-gnu`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use thiserror::Error;

mod without_source;

/// The x86_64 recipe files, as (relative path, content).
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
    (
        "patches/0002-fuse-dir-change-keeps-permission-attrs.patch",
        include_str!(
            "../../../guest/kernel/patches/0002-fuse-dir-change-keeps-permission-attrs.patch"
        ),
    ),
    (
        "patches/0003-fuse-killpriv-v2-skips-capability-query.patch",
        include_str!(
            "../../../guest/kernel/patches/0003-fuse-killpriv-v2-skips-capability-query.patch"
        ),
    ),
    (
        "patches/0004-fuse-create-without-lookup.patch",
        include_str!("../../../guest/kernel/patches/0004-fuse-create-without-lookup.patch"),
    ),
    (
        "patches/0005-fuse-no-lookup-before-mkdir.patch",
        include_str!("../../../guest/kernel/patches/0005-fuse-no-lookup-before-mkdir.patch"),
    ),
    (
        "patches/0006-fuse-rename-without-target-lookup.patch",
        include_str!("../../../guest/kernel/patches/0006-fuse-rename-without-target-lookup.patch"),
    ),
    (
        "patches/0007-fuse-no-ioctl-round-trip-for-isatty.patch",
        include_str!(
            "../../../guest/kernel/patches/0007-fuse-no-ioctl-round-trip-for-isatty.patch"
        ),
    ),
    (
        "patches/0008-fuse-no-getxattr-when-the-server-says-none.patch",
        include_str!(
            "../../../guest/kernel/patches/0008-fuse-no-getxattr-when-the-server-says-none.patch"
        ),
    ),
    (
        "patches/0009-fuse-bigger-readdir-chunks.patch",
        include_str!("../../../guest/kernel/patches/0009-fuse-bigger-readdir-chunks.patch"),
    ),
    (
        "patches/0010-fuse-callers-poll-for-answers.patch",
        include_str!("../../../guest/kernel/patches/0010-fuse-callers-poll-for-answers.patch"),
    ),
    (
        "patches/0011-fuse-writeback-cache-that-sees-host-changes.patch",
        include_str!(
            "../../../guest/kernel/patches/0011-fuse-writeback-cache-that-sees-host-changes.patch"
        ),
    ),
    (
        "patches/0012-fuse-write-through-answers-attributes.patch",
        include_str!(
            "../../../guest/kernel/patches/0012-fuse-write-through-answers-attributes.patch"
        ),
    ),
    (
        "patches/0013-virtiofs-tcg-stores-read-data-again.patch",
        include_str!(
            "../../../guest/kernel/patches/0013-virtiofs-tcg-stores-read-data-again.patch"
        ),
    ),
    (
        "patches/0014-x86-apic-timer-clock-from-the-command-line.patch",
        include_str!(
            "../../../guest/kernel/patches/0014-x86-apic-timer-clock-from-the-command-line.patch"
        ),
    ),
    (
        "patches/0015-x86-fpu-no-fwait-when-a-kernel-thread-exits.patch",
        include_str!(
            "../../../guest/kernel/patches/0015-x86-fpu-no-fwait-when-a-kernel-thread-exits.patch"
        ),
    ),
    (
        "patches/0016-x86-mm-no-poison-on-freed-init-memory.patch",
        include_str!(
            "../../../guest/kernel/patches/0016-x86-mm-no-poison-on-freed-init-memory.patch"
        ),
    ),
];
/// The arm64 recipe files, as (relative path, content).
pub const RECIPE_ARM64: &[(&str, &str)] = &[
    ("build.sh", include_str!("../../../guest/kernel/build.sh")),
    (
        "arm64.config",
        include_str!("../../../guest/kernel/arm64.config"),
    ),
];
/// Debian package with the kernel source.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
const DEFAULT_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// A guest architecture with a kernel recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Arch {
    /// x86_64, built natively: `vmlinux` (PVH) and `bzImage`.
    #[default]
    #[value(name = "x86_64", alias = "x86-64", alias = "amd64")]
    X86_64,
    /// arm64, cross-built: the uncompressed `Image`.
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
}

impl Arch {
    /// The embedded recipe files.
    pub fn recipe(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Arch::X86_64 => RECIPE,
            Arch::Arm64 => RECIPE_ARM64,
        }
    }
    /// The recipe's build script and config fragment.
    fn script_and_fragment(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("build.sh", "hutch.config"),
            Arch::Arm64 => ("build.sh", "arm64.config"),
        }
    }
    /// The architecture argument of `build.sh`.
    fn script_arg(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
    /// The files a complete build leaves in its cache directory.
    fn outputs(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["vmlinux", "bzImage", "config"],
            Arch::Arm64 => &["Image", "config"],
        }
    }
    /// Cache directory name before the key (the x86_64 one predates arm64).
    fn cache_prefix(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux-6.1",
            Arch::Arm64 => "linux-6.1-arm64",
        }
    }
    /// Environment variable naming a prebuilt kernel directory.
    fn override_var(self) -> &'static str {
        match self {
            Arch::X86_64 => "HUTCH_KERNEL_DIR",
            Arch::Arm64 => "HUTCH_ARM64_KERNEL_DIR",
        }
    }
}

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
    #[error("no cached arm64 kernel for this recipe; run `hutch kernel build --arch arm64`")]
    NotBuiltArm64,
    #[error("HUTCH_KERNEL_DIR={0} does not hold vmlinux, bzImage and config")]
    Missing(PathBuf),
    #[error("HUTCH_ARM64_KERNEL_DIR={0} does not hold Image and config")]
    MissingArm64(PathBuf),
}

/// A built kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImages {
    /// Cache directory holding the images.
    pub dir: PathBuf,
    /// The guest architecture the images are for.
    pub arch: Arch,
}

impl KernelImages {
    /// ELF image with the PVH note (what both engines boot by default).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    /// Compressed bzImage (for `--kernel`, and plain QEMU in the boot benchmark).
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }
    /// Uncompressed arm64 `Image` (only in an arm64 build).
    pub fn image(&self) -> PathBuf {
        self.dir.join("Image")
    }
    fn complete(&self) -> bool {
        self.arch
            .outputs()
            .iter()
            .all(|f| self.dir.join(f).is_file())
    }
    fn missing(&self) -> KernelError {
        match self.arch {
            Arch::X86_64 => KernelError::Missing(self.dir.clone()),
            Arch::Arm64 => KernelError::MissingArm64(self.dir.clone()),
        }
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

/// Hash of an embedded recipe (script, fragment, patches).
pub fn recipe_hash(arch: Arch) -> String {
    let mut h = Sha256::new();
    for (name, content) in arch.recipe() {
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

/// Where the x86_64 kernel for the current source and recipe lives (built or not).
pub fn cache_dir() -> Result<PathBuf, KernelError> {
    cache_dir_for(Arch::X86_64)
}

/// Where the `arch` kernel for the current source and recipe lives (built or not).
pub fn cache_dir_for(arch: Arch) -> Result<PathBuf, KernelError> {
    let tarball = source_tarball();
    let version = source_version(&tarball)?;
    let mut h = Sha256::new();
    h.update(version.as_bytes());
    h.update(recipe_hash(arch).as_bytes());
    let key: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(cache_root()
        .join("kernel")
        .join(format!("{}-{key}", arch.cache_prefix())))
}

/// A prebuilt kernel directory named by `$HUTCH_KERNEL_DIR` (x86_64:
/// `vmlinux`, `bzImage` and `config`) or `$HUTCH_ARM64_KERNEL_DIR` (arm64:
/// `Image` and `config`), which replaces the cache.
fn override_dir(arch: Arch) -> Option<KernelImages> {
    std::env::var_os(arch.override_var()).map(|d| KernelImages {
        dir: PathBuf::from(d),
        arch,
    })
}

/// The cached x86_64 kernel, if it was built.
pub fn cached() -> Result<Option<KernelImages>, KernelError> {
    cached_for(Arch::X86_64)
}

/// The cached `arch` kernel, if it was built. Without the source tarball,
/// the newest kernel built from this recipe (without_source.rs).
pub fn cached_for(arch: Arch) -> Result<Option<KernelImages>, KernelError> {
    if let Some(k) = override_dir(arch) {
        return if k.complete() {
            Ok(Some(k))
        } else {
            Err(k.missing())
        };
    }
    let dir = match cache_dir_for(arch) {
        Ok(dir) => dir,
        Err(KernelError::NoSource(tarball)) => {
            let recipe = recipe_hash(arch);
            let root = cache_root().join("kernel");
            let complete = |dir: &Path| {
                KernelImages {
                    dir: dir.to_path_buf(),
                    arch,
                }
                .complete()
            };
            return without_source::find(&root, arch.cache_prefix(), &recipe, complete)
                .map(|dir| Some(KernelImages { dir, arch }))
                .ok_or(KernelError::NoSource(tarball));
        }
        Err(e) => return Err(e),
    };
    let k = KernelImages { dir, arch };
    Ok(k.complete().then_some(k))
}

/// Builds the `arch` kernel into the cache (unless it is there), printing
/// progress. `jobs` defaults to the number of CPUs.
pub fn build(arch: Arch, jobs: Option<usize>, force: bool) -> Result<KernelImages, KernelError> {
    if let Some(k) = override_dir(arch) {
        return if k.complete() {
            Ok(k)
        } else {
            Err(k.missing())
        };
    }
    let tarball = source_tarball();
    let dir = match cache_dir_for(arch) {
        Ok(dir) => dir,
        // Nothing to build from: a kernel this recipe built earlier will do.
        Err(KernelError::NoSource(_)) if !force => {
            return cached_for(arch)?.ok_or(KernelError::NoSource(tarball));
        }
        Err(e) => return Err(e),
    };
    let k = KernelImages {
        dir: dir.clone(),
        arch,
    };
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
    for (name, content) in arch.recipe() {
        let p = recipe.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::write(&p, content).map_err(io("writing", &p))?;
    }
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let what = match arch {
        Arch::X86_64 => "",
        Arch::Arm64 => "arm64 ",
    };
    eprintln!(
        "hutch: building the {what}guest kernel (Linux 6.1 from {}) into {}",
        tarball.display(),
        dir.display()
    );
    eprintln!("hutch: this happens once per kernel recipe and takes a few minutes");
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let (script, fragment) = arch.script_and_fragment();
    let status = Command::new("bash")
        .arg(recipe.join(script))
        .arg(&tarball)
        .arg(work.join("src"))
        .arg(&dir)
        .arg(recipe.join(fragment))
        .arg(jobs.to_string())
        .arg(arch.script_arg())
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(io("running", &recipe.join(script)))?;
    match status.code() {
        Some(0) if k.complete() => {
            // The extracted tree is ~1.5 GiB; the images are all we keep.
            let _ = std::fs::remove_dir_all(&work);
            without_source::mark(&dir, &recipe_hash(arch));
            Ok(k)
        }
        Some(3) => Err(KernelError::MissingPrereqs),
        code => Err(KernelError::BuildFailed {
            status: code.unwrap_or(-1),
            log: work.join("src").join("build.log"),
        }),
    }
}

/// The cached x86_64 kernel, building it first if needed.
pub fn ensure() -> Result<KernelImages, KernelError> {
    match cached()? {
        Some(k) => Ok(k),
        None => build(Arch::X86_64, None, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/kernel");
        // Every file of guest/kernel/ but the README belongs to a recipe.
        let mut on_disk = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "README.md" && e.file_type().unwrap().is_file() {
                on_disk.push(name);
            }
        }
        for e in std::fs::read_dir(dir.join("patches")).unwrap() {
            on_disk.push(format!(
                "patches/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
        on_disk.sort();
        let both = RECIPE.iter().chain(RECIPE_ARM64);
        let mut embedded: Vec<String> = both.clone().map(|r| r.0.to_string()).collect();
        embedded.sort();
        embedded.dedup();
        assert_eq!(
            on_disk, embedded,
            "add new recipe files to RECIPE or RECIPE_ARM64"
        );
        for (name, content) in both {
            assert_eq!(
                &std::fs::read_to_string(dir.join(name)).unwrap(),
                content,
                "{name}"
            );
        }
    }

    #[test]
    fn recipe_hash_is_stable_and_short() {
        for arch in [Arch::X86_64, Arch::Arm64] {
            assert_eq!(recipe_hash(arch), recipe_hash(arch));
            assert_eq!(recipe_hash(arch).len(), 12);
        }
        assert_ne!(recipe_hash(Arch::X86_64), recipe_hash(Arch::Arm64));
    }

    #[test]
    fn arm64_recipe_is_self_contained() {
        let (script, fragment) = Arch::Arm64.script_and_fragment();
        let names: Vec<&str> = RECIPE_ARM64.iter().map(|r| r.0).collect();
        assert!(names.contains(&script) && names.contains(&fragment));
        let (script, fragment) = Arch::X86_64.script_and_fragment();
        let names: Vec<&str> = RECIPE.iter().map(|r| r.0).collect();
        assert!(names.contains(&script) && names.contains(&fragment));
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
