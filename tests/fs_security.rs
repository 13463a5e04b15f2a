//! A guest trying to reach host files outside its shares (`guest/fs_escape.py`), while the
//! host swaps a workspace file for a symlink to a secret; the root view's private and
//! masked files; the fs worker threads' capabilities and file descriptors; and who owns
//! what the guest creates. The server-side requests a guest kernel never sends (`..`
//! names, forgetting the root) are unit-tested in `vmm/src/devices/virtio/fs/tests/escape.rs`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hutch_e2e::{per_engine, run, Engine};

/// How long each racing attempt runs in the guest, in seconds.
const RACE_SECONDS: &str = "3";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `outer/{secret, public}` with the workspace `outer/ws` next to them, and a second
/// secret in a separate directory.
struct Layout {
    outer: tempfile::TempDir,
    other: tempfile::TempDir,
    marker: String,
}

impl Layout {
    fn new() -> Self {
        let outer = tempfile::Builder::new()
            .prefix("hutch-sec-")
            .tempdir_in("/tmp")
            .unwrap();
        let other = tempfile::Builder::new()
            .prefix("hutch-sec2-")
            .tempdir_in("/tmp")
            .unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let marker = format!("HOSTSECRET{}x{nanos}", std::process::id());
        let ws = outer.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        for dir in [outer.path(), other.path()] {
            let secret = dir.join("secret");
            std::fs::write(&secret, format!("{marker}\n")).unwrap();
            hutch_e2e::set_xattr(&secret, "user.secret", marker.as_bytes());
        }
        std::fs::write(outer.path().join("public"), "HOSTLINK-OK\n").unwrap();
        std::fs::hard_link(outer.path().join("public"), ws.join("hostlink")).unwrap();
        std::os::unix::fs::symlink("../secret", ws.join("up")).unwrap();
        std::fs::write(ws.join("y"), "BENIGN-Y\n").unwrap();
        if is_root() {
            let node =
                std::ffi::CString::new(ws.join("hostdev").as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: mknod on a NUL-terminated path inside our temporary directory.
            let rc =
                unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
            assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
        }
        Self {
            outer,
            other,
            marker,
        }
    }

    fn ws(&self) -> PathBuf {
        self.outer.path().join("ws")
    }
}

/// Swaps `ws/y` between a file and a symlink to a secret (absolute, then relative) from
/// when the guest creates `y-go` until it creates `y-stop` or `stop` is set.
fn host_swapper(ws: PathBuf, secret: PathBuf, stop: Arc<AtomicBool>, swaps: Arc<AtomicU64>) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while !ws.join("y-go").exists() {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut i = 0u64;
    while !ws.join("y-stop").exists() && !stop.load(Ordering::Relaxed) && Instant::now() < deadline
    {
        i += 1;
        let res = if !i.is_multiple_of(2) {
            std::fs::write(ws.join("y.tmp"), "BENIGN-Y\n")
                .and_then(|_| std::fs::rename(ws.join("y.tmp"), ws.join("y")))
        } else {
            let target = if i.is_multiple_of(4) {
                secret.clone()
            } else {
                PathBuf::from("../secret")
            };
            let _ = std::fs::remove_file(ws.join("y.lnk"));
            std::os::unix::fs::symlink(&target, ws.join("y.lnk"))
                .and_then(|_| std::fs::rename(ws.join("y.lnk"), ws.join("y")))
        };
        res.unwrap_or_else(|e| panic!("swapping {}: {e}", ws.join("y").display()));
        swaps.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The `Cap*:` lines of a thread's status, as (CapEff, CapPrm, CapBnd).
fn caps_of(status: &str) -> (u64, u64, u64) {
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap_or_else(|| panic!("no {key} in {status}"))
    };
    (get("CapEff:"), get("CapPrm:"), get("CapBnd:"))
}

/// What the fs workers may keep: CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID.
const WORKER_CAPS: u64 = 0x1f;

/// The `fs-backend` processes hutch started (qemu engine), with their command lines.
fn fs_backends(hutch: u32) -> Vec<(u32, String)> {
    hutch_e2e::children_of(hutch)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(" fs-backend "))
        .collect()
}

/// Every thread's (comm, CapEff, CapPrm, CapBnd) of `pid`.
fn thread_caps(pid: u32) -> Vec<(String, u64, u64, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let (eff, prm, bnd) = caps_of(&status);
            Some((comm.trim().to_owned(), eff, prm, bnd))
        })
        .collect()
}

