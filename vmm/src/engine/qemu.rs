//! The qemu engine: `qemu-system-x86_64 -M microvm,acpi=off` booting the
//! same kernel and init, with hutch's own virtio-fs devices served to it
//! over vhost-user by `hutch fs-backend` processes (fs_backend.rs), vsock
//! from this process, and its serial line on QEMU's stdio.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hutch_proto::{Frame, FrameKind};

use super::console::{pump_stdin, HostConsole};
use super::fs_backend::FsBackend;
use super::guest_ram::GuestRam;
use super::{detect, EngineError, VmOutcome, VmSpec};
use crate::control::mark_early;
use crate::control::StopReason;
use crate::devices::virtio::fs::{Levers, SharePolicy, DEFAULT_QUEUE};
use crate::devices::virtio::vsock::{serve_vhost_user_vsock, VsockConfig, VsockDevice};

/// A private directory for the run's sockets and initramfs, removed on drop.
struct RuntimeDir(PathBuf);

impl RuntimeDir {
    fn new() -> Result<Self, EngineError> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("hutch-{}-{nonce:x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| EngineError::Io {
                what: format!("creating runtime directory {}", dir.display()),
                source,
            })?;
        Ok(Self(dir))
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        self.remove();
    }
}

use std::os::unix::fs::DirBuilderExt;

/// One vhost-user-fs device: its backend's socket, its tag and, where a
/// lever asks for one, its virtqueue size (else QEMU's default, 128).
#[derive(Debug, Clone)]
pub struct FsSocket {
    pub sock: PathBuf,
    pub tag: String,
    pub queue: Option<u16>,
}

/// Kernel parameters for a TCG guest (the first three are hutch's guest kernel's own):
///
/// - `virtiofs.hutch_tcg_code=1` (patch 0013). QEMU's translator keeps the
///   code it translated from a guest page until a guest CPU store reaches
///   the page, and the vhost-user backends write file data straight into
///   guest memory: a page cache page that held one binary's code, freed and
///   filled by a READ with another's, could run the old code (a `ls`
///   crashed this way after `echo 2 > /proc/sys/vm/drop_caches`, QEMU
///   10.0). The guest then stores what each READ brought back over itself.
/// - `hutch_apic_khz=1000000` (patch 0014). TCG's CPU has no TSC-deadline
///   timer, so the kernel would time its local APIC timer against the tick
///   twice, 25 ticks each: about 220 ms of every boot. QEMU clocks the APIC
///   at 1 GHz (`APIC_BUS_FREQUENCY`), so the guest takes that as given.
/// - `virtiofs.hutch_poll_us=300` (patch 0010's watch, 100 µs by default).
///   A TCG guest with 2 vCPUs on a 2-core host often waited past 100 µs for
///   an answer (the backend had no free core), and each watch that ran out
///   sent the next callers to sleep: 1,000 unlinks took 25 ms in most rounds
///   and 50–150 ms in some. With 300 µs, 60 rounds had one over 50 ms
///   instead of six, and no loop's median moved (docs/fs-levers.md).
/// - `cpu_init_udelay=0`. TCG's CPU says it is an AMD family 6, which the
///   kernel takes for a legacy part and waits 10 ms after each secondary
///   vCPU's INIT IPI; QEMU's APIC needs no wait. A second vCPU came up in
///   6 ms instead of 17–20.
///
/// They go first, so that a `--kernel-arg` (which comes later) overrides
/// them for a measurement.
pub const TCG_CMDLINE: &str =
    "virtiofs.hutch_tcg_code=1 hutch_apic_khz=1000000 virtiofs.hutch_poll_us=300 \
     cpu_init_udelay=0";

