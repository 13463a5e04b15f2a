//! `hutch run [WORKSPACE] [-- CMD]`.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hutch_proto::{ExecRequest, RunSpec, WinSize, ROOT_TAG, WORKSPACE_TAG};

use super::link::GuestLink;
use super::size;
use super::RunArgs;
use crate::agent::{run_session, terminal, SessionIo};
use crate::control::StopReason;
use crate::devices::virtio::fs::{ShareConfig, SharePolicy};
use crate::engine::console::GuestReport;
use crate::engine::{self, detect, Resolved, VmOutcome, VmSpec};
use crate::sandbox::Status;

/// Exit status when hutch itself (not the command) failed.
pub const EXIT_HUTCH_ERROR: i32 = 125;
/// Default guest PATH.
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Home directory inside the guest (a tmpfs).
const GUEST_HOME: &str = "/root";
/// Kernel command line shared by both engines. (The page writeback
/// intervals, 1 s, were `sysctl.` parameters here; guest init sets them
/// now, which is ~12 ms cheaper: `guest/init/src/host.rs`.)
///
/// `swiotlb=noforce`: a guest with memory above 4 GiB and no IOMMU would
/// set aside and zero a 64 MiB bounce buffer at boot, which no hutch device
/// uses (virtio without ACCESS_PLATFORM hands devices guest-physical
/// addresses; the serial port is port I/O). Zeroing it took ~115 ms of a
/// TCG boot, and it made 64 MiB of host memory resident per guest.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 rdinit=/init swiotlb=noforce";

/// Runs `hutch run`; returns the exit status.
pub fn main(args: RunArgs, started: Instant) -> i32 {
    match run(args, started) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("hutch: {msg}");
            EXIT_HUTCH_ERROR
        }
    }
}

/// The workspace, canonical and checked.
pub fn workspace(arg: Option<&Path>) -> Result<PathBuf, String> {
    let given = match arg {
        Some(p) => p.to_path_buf(),
        None => std::env::current_dir().map_err(|e| format!("current directory: {e}"))?,
    };
    let ws = given
        .canonicalize()
        .map_err(|e| format!("workspace {}: {e}", given.display()))?;
    if !ws.is_dir() {
        return Err(format!("workspace {}: not a directory", ws.display()));
    }
    std::fs::read_dir(&ws)
        .map_err(|e| format!("workspace {}: cannot be read: {e}", ws.display()))?;
    if ws == Path::new("/") {
        return Err("refusing to share / as the workspace: name a project directory".into());
    }
    Ok(ws)
}

/// The guest environment: defaults, then `-e` entries in order.
pub fn guest_env(entries: &[OsString]) -> Result<Vec<Vec<u8>>, String> {
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"PATH".to_vec(), GUEST_PATH.as_bytes().to_vec()),
        (b"HOME".to_vec(), GUEST_HOME.as_bytes().to_vec()),
        (b"USER".to_vec(), b"root".to_vec()),
        (b"HOSTNAME".to_vec(), b"hutch".to_vec()),
    ];
    for key in ["TERM", "LANG", "LC_ALL"] {
        if let Some(v) = std::env::var_os(key) {
            env.push((key.as_bytes().to_vec(), v.into_vec()));
        }
    }
    for e in entries {
        let b = e.as_bytes();
        let (k, v) = match b.iter().position(|c| *c == b'=') {
            Some(i) => (b[..i].to_vec(), b[i + 1..].to_vec()),
            None => match std::env::var_os(e) {
                Some(v) => (b.to_vec(), v.into_vec()),
                None => continue,
            },
        };
        if k.is_empty() {
            return Err(format!("-e {}: empty variable name", e.to_string_lossy()));
        }
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    Ok(env
        .into_iter()
        .map(|(k, v)| [k, b"=".to_vec(), v].concat())
        .collect())
}

