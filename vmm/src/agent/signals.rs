//! Signals as a stream: a handler that writes each signal's number to a
//! pipe (the only async-signal-safe thing it does), read by a thread.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

static PIPE_W: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_W.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives across the call.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Routes `sigs` to the returned reader: each read byte is a signal number.
/// Installs the handlers once per process; later calls add signals to the
/// same pipe and return another reader of it.
pub fn catch(sigs: &[libc::c_int]) -> io::Result<File> {
    let mut fds: [RawFd; 2] = [-1; 2];
    if PIPE_W.load(Ordering::SeqCst) < 0 {
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
            return Err(io::Error::last_os_error());
        }
        PIPE_W.store(fds[1], Ordering::SeqCst);
        READ_FD.store(fds[0], Ordering::SeqCst);
    }
    for &sig in sigs {
        // SAFETY: sigaction with a zeroed struct, a valid handler and an
        // empty mask; SA_RESTART keeps other threads' reads going.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: dup of our own pipe's read end gives a descriptor we own.
    let fd = unsafe { libc::fcntl(READ_FD.load(Ordering::SeqCst), libc::F_DUPFD_CLOEXEC, 0) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

static READ_FD: AtomicI32 = AtomicI32::new(-1);

/// Reads the next caught signal.
pub fn next(r: &mut File) -> Option<libc::c_int> {
    let mut b = [0u8; 1];
    match r.read(&mut b) {
        Ok(1) => Some(libc::c_int::from(b[0])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_signal_comes_out_of_the_pipe() {
        let mut r = catch(&[libc::SIGUSR2]).unwrap();
        // SAFETY: raising a signal we handle.
        unsafe { libc::raise(libc::SIGUSR2) };
        assert_eq!(next(&mut r), Some(libc::SIGUSR2));
    }
}