/// The QEMU command line for `spec`. `ram`: the path of a memfd of hutch's
/// for guest memory (guest_ram.rs); without one QEMU makes its own.
pub fn qemu_args(
    spec: &VmSpec,
    kvm: bool,
    initrd: Option<&Path>,
    sockets: &[FsSocket],
    vsock: Option<&Path>,
    ram: Option<&str>,
) -> Vec<String> {
    let mem_mib = spec.memory >> 20;
    let mut a: Vec<String> = vec![
        "-M".into(),
        "microvm,acpi=off,memory-backend=mem".into(),
        "-m".into(),
        format!("{mem_mib}M"),
        "-object".into(),
        match ram {
            Some(path) => {
                format!("memory-backend-file,id=mem,size={mem_mib}M,mem-path={path},share=on")
            }
            None => format!("memory-backend-memfd,id=mem,size={mem_mib}M,share=on"),
        },
        "-smp".into(),
        spec.cpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-chardev".into(),
        "stdio,id=con,signal=off".into(),
        "-serial".into(),
        "chardev:con".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-append".into(),
        if kvm {
            spec.cmdline.clone()
        } else {
            format!("{TCG_CMDLINE} {}", spec.cmdline)
        },
    ];
    if kvm {
        a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]);
    } else {
        a.extend([
            "-accel".into(),
            "tcg,thread=multi".into(),
            "-cpu".into(),
            "max".into(),
        ]);
    }
    if let Some(rd) = initrd {
        a.extend(["-initrd".into(), rd.display().to_string()]);
    }
    for (i, fs) in sockets.iter().enumerate() {
        let mut device = format!("vhost-user-fs-device,chardev=fs{i},tag={}", fs.tag);
        if let Some(n) = fs.queue {
            device.push_str(&format!(",queue-size={n}"));
        }
        a.extend([
            "-chardev".into(),
            format!("socket,id=fs{i},path={}", fs.sock.display()),
            "-device".into(),
            device,
        ]);
    }
    if let Some(sock) = vsock {
        a.extend([
            "-chardev".into(),
            format!("socket,id=vsock0,path={}", sock.display()),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock0".into(),
        ]);
    }
    a
}

/// Names a vhost-user-fs socket that serves the workspace share in place of
/// hutch's own backend. It exists for the file system benchmark, which runs
/// the same kernel and guest against virtiofsd this way; the workspace's
/// policy is then whatever that backend enforces.
pub const EXTERNAL_WORKSPACE_ENV: &str = "HUTCH_QEMU_WORKSPACE_BACKEND";

/// Checks the external workspace backend's socket and says it is in use.
fn external_backend(sock: &Path) -> Result<PathBuf, EngineError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(sock).map_err(|source| EngineError::Io {
        what: format!(
            "{EXTERNAL_WORKSPACE_ENV}: vhost-user socket {}",
            sock.display()
        ),
        source,
    })?;
    if !meta.file_type().is_socket() {
        return Err(EngineError::Io {
            what: format!("{EXTERNAL_WORKSPACE_ENV}: {}", sock.display()),
            source: std::io::Error::other("not a Unix socket"),
        });
    }
    eprintln!(
        "hutch: the workspace is served by the vhost-user backend at {} ({EXTERNAL_WORKSPACE_ENV})",
        sock.display()
    );
    Ok(sock.to_path_buf())
}