/// `base` entries (the proxy's variables) under `env`: an entry of `env`
/// with the same name wins.
pub fn with_base_env(base: &[Vec<u8>], env: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let name = |e: &[u8]| e.split(|b| *b == b'=').next().unwrap_or_default().to_vec();
    let mut out: Vec<Vec<u8>> = base
        .iter()
        .filter(|b| !env.iter().any(|e| name(e) == name(b)))
        .cloned()
        .collect();
    out.extend(env);
    out
}

/// Guest memory and vCPUs from the command line, or the defaults.
pub fn sizes(args: &RunArgs) -> Result<(u64, u8), String> {
    let memory = match &args.memory {
        Some(m) => size::check_memory(m, size::host_memory()).map_err(|e| e.to_string())?,
        None => size::default_memory(size::host_memory()),
    };
    let cpus = match args.cpus {
        Some(c) => size::check_cpus(c, size::host_cpus()).map_err(|e| e.to_string())?,
        None => size::default_cpus(size::host_cpus()),
    };
    Ok((memory, cpus))
}

/// The command's working directory: the host's current directory when it
/// is inside the workspace, else the workspace.
pub fn guest_cwd(ws: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|c| c.canonicalize().ok())
        .filter(|c| c.starts_with(ws))
        .unwrap_or_else(|| ws.to_path_buf())
}

fn run(args: RunArgs, started: Instant) -> Result<i32, String> {
    // Check what the user gave first, before any engine or kernel work, so
    // bad input gets the same answer on every host.
    check_args(&args)?;
    if args.detach && !args.daemon_child {
        return super::daemon::start(&args);
    }
    let kvm = detect::HostFacts::probe().kind();
    let (engine, notice) = engine::resolve(args.engine, kvm, detect::find_qemu().is_some())?;
    if let Some(n) = notice {
        if !args.daemon_child {
            eprintln!("{n}");
        }
    }
    let (memory, cpus) = sizes(&args)?;
    let host = GuestLink::open(&args, engine, memory, cpus)?;
    let mut vm = vm_spec(&args, started, host.ca_bundle())?;
    vm.vsock = Some(host.vsock().to_path_buf());
    let request = exec_request(&args, host.guest_env())?;
    let tty = request.tty.is_some();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let session = {
        let (stop, host) = (stop.clone(), host.clone());
        let detached = args.detach;
        std::thread::spawn(move || {
            let Some(conn) = host.accept_hello(&stop) else {
                return;
            };
            host.mark(Status::Running);
            if detached {
                return;
            }
            let io = SessionIo {
                forward_stdin: true,
                raw_tty: tty,
                forward_signals: true,
            };
            let r = run_session(conn, &request, io, host.vsock()).map_err(|e| e.to_string());
            let _ = tx.send(r);
        })
    };
    let outcome = match engine {
        Resolved::Native => engine::native::run(vm),
        Resolved::Qemu { kvm } => engine::qemu::run(vm, kvm),
    };
    stop.store(true, Ordering::SeqCst);
    let session_result = rx.recv_timeout(SESSION_GRACE).ok();
    drop(session);
    host.finish();
    let outcome = outcome.map_err(|e| e.to_string())?;
    if args.timings {
        print_timings(&outcome, engine, started);
    }
    for report in &outcome.fs_stats {
        eprint!("hutch: {report}");
    }
    match session_result {
        Some(Ok(status)) => Ok(status),
        // The guest ended without finishing the session: what init reported
        // on the serial line says why.
        Some(Err(e)) => exit_status(&outcome).map_err(|why| format!("{why}\n(session: {e})")),
        None if args.detach => Ok(0),
        None => exit_status(&outcome),
    }
}

/// How long to wait for the session to finish once the VM has stopped.
const SESSION_GRACE: Duration = Duration::from_secs(3);

