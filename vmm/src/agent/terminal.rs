//! The host terminal: whether stdio is one, its size, and raw mode for the
//! length of an interactive session.

use std::io;

/// Whether `fd` is a terminal.
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The size of the terminal on `fd`, if it is one.
pub fn size(fd: i32) -> Option<hutch_proto::WinSize> {
    // SAFETY: winsize is plain integers; all zeros is valid.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `w`.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) };
    (r == 0 && w.ws_row > 0 && w.ws_col > 0).then_some(hutch_proto::WinSize {
        rows: w.ws_row,
        cols: w.ws_col,
    })
}

/// Raw mode on a terminal, restored on drop: keys (Ctrl-C included) go to
/// the guest's terminal as bytes, and its line discipline does the rest.
pub struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    /// Puts `fd` in raw mode.
    pub fn enter(fd: i32) -> io::Result<RawMode> {
        // SAFETY: termios is plain integers; all zeros is valid.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes one termios into `t`.
        if unsafe { libc::tcgetattr(fd, &mut t) } == -1 {
            return Err(io::Error::last_os_error());
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits `t`.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: tcsetattr reads one termios from `t`.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn raw_mode_is_set_and_restored_on_a_pty() {
        // SAFETY: posix_openpt allocates a descriptor that we own below.
        let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        assert!(m >= 0);
        // SAFETY: `m` is a fresh descriptor.
        let master = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(m) };
        // SAFETY: `m` is an open pty master.
        unsafe {
            libc::grantpt(m);
            libc::unlockpt(m);
        }
        // SAFETY: TIOCGPTPEER opens the slave; we own the returned fd.
        let s = unsafe { libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY) };
        assert!(s >= 0);
        // SAFETY: as above.
        let slave = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(s) };
        let fd = slave.as_raw_fd();
        assert!(is_tty(fd));
        let lflag = || {
            // SAFETY: zeroed termios is valid; tcgetattr fills it.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::tcgetattr(fd, &mut t) };
            t.c_lflag
        };
        assert_ne!(lflag() & libc::ICANON, 0);
        {
            let _raw = RawMode::enter(fd).unwrap();
            assert_eq!(lflag() & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        }
        assert_ne!(lflag() & libc::ICANON, 0, "restored");
        let w = libc::winsize {
            ws_row: 31,
            ws_col: 97,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &w) };
        assert_eq!(size(fd), Some(hutch_proto::WinSize { rows: 31, cols: 97 }));
        let f = tempfile::tempfile().unwrap();
        assert!(!is_tty(f.as_raw_fd()));
        assert_eq!(size(f.as_raw_fd()), None);
    }
}
