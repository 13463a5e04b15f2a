//! Engines: what actually runs a guest.
//!
//! * [`native`]: hutch's own VMM on KVM: the product.
//! * [`qemu`]: `qemu-system-x86_64 -M microvm` with hutch's own virtio-fs
//!   served over vhost-user: the fallback where no hardware virtualization
//!   can run a guest (PVM hosts, CI runners without nested virtualization).
//!
//! Both take the same [`VmSpec`] and return the same [`VmOutcome`].

pub mod console;
pub mod detect;
pub mod fs_backend;
pub mod guest_ram;
pub mod initramfs;
pub mod native;
pub mod qemu;
pub mod tsc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::control::{Phase, StopReason};
use crate::devices::virtio::fs::ShareConfig;
use console::GuestReport;

/// Which engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// Native where this host can run a guest, else qemu.
    Auto,
    /// hutch's own VMM on KVM.
    Native,
    /// QEMU microvm with hutch's devices over vhost-user.
    Qemu,
}

impl EngineKind {
    /// Name as printed in notices and test output.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::Native => "native",
            EngineKind::Qemu => "qemu",
        }
    }
}

/// Everything an engine needs to boot one guest.
pub struct VmSpec {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPU count.
    pub cpus: u8,
    /// Kernel image: an ELF `vmlinux` (PVH entry used when present) or a bzImage.
    pub kernel: PathBuf,
    /// Kernel command line, without the engine's device entries.
    pub cmdline: String,
    /// The initramfs, if any.
    pub initrd: Option<initramfs::Initramfs>,
    /// virtio-fs shares, in device order.
    pub shares: Vec<ShareConfig>,
    /// Copy kernel console text to stderr.
    pub echo_console: bool,
    /// Stop the guest after this long.
    pub time_limit: Option<Duration>,
    /// When the hutch process started (boot timings start here).
    pub started: Instant,
    /// Called with each console line as it arrives (self-test milestones).
    pub on_console_line: Option<LineCallback>,
    /// Forward hutch's stdin to the guest.
    pub forward_stdin: bool,
    /// Enter an ELF kernel through its PVH entry when it has one (native
    /// engine); otherwise through the 64-bit Linux boot protocol.
    pub prefer_pvh: bool,
    /// Measure the VMM's own resident memory before teardown (native).
    pub measure_rss: bool,
    /// Report each virtio-fs device's request counters in the outcome.
    pub fs_stats: bool,
    /// Serve a virtio-vsock device (guest CID 3) whose host side is this
    /// Unix socket (hybrid `CONNECT <port>` protocol; `<path>_<port>` for
    /// guest-initiated connections).
    pub vsock: Option<PathBuf>,
}

impl VmSpec {
    /// A spec with defaults for everything but the kernel and command line:
    /// 512 MiB, one vCPU, no initramfs, no shares, PVH preferred.
    pub fn new(kernel: PathBuf, cmdline: String, started: Instant) -> Self {
        Self {
            memory: 512 << 20,
            cpus: 1,
            kernel,
            cmdline,
            initrd: None,
            shares: Vec::new(),
            echo_console: false,
            time_limit: None,
            started,
            on_console_line: None,
            forward_stdin: false,
            prefer_pvh: true,
            measure_rss: false,
            fs_stats: false,
            vsock: None,
        }
    }
}

/// Called with each console line; says whether to go on.
pub type LineCallback = Box<dyn FnMut(&str) -> ConsoleAction + Send>;

/// What a console-line observer wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAction {
    Continue,
    Stop,
}

/// How a guest run ended.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// What init reported (exit status or its own error), if it got that far.
    pub report: Option<GuestReport>,
    /// Why the VM stopped.
    pub stop: Option<StopReason>,
    /// The last console lines, for error messages.
    pub console_tail: String,
    /// The kernel panicked.
    pub panicked: bool,
    /// Boot phases with their offsets from hutch's start.
    pub phases: Vec<(Phase, Duration)>,
    /// The VMM's resident memory outside guest RAM, (total, anonymous) KiB,
    /// when [`VmSpec::measure_rss`] was set.
    pub vmm_rss_kib: Option<(u64, u64)>,
    /// Per-device virtio-fs counters, when [`VmSpec::fs_stats`] was set.
    pub fs_stats: Vec<String>,
}

