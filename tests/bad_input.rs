//! Bad input: each case fails with a clear error that names what is wrong,
//! and leaves no process or socket behind.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use hutch_e2e::{assert_no_leftovers, report, run_args, Engine, Hutch};

fn fails_with(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let mut h = Hutch::new(args);
    for (k, v) in env {
        h.cmd.env(k, v);
    }
    let o = h.output(None);
    assert_eq!(o.status, 125, "hutch {args:?}: stderr {}", o.stderr);
    assert!(
        o.stderr.contains(needle),
        "hutch {args:?}: expected {needle:?} in {:?}",
        o.stderr
    );
}

#[test]
fn workspace_that_does_not_exist_or_is_not_a_directory() {
    fails_with(
        &["run", "/nonexistent/hutch-ws", "--", "true"],
        &[],
        "/nonexistent/hutch-ws",
    );
    let f = tempfile::NamedTempFile::new().unwrap();
    fails_with(
        &["run", f.path().to_str().unwrap(), "--", "true"],
        &[],
        "not a directory",
    );
}

#[test]
fn workspace_that_cannot_be_read() {
    let ws = hutch_e2e::workspace();
    let locked = ws.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // As root every directory is readable: drop to nobody for this case.
    let mut h = Hutch::new(["run", locked.to_str().unwrap(), "--", "true"]);
    // SAFETY: only async-signal-safe set*id calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        h.cmd.pre_exec(|| {
            if libc::geteuid() == 0 && (libc::setgid(65534) != 0 || libc::setuid(65534) != 0) {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = h.output(None);
    assert_eq!(o.status, 125, "{}", o.stderr);
    assert!(
        o.stderr.contains("locked") && o.stderr.contains("ermission denied"),
        "{}",
        o.stderr
    );
}

#[test]
fn memory_sizes() {
    let ws = hutch_e2e::workspace();
    let w = ws.path().to_str().unwrap();
    fails_with(
        &["run", "--memory", "0", w, "--", "true"],
        &[],
        "below the minimum",
    );
    fails_with(
        &["run", "--memory", "lots", w, "--", "true"],
        &[],
        "not a size",
    );
    fails_with(
        &["run", "--memory", "64T", w, "--", "true"],
        &[],
        "more than this host",
    );
}

#[test]
fn cpu_counts() {
    let ws = hutch_e2e::workspace();
    let w = ws.path().to_str().unwrap();
    fails_with(
        &["run", "--cpus", "0", w, "--", "true"],
        &[],
        "at least one CPU",
    );
    fails_with(
        &["run", "--cpus", "999", w, "--", "true"],
        &[],
        "--cpus 999",
    );
}

#[test]
fn no_kernel() {
    let ws = hutch_e2e::workspace();
    let w = ws.path().to_str().unwrap();
    fails_with(
        &[
            "run",
            "--engine",
            "qemu",
            "--kernel",
            "/nonexistent/vmlinux",
            w,
            "--",
            "true",
        ],
        &[],
        "/nonexistent/vmlinux",
    );
    // No cached kernel and no source to build one from: say which package to install.
    let cache = tempfile::tempdir().unwrap();
    fails_with(
        &["run", "--engine", "qemu", w, "--", "true"],
        &[
            ("HUTCH_CACHE_DIR", cache.path().to_str().unwrap()),
            ("HUTCH_KERNEL_SOURCE", "/nonexistent/linux-source.tar.xz"),
        ],
        "apt-get install -y linux-source-6.1",
    );
}

#[test]
fn no_qemu() {
    let ws = hutch_e2e::workspace();
    fails_with(
        &[
            "run",
            "--engine",
            "qemu",
            ws.path().to_str().unwrap(),
            "--",
            "true",
        ],
        &[("HUTCH_QEMU", "/nonexistent/qemu-system-x86_64")],
        "qemu-system-x86",
    );
}

#[test]
fn kernel_that_panics() {
    if hutch_e2e::unavailable(Engine::Qemu).is_some() {
        report("bad_input::kernel_that_panics", "qemu SKIPPED (no qemu)");
        return;
    }
    hutch_e2e::kernel_ready();
    report("bad_input::kernel_that_panics", "engine qemu");
    let ws = hutch_e2e::workspace();
    // No init in the initramfs and no root device: the kernel panics.
    let o = Hutch::new([
        "run",
        "--engine",
        "qemu",
        "--memory",
        "256M",
        "--kernel-arg",
        "rdinit=/nonexistent-init",
        ws.path().to_str().unwrap(),
        "--",
        "true",
    ])
    .output(None);
    assert_eq!(o.status, 125, "{}", o.stderr);
    assert!(o.stderr.contains("panicked"), "{}", o.stderr);
    assert!(
        o.stderr.contains("Kernel panic"),
        "the panic message is shown: {}",
        o.stderr
    );
}

#[test]
fn hutch_killed_mid_run_leaves_nothing_behind() {
    if hutch_e2e::unavailable(Engine::Qemu).is_some() {
        report("bad_input::killed_mid_run", "qemu SKIPPED (no qemu)");
        return;
    }
    hutch_e2e::kernel_ready();
    report("bad_input::killed_mid_run", "engine qemu");
    let ws = hutch_e2e::workspace();
    let argv: Vec<&std::ffi::OsStr> = ["sh", "-c", "echo started; sleep 600"]
        .iter()
        .map(std::ffi::OsStr::new)
        .collect();
    let mut h = Hutch::new(run_args(Engine::Qemu, ws.path(), &argv));
    let mut child = h
        .cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_no_leftovers(h.runtime.path());
    // And QEMU is gone: nothing runs with this workspace's socket paths or kernel.
    let qemus: Vec<u32> = hutch_e2e::processes_mentioning("qemu-system-x86_64")
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                .as_deref()
                == Some(ws.path())
                || std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|e| {
                        String::from_utf8_lossy(&e).contains(&*h.runtime.path().to_string_lossy())
                    })
                    .unwrap_or(false)
        })
        .collect();
    assert!(qemus.is_empty(), "qemu still running: {qemus:?}");
    // Nor the file system backends (they die with hutch).
    let source = format!("--source {}", ws.path().display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !hutch_e2e::processes_mentioning(&source).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "fs backend still running: {:?}",
            hutch_e2e::processes_mentioning(&source)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `hutch fs-backend` is started by hutch with a bound socket on descriptor
/// 3; run by hand, or with a share it cannot serve, it says why on stdout.
#[test]
fn fs_backend_without_its_socket_or_with_a_bad_share() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let backend = |source: &str, listener: Option<i32>| {
        let mut cmd = std::process::Command::new(hutch_e2e::hutch_bin());
        cmd.args([
            "fs-backend",
            "--tag",
            "t",
            "--source",
            source,
            "--policy",
            "workspace",
        ])
        .stdin(Stdio::null());
        // SAFETY: only async-signal-safe dup2/close between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                match listener {
                    // dup2 onto itself would keep close-on-exec: clear it.
                    Some(3) if libc::fcntl(3, libc::F_SETFD, 0) != 0 => {
                        return Err(std::io::Error::last_os_error())
                    }
                    Some(3) => {}
                    Some(fd) if libc::dup2(fd, 3) != 3 => {
                        return Err(std::io::Error::last_os_error())
                    }
                    Some(_) => {}
                    // A pipe on 3 must not pass for the socket.
                    None => {
                        let mut p = [0; 2];
                        if libc::pipe(p.as_mut_ptr()) != 0 || libc::dup2(p[0], 3) != 3 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let o = backend(dir.path().to_str().unwrap(), None);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .starts_with("error no vhost-user socket on descriptor 3"),
        "{o:?}"
    );
    let sock = dir.path().join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let o = backend("/nonexistent/hutch-share", Some(listener.as_raw_fd()));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("error ") && out.contains("/nonexistent/hutch-share"),
        "{out}"
    );
}
