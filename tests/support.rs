//! Shared helpers for hutch's end-to-end tests: find the `hutch` binary,
//! make sure the guest kernel is built, run guests on each engine this host
//! supports, and record which engine each test really used.
//!
//! Every test prints a line `[e2e] <test>: <engine> ...` and appends it to
//! `target/e2e-report.txt`; a test whose engine cannot run here prints
//! `SKIPPED` with the reason, and is never counted as having tested it.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// An engine a test can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Qemu,
    Native,
}

impl Engine {
    pub fn flag(self) -> &'static str {
        match self {
            Engine::Qemu => "qemu",
            Engine::Native => "native",
        }
    }
}

/// `target/<profile>/hutch`, next to the test binary's `deps/` folder.
pub fn hutch_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join("hutch");
    assert!(
        bin.is_file(),
        "{} not built; run `cargo build -p hutch` first",
        bin.display()
    );
    bin
}

fn target_dir() -> PathBuf {
    hutch_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target")
        .to_path_buf()
}

/// What `hutch doctor` says about /dev/kvm (e.g. `pvm`, `kvm_intel`).
pub fn kvm_kind() -> &'static str {
    static KIND: OnceLock<String> = OnceLock::new();
    KIND.get_or_init(|| {
        let out = Command::new(hutch_bin())
            .arg("doctor")
            .output()
            .expect("hutch doctor");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix("kvm:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("none")
            .to_string()
    })
}

/// Why `engine` cannot run a full guest here, if it cannot.
pub fn unavailable(engine: Engine) -> Option<String> {
    match engine {
        Engine::Native => match kvm_kind() {
            "kvm_intel" | "kvm_amd" | "kvm" => None,
            other => Some(format!(
                "/dev/kvm is {other}: no guest user space on the native engine here"
            )),
        },
        Engine::Qemu => {
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
                .unwrap_or(false);
            (!found).then(|| "qemu-system-x86_64 is not installed".to_string())
        }
    }
}

/// Builds the guest kernel once (a no-op when cached).
pub fn kernel_ready() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let st = Command::new(hutch_bin())
            .args(["kernel", "build"])
            .stdout(Stdio::null())
            .status()
            .expect("hutch kernel build");
        assert!(st.success(), "hutch kernel build failed");
    });
}

/// Records and prints which engine a test used.
pub fn report(test: &str, what: &str) {
    let line = format!("[e2e] {test}: {what}");
    eprintln!("{line}");
    let path = target_dir().join("e2e-report.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write per line: tests append concurrently.
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// Runs `body` on `engine`, or reports why it was skipped.
pub fn on_engine(test: &str, engine: Engine, body: impl FnOnce(Engine)) {
    if let Some(why) = unavailable(engine) {
        report(test, &format!("{} SKIPPED ({why})", engine.flag()));
        return;
    }
    kernel_ready();
    let kind = match engine {
        Engine::Qemu if kvm_kind().starts_with("kvm") => "qemu (kvm)",
        Engine::Qemu => "qemu (tcg)",
        Engine::Native => "native",
    };
    report(test, &format!("engine {kind}"));
    body(engine);
}

/// The result of one `hutch` invocation.
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// A `hutch` command with its own runtime directory, so leftovers are visible.
pub struct Hutch {
    pub cmd: Command,
    pub runtime: tempfile::TempDir,
}

impl Hutch {
    /// `hutch ARGS...` with `XDG_RUNTIME_DIR` pointing at a fresh directory.
    pub fn new<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Self {
        let runtime = tempfile::tempdir().expect("runtime dir");
        let mut cmd = Command::new(hutch_bin());
        cmd.args(args).env("XDG_RUNTIME_DIR", runtime.path());
        Self { cmd, runtime }
    }

    /// Runs to completion with `stdin` (or /dev/null).
    pub fn output(mut self, stdin: Option<&[u8]>) -> Output {
        self.cmd
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("spawn hutch");
        if let Some(data) = stdin {
            let mut si = child.stdin.take().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = si.write_all(&data);
            });
        }
        let out = child.wait_with_output().expect("wait hutch");
        let o = Output {
            status: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_no_leftovers(self.runtime.path());
        o
    }
}

/// Reads a spawned child's whole stdout and stderr, then waits for it:
/// (exit code, stdout, stderr).
pub fn collect(child: &mut std::process::Child) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out)
            .expect("reading the child's stdout");
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err)
            .expect("reading the child's stderr");
    }
    let status = child.wait().expect("waiting for the child");
    (status.code(), out, err)
}