/// Boots `spec` under QEMU; `kvm` selects `-accel kvm` over TCG.
pub fn run(mut spec: VmSpec, kvm: bool) -> Result<VmOutcome, EngineError> {
    let qemu = detect::find_qemu().ok_or(EngineError::NoQemu)?;
    // A TCG guest is told the host's TSC rate, measured over 4 ms while the
    // backends start.
    let kernel = spec.kernel.clone();
    let tsc =
        (!kvm).then(|| std::thread::spawn(move || super::tsc::measure_guest_clock_args(&kernel)));
    let rt = RuntimeDir::new()?;

    let mut sockets = Vec::new();
    let mut backends = Vec::new();
    let external_ws = std::env::var_os(EXTERNAL_WORKSPACE_ENV).map(PathBuf::from);
    // The workspace's `queue=` lever sizes its device (also for an external
    // backend, so a benchmark can give both servers the same depth).
    let ws_queue = Levers::from_env()?.queue;
    for (i, share) in std::mem::take(&mut spec.shares).into_iter().enumerate() {
        let queue = (share.policy == SharePolicy::Workspace && ws_queue != DEFAULT_QUEUE)
            .then_some(ws_queue);
        let sock = match (share.policy, &external_ws) {
            (SharePolicy::Workspace, Some(sock)) => external_backend(sock)?,
            _ => {
                let sock = rt.0.join(format!("fs{i}.sock"));
                backends.push(FsBackend::spawn(&share, &sock, spec.fs_stats)?);
                sock
            }
        };
        sockets.push(FsSocket {
            sock,
            tag: share.tag,
            queue,
        });
    }
    // The backends start side by side (the root's secrets scan overlaps the
    // workspace's set-up); each says when it serves.
    for b in &mut backends {
        b.wait_ready()?;
    }
    mark_early("fs backends serving");
    // The device (and its host socket) lives until this function returns.
    let mut vsock_dev = None;
    let mut vsock_backend = None;
    let mut vsock_sock = None;
    if let Some(path) = spec.vsock.take() {
        let dev = Arc::new(VsockDevice::new(VsockConfig::new(path))?);
        let sock = rt.0.join("vsock.sock");
        vsock_backend = Some(serve_vhost_user_vsock(dev.clone(), &sock)?);
        vsock_dev = Some(dev);
        vsock_sock = Some(sock);
    }
    let initrd_path = match spec.initrd.take() {
        Some(data) => {
            let p = rt.0.join("initrd.cpio");
            std::fs::write(&p, data.to_vec()).map_err(|source| EngineError::Io {
                what: format!("writing {}", p.display()),
                source,
            })?;
            Some(p)
        }
        None => None,
    };

    // Without these the TCG guest keeps time in 4 ms jiffies and each
    // secondary vCPU calibrates its delay loop (see tsc.rs). They go before
    // the `--kernel-arg`s, which can override them (`lpj=0` brings the
    // calibration back), and after TCG_CMDLINE, which qemu_args puts first.
    if let Some(args) = tsc.and_then(|t| t.join().ok().flatten()) {
        spec.cmdline = format!("{args} {}", spec.cmdline);
    }
    // Guest memory is a memfd of hutch's, whose tail is allocated while
    // QEMU starts (guest_ram.rs); QEMU makes its own if this fails.
    let ram = GuestRam::new(spec.memory)
        .inspect_err(|e| log::debug!("{e}; QEMU allocates guest memory itself"))
        .ok();
    let ram_path = ram.as_ref().map(GuestRam::qemu_path);
    let ram_fd = ram.as_ref().map(GuestRam::raw_fd);
    let args = qemu_args(
        &spec,
        kvm,
        initrd_path.as_deref(),
        &sockets,
        vsock_sock.as_deref(),
        ram_path.as_deref(),
    );
    let mut cmd = Command::new(&qemu);
    cmd.args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (setpgid, prctl, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            // Own process group: a terminal's Ctrl-C reaches hutch, which then
            // tears QEMU down; and QEMU dies with hutch, even on SIGKILL.
            libc::setpgid(0, 0);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // QEMU inherits the guest memory's memfd (only QEMU: it is
            // close-on-exec in hutch and every other child).
            if let Some(fd) = ram_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().map_err(|source| EngineError::Io {
        what: format!("starting {}", qemu.display()),
        source,
    })?;
    if let Some(ram) = &ram {
        ram.free_after_exit();
    }
    let _ram_tail = ram.map(GuestRam::allocate_tail);
    let pid = child.id() as libc::pid_t;
    mark_early("QEMU started");

    let killed = Arc::new(AtomicBool::new(false));
    let stop_reason: Arc<Mutex<Option<StopReason>>> = Arc::new(Mutex::new(None));
    let kill = {
        let (killed, stop_reason) = (killed.clone(), stop_reason.clone());
        move |why: StopReason| {
            let mut r = stop_reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(why);
            }
            killed.store(true, Ordering::SeqCst);
            // SAFETY: plain kill(2) on the child's pid, which we have not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    };

    let stderr_buf = Arc::new(Mutex::new(Vec::new()));
    let mut qemu_stderr = child.stderr.take().expect("piped stderr");
    let sb = stderr_buf.clone();
    let stderr_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = qemu_stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut s = sb.lock().unwrap_or_else(|p| p.into_inner());
            if s.len() < 64 * 1024 {
                s.extend_from_slice(&buf[..n]);
            }
        }
    });
    if let Some(limit) = spec.time_limit {
        let kill = kill.clone();
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            kill(StopReason::HostRequest(format!(
                "time limit of {} s reached",
                limit.as_secs()
            )));
        });
    }

    let mut console = HostConsole::new(std::io::stdout(), std::io::stderr(), spec.echo_console);
    if let Some(observe) = spec.on_console_line.take() {
        let kill = kill.clone();
        console.set_line_observer(
            observe,
            Box::new(move || kill(StopReason::HostRequest("console milestone reached".into()))),
        );
    }
    let stdin = child.stdin.take().expect("piped stdin");
    let forward = spec.forward_stdin;
    let gate = console.ready_gate();
    let init_ready = console.ready_gate();
    let finished = Arc::new(AtomicBool::new(false));
    {
        let watched = backends
            .iter()
            .map(|b| (b.pid(), b.tag().to_owned()))
            .collect();
        let (kill, done) = (kill.clone(), finished.clone());
        std::thread::spawn(move || {
            super::fs_backend::watch(watched, pid as u32, done, |why| {
                kill(StopReason::Error(why))
            })
        });
    }
    let fin = finished.clone();
    std::thread::spawn(move || {
        let mut stdin = stdin;
        if !gate.wait(&|| fin.load(Ordering::SeqCst)) {
            return;
        }
        if forward {
            pump_stdin(std::io::stdin(), |f| stdin.write_all(f));
        } else {
            let _ = stdin.write_all(&Frame::encode(FrameKind::StdinEof, &[]));
        }
        // Keep the pipe open until QEMU exits: EOF on a stdio chardev is not
        // an error, but a closed pipe would be.
        while !fin.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    let (mut ready_seen, mut report_seen) = (false, false);
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if first {
                    // QEMU has connected to the sockets and read the initramfs:
                    // nothing needs to stay on disk.
                    rt.remove();
                    first = false;
                }
                console.feed(&buf[..n]);
                if !ready_seen && init_ready.is_open() {
                    ready_seen = true;
                    mark_early("guest init's first frame");
                }
                if !report_seen && console.report().is_some() {
                    report_seen = true;
                    mark_early("guest's exit status");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    finished.store(true, Ordering::SeqCst);
    let status = wait(&mut child);
    mark_early("QEMU exited");
    let _ = stderr_thread.join();
    let fs_stats: Vec<String> = backends.into_iter().map(FsBackend::finish).collect();
    mark_early("fs backends finished");
    if let Some(b) = vsock_backend {
        let _ = b.join();
    }
    drop(vsock_dev);
    let qemu_err = String::from_utf8_lossy(&stderr_buf.lock().unwrap_or_else(|p| p.into_inner()))
        .trim()
        .to_string();
    let mut stop = stop_reason
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if stop.is_none() {
        stop = Some(match (console.report(), status) {
            (Some(_), _) => StopReason::GuestShutdown("power off"),
            (None, Some(0)) => StopReason::GuestShutdown("reset"),
            (None, s) if !qemu_err.is_empty() || s.is_none() => StopReason::Error(format!(
                "qemu exited ({}): {}",
                s.map(|c| format!("status {c}"))
                    .unwrap_or_else(|| "killed".into()),
                qemu_err
            )),
            (None, _) => StopReason::GuestShutdown("reset"),
        });
    }
    Ok(VmOutcome {
        report: console.report(),
        stop,
        console_tail: console.console_tail(30),
        panicked: console.saw_panic(),
        phases: crate::control::early_marks(spec.started),
        vmm_rss_kib: None,
        fs_stats: if spec.fs_stats {
            fs_stats.into_iter().filter(|s| !s.is_empty()).collect()
        } else {
            Vec::new()
        },
    })
}

fn wait(child: &mut Child) -> Option<i32> {
    child.wait().ok().and_then(|s| s.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn spec() -> VmSpec {
        let mut s = VmSpec::new(
            "/k/bzImage".into(),
            "console=ttyS0 reboot=t".into(),
            Instant::now(),
        );
        s.cpus = 2;
        s
    }

    #[test]
    fn args_use_microvm_without_acpi_and_shared_memfd() {
        let socks = vec![
            FsSocket {
                sock: PathBuf::from("/r/fs0.sock"),
                tag: "hutch-root".to_string(),
                queue: None,
            },
            FsSocket {
                sock: PathBuf::from("/r/fs1.sock"),
                tag: "hutch-ws".to_string(),
                queue: Some(1024),
            },
        ];
        let a = qemu_args(
            &spec(),
            false,
            Some(Path::new("/r/initrd.cpio")),
            &socks,
            None,
            None,
        );
        let joined = a.join(" ");
        assert!(joined.contains("-M microvm,acpi=off,memory-backend=mem"));
        assert!(joined.contains("memory-backend-memfd,id=mem,size=512M,share=on"));
        let own = qemu_args(&spec(), false, None, &[], None, Some("/proc/self/fd/9")).join(" ");
        assert!(
            own.contains("memory-backend-file,id=mem,size=512M,mem-path=/proc/self/fd/9,share=on")
        );
        assert!(!own.contains("memory-backend-memfd"));
        assert!(joined.contains("-m 512M"));
        assert!(joined.contains("-smp 2"));
        assert!(joined.contains("-accel tcg,thread=multi"));
        assert!(joined.contains("-initrd /r/initrd.cpio"));
        assert!(joined.contains("socket,id=fs0,path=/r/fs0.sock"));
        assert!(joined.contains("vhost-user-fs-device,chardev=fs0,tag=hutch-root -chardev"));
        assert!(joined.contains("vhost-user-fs-device,chardev=fs1,tag=hutch-ws,queue-size=1024"));
        let append = a.iter().position(|x| x == "-append").unwrap();
        assert_eq!(
            a[append + 1],
            "virtiofs.hutch_tcg_code=1 hutch_apic_khz=1000000 virtiofs.hutch_poll_us=300 \
             cpu_init_udelay=0 console=ttyS0 reboot=t",
            "cmdline is one argument, with the TCG guest's parameters first"
        );
        let kvm_args = qemu_args(&spec(), true, None, &[], None, None);
        let append = kvm_args.iter().position(|x| x == "-append").unwrap();
        assert_eq!(
            kvm_args[append + 1],
            "console=ttyS0 reboot=t",
            "KVM needs no store-back, and its CPU has a TSC-deadline timer"
        );
        let kvm = kvm_args.join(" ");
        assert!(kvm.contains("-accel kvm -cpu host"));
        assert!(!kvm.contains("-initrd"));
        assert!(!kvm.contains("vsock"), "no vsock device unless asked for");
        let v = qemu_args(
            &spec(),
            true,
            None,
            &[],
            Some(Path::new("/r/vsock.sock")),
            None,
        )
        .join(" ");
        assert!(v.contains("-chardev socket,id=vsock0,path=/r/vsock.sock"));
        assert!(v.contains("-device vhost-user-vsock-device,chardev=vsock0"));
    }
}
