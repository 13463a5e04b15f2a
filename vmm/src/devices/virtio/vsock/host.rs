//! The host side's plumbing: binding the socket (replacing a stale one),
//! non-blocking connects, the event-loop thread, and removing the socket
//! file when hutch ends, even when it is killed.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::VsockError;

/// epoll token of the stop event.
pub const STOP_TOKEN: u64 = 0;

/// Binds `path`. A socket file nobody listens on (left by a killed hutch)
/// is replaced; a live one, or any other file, is an error.
pub fn bind(path: &Path) -> Result<UnixListener, VsockError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(VsockError::NotSocket { path: path.into() });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(VsockError::InUse { path: path.into() });
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| VsockError::Bind {
        path: path.into(),
        source,
    })
}

/// Connects to the Unix socket at `path` without blocking: a listener whose
/// backlog is full refuses (EAGAIN) instead of stalling the device.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, initialized sockaddr_un of `len` bytes that
    // outlives the call; `owned` is an open socket.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// Runs the host sockets' event loop until `stop` is signalled; after each
/// batch of events, signals `wake` when the receive queue has work.
pub fn spawn_loop(
    muxer: Arc<Mutex<Muxer>>,
    epoll: Arc<Epoll>,
    wake: Arc<EventFd>,
) -> Result<JoinHandle<()>, VsockError> {
    std::thread::Builder::new()
        .name("vsock-host".into())
        .spawn(move || {
            let mut events = vec![EpollEvent::default(); 64];
            loop {
                let n = match epoll.wait(1000, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("vsock: epoll: {e}");
                        return;
                    }
                };
                let mut m = muxer.lock().unwrap_or_else(|p| p.into_inner());
                for ev in &events[..n] {
                    if ev.data() == STOP_TOKEN {
                        return;
                    }
                    m.handle_event(ev.data(), ev.event_set());
                }
                m.sweep(Instant::now());
                if m.has_rx() {
                    let _ = wake.write(1);
                }
            }
        })
        .map_err(|source| VsockError::Setup {
            what: "host thread",
            source,
        })
}

/// Removes the socket file when hutch ends: on drop, and, through a small
/// child process that waits for hutch's end of a pipe to close, also when
/// hutch is killed (the child ignores the terminal's signals, and unlinks
/// the path only if it is still the same file). A drop removes the file
/// itself and tells the child so with a byte on the pipe: a file created at
/// the path after that, which may reuse the socket's inode number, is left
/// alone. A SIGKILL of the child's process group itself leaves the file;
/// the next bind replaces it.
pub struct SocketGuard {
    path: std::path::PathBuf,
    ino: (u64, u64),
    pipe: Option<OwnedFd>,
}

impl SocketGuard {
    pub fn new(path: &Path) -> Self {
        let ino = std::fs::metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((0, 0));
        let pipe = spawn_reaper(path, ino);
        Self {
            path: path.into(),
            ino,
            pipe,
        }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let same = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.ino)
            .unwrap_or(false);
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Some(pipe) = self.pipe.take() {
            // The file is gone (or not ours): the child must not unlink
            // whatever comes next at the path.
            let _ = std::fs::File::from(pipe).write_all(&[1]);
        }
    }
}

/// Forks the reaper child (exit_watch.rs); returns the pipe's write end
/// (hutch keeps it open).
fn spawn_reaper(path: &Path, ino: (u64, u64)) -> Option<OwnedFd> {
    let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
    let (wr, pid) = crate::exit_watch::fork_until_exit(c"hutch-vsock-gc", None, |clean| {
        if clean {
            // hutch's drop removed the file itself.
            return;
        }
        // SAFETY: stat and unlink are async-signal-safe; `cpath` and `st`
        // are live locals.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(cpath.as_ptr(), &mut st) == 0 && (st.st_dev, st.st_ino) == (ino.0, ino.1)
            {
                libc::unlink(cpath.as_ptr());
            }
        }
    })?;
    reap_later(pid);
    Some(wr)
}

/// Waits for the child on a thread so it never lingers as a zombie.
fn reap_later(pid: libc::pid_t) {
    let _ = std::thread::Builder::new()
        .name("vsock-gc-wait".into())
        .spawn(move || {
            let mut status = 0;
            // SAFETY: waitpid on our own child, with a valid status pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn the_watcher_removes_the_socket_when_hutch_dies() {
        // A killed hutch runs no drop: its end of the pipe just closes, with
        // no byte sent, and the watcher process unlinks the socket file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let mut guard = SocketGuard::new(&path);
        drop(guard.pipe.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while path.exists() {
            assert!(Instant::now() < deadline, "the watcher left the socket");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