/// `hutch run --engine E --memory 512M --cpus 1 WS -- ARGV...`.
pub fn run_args(engine: Engine, ws: &Path, argv: &[&OsStr]) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "run",
        "--engine",
        engine.flag(),
        "--memory",
        "512M",
        "--cpus",
        "1",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    a.push(ws.as_os_str().to_owned());
    a.push("--".into());
    a.extend(argv.iter().map(|s| s.to_os_string()));
    a
}

/// Replaces the value that follows `flag` in `args` (say `--memory`).
pub fn set_option(args: &mut [OsString], flag: &str, value: &str) {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[at + 1] = value.into();
}

/// Runs `sh -c script` in a guest on `engine` with `ws` as the workspace
/// and [`run_args`]' options changed by `options` (flag, value); asserts
/// it exits 0, prints and returns its stdout.
pub fn run_sh(engine: Engine, ws: &Path, script: &str, options: &[(&str, &str)]) -> String {
    let argv = [OsStr::new("sh"), OsStr::new("-c"), OsStr::new(script)];
    let mut args = run_args(engine, ws, &argv);
    for (flag, value) in options {
        set_option(&mut args, flag, value);
    }
    let o = Hutch::new(args).output(None);
    assert_eq!(o.status, 0, "{}", o.stderr);
    let out = o.stdout_str();
    eprintln!("{out}");
    out
}

/// Runs `argv` in a guest on `engine` with `ws` as the workspace.
pub fn run(engine: Engine, ws: &Path, argv: &[&str], stdin: Option<&[u8]>) -> Output {
    let argv: Vec<&OsStr> = argv.iter().map(OsStr::new).collect();
    Hutch::new(run_args(engine, ws, &argv)).output(stdin)
}

/// No process mentions `runtime` in its command line and the directory is empty.
pub fn assert_no_leftovers(runtime: &Path) {
    let needle = runtime.to_string_lossy().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let procs = processes_mentioning(&needle);
        let files: Vec<_> = std::fs::read_dir(runtime)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        if procs.is_empty() && files.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: processes {procs:?}, files {files:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// PIDs whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| *pid != me)
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(needle))
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A workspace directory under a path the guest can mount (not under /root).
pub fn workspace() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hutch-e2e-")
        .tempdir_in("/tmp")
        .expect("workspace")
}

/// Generates `mod NAME { fn qemu(); fn native(); }` running `body` on each engine.
#[macro_export]
macro_rules! per_engine {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn qemu() {
                $crate::on_engine(
                    concat!(stringify!($name), "::qemu"),
                    $crate::Engine::Qemu,
                    $body,
                );
            }
            #[test]
            fn native() {
                $crate::on_engine(
                    concat!(stringify!($name), "::native"),
                    $crate::Engine::Native,
                    $body,
                );
            }
        }
    };
}

/// `hutch run --stats WS -- sh -c SCRIPT` on `engine`, to completion, with
/// `HUTCH_FS_LEVERS=levers` (empty: the defaults).
pub fn run_script_with_stats(engine: Engine, ws: &Path, script: &str, levers: &str) -> Output {
    run_with_stats(engine, ws, &["sh", "-c", script], levers, &[])
}

/// The workspace's `op` requests, all its requests and its interrupts, from
/// a `--stats` run's stderr; printed with `case`.
pub fn workspace_counts(case: &str, stderr: &str, op: &str) -> (u64, u64, u64) {
    let ops = workspace_ops(stderr).get(op).copied().unwrap_or(0);
    let requests = workspace_stat(stderr, "requests");
    let interrupts = workspace_stat(stderr, "interrupts");
    eprintln!("{case}: {requests} requests ({ops} {op}), {interrupts} interrupts");
    (ops, requests, interrupts)
}

/// `hutch run --stats [--kernel-arg A]... WS -- ARGV...` on `engine`, to
/// completion, with `HUTCH_FS_LEVERS=levers` (empty: the defaults).
pub fn run_with_stats(
    engine: Engine,
    ws: &Path,
    argv: &[&str],
    levers: &str,
    kernel_args: &[&str],
) -> Output {
    let argv: Vec<&OsStr> = argv.iter().map(OsStr::new).collect();
    let mut args = run_args(engine, ws, &argv);
    let mut opts = vec![OsString::from("--stats")];
    for k in kernel_args {
        opts.extend([OsString::from("--kernel-arg"), OsString::from(k)]);
    }
    args.splice(1..1, opts);
    let mut h = Hutch::new(args);
    h.cmd.env("HUTCH_FS_LEVERS", levers);
    h.output(None)
}

