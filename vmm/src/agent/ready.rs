//! Waiting for the guest agent: init connects to host port
//! [`READY_PORT`](hutch_proto::agent::READY_PORT), which the vsock device
//! maps to the Unix socket `<vsock>_1025`, and says hello.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hutch_proto::agent::READY_PORT;
use hutch_proto::{read_msg, Msg};

use super::client::ClientError;
use crate::devices::virtio::vsock::SocketGuard;

/// How long the hello may take once the guest has connected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener the guest's ready connection arrives on; its socket file is
/// removed when this is dropped, or when hutch is killed.
pub struct ReadyListener {
    listener: UnixListener,
    path: PathBuf,
    _guard: SocketGuard,
}

impl ReadyListener {
    /// Listens at `<vsock>_1025`, before the guest boots.
    pub fn bind(vsock: &Path) -> Result<ReadyListener, ClientError> {
        let mut p = vsock.as_os_str().to_owned();
        p.push(format!("_{READY_PORT}"));
        let path = PathBuf::from(p);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| ClientError::Socket {
            path: path.clone(),
            source,
        })?;
        Ok(ReadyListener {
            _guard: SocketGuard::new(&path),
            listener,
            path,
        })
    }

    /// Waits for the guest's hello; `None` once `stop` is set (the VM ended
    /// first) or on a bad hello, which is logged.
    pub fn accept_hello(&self, stop: &AtomicBool) -> Option<UnixStream> {
        loop {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 50) };
            if n <= 0 {
                continue;
            }
            let Ok((mut conn, _)) = self.listener.accept() else {
                continue;
            };
            let _ = conn.set_read_timeout(Some(HELLO_TIMEOUT));
            match read_msg(&mut conn) {
                Ok(Some(Msg::Hello(_))) => {
                    let _ = conn.set_read_timeout(None);
                    return Some(conn);
                }
                other => {
                    log::warn!(
                        "{}: expected the agent's hello, got {other:?}",
                        self.path.display()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hutch_proto::write_msg;

    #[test]
    fn hello_is_awaited_and_bad_ones_skipped() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("vsock");
        let r = ReadyListener::bind(&v).unwrap();
        let side = d.path().join("vsock_1025");
        assert!(side.exists());
        let s2 = side.clone();
        std::thread::spawn(move || {
            let mut bad = UnixStream::connect(&s2).unwrap();
            write_msg(&mut bad, &Msg::Ping).unwrap();
            let mut good = UnixStream::connect(&s2).unwrap();
            write_msg(&mut good, &Msg::Hello(1)).unwrap();
            std::thread::sleep(Duration::from_secs(1));
        });
        let stop = AtomicBool::new(false);
        assert!(r.accept_hello(&stop).is_some());
        stop.store(true, Ordering::SeqCst);
        assert!(r.accept_hello(&stop).is_none());
        drop(r);
        assert!(!side.exists(), "removed on drop");
    }
}
