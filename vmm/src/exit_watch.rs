//! Helper processes that outlive hutch by a moment: a forked child that
//! waits until hutch has exited (its end of a pipe closes, also when hutch
//! is killed) and then does one last thing. `hutch-vsock-gc` removes the
//! vsock socket file a killed hutch left; `hutch-ram-free` holds the guest
//! memory's memfd so that its pages are freed after hutch returns.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Forks a child named `name` that keeps only `keep` (if any) and the
/// pipe's read end, ignores the terminal's signals, waits until the pipe
/// yields a byte or end of file, runs `then(clean)` and exits. `clean` is
/// true when hutch wrote a byte on the write end before it ended.
///
/// Returns the write end, which hutch keeps open for as long as the child
/// should wait, and the child's pid; `None` if the pipe or the fork failed.
///
/// `then` runs in a child forked from a multi-threaded process: it may only
/// make async-signal-safe calls on data prepared before the fork.
pub fn fork_until_exit(
    name: &CStr,
    keep: Option<RawFd>,
    then: impl FnOnce(bool),
) -> Option<(OwnedFd, libc::pid_t)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both descriptors were just created and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let rfd = rd.as_raw_fd();
    let (lo, hi) = match keep {
        Some(k) => (k.min(rfd), k.max(rfd)),
        None => (rfd, rfd),
    };
    // SAFETY: the child only makes async-signal-safe calls (close_range,
    // signal, prctl, read, _exit, and whatever `then` makes, which must be
    // such calls too) and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see the fork above; the buffer is a live local.
        unsafe {
            // Every other descriptor goes, the caller's stdio too, so that
            // nobody reading hutch's output waits for this child.
            if lo > 0 {
                libc::syscall(libc::SYS_close_range, 0u32, (lo - 1) as u32, 0u32);
            }
            if hi > lo + 1 {
                libc::syscall(
                    libc::SYS_close_range,
                    (lo + 1) as u32,
                    (hi - 1) as u32,
                    0u32,
                );
            }
            libc::syscall(libc::SYS_close_range, (hi + 1) as u32, u32::MAX, 0u32);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                libc::signal(sig, libc::SIG_IGN);
            }
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
            let mut b = 0u8;
            let r = loop {
                let r = libc::read(rfd, (&mut b as *mut u8).cast(), 1);
                if r < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break r;
            };
            then(r == 1);
            libc::_exit(0);
        }
    }
    if pid < 0 {
        return None;
    }
    drop(rd);
    Some((wr, pid))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits for `pid` (our child) and returns its exit code, within 10 s.
    fn reap(pid: libc::pid_t) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child, with a valid status pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                return libc::WEXITSTATUS(status);
            }
            assert!(Instant::now() < deadline, "child {pid} still waiting");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_child_learns_how_hutch_ended() {
        // A marker file the child creates only for an unclean end.
        let dir = tempfile::tempdir().unwrap();
        for clean in [true, false] {
            let marker = dir.path().join(format!("unclean-{clean}"));
            let c = std::ffi::CString::new(marker.to_str().unwrap()).unwrap();
            let (wr, pid) = fork_until_exit(c"hutch-test", None, |was_clean| {
                if !was_clean {
                    // SAFETY: open and close are async-signal-safe; `c` is live.
                    unsafe {
                        libc::close(libc::open(
                            c.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY,
                            0o600,
                        ))
                    };
                }
            })
            .unwrap();
            if clean {
                std::fs::File::from(wr).write_all(&[1]).unwrap();
            } else {
                drop(wr);
            }
            assert_eq!(reap(pid), 0);
            assert_eq!(marker.exists(), !clean, "clean end: {clean}");
        }
    }

    #[test]
    fn the_child_keeps_only_the_descriptor_it_is_given() {
        let kept = tempfile::tempfile().unwrap();
        let other = tempfile::tempfile().unwrap();
        let (k, o) = (kept.as_raw_fd(), other.as_raw_fd());
        let (wr, pid) = fork_until_exit(c"hutch-test", Some(k), |_| {
            // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
            let code = unsafe {
                i32::from(libc::fcntl(k, libc::F_GETFD) != -1) * 2
                    + i32::from(libc::fcntl(o, libc::F_GETFD) == -1)
            };
            // SAFETY: _exit ends the child with that code.
            unsafe { libc::_exit(code) };
        })
        .unwrap();
        drop(wr);
        assert_eq!(reap(pid), 3, "kept open, the other closed");
    }
}