/// What `pid`'s descriptors point at.
fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|t| t.to_string_lossy().to_string())
        .collect()
}

/// Fails if `t` is a host file the guest must never reach.
fn assert_not_secret(who: &str, t: &str, l: &Layout) {
    assert!(
        !t.starts_with(&l.other.path().to_string_lossy().to_string())
            && t != l.outer.path().join("secret").to_string_lossy()
            && t != l.outer.path().to_string_lossy()
            && !t.starts_with("/etc/shadow")
            && !t.starts_with("/home"),
        "{who} holds {t}"
    );
}

/// Checks, while the guest runs, what the code serving its file systems
/// holds: on the qemu engine, each share's `fs-backend` process (only a
/// FUSE server's capabilities in every thread, no new privileges, an empty
/// environment, and descriptors only into its share or of the vhost-user
/// plumbing); on the native engine, the VMM's fs worker threads.
fn inspect_vmm(pid: u32, l: &Layout) {
    let ws = l.ws().to_string_lossy().to_string();
    let backends = fs_backends(pid);
    if backends.is_empty() {
        // The native engine: the fs workers are threads of the VMM.
        let threads = thread_caps(pid);
        eprintln!("hutch threads: {threads:?}");
        let confined = threads
            .iter()
            .filter(|(_, e, p, b)| (*e, *p, *b) == (WORKER_CAPS, WORKER_CAPS, WORKER_CAPS))
            .inspect(|(comm, ..)| assert_eq!(comm, "vring_worker", "only fs workers are confined"))
            .count();
        if is_root() {
            assert!(
                confined >= 2,
                "fs worker threads kept their capabilities: {threads:?}"
            );
        }
        for t in fd_targets(pid) {
            assert_not_secret("hutch", &t, l);
        }
        return;
    }
    assert_eq!(backends.len(), 2, "one backend per share: {backends:?}");
    let want = if is_root() { WORKER_CAPS } else { 0 };
    for (bpid, cmd) in &backends {
        let threads = thread_caps(*bpid);
        eprintln!("{cmd}: threads {threads:?}");
        for (comm, eff, prm, bnd) in &threads {
            assert!(
                *eff == want && *prm == want && (*bnd == WORKER_CAPS || !is_root()),
                "{cmd}: thread {comm} CapEff={eff:x} CapPrm={prm:x} CapBnd={bnd:x}"
            );
        }
        let status = std::fs::read_to_string(format!("/proc/{bpid}/status")).unwrap();
        assert!(status.contains("NoNewPrivs:\t1"), "{cmd}: {status}");
        // Only its levers and log level, and only if hutch has them.
        let environ = std::fs::read(format!("/proc/{bpid}/environ")).unwrap();
        let inherited: Vec<String> = environ
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| {
                let name = v.split('=').next().unwrap_or("");
                std::env::var_os(name).is_none()
                    || !["HUTCH_FS_LEVERS", "HUTCH_LOG"].contains(&name)
            })
            .collect();
        assert!(
            inherited.is_empty(),
            "{cmd} inherited an environment: {inherited:?}"
        );
        let is_ws = cmd.contains("--policy workspace");
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for t in fd_targets(*bpid) {
            assert_not_secret(cmd, &t, l);
            let kind = if t.starts_with(&format!("/proc/{bpid}/")) {
                "own /proc".to_string()
            } else if t.starts_with("/memfd:") || t == "/dev/null" {
                t.clone()
            } else if t.starts_with('/') {
                // The workspace backend reaches into the workspace only; the
                // root backend into the root view (checked by the escapes above).
                assert!(!is_ws || t.starts_with(&ws), "{cmd} holds {t}");
                "share".to_string()
            } else {
                let kind = t.split(':').next().unwrap_or("").to_string();
                assert!(
                    ["socket", "anon_inode", "pipe"].contains(&kind.as_str()),
                    "{cmd} holds {t}"
                );
                kind
            };
            *kinds.entry(kind).or_default() += 1;
        }
        eprintln!("{cmd}: descriptors by kind {kinds:?}");
    }
    // The VMM itself holds nothing of the workspace any more.
    for t in fd_targets(pid) {
        assert_not_secret("hutch", &t, l);
        assert!(!t.starts_with(&ws), "hutch holds {t}");
    }
}

