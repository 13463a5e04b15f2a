//! hutch's virtio-fs backend on its own, for the load generator (hutch-bench-fsload):
//! serves one directory as a workspace share to one vhost-user frontend, then exits when
//! the frontend disconnects, like virtiofsd, whose soft RLIMIT_NOFILE raise it copies.
//!
//! Usage: hutch-bench-fsserve --socket-path SOCKET --shared-dir DIR

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use hutch::devices::virtio::fs::{serve_vhost_user, FsDevice, ShareConfig, SharePolicy};

/// Raises the soft RLIMIT_NOFILE to the hard limit, as virtiofsd does: the server keeps a
/// descriptor per inode the guest knows. (The `hutch` binary does not do this yet.)
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which is valid and exclusively ours.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads one valid rlimit; raising the soft limit up to the hard one
    // needs no privilege and affects only this process.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        eprintln!(
            "hutch-bench-fsserve: cannot raise RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
    }
}

const USAGE: &str = "usage: hutch-bench-fsserve --socket-path SOCKET --shared-dir DIR";

fn main() -> ExitCode {
    let mut socket = None;
    let mut dir = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let slot = match a.to_str() {
            Some("--socket-path") => &mut socket,
            Some("--shared-dir") => &mut dir,
            _ => {
                eprintln!("hutch-bench-fsserve: unknown argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        *slot = args.next().map(PathBuf::from);
    }
    let (Some(socket), Some(dir)) = (socket, dir) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    raise_nofile_limit();
    let cfg = ShareConfig {
        tag: "fsload".into(),
        source: dir,
        policy: SharePolicy::Workspace,
    };
    let served = FsDevice::new(cfg).and_then(|dev| serve_vhost_user(Arc::new(dev), &socket));
    match served.and_then(|handle| handle.join()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hutch-bench-fsserve: {e}");
            ExitCode::FAILURE
        }
    }
}
