//! hutch's virtio-fs backend on its own, for the load generator (hutch-bench-fsload):
//! serves one directory as a workspace share to one vhost-user frontend, then exits when
//! the frontend disconnects, like virtiofsd. (`FsDevice::new` raises the soft
//! RLIMIT_NOFILE to the hard limit, as virtiofsd does.)
//!
//! Usage: hutch-bench-fsserve --socket-path SOCKET --shared-dir DIR

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use hutch::devices::virtio::fs::{serve_vhost_user, FsDevice, ShareConfig, SharePolicy};

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
