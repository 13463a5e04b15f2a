//! Pseudo-terminals for sessions that ask for one.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use hutch_proto::WinSize;

use crate::sys::check;

/// A terminal pair: the master stays with the agent, the slave becomes the
/// process's stdin, stdout, stderr and controlling terminal.
pub struct Pty {
    pub master: File,
    pub slave: OwnedFd,
}

/// Opens a new pseudo-terminal of size `ws`.
pub fn open(ws: WinSize) -> io::Result<Pty> {
    // SAFETY: posix_openpt only allocates a descriptor.
    let m = check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })
        .map_err(|e| io::Error::new(e.kind(), format!("open /dev/ptmx: {e}")))?;
    // SAFETY: `m` is a fresh descriptor that we own.
    let master = unsafe { File::from_raw_fd(m) };
    // SAFETY: `m` is an open pty master.
    check(unsafe { libc::grantpt(m) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(m) })?;
    // TIOCGPTPEER opens the slave from the master without a path lookup.
    // SAFETY: `m` is an unlocked pty master; the flags are valid open flags.
    let s = check(unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER as _,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("open the pty slave: {e}")))?;
    // SAFETY: the ioctl returned a new descriptor that we own.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    resize(&master, ws)?;
    Ok(Pty { master, slave })
}

/// Sets the terminal's size; the kernel sends SIGWINCH to its foreground
/// process group.
pub fn resize(master: &File, ws: WinSize) -> io::Result<()> {
    let w = libc::winsize {
        ws_row: ws.rows,
        ws_col: ws.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `master` is an open pty; TIOCSWINSZ reads one winsize.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ as _, &w) })?;
    Ok(())
}

/// The terminal's foreground process group, if it has one.
pub fn foreground(master: &File) -> Option<libc::pid_t> {
    let mut pgrp: libc::pid_t = 0;
    // SAFETY: `master` is an open pty; TIOCGPGRP writes one pid_t.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPGRP as _, &mut pgrp) };
    (r == 0 && pgrp > 0).then_some(pgrp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    #[test]
    fn a_child_on_the_slave_sees_the_size_and_its_output_comes_back() {
        let pty = open(WinSize {
            rows: 33,
            cols: 101,
        })
        .unwrap();
        let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let mut child = Command::new("sh")
            .args(["-c", "stty size; tty"])
            .stdin(dup(&pty.slave))
            .stdout(dup(&pty.slave))
            .stderr(dup(&pty.slave))
            .spawn()
            .unwrap();
        drop(pty.slave);
        let mut out = Vec::new();
        let mut m = pty.master;
        // EIO once the child (the last slave holder) is gone.
        let mut buf = [0u8; 256];
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        child.wait().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("33 101\r\n"), "{text:?}");
        assert!(text.contains("/dev/pts/"), "{text:?}");
        let _ = m.write(b"x");
    }
}