/// The run's command as an exec request: a terminal when stdin and stdout
/// are both terminals.
fn exec_request(args: &RunArgs, base_env: &[Vec<u8>]) -> Result<ExecRequest, String> {
    let ws = workspace(args.workspace.as_deref())?;
    let argv: Vec<Vec<u8>> = if args.cmd.is_empty() {
        vec![b"sh".to_vec()]
    } else {
        args.cmd.iter().map(|a| a.as_bytes().to_vec()).collect()
    };
    let tty = (terminal::is_tty(0) && terminal::is_tty(1))
        .then(|| terminal::size(0).unwrap_or(WinSize { rows: 24, cols: 80 }));
    Ok(ExecRequest {
        argv,
        env: with_base_env(base_env, guest_env(&args.env)?),
        cwd: guest_cwd(&ws).into_os_string().into_vec(),
        tty,
        uid: 0,
        gid: 0,
    })
}

/// Validates the workspace, sizes, environment and kernel path.
pub fn check_args(args: &RunArgs) -> Result<(), String> {
    workspace(args.workspace.as_deref())?;
    if let Some(m) = &args.memory {
        size::check_memory(m, size::host_memory()).map_err(|e| e.to_string())?;
    }
    if let Some(c) = args.cpus {
        size::check_cpus(c, size::host_cpus()).map_err(|e| e.to_string())?;
    }
    guest_env(&args.env)?;
    match &args.kernel {
        Some(k) if !k.is_file() => Err(format!("kernel {}: no such file", k.display())),
        _ => Ok(()),
    }
}

/// Everything `run` boots, from the command line: workspace, sizes, command,
/// environment, kernel and the two shares.
pub fn vm_spec(
    args: &RunArgs,
    started: Instant,
    ca_bundle: Option<&str>,
) -> Result<VmSpec, String> {
    crate::control::mark_early("command line parsed");
    let ws = workspace(args.workspace.as_deref())?;
    let (memory, cpus) = sizes(args)?;
    let kernel = match &args.kernel {
        Some(k) if k.is_file() => k.clone(),
        Some(k) => return Err(format!("kernel {}: no such file", k.display())),
        None => {
            let images = crate::kernel::ensure().map_err(|e| e.to_string())?;
            // Both engines boot the ELF through its PVH entry: under TCG,
            // unpacking the bzImage took QEMU's guest about 120 ms.
            images.vmlinux()
        }
    };
    crate::control::mark_early("kernel located");
    let spec = RunSpec {
        workspace: ws.clone().into_os_string().into_vec(),
        home: GUEST_HOME.as_bytes().to_vec(),
        detached: args.detach,
        ca_bundle: ca_bundle.map(|b| b.as_bytes().to_vec()).unwrap_or_default(),
    };
    let loglevel = if args.console {
        "loglevel=7"
    } else {
        "loglevel=1"
    };
    let mut cmdline = format!("{BASE_CMDLINE} {loglevel}");
    if let Some(caps) = size::hash_table_caps(memory) {
        cmdline.push(' ');
        cmdline.push_str(caps);
    }
    for a in &args.kernel_args {
        cmdline.push(' ');
        cmdline.push_str(a);
    }
    let initrd = engine::initramfs::build(crate::guest_init::INIT, &spec);
    crate::control::mark_early("initramfs built");
    let mut vm = VmSpec::new(kernel, cmdline, started);
    vm.memory = memory;
    vm.cpus = cpus;
    vm.initrd = Some(initrd);
    vm.shares = vec![
        ShareConfig {
            tag: ROOT_TAG.into(),
            source: "/".into(),
            policy: SharePolicy::SystemRoot,
        },
        ShareConfig {
            tag: WORKSPACE_TAG.into(),
            source: ws,
            policy: SharePolicy::Workspace,
        },
    ];
    vm.echo_console = args.console;
    vm.fs_stats = args.stats;
    Ok(vm)
}

fn print_timings(o: &VmOutcome, engine: Resolved, started: Instant) {
    eprintln!(
        "hutch: timings ({} engine), from hutch start:",
        engine.name()
    );
    for (phase, at) in &o.phases {
        eprintln!("  {:>9.3} ms  {}", at.as_secs_f64() * 1e3, phase.name());
    }
    eprintln!("  {:>9.3} ms  end", started.elapsed().as_secs_f64() * 1e3);
}