/// Errors of either engine, naming the file, device or process involved.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("reading kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading kernel {path}: {reason}")]
    KernelFormat { path: PathBuf, reason: String },
    #[error("allocating {bytes} bytes of guest memory: {reason}")]
    Memory { bytes: u64, reason: String },
    #[error(transparent)]
    Hypervisor(#[from] crate::hypervisor::HvError),
    #[error(transparent)]
    Arch(#[from] crate::arch::x86_64::ArchError),
    #[error(transparent)]
    Device(#[from] crate::devices::DeviceError),
    #[error(transparent)]
    Fs(#[from] crate::devices::virtio::fs::FsError),
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::VsockError),
    #[error("no qemu-system-x86_64 found (install the Debian package qemu-system-x86, or set HUTCH_QEMU)")]
    NoQemu,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("qemu failed: {0}")]
    Qemu(String),
    #[error("file system backend for share {tag}: {message}")]
    FsBackend { tag: String, message: String },
}

/// The engine that will actually run, after `auto` is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// hutch's VMM on KVM.
    Native,
    /// QEMU, with `-accel kvm` when `kvm` is true, else TCG.
    Qemu { kvm: bool },
}

impl Resolved {
    /// Name as printed in notices and test output.
    pub fn name(self) -> &'static str {
        match self {
            Resolved::Native => "native",
            Resolved::Qemu { kvm: true } => "qemu (kvm)",
            Resolved::Qemu { kvm: false } => "qemu (tcg)",
        }
    }
}

/// Decides which engine runs a full guest (kernel and user space) on a host
/// with `kvm` and (or without) QEMU. Returns the choice and, when `auto`
/// fell back, a one-line notice.
pub fn resolve(
    requested: EngineKind,
    kvm: detect::KvmKind,
    qemu_available: bool,
) -> Result<(Resolved, Option<String>), String> {
    let qemu = Resolved::Qemu {
        kvm: kvm.runs_guests(),
    };
    match requested {
        EngineKind::Native if kvm.runs_guests() => Ok((Resolved::Native, None)),
        EngineKind::Native => Err(format!(
            "the native engine cannot run a guest's user space here (/dev/kvm: {}); use --engine qemu, or `hutch selftest --engine native` to test the native VMM as far as this host allows",
            kvm.name()
        )),
        EngineKind::Qemu if qemu_available => Ok((qemu, None)),
        EngineKind::Qemu => Err(EngineError::NoQemu.to_string()),
        EngineKind::Auto if kvm.runs_guests() => Ok((Resolved::Native, None)),
        EngineKind::Auto if qemu_available => Ok((
            qemu,
            Some(format!(
                "hutch: /dev/kvm here is {} (cannot run guest user space); using the qemu engine with TCG",
                kvm.name()
            )),
        )),
        EngineKind::Auto => Err(format!(
            "no engine can run here: /dev/kvm is {} and {}",
            kvm.name(),
            EngineError::NoQemu
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::detect::KvmKind;
    use super::*;

    #[test]
    fn auto_prefers_native_on_real_kvm() {
        assert_eq!(
            resolve(EngineKind::Auto, KvmKind::Intel, true),
            Ok((Resolved::Native, None))
        );
        assert_eq!(
            resolve(EngineKind::Auto, KvmKind::Amd, false),
            Ok((Resolved::Native, None))
        );
    }

    #[test]
    fn auto_falls_back_to_tcg_on_pvm_with_a_notice() {
        let (r, notice) = resolve(EngineKind::Auto, KvmKind::Pvm, true).unwrap();
        assert_eq!(r, Resolved::Qemu { kvm: false });
        assert!(notice.unwrap().contains("pvm"));
        assert!(resolve(EngineKind::Auto, KvmKind::None, true)
            .unwrap()
            .1
            .is_some());
    }

    #[test]
    fn explicit_choices_and_impossible_ones() {
        assert_eq!(
            resolve(EngineKind::Qemu, KvmKind::Intel, true),
            Ok((Resolved::Qemu { kvm: true }, None))
        );
        assert!(resolve(EngineKind::Native, KvmKind::Pvm, true)
            .unwrap_err()
            .contains("--engine qemu"));
        assert!(resolve(EngineKind::Qemu, KvmKind::Intel, false)
            .unwrap_err()
            .contains("qemu-system-x86"));
        assert!(resolve(EngineKind::Auto, KvmKind::None, false)
            .unwrap_err()
            .contains("no engine"));
    }
}
