//! The host channel: frames on the serial line.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use hutch_proto::{Frame, FrameKind, MAX_PAYLOAD};

/// The serial port the host listens on.
pub const TTY_PATH: &str = "/dev/ttyS0";

/// Writes whole frames; one lock per call, so frames from different threads
/// never interleave.
#[derive(Debug)]
pub struct FrameSink<W> {
    out: Mutex<W>,
}

impl<W: Write> FrameSink<W> {
    /// Wraps a writer.
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    /// Sends `data` as frames of `kind` (one empty frame if `data` is empty).
    pub fn send(&self, kind: FrameKind, data: &[u8]) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if data.is_empty() {
            out.write_all(&Frame::encode(kind, &[]))?;
        }
        for chunk in data.chunks(MAX_PAYLOAD) {
            out.write_all(&Frame::encode(kind, chunk))?;
        }
        out.flush()
    }

    /// Sends the exit status frame.
    pub fn send_exit(&self, status: i32) -> io::Result<()> {
        self.send(FrameKind::Exit, &status.to_le_bytes())
    }

    /// Runs `f` on the writer, holding the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        f(&mut self.out.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Returns the writer.
    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why the serial channel could not be set up.
#[derive(Debug)]
pub enum ChannelError {
    /// Opening the device failed.
    Open { path: String, err: io::Error },
    /// Reading or setting its terminal attributes failed.
    Termios { path: String, err: io::Error },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open { path, err } => write!(f, "open {path}: {err}"),
            Self::Termios { path, err } => write!(f, "set {path} to raw mode: {err}"),
        }
    }
}

/// Opens the serial port read-write without making it our controlling
/// terminal, and sets it raw: 8 bits, no echo, no flow control, 115200 baud.
pub fn open_tty(path: &str) -> Result<File, ChannelError> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|err| ChannelError::Open {
            path: path.into(),
            err,
        })?;
    set_raw(&tty).map_err(|err| ChannelError::Termios {
        path: path.into(),
        err,
    })?;
    Ok(tty)
}

/// Makes `t` raw like `cfmakeraw`, without flow control, at 115200 baud.
pub fn make_raw(t: &mut libc::termios2) {
    t.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON
        | libc::IXOFF
        | libc::IXANY);
    t.c_oflag &= !libc::OPOST;
    t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    let baud_bits = libc::CBAUD | (libc::CBAUD << libc::IBSHIFT);
    t.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::CRTSCTS | baud_bits);
    t.c_cflag |= libc::CS8 | libc::CLOCAL | libc::CREAD | libc::B115200;
    t.c_ispeed = 115_200;
    t.c_ospeed = 115_200;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
}

/// Sets the tty raw with the kernel's termios2 ioctls. (glibc's `cfset*speed`
/// cannot be used: the libc crate binds them to versioned symbols that a
/// static link does not resolve.)
fn set_raw(tty: &File) -> io::Result<()> {
    let fd = tty.as_raw_fd();
    // SAFETY: termios2 is plain integers; all zeros is a valid value.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open; TCGETS2 writes one termios2 into `t`.
    crate::sys::check(unsafe { libc::ioctl(fd, libc::TCGETS2 as _, &mut t) })?;
    make_raw(&mut t);
    // SAFETY: `fd` is open; TCSETS2 reads one termios2 from `t`.
    crate::sys::check(unsafe { libc::ioctl(fd, libc::TCSETS2 as _, &t) })?;
    Ok(())
}

/// Waits until everything written to the tty has been transmitted.
pub fn drain(tty: &File) {
    // SAFETY: the descriptor is open for as long as `tty` lives.
    unsafe { libc::tcdrain(tty.as_raw_fd()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use hutch_proto::FrameDecoder;

    #[test]
    fn send_splits_large_data_and_sends_empty_frames() {
        let sink = FrameSink::new(Vec::new());
        sink.send(FrameKind::Stdout, &vec![1u8; MAX_PAYLOAD + 1])
            .unwrap();
        sink.send(FrameKind::Stderr, b"").unwrap();
        sink.send_exit(-3).unwrap();
        let frames = FrameDecoder::new().push(&sink.into_inner());
        let kinds: Vec<_> = frames
            .iter()
            .map(|f| match f {
                Frame::Data(k, p) => (*k, p.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (FrameKind::Stdout, MAX_PAYLOAD),
                (FrameKind::Stdout, 1),
                (FrameKind::Stderr, 0),
                (FrameKind::Exit, 4)
            ]
        );
        assert_eq!(
            frames[3],
            Frame::Data(FrameKind::Exit, (-3i32).to_le_bytes().to_vec())
        );
    }

    #[test]
    fn sets_a_pty_raw() {
        let tty = open_tty("/dev/ptmx").unwrap();
        // SAFETY: zeroed termios2 is valid; the fd is open.
        let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
        // SAFETY: as above; TCGETS2 fills `t`.
        let r = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TCGETS2 as _, &mut t) };
        assert_eq!(r, 0);
        assert_eq!(t.c_lflag & (libc::ECHO | libc::ICANON | libc::ISIG), 0);
        assert_eq!(t.c_oflag & libc::OPOST, 0);
        assert_eq!(t.c_iflag & (libc::IXON | libc::ICRNL), 0);
        assert_eq!(t.c_cflag & libc::CSIZE, libc::CS8);
        assert_eq!(t.c_cc[libc::VMIN], 1);
    }

    #[test]
    fn open_error_names_the_path() {
        let e = open_tty("/nonexistent/ttyS9").unwrap_err();
        assert!(
            e.to_string().starts_with("open /nonexistent/ttyS9: "),
            "{e}"
        );
    }
}
