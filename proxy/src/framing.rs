//! HTTP/1.1 request framing on a kept-alive connection: a buffered reader
//! that yields one request head at a time and relays each body exactly
//! (`Content-Length` or chunked), so every request on the connection can
//! be seen and rewritten.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http::HeadError;

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("bad chunked body: {0}")]
    Chunked(String),
    #[error("connection closed inside a request body")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A request head's parts the relay needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub body: Body,
    /// An `Upgrade` (or CONNECT) request: after it, bytes flow unparsed.
    pub upgrade: bool,
}

/// Parses an origin-form request head and works out its body framing.
pub fn parse_head(head: &[u8]) -> Result<Head, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HeadError::Malformed("incomplete header".into()))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default().to_string();
    let values = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
            .collect()
    };
    let te = values("transfer-encoding");
    let cl = values("content-length");
    let body = match (te.is_empty(), cl.is_empty()) {
        (false, false) => {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding".into(),
            ))
        }
        (false, true) => {
            let last = te.join(",");
            if last.rsplit(',').next().map(str::trim) != Some("chunked") {
                return Err(HeadError::Malformed(format!(
                    "transfer coding {last:?} does not end in chunked"
                )));
            }
            Body::Chunked
        }
        (true, false) => {
            let n: Vec<u64> = cl
                .iter()
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| HeadError::Malformed(format!("bad Content-Length {cl:?}")))?;
            if n.windows(2).any(|w| w[0] != w[1]) {
                return Err(HeadError::Malformed(format!(
                    "conflicting Content-Length {cl:?}"
                )));
            }
            Body::Length(n[0])
        }
        (true, true) => Body::None,
    };
    let upgrade = method.eq_ignore_ascii_case("CONNECT")
        || (!values("upgrade").is_empty()
            && values("connection")
                .iter()
                .any(|v| v.split(',').any(|t| t.trim() == "upgrade")));
    Ok(Head {
        method,
        path,
        body,
        upgrade,
    })
}

/// A read half with a buffer of bytes read but not yet relayed.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            buf: Vec::new(),
        }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.inner.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next request head. `Ok(None)`: the connection closed cleanly
    /// between requests. The time limit runs from the head's first byte.
    pub async fn head(
        &mut self,
        limit: usize,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, FramingError> {
        while self.buf.is_empty() {
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
        let read = async {
            loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    if i + 4 > limit {
                        return Err(HeadError::TooLarge { limit }.into());
                    }
                    let rest = self.buf.split_off(i + 4);
                    return Ok(Some(std::mem::replace(&mut self.buf, rest)));
                }
                if self.buf.len() > limit {
                    return Err(HeadError::TooLarge { limit }.into());
                }
                if self.fill().await? == 0 {
                    return Err(HeadError::Closed {
                        received: self.buf.len(),
                    }
                    .into());
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| HeadError::Timeout(timeout))?
    }

    /// Relays exactly `n` body bytes.
    pub async fn copy_exact<W: AsyncWrite + Unpin>(
        &mut self,
        mut n: u64,
        w: &mut W,
    ) -> Result<u64, FramingError> {
        let total = n;
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(FramingError::Truncated);
            }
            let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            w.write_all(&self.buf[..take]).await?;
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(total)
    }

    /// One CRLF-terminated line, relayed; returns it without the CRLF.
    async fn line<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> Result<Vec<u8>, FramingError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|p| p == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                w.write_all(&line).await?;
                return Ok(line[..i].to_vec());
            }
            if self.buf.len() > MAX_LINE {
                return Err(FramingError::Chunked(format!(
                    "line longer than {MAX_LINE} bytes"
                )));
            }
            if self.fill().await? == 0 {
                return Err(FramingError::Truncated);
            }
        }
    }

    /// Relays a chunked body, trailers included.
    pub async fn copy_chunked<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
    ) -> Result<u64, FramingError> {
        let mut total = 0u64;
        loop {
            let line = self.line(w).await?;
            total += line.len() as u64 + 2;
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| FramingError::Chunked(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                loop {
                    let trailer = self.line(w).await?;
                    total += trailer.len() as u64 + 2;
                    if trailer.is_empty() {
                        return Ok(total);
                    }
                }
            }
            total += self.copy_exact(size, w).await?;
            if !self.line(w).await?.is_empty() {
                return Err(FramingError::Chunked("chunk not followed by CRLF".into()));
            }
            total += 2;
        }
    }

    /// Relays everything until EOF (after an upgrade).
    pub async fn copy_rest<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
    ) -> Result<u64, FramingError> {
        let mut total = self.buf.len() as u64;
        w.write_all(&self.buf).await?;
        self.buf.clear();
        total += tokio::io::copy(&mut self.inner, w).await?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_framing() {
        let h = |s: &str| parse_head(s.as_bytes());
        assert_eq!(h("GET / HTTP/1.1\r\n\r\n").unwrap().body, Body::None);
        assert_eq!(
            h("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .body,
            Body::Length(5)
        );
        assert_eq!(
            h("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n")
                .unwrap()
                .body,
            Body::Length(5)
        );
        assert_eq!(
            h("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .unwrap()
                .body,
            Body::Chunked
        );
        assert!(h("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").is_err());
        assert!(h("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(
            h("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .is_err()
        );
        assert!(h("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").is_err());
        let up =
            h("GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
        assert!(up.upgrade);
        assert_eq!((up.method.as_str(), up.path.as_str()), ("GET", "/ws"));
    }

    #[tokio::test]
    async fn relays_requests_one_by_one() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nxyz\r\n0\r\nT: 1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        let mut r = Reader::new(&input[..]);
        let t = Duration::from_secs(1);
        let mut out = Vec::new();
        let h1 = r.head(1024, t).await.unwrap().unwrap();
        assert_eq!(parse_head(&h1).unwrap().path, "/a");
        assert_eq!(r.copy_exact(3, &mut out).await.unwrap(), 3);
        assert_eq!(out, b"abc");
        let h2 = r.head(1024, t).await.unwrap().unwrap();
        assert_eq!(parse_head(&h2).unwrap().body, Body::Chunked);
        out.clear();
        let n = r.copy_chunked(&mut out).await.unwrap();
        assert_eq!(out, b"3;x=1\r\nxyz\r\n0\r\nT: 1\r\n\r\n");
        assert_eq!(n, out.len() as u64);
        let h3 = r.head(1024, t).await.unwrap().unwrap();
        assert_eq!(h3, b"GET /c HTTP/1.1\r\n\r\n");
        assert!(r.head(1024, t).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_bodies_are_errors() {
        let t = Duration::from_secs(1);
        let mut r = Reader::new(&b"zz\r\n"[..]);
        assert!(r
            .copy_chunked(&mut Vec::new())
            .await
            .unwrap_err()
            .to_string()
            .contains("bad chunk size"));
        let mut r = Reader::new(&b"ab"[..]);
        assert!(matches!(
            r.copy_exact(3, &mut Vec::new()).await,
            Err(FramingError::Truncated)
        ));
        let mut r = Reader::new(&b"GET / HTTP/1.1\r\nX: yyyyyyyyyyyy\r\n\r\n"[..]);
        assert!(matches!(
            r.head(16, t).await,
            Err(FramingError::Head(HeadError::TooLarge { .. }))
        ));
    }
}
