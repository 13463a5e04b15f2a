//! `hutch selftest`: boot a guest whose root file system the kernel mounts
//! itself through hutch's virtio-fs (`root=hutch-root rootfstype=virtiofs`),
//! and report each milestone with its time.
//!
//! On a PVM host the kernel runs (slowly, emulated) but user space cannot,
//! so the test stops at "/init executed" and applies the accommodations the
//! PVM emulator needs on the command line.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hutch_proto::{ROOT_TAG, SELFTEST_ARG};

use super::SelftestArgs;
use crate::devices::virtio::fs::{ShareConfig, SharePolicy};
use crate::engine::{self, detect, ConsoleAction, EngineKind, Resolved, VmSpec};

/// Command-line accommodations for PVM's instruction emulator.
pub const PVM_CMDLINE: &str = "noxsave clearcpuid=smap,smep,popcnt,cx16";

/// One milestone: its name and the console text that proves it.
pub struct Milestone {
    pub name: &'static str,
    pub marker: &'static str,
    /// Needs guest user space (unreachable on PVM).
    pub user_space: bool,
}

/// The milestones, in boot order.
pub const MILESTONES: &[Milestone] = &[
    Milestone {
        name: "kernel banner on serial",
        marker: "Linux version",
        user_space: false,
    },
    Milestone {
        name: "virtio-mmio devices probed",
        marker: "virtio-mmio: Registering device",
        user_space: false,
    },
    Milestone {
        name: "virtio-fs root mounted",
        marker: "VFS: Mounted root (virtiofs filesystem)",
        user_space: false,
    },
    Milestone {
        name: "/init executed from the share",
        marker: "Run /init as init process",
        user_space: false,
    },
    Milestone {
        name: "init running in user space",
        marker: "hutch-init: selftest: init running",
        user_space: true,
    },
];

/// Tracks milestones as console lines arrive.
#[derive(Default)]
pub struct Tracker {
    reached: Vec<(usize, Duration)>,
    failed_exec: bool,
}

impl Tracker {
    /// Records any milestone `line` proves; true when the last reachable one is reached.
    pub fn see(&mut self, line: &str, at: Duration, user_space: bool) -> bool {
        if line.contains("Failed to execute /init") || line.contains("No working init found") {
            self.failed_exec = true;
            return true;
        }
        for (i, m) in MILESTONES.iter().enumerate() {
            if line.contains(m.marker) && !self.reached.iter().any(|r| r.0 == i) {
                self.reached.push((i, at));
            }
        }
        let last = if user_space { MILESTONES.len() - 1 } else { 3 };
        self.reached.iter().any(|r| r.0 == last)
    }

    /// When milestone `i` was reached.
    pub fn at(&self, i: usize) -> Option<Duration> {
        if i == 3 && self.failed_exec {
            return None;
        }
        self.reached.iter().find(|r| r.0 == i).map(|r| r.1)
    }
}

/// Runs the self-test; exit 0 only when every reachable milestone was reached.
pub fn main(args: SelftestArgs, started: Instant) -> i32 {
    match run(args, started) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("hutch selftest: {e}");
            1
        }
    }
}