/// Runs `cmd` with `stdin` fed in (or stdin closed), capturing its output.
pub fn output_with_stdin(cmd: &mut Command, stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(d) = stdin {
        child.stdin.take().unwrap().write_all(d).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs `git ARGS` in `dir` with a fixed identity; panics with git's stderr
/// when it fails (the Debian package git must be installed).
pub fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .expect("git (Debian package git)");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Opcode counts of the workspace device from `--stats` output.
pub fn workspace_ops(stderr: &str) -> std::collections::HashMap<String, u64> {
    let at = stderr
        .lines()
        .position(|l| l.contains("virtio-fs hutch-ws:"))
        .unwrap_or_else(|| panic!("no workspace stats in {stderr}"));
    let by_op = stderr.lines().nth(at + 1).unwrap_or("");
    by_op
        .trim()
        .trim_start_matches("by opcode:")
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// One count of the workspace's `--stats` line: `what` is "requests",
/// "interrupts", "notifications", "batches found by polling", ...
pub fn workspace_stat(stderr: &str, what: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("virtio-fs hutch-ws:"))
        .unwrap_or_else(|| panic!("no workspace stats in {stderr}"));
    let counts = line.split_once("hutch-ws:").map_or("", |(_, c)| c);
    counts
        .split(", ")
        .find_map(|f| f.trim().strip_suffix(what)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"))
}

/// The children of process `pid` (pid, command line with spaces for NULs).
/// `pid (comm) state ppid ...`: comm may hold spaces, so split after ')'.
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let child: u32 = e.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
                    let ppid: u32 = stat
                        .rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()?;
                    let cmd = std::fs::read(format!("/proc/{child}/cmdline")).ok()?;
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    (ppid == pid).then_some((child, cmd))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `h` with `stdin`, and stdout and stderr piped (for [`collect`]).
fn spawn_with(h: &mut Hutch, stdin: std::process::Stdio) -> std::process::Child {
    h.cmd
        .stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting hutch")
}

/// Starts `h` with stdin closed and stdout and stderr piped (for [`collect`]).
pub fn spawn_piped(h: &mut Hutch) -> std::process::Child {
    spawn_with(h, std::process::Stdio::null())
}

/// Starts `h` with stdin, stdout and stderr piped: the test writes lines
/// the guest command reads (a signal that no cached lookup can delay).
pub fn spawn_with_stdin(h: &mut Hutch) -> std::process::Child {
    spawn_with(h, std::process::Stdio::piped())
}

/// Waits up to `secs` for `path` to exist (a guest's signal); whether it does.
pub fn wait_for_file(path: &Path, secs: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !path.exists() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Starts `sh -c script` in a guest with `ws` (see [`spawn_piped`]) and
/// waits until the script creates `ws/ready`.
pub fn start_until_ready(engine: Engine, ws: &Path, script: &str) -> (Hutch, std::process::Child) {
    start_until_ready_with(engine, ws, script, &[])
}

/// [`start_until_ready`] with `env` set for hutch.
pub fn start_until_ready_with(
    engine: Engine,
    ws: &Path,
    script: &str,
    env: &[(&str, &str)],
) -> (Hutch, std::process::Child) {
    let argv: Vec<&OsStr> = ["sh", "-c", script].into_iter().map(OsStr::new).collect();
    let mut h = Hutch::new(run_args(engine, ws, &argv));
    h.cmd.envs(env.iter().copied());
    let child = spawn_piped(&mut h);
    assert!(
        wait_for_file(&ws.join("ready"), 120),
        "the guest never got ready"
    );
    (h, child)
}

/// The N of the first line `PREFIX N ms` in `out`.
pub fn ms_after(out: &str, prefix: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        l.strip_prefix(prefix)?
            .strip_suffix(" ms")?
            .trim()
            .parse()
            .ok()
    })
}

/// Sets the extended attribute `name` of the host file `path`.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated path and name, `value` valid for its length; checked.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// The extended attribute `name` of the host file `path`, if it has one.
pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated path and name, `buf` writable for its length; checked.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| {
        buf.truncate(len as usize);
        buf
    })
}