/// Maps how the guest ended to hutch's exit status.
pub fn exit_status(o: &VmOutcome) -> Result<i32, String> {
    match &o.report {
        Some(GuestReport::Exit(code)) => Ok(*code),
        Some(GuestReport::InitError(msg)) => Err(format!("guest init failed: {msg}")),
        None if o.panicked => Err(format!("the guest kernel panicked:\n{}", o.console_tail)),
        None => {
            let tail = if o.console_tail.is_empty() {
                "rerun with --console to see the guest's kernel log".to_string()
            } else {
                format!("last console lines:\n{}", o.console_tail)
            };
            match &o.stop {
                Some(StopReason::GuestExit(code)) => Ok(*code),
                Some(StopReason::Error(e)) => Err(format!("{e}\n{tail}")),
                Some(StopReason::HostRequest(why)) => Err(format!("guest stopped: {why}")),
                Some(StopReason::GuestShutdown(how)) => Err(format!(
                    "the guest stopped ({how}) before reporting an exit status; {tail}"
                )),
                None => Err(format!(
                    "the guest stopped before reporting an exit status; {tail}"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(report: Option<GuestReport>, stop: Option<StopReason>, panicked: bool) -> VmOutcome {
        VmOutcome {
            report,
            stop,
            console_tail: "Kernel panic - not syncing: x".into(),
            panicked,
            phases: vec![],
            vmm_rss_kib: None,
            fs_stats: vec![],
        }
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(
            exit_status(&outcome(Some(GuestReport::Exit(7)), None, false)),
            Ok(7)
        );
        assert_eq!(
            exit_status(&outcome(None, Some(StopReason::GuestExit(3)), false)),
            Ok(3)
        );
        assert!(exit_status(&outcome(None, None, true))
            .unwrap_err()
            .contains("panicked"));
        let e = exit_status(&outcome(
            Some(GuestReport::InitError("mount failed".into())),
            None,
            false,
        ));
        assert!(e.unwrap_err().contains("mount failed"));
        let e = exit_status(&outcome(
            None,
            Some(StopReason::GuestShutdown("reset")),
            false,
        ));
        assert!(e.unwrap_err().contains("before reporting an exit status"));
    }

    #[test]
    fn env_defaults_and_overrides_keep_bytes() {
        let env = guest_env(&[
            OsString::from("A=b c"),
            OsString::from("HOME=/w"),
            OsString::from_vec(b"X=\xff".to_vec()),
        ])
        .unwrap();
        assert!(env.contains(&b"A=b c".to_vec()));
        assert!(env.contains(&b"HOME=/w".to_vec()));
        assert!(!env.contains(&b"HOME=/root".to_vec()));
        assert!(env.contains(&b"X=\xff".to_vec()));
        assert!(env.iter().any(|e| e.starts_with(b"PATH=")));
        assert!(guest_env(&[OsString::from("=x")]).is_err());
    }

    #[test]
    fn proxy_variables_are_defaults_the_user_can_override() {
        let base = vec![
            b"HTTP_PROXY=http://127.0.0.1:3128".to_vec(),
            b"NO_PROXY=localhost".to_vec(),
        ];
        let env = with_base_env(&base, vec![b"NO_PROXY=x".to_vec(), b"A=1".to_vec()]);
        assert_eq!(
            env,
            [
                b"HTTP_PROXY=http://127.0.0.1:3128".to_vec(),
                b"NO_PROXY=x".to_vec(),
                b"A=1".to_vec()
            ]
        );
    }

    #[test]
    fn workspace_errors_name_the_path() {
        let e = workspace(Some(Path::new("/nonexistent/hutch-ws"))).unwrap_err();
        assert!(e.contains("/nonexistent/hutch-ws"), "{e}");
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(workspace(Some(f.path()))
            .unwrap_err()
            .contains("not a directory"));
        assert!(workspace(Some(Path::new("/")))
            .unwrap_err()
            .contains("refusing"));
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            workspace(Some(d.path())).unwrap(),
            d.path().canonicalize().unwrap()
        );
    }
}
