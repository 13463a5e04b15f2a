//! `hutch fs-backend` (hidden): one virtio-fs share served over vhost-user in
//! a process of its own, as the qemu engine starts it (engine/fs_backend.rs).
//!
//! The parent binds the vhost-user socket and passes it as descriptor 3. This
//! process closes every other descriptor it inherited, keeps only the
//! capabilities a FUSE server needs (and no new privileges), builds the
//! device, and restricts itself with Landlock to the share's paths. On stdout it says `ready` (or `error MESSAGE`) once, and after the
//! frontend disconnects, with `--stats`, the device's counters.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use vhost::vhost_user::Listener;

use crate::devices::virtio::fs::{
    confine_process, landlock, serve_vhost_user_on, FsDevice, ShareConfig, SharePolicy,
    ROOT_ALLOWLIST,
};

/// The descriptor the bound vhost-user socket arrives on.
pub const LISTENER_FD: i32 = 3;

/// `hutch fs-backend`.
#[derive(Debug, Args)]
pub struct FsBackendArgs {
    /// The share's virtio-fs tag.
    #[arg(long)]
    pub tag: String,
    /// The host directory shared.
    #[arg(long)]
    pub source: PathBuf,
    /// How the guest may use it.
    #[arg(long, value_enum)]
    pub policy: PolicyArg,
    /// Print the device's counters on stdout when the frontend is gone.
    #[arg(long)]
    pub stats: bool,
}

/// [`SharePolicy`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Read-write, passed through.
    Workspace,
    /// The read-only, filtered system root.
    SystemRoot,
}

impl From<SharePolicy> for PolicyArg {
    fn from(p: SharePolicy) -> Self {
        match p {
            SharePolicy::Workspace => PolicyArg::Workspace,
            SharePolicy::SystemRoot => PolicyArg::SystemRoot,
        }
    }
}

impl From<PolicyArg> for SharePolicy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Workspace => SharePolicy::Workspace,
            PolicyArg::SystemRoot => SharePolicy::SystemRoot,
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Whether `fd` is a listening Unix stream socket (and not, say, a pipe
/// some other parent left open).
fn is_listening_unix_socket(fd: i32) -> bool {
    let opt = |name| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`; a
        // descriptor that is not a socket makes it fail.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    opt(libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && opt(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && opt(libc::SO_ACCEPTCONN) == Some(1)
}

/// Closes every descriptor above the listener's.
fn close_inherited() -> std::io::Result<()> {
    // SAFETY: close_range takes integers; it closes descriptors this process
    // owns and nothing in it uses yet (no thread has started).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, LISTENER_FD + 1, u32::MAX, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the backend; returns the exit status.
pub fn main(a: FsBackendArgs) -> i32 {
    if !is_listening_unix_socket(LISTENER_FD) {
        say(&format!(
            "error no vhost-user socket on descriptor {LISTENER_FD} (hutch starts this itself)"
        ));
        return 2;
    }
    if let Err(e) = close_inherited().and_then(|()| confine_process()) {
        say(&format!("error confining the file system backend: {e}"));
        return 1;
    }
    // SAFETY: descriptor 3 is the bound socket the parent passed, owned by
    // nothing else in this process.
    let listener = unsafe { Listener::from_raw_fd(LISTENER_FD) };
    let cfg = ShareConfig {
        tag: a.tag.clone(),
        source: a.source.clone(),
        policy: a.policy.into(),
    };
    let dev = match FsDevice::new(cfg) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            say(&format!("error {e}"));
            return 1;
        }
    };
    // Last, now that the device has opened what it opens up front: from here
    // the kernel refuses any path outside the share.
    let source = dev.source().to_path_buf();
    let top: Vec<&str> = ROOT_ALLOWLIST
        .iter()
        .filter_map(|n| n.to_str().ok())
        .collect();
    let rules = landlock::share_rules(&source, a.policy == PolicyArg::Workspace, &top);
    match landlock::restrict(&rules) {
        Ok(Some(abi)) => log::info!("fs backend {}: Landlock ABI {abi}: {rules:?}", a.tag),
        Ok(None) => log::warn!(
            "fs backend {}: this kernel has no Landlock; the share's paths are checked by hutch alone",
            a.tag
        ),
        Err(e) => {
            say(&format!("error restricting the backend to {}: {e}", source.display()));
            return 1;
        }
    }
    let socket = PathBuf::from(format!("descriptor {LISTENER_FD}"));
    let handle = match serve_vhost_user_on(dev.clone(), listener, &socket) {
        Ok(h) => h,
        Err(e) => {
            say(&format!("error {e}"));
            return 1;
        }
    };
    say("ready");
    let result = handle.join();
    if a.stats {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(
            dev.stats()
                .report(&format!("virtio-fs {}", dev.tag()))
                .as_bytes(),
        );
        let _ = out.flush();
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hutch fs-backend {}: {e}", a.tag);
            1
        }
    }
}
