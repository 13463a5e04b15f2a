//! The relay inside a terminated TLS connection: each request from the
//! sandbox gets the credential header set, then goes upstream; responses
//! come back through the secret filter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::credential::Credential;
use crate::framing::{parse_head, Body, Reader};
use crate::http::set_header;
use crate::redact::{self, Redactor};

/// One request seen inside the connection, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    /// The request as sent upstream (head and body).
    pub bytes_up: u64,
    /// Response bytes relayed until the next request began (or the end).
    pub bytes_down: u64,
}

/// Limits for the requests inside the connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
}

/// Relays until the upstream closes (or the sandbox closes and the
/// upstream finishes). Returns the requests seen and total bytes up, down.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    cred: &Credential,
    limits: Limits,
) -> (Vec<Exchange>, u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let down = AtomicU64::new(0);
    let up = AtomicU64::new(0);
    // (method, path, bytes up, bytes down when it began)
    let seen: Mutex<Vec<(String, String, u64, u64)>> = Mutex::new(Vec::new());

    // The futures borrow the counters; they end with this block.
    {
        let down_side = async {
            let f = Redactor::new(cred.needles());
            let _ = redact::copy(&mut ur, &mut cw, f, &down).await;
            let _ = cw.shutdown().await;
        };
        let up_side = async {
            let mut reader = Reader::new(cr);
            loop {
                let head = match reader
                    .head(limits.max_header_bytes, limits.header_timeout)
                    .await
                {
                    Ok(Some(h)) => h,
                    _ => break,
                };
                let Ok(parsed) = parse_head(&head) else { break };
                let head = set_header(&head, &cred.header, cred.header_value());
                let mark = down.load(Ordering::Relaxed);
                if uw.write_all(&head).await.is_err() {
                    break;
                }
                let body = match parsed.body {
                    Body::None => Ok(0),
                    Body::Length(n) => reader.copy_exact(n, &mut uw).await,
                    Body::Chunked => reader.copy_chunked(&mut uw).await,
                };
                let sent = head.len() as u64 + body.as_ref().map_or(0, |n| *n);
                up.fetch_add(sent, Ordering::Relaxed);
                seen.lock().unwrap_or_else(|e| e.into_inner()).push((
                    parsed.method,
                    parsed.path,
                    sent,
                    mark,
                ));
                if body.is_err() || uw.flush().await.is_err() {
                    break;
                }
                if parsed.upgrade {
                    if let Ok(n) = reader.copy_rest(&mut uw).await {
                        up.fetch_add(n, Ordering::Relaxed);
                    }
                    break;
                }
            }
            let _ = uw.shutdown().await;
        };
        tokio::pin!(down_side);
        tokio::pin!(up_side);
        let mut up_done = false;
        loop {
            tokio::select! {
                () = &mut down_side => break,
                () = &mut up_side, if !up_done => up_done = true,
            }
        }
    }
    let total_down = down.load(Ordering::Relaxed);
    let seen = seen.into_inner().unwrap_or_else(|e| e.into_inner());
    let ends: Vec<u64> = seen
        .iter()
        .skip(1)
        .map(|s| s.3)
        .chain([total_down])
        .collect();
    let exchanges = seen
        .into_iter()
        .zip(ends)
        .map(|((method, path, bytes_up, mark), end)| Exchange {
            method,
            path,
            bytes_up,
            bytes_down: end.saturating_sub(mark),
        })
        .collect();
    (exchanges, up.load(Ordering::Relaxed), total_down)
}
