//! The qemu engine's file system backends: each share served by `hutch
//! fs-backend` (cli/fs_backend.rs) in a process of its own, so the code that
//! parses what the guest sends holds none of the VMM's descriptors (the
//! proxy's sockets, the agent's vsock, the terminal) and none of its memory
//! (the credentials the proxy injects), and keeps only a FUSE server's
//! capabilities.
//!
//! This side binds the vhost-user socket (so QEMU can connect as soon as it
//! starts), hands it over as descriptor 3, waits for `ready`, and at the end
//! collects the backend's counters.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;

use super::EngineError;
use crate::cli::fs_backend::{PolicyArg, LISTENER_FD};
use crate::devices::virtio::fs::ShareConfig;

/// How long a backend may take to exit after QEMU is gone.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// One running backend process.
#[derive(Debug)]
pub struct FsBackend {
    tag: String,
    child: Child,
    stdout: BufReader<ChildStdout>,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Io { what, source }
}

impl FsBackend {
    /// Binds `socket` and starts the backend for `share` on it; returns at once
    /// (see [`Self::wait_ready`]).
    pub fn spawn(share: &ShareConfig, socket: &Path, stats: bool) -> Result<Self, EngineError> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(io_err(format!(
            "binding vhost-user socket {}",
            socket.display()
        )))?;
        let exe = std::env::current_exe().map_err(io_err("locating hutch itself".into()))?;
        let mut cmd = Command::new(exe);
        // A clean environment: the user's (API keys included) stays with
        // hutch; the backend reads only its levers and log level.
        cmd.env_clear();
        for var in [crate::devices::virtio::fs::LEVERS_ENV, "HUTCH_LOG"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.arg("fs-backend")
            .arg("--tag")
            .arg(&share.tag)
            .arg("--source")
            .arg(&share.source)
            .arg("--policy")
            .arg(
                PolicyArg::from(share.policy)
                    .to_possible_value()
                    .expect("every policy has a name")
                    .get_name(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if stats {
            cmd.arg("--stats");
        }
        let fd = listener.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe calls (dup2, fcntl, setpgid, prctl).
        unsafe {
            cmd.pre_exec(move || {
                if fd == LISTENER_FD {
                    // dup2 onto itself keeps close-on-exec: clear it.
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, LISTENER_FD) != LISTENER_FD {
                    return Err(std::io::Error::last_os_error());
                }
                // Its own process group, like QEMU: a terminal's Ctrl-C goes
                // to hutch, which ends the run in order; and it dies with hutch.
                libc::setpgid(0, 0);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io_err(format!(
            "starting the file system backend for {}",
            share.tag
        )))?;
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Self {
            tag: share.tag.clone(),
            child,
            stdout,
        })
    }

    /// The backend's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Waits until the backend serves its socket, or reports why it cannot.
    pub fn wait_ready(&mut self) -> Result<(), EngineError> {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap_or(0);
        match line.trim_end() {
            "ready" => Ok(()),
            l if l.starts_with("error ") => Err(EngineError::FsBackend {
                tag: self.tag.clone(),
                message: l["error ".len()..].to_owned(),
            }),
            _ => {
                let status = self.child.wait().ok();
                Err(EngineError::FsBackend {
                    tag: self.tag.clone(),
                    message: format!(
                        "exited before serving ({}, {n} bytes said)",
                        status.map_or("no status".into(), |s| s.to_string())
                    ),
                })
            }
        }
    }

    /// Waits for the backend to end (it does once QEMU disconnects), killing
    /// it after a grace period; returns what it printed after `ready` (its
    /// counters, with `--stats`).
    pub fn finish(mut self) -> String {
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    log::warn!(
                        "file system backend for {} still running {EXIT_GRACE:?} after QEMU; killing it",
                        self.tag
                    );
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        rest
    }
}

impl Drop for FsBackend {
    fn drop(&mut self) {
        // An error path: the backend must not outlive the run.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How process `pid` ended, if it has (without reaping it: its owner still
/// waits for it).
fn ended(pid: u32) -> Option<String> {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes one siginfo_t into `info`; WNOWAIT leaves the
    // child to be reaped by its owner.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: after a successful waitid, si_pid and si_status are set (0 when
    // the child has not changed state).
    let (who, status) = unsafe { (info.si_pid(), info.si_status()) };
    if rc != 0 || who == 0 {
        return None;
    }
    Some(match info.si_code {
        libc::CLD_EXITED => format!("exited with status {status}"),
        _ => format!("was killed by signal {status}"),
    })
}

/// Watches the backends while the guest runs: if one ends while QEMU still
/// runs, the guest's file system would hang, so `stop` is called with why.
/// Returns when `done` is set or QEMU has ended.
pub fn watch(
    backends: Vec<(u32, String)>,
    qemu: u32,
    done: Arc<AtomicBool>,
    stop: impl Fn(String),
) {
    while !done.load(Ordering::SeqCst) {
        for (pid, tag) in &backends {
            if let Some(how) = ended(*pid) {
                // QEMU going first ends every backend: not an error.
                if ended(qemu).is_none() {
                    stop(format!(
                        "the file system backend for share {tag} (pid {pid}) {how} while the guest ran"
                    ));
                }
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
