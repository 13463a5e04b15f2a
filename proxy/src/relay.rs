//! Moving bytes once a destination is open: CONNECT tunnels (spliced when
//! both ends are sockets), forwarded plain-HTTP requests, and the short
//! responses the proxy writes itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::redact::{self, Redactor};
use crate::splice;
use crate::stream::Client;

/// The reply to a CONNECT that opened.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Tunnel buffer size for streams that cannot be spliced.
const BUF: usize = 256 * 1024;

/// Writes a short response and closes the stream. Unread request bytes are
/// drained for a moment first, so the client sees the response rather than
/// a reset.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    code: u16,
    reason: &str,
    body: &str,
) {
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        s.write_all(msg.as_bytes()).await?;
        s.flush().await?;
        s.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .is_err()
    {
        return;
    }
    let mut sink = [0u8; 8192];
    let mut drained = 0usize;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while drained < 1 << 20 {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// A CONNECT tunnel: 200, then bytes both ways until both sides close;
/// sockets are spliced through pipes of `pipe_bytes`.
pub async fn tunnel<C: Client>(
    mut client: C,
    mut upstream: TcpStream,
    rest: &[u8],
    pipe_bytes: usize,
) -> (u64, u64) {
    if client.write_all(ESTABLISHED).await.is_err() {
        return (0, 0);
    }
    if !rest.is_empty() && upstream.write_all(rest).await.is_err() {
        return (0, 0);
    }
    let early = rest.len() as u64;
    if let Some(c) = client.splice_io() {
        return match splice::relay(c, &upstream, pipe_bytes).await {
            Ok((up, down)) => (early + up, down),
            Err(splice::SpliceError::Relay { up, down, .. }) => (early + up, down),
            Err(splice::SpliceError::Pipe(_)) => (early, 0),
        };
    }
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF).await {
        Ok((up, down)) => (early + up, down),
        Err(_) => (early, 0),
    }
}

/// One forwarded request: the rewritten head, then the body as it comes,
/// and the response back (through `filter`) until the destination closes
/// (the rewritten request says `Connection: close`).
pub async fn forward<S>(
    client: S,
    upstream: TcpStream,
    head: &[u8],
    rest: &[u8],
    filter: Redactor,
) -> (u64, u64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = upstream.into_split();
    let up_bytes = AtomicU64::new(rest.len() as u64);
    let down_bytes = AtomicU64::new(0);
    if uw.write_all(head).await.is_err() || uw.write_all(rest).await.is_err() {
        return (0, 0);
    }
    let up = pump(&mut cr, &mut uw, &up_bytes);
    let down = async {
        let _ = redact::copy(&mut ur, &mut cw, filter, &down_bytes).await;
        let _ = cw.shutdown().await;
    };
    tokio::pin!(up);
    tokio::pin!(down);
    let mut up_done = false;
    loop {
        tokio::select! {
            () = &mut down => break,
            _ = &mut up, if !up_done => up_done = true,
        }
    }
    (
        up_bytes.load(Ordering::Relaxed),
        down_bytes.load(Ordering::Relaxed),
    )
}

/// Copies until EOF, counting as it goes (so a cut connection still counts).
async fn pump<R, W>(r: &mut R, w: &mut W, count: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}