fn run(args: SelftestArgs, started: Instant) -> Result<bool, String> {
    let kvm = detect::HostFacts::probe().kind();
    let engine = match args.engine {
        EngineKind::Native | EngineKind::Auto if kvm == detect::KvmKind::None => {
            return Err("the native engine needs /dev/kvm, which is not usable here".into())
        }
        EngineKind::Native | EngineKind::Auto => Resolved::Native,
        EngineKind::Qemu => {
            if detect::find_qemu().is_none() {
                return Err(engine::EngineError::NoQemu.to_string());
            }
            Resolved::Qemu {
                kvm: kvm.runs_guests(),
            }
        }
    };
    let pvm = engine == Resolved::Native && kvm == detect::KvmKind::Pvm;
    let user_space = !pvm;
    let kernel = match args.kernel {
        Some(k) => k,
        None => {
            // Both engines boot the ELF through its PVH entry (see run.rs).
            crate::kernel::ensure()
                .map_err(|e| e.to_string())?
                .vmlinux()
        }
    };
    let root = tempfile::Builder::new()
        .prefix("hutch-selftest-")
        .tempdir()
        .map_err(|e| format!("creating the self-test root: {e}"))?;
    let init = root.path().join("init");
    std::fs::write(&init, crate::guest_init::INIT)
        .map_err(|e| format!("writing {}: {e}", init.display()))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", init.display()))?;

    let mut cmdline = format!(
        "console=ttyS0 loglevel=7 reboot=t panic=-1 root={ROOT_TAG} rootfstype=virtiofs rw init=/init {SELFTEST_ARG}"
    );
    if pvm {
        cmdline.push(' ');
        cmdline.push_str(PVM_CMDLINE);
    }
    println!(
        "hutch selftest: engine {}{}, kernel {}",
        engine.name(),
        if pvm {
            " on PVM (user space cannot run here: stops at /init executed)"
        } else {
            ""
        },
        kernel.display()
    );
    println!("hutch selftest: kernel command line: {cmdline}");

    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let t2 = tracker.clone();
    let observe = Box::new(move |line: &str| {
        let mut t = t2.lock().unwrap_or_else(|p| p.into_inner());
        let before = t.reached.len();
        let done = t.see(line, started.elapsed(), user_space);
        for (i, at) in &t.reached[before..] {
            println!(
                "  [{:>8.3} s] reached: {}",
                at.as_secs_f64(),
                MILESTONES[*i].name
            );
        }
        if done {
            ConsoleAction::Stop
        } else {
            ConsoleAction::Continue
        }
    });
    let mut spec = VmSpec::new(kernel, cmdline, started);
    spec.shares = vec![ShareConfig {
        tag: ROOT_TAG.into(),
        source: root.path().to_path_buf(),
        policy: SharePolicy::Workspace,
    }];
    spec.echo_console = args.console;
    spec.time_limit = Some(Duration::from_secs(args.time_limit));
    spec.on_console_line = Some(observe);

    let outcome = match engine {
        Resolved::Native => engine::native::run(spec),
        Resolved::Qemu { kvm } => engine::qemu::run(spec, kvm),
    }
    .map_err(|e| e.to_string())?;

    let t = tracker.lock().unwrap_or_else(|p| p.into_inner());
    let mut ok = true;
    println!("hutch selftest: results ({} engine):", engine.name());
    for (i, m) in MILESTONES.iter().enumerate() {
        match t.at(i) {
            Some(at) => println!("  ok       {:>8.3} s  {}", at.as_secs_f64(), m.name),
            None if m.user_space && !user_space => println!(
                "  skipped             {} (PVM cannot run guest user space)",
                m.name
            ),
            None => {
                ok = false;
                println!("  MISSING             {}", m.name);
            }
        }
    }
    if !ok {
        println!("hutch selftest: stopped because: {:?}", outcome.stop);
        println!(
            "hutch selftest: last console lines:\n{}",
            outcome.console_tail
        );
    }
    println!("hutch selftest: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_orders_and_stops_at_last_reachable() {
        let mut t = Tracker::default();
        let s = Duration::from_secs(1);
        assert!(!t.see("[0.0] Linux version 6.1.0", s, false));
        assert!(!t.see(
            "virtio-mmio: Registering device virtio-mmio.0 at 0xd0000000",
            s,
            false
        ));
        assert!(!t.see(
            "VFS: Mounted root (virtiofs filesystem) on device 0:14.",
            s,
            false
        ));
        assert!(
            t.see("Run /init as init process", s, false),
            "PVM stops here"
        );
        assert!(t.at(3).is_some());
        let mut u = Tracker::default();
        assert!(!u.see("Run /init as init process", s, true));
        assert!(u.see("hutch-init: selftest: init running", s, true));
    }

    #[test]
    fn failed_exec_is_not_a_milestone() {
        let mut t = Tracker::default();
        t.see("Run /init as init process", Duration::ZERO, true);
        assert!(t.see("Failed to execute /init (error -2)", Duration::ZERO, true));
        assert_eq!(t.at(3), None);
    }
}