per_engine!(
    guest_cannot_reach_host_files_outside_its_shares,
    |e: Engine| {
        let l = Layout::new();
        let ws = l.ws();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/fs_escape.py");
        std::fs::copy(&script, ws.join("fs_escape.py")).unwrap();
        let secret2 = l.other.path().join("secret");
        let ino = std::fs::metadata(&secret2).unwrap().ino().to_string();
        let words = [
            "python3",
            "fs_escape.py",
            RACE_SECONDS,
            secret2.to_str().unwrap(),
            &ino,
        ];
        let argv: Vec<&std::ffi::OsStr> = words.iter().map(std::ffi::OsStr::new).collect();
        let mut h = hutch_e2e::Hutch::new(hutch_e2e::run_args(e, &ws, &argv));
        let mut child = hutch_e2e::spawn_piped(&mut h);
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let swapper = {
            let (ws, secret, stop, swaps) =
                (ws.clone(), secret2.clone(), stop.clone(), swaps.clone());
            std::thread::spawn(move || host_swapper(ws, secret, stop, swaps))
        };
        // Once the guest is in its last racing step, every worker has served requests.
        if hutch_e2e::wait_for_file(&ws.join("y-go"), 240) {
            inspect_vmm(child.id(), &l);
        }
        let (code, out, err) = hutch_e2e::collect(&mut child);
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        eprintln!("{out}");
        assert!(
            !out.contains(&l.marker) && !err.contains(&l.marker),
            "a host secret reached the guest:\n{out}\n{err}"
        );
        assert_eq!(code, Some(0), "{out}\n{err}");
        assert!(!out.contains("READ "), "{out}");
        assert!(out.contains("\ndone\n"), "{out}\n{err}");
        for attempt in [
            "dotdot_at_the_share_root",
            "hard_links",
            "rename_race",
            "proc_self_fd_paths",
            "file_handles",
            "fifo_socket_and_device_nodes",
            "guest_symlink_swap",
            "host_symlink_swap",
            "root_view",
        ] {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("attempt {attempt} ")))
                .unwrap_or_else(|| panic!("{attempt} did not run:\n{out}"));
            let count = |key: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key)?.parse().ok())
                    .unwrap_or_else(|| panic!("{line}"))
            };
            let (tries, ok) = (count("tries="), count("ok="));
            assert!(tries > 0, "{line}");
            assert_eq!(ok, tries, "{attempt}: {line}\n{out}");
        }
        let n = swaps.load(Ordering::Relaxed);
        eprintln!("host swapped ws/y {n} times while the guest read it");
        assert!(n >= 20, "the host swapper barely ran: {n}");
        // Nothing was planted next to the workspace, the secret is untouched.
        let mut names: Vec<_> = std::fs::read_dir(l.outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["public", "secret", "ws"]);
        assert_eq!(
            std::fs::read_to_string(l.outer.path().join("secret")).unwrap(),
            format!("{}\n", l.marker)
        );
        assert!(hutch_e2e::get_xattr(&l.outer.path().join("secret"), "user.planted").is_none());
        // Guest symlinks shaped like /proc magic links are plain links on the host.
        for (name, text) in [
            ("pfd", "/proc/self/fd/3"),
            ("proot", "../../proc/self/root/etc/shadow"),
        ] {
            assert_eq!(std::fs::read_link(ws.join(name)).unwrap(), Path::new(text));
        }
        // FIFOs and sockets are fine; no device nodes.
        assert!(std::fs::symlink_metadata(ws.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(std::fs::symlink_metadata(ws.join("sock"))
            .unwrap()
            .file_type()
            .is_socket());
        assert!(!ws.join("blk").exists() && !ws.join("chr").exists());
        hutch_e2e::assert_no_leftovers(h.runtime.path());
    }
);

