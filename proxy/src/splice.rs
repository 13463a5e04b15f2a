//! Tunnel relaying with splice(2): bytes move socket -> pipe -> socket
//! inside the kernel, never through a user-space buffer. Works for TCP and
//! Unix stream sockets on either side; falls back to read/write where the
//! kernel refuses to splice a socket.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// Pipe capacity a tunnel asks for unless configured otherwise (the
/// unprivileged maximum on a default system).
pub const PIPE_SIZE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("cannot create a pipe for splicing: {0}")]
    Pipe(io::Error),
    #[error("tunnel relay failed after {up} bytes up, {down} down: {source}")]
    Relay {
        up: u64,
        down: u64,
        source: io::Error,
    },
}

/// A tokio socket the relay can wait on and splice to or from.
pub trait SpliceIo: AsRawFd + Send + Sync {
    fn poll_ready(&self, cx: &mut Context<'_>, write: bool) -> Poll<io::Result<()>>;
    fn try_io_dyn(
        &self,
        write: bool,
        f: &mut dyn FnMut() -> io::Result<usize>,
    ) -> io::Result<usize>;
}

macro_rules! splice_io {
    ($t:ty) => {
        impl SpliceIo for $t {
            fn poll_ready(&self, cx: &mut Context<'_>, write: bool) -> Poll<io::Result<()>> {
                if write {
                    self.poll_write_ready(cx)
                } else {
                    self.poll_read_ready(cx)
                }
            }
            fn try_io_dyn(
                &self,
                write: bool,
                f: &mut dyn FnMut() -> io::Result<usize>,
            ) -> io::Result<usize> {
                let interest = if write {
                    Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                self.try_io(interest, f)
            }
        }
    };
}
splice_io!(TcpStream);
splice_io!(UnixStream);

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new(want: usize) -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let want = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ on a pipe we own; failure leaves the default size.
        let got = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        let size = usize::try_from(got).unwrap_or(64 * 1024).max(4096);
        Ok(Pipe { r, w, size })
    }
}

fn cvt(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the call; null offsets mean
    // "current position", as splice requires for pipes and sockets.
    cvt(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    cvt(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// Waits until `s` is ready, then runs `f` once readiness is real.
async fn io_op(
    s: &dyn SpliceIo,
    write: bool,
    mut f: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        poll_fn(|cx| s.poll_ready(cx, write)).await?;
        match s.try_io_dyn(write, &mut f) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Moves bytes from `src` to `dst` until EOF, then half-closes `dst`.
///
/// Reading and writing overlap: each turn takes what `src` has into the
/// pipe and gives what the pipe holds to `dst`, and waits only when neither
/// can move, for whichever side would let it. Neither socket sits idle
/// while the other drains.
async fn pump(
    src: &dyn SpliceIo,
    dst: &dyn SpliceIo,
    pipe_bytes: usize,
    count: &AtomicU64,
) -> io::Result<()> {
    let pipe = Pipe::new(pipe_bytes)?;
    let (s, d) = (src.as_raw_fd(), dst.as_raw_fd());
    let (pr, pw) = (pipe.r.as_raw_fd(), pipe.w.as_raw_fd());
    let (mut held, mut eof) = (0usize, false);
    loop {
        let mut moved = false;
        if !eof && held < pipe.size {
            match src.try_io_dyn(false, &mut || splice(s, pw, pipe.size - held)) {
                Ok(0) => eof = true,
                Ok(m) => {
                    held += m;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EINVAL: this socket type cannot be spliced; copy instead.
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL)
                        && held == 0
                        && count.load(Ordering::Relaxed) == 0 =>
                {
                    return copy_pump(src, dst, count).await;
                }
                Err(e) => return Err(e),
            }
        }
        if held > 0 {
            match dst.try_io_dyn(true, &mut || splice(pr, d, held)) {
                Ok(m) => {
                    held -= m;
                    count.fetch_add(m as u64, Ordering::Relaxed);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if eof && held == 0 {
            // SAFETY: shutdown on an open socket descriptor; it only
            // half-closes, the descriptor stays valid.
            unsafe { libc::shutdown(d, libc::SHUT_WR) };
            return Ok(());
        }
        if !moved {
            let (want_in, want_out) = (!eof && held < pipe.size, held > 0);
            poll_fn(|cx| {
                // An error counts as ready: the next splice reports it.
                let rin = want_in && src.poll_ready(cx, false).is_ready();
                let rout = want_out && dst.poll_ready(cx, true).is_ready();
                if rin || rout {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

/// [`pump`] for sockets the kernel will not splice: read, then write.
async fn copy_pump(src: &dyn SpliceIo, dst: &dyn SpliceIo, count: &AtomicU64) -> io::Result<()> {
    let (s, d) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = io_op(src, false, || read(s, &mut buf)).await?;
        if n == 0 {
            // SAFETY: as in `pump`.
            unsafe { libc::shutdown(d, libc::SHUT_WR) };
            return Ok(());
        }
        let mut done = 0;
        while done < n {
            done += io_op(dst, true, || write(d, &buf[done..n])).await?;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Relays both ways until both sides have closed (or one fails), through a
/// pipe of `pipe_bytes` each way (rounded by the kernel). Returns the bytes
/// moved a -> b and b -> a.
pub async fn relay(
    a: &dyn SpliceIo,
    b: &dyn SpliceIo,
    pipe_bytes: usize,
) -> Result<(u64, u64), SpliceError> {
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let result = tokio::try_join!(pump(a, b, pipe_bytes, &up), pump(b, a, pipe_bytes, &down));
    let (up, down) = (up.into_inner(), down.into_inner());
    match result {
        Ok(_) => Ok((up, down)),
        Err(source) => Err(SpliceError::Relay { up, down, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn relays_tcp_to_unix_both_ways_with_half_close() {
        let (mut client, proxy_side) = pair().await;
        let (unix_proxy_side, mut far) = UnixStream::pair().unwrap();
        let relay =
            tokio::spawn(async move { relay(&proxy_side, &unix_proxy_side, PIPE_SIZE).await });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let send = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&send).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data);
        far.write_all(b"reply").await.unwrap();
        drop(far);
        assert_eq!(writer.await.unwrap(), b"reply");
        assert_eq!(relay.await.unwrap().unwrap(), (3_000_000, 5));
    }

    #[tokio::test]
    async fn a_one_page_pipe_still_relays_everything_in_order() {
        let (mut client, proxy_side) = pair().await;
        let (upstream_side, mut far) = pair().await;
        let relay = tokio::spawn(async move { relay(&proxy_side, &upstream_side, 4096).await });
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let send = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&send).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "{} bytes of {}", got.len(), data.len());
        drop(far);
        drop(writer.await.unwrap());
        assert_eq!(relay.await.unwrap().unwrap(), (1_000_000, 0));
    }
}