per_engine!(
    setcap_in_the_guest_leaves_no_file_capabilities,
    |e: Engine| {
        let ws = hutch_e2e::workspace();
        // python's os.setxattr writes the same blob `setcap cap_setuid+ep prog` would.
        let script = "import os, shutil, struct
shutil.copy('/bin/true', 'prog')
blob = struct.pack('<IIIII', 0x02000001, 1 << 7, 0, 0, 0)
try:
    os.setxattr('prog', 'security.capability', blob)
    print('setcap succeeded')
except OSError as e:
    print('setcap refused', e.errno)
";
        let o = run(e, ws.path(), &["python3", "-c", script], None);
        let out = o.stdout_str();
        assert!(out.contains("setcap refused 1"), "{out}\n{}", o.stderr);
        assert!(hutch_e2e::get_xattr(&ws.path().join("prog"), "security.capability").is_none());
    }
);

/// `hutch kernel path`, copied where an unprivileged user can read it.
fn kernel_copy() -> tempfile::TempDir {
    let out = std::process::Command::new(hutch_e2e::hutch_bin())
        .args(["kernel", "path"])
        .output()
        .unwrap();
    let src = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let dir = tempfile::Builder::new()
        .prefix("hutch-kernel-")
        .tempdir_in("/tmp")
        .unwrap();
    for f in ["vmlinux", "bzImage", "config"] {
        std::fs::copy(src.join(f), dir.path().join(f))
            .unwrap_or_else(|e| panic!("copying {}: {e}", src.join(f).display()));
    }
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

const GUEST_CREATES: &str = "echo a > by-root; mkdir dir-by-root; \
    setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo b > by-user' \
      || echo 'guest user could not create'; \
    echo c > chowned; chown 1234:1234 chowned || echo 'chown refused'; ls -ln";

per_engine!(guest_files_belong_to_the_invoking_user, |e: Engine| {
    // As the user running this test (root in CI): guest root and a guest user alike.
    let ws = hutch_e2e::workspace();
    std::fs::set_permissions(
        ws.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let o = run(e, ws.path(), &["sh", "-c", GUEST_CREATES], None);
    eprintln!("{}\n{}", o.stdout_str(), o.stderr);
    assert_eq!(o.status, 0, "{}", o.stderr);
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // The workspace is world-writable, so guest uid 1000 may create in it.
    for f in ["by-root", "dir-by-root", "by-user"] {
        let m = std::fs::metadata(ws.path().join(f))
            .unwrap_or_else(|err| panic!("{f}: {err}\n{}", o.stdout_str()));
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{f}");
    }
    // An explicit chown is what was asked for, where the host allows it.
    let m = std::fs::metadata(ws.path().join("chowned")).unwrap();
    if is_root() {
        assert_eq!(m.uid(), 1234);
    } else {
        assert_eq!(m.uid(), uid);
    }

    // As an unprivileged user (nobody) when the test is root.
    if !is_root() {
        return;
    }
    let kernel = kernel_copy();
    let home = tempfile::Builder::new()
        .prefix("hutch-home-")
        .tempdir_in("/tmp")
        .unwrap();
    let runtime = tempfile::Builder::new()
        .prefix("hutch-rt-")
        .tempdir_in("/tmp")
        .unwrap();
    let ws = hutch_e2e::workspace();
    for d in [home.path(), runtime.path(), ws.path()] {
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    std::fs::set_permissions(
        ws.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut args = vec![
        std::ffi::OsString::from("--reuid=65534"),
        "--regid=65534".into(),
        "--clear-groups".into(),
        "env".into(),
        format!("HOME={}", home.path().display()).into(),
        format!("XDG_RUNTIME_DIR={}", runtime.path().display()).into(),
        format!("HUTCH_KERNEL_DIR={}", kernel.path().display()).into(),
        hutch_e2e::hutch_bin().into(),
    ];
    let words = ["sh", "-c", GUEST_CREATES];
    let argv: Vec<&std::ffi::OsStr> = words.iter().map(std::ffi::OsStr::new).collect();
    args.extend(hutch_e2e::run_args(e, ws.path(), &argv));
    let out = std::process::Command::new("setpriv")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("as nobody:\n{stdout}\n{stderr}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for f in ["by-root", "dir-by-root", "by-user", "chowned"] {
        let m = std::fs::metadata(ws.path().join(f)).unwrap_or_else(|err| panic!("{f}: {err}"));
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{f}");
    }
    assert!(
        stdout.contains("chown refused") || stderr.contains("chown"),
        "{stdout}\n{stderr}"
    );
    hutch_e2e::assert_no_leftovers(runtime.path());
});

/// The Landlock ABI of this kernel, or `None` without Landlock.
fn landlock_abi() -> Option<i64> {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI.
    let abi = unsafe { libc::syscall(444, std::ptr::null::<u8>(), 0usize, 1u32) };
    (abi > 0).then_some(abi)
}

per_engine!(each_fs_backend_is_landlocked_to_its_share, |e: Engine| {
    if matches!(e, Engine::Native) {
        // The native engine serves its file systems from the VMM itself.
        return;
    }
    let Some(abi) = landlock_abi() else {
        hutch_e2e::report(
            "each_fs_backend_is_landlocked_to_its_share::qemu",
            "no Landlock in this kernel: not checked",
        );
        return;
    };
    let ws = hutch_e2e::workspace();
    let argv: Vec<&std::ffi::OsStr> = [
        "sh",
        "-c",
        "echo ok > f; cat f; cat /etc/hostname >/dev/null",
    ]
    .into_iter()
    .map(std::ffi::OsStr::new)
    .collect();
    let mut h = hutch_e2e::Hutch::new(hutch_e2e::run_args(e, ws.path(), &argv));
    h.cmd.env("HUTCH_LOG", "info");
    let o = h.output(None);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert_eq!(o.stdout_str(), "ok\n");
    let line = |tag: &str| {
        o.stderr
            .lines()
            .find(|l| l.contains(&format!("fs backend {tag}: Landlock ABI {abi}")))
            .unwrap_or_else(|| panic!("no Landlock line for {tag}: {}", o.stderr))
            .to_owned()
    };
    let ws_rules = line("hutch-ws");
    let canonical = ws.path().canonicalize().unwrap();
    assert!(
        ws_rules.contains(&format!(
            "({:?}, ReadWrite)",
            canonical.display().to_string()
        )) && ws_rules.contains("(\"/proc/self\", Read)")
            && ws_rules.matches(", ").count() == 3,
        "the workspace backend reaches its workspace and its own /proc only: {ws_rules}"
    );
    let root_rules = line("hutch-root");
    assert!(
        root_rules.contains("(\"/usr\", Read)")
            && root_rules.contains("(\"/\", List)")
            && !root_rules.contains("ReadWrite")
            && !root_rules.contains("home"),
        "{root_rules}"
    );
});
