//! HTTP/1.1 request heads: reading one within limits, parsing the proxy
//! request forms (CONNECT authority-form, absolute-form), and rewriting a
//! forwarded request to origin-form.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::rule::Host;

/// Most headers one request may carry.
const MAX_HEADERS: usize = 128;

/// Headers that describe one hop, never forwarded (plus `Proxy-*` and any
/// header named in `Connection`). `Transfer-Encoding` stays: the body is
/// relayed as it arrives, chunked or not.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "te", "trailer", "upgrade"];

/// Why a request head was refused; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request header is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("no complete request header within {0:?}")]
    Timeout(Duration),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("connection closed before a complete request header ({received} bytes received)")]
    Closed { received: usize },
}

impl HeadError {
    /// The status line answering this error (`None`: just close).
    pub fn status(&self) -> Option<(u16, &'static str)> {
        match self {
            HeadError::TooLarge { .. } | HeadError::TooManyHeaders => {
                Some((431, "Request Header Fields Too Large"))
            }
            HeadError::Timeout(_) => Some((408, "Request Timeout")),
            HeadError::Malformed(_) => Some((400, "Bad Request")),
            HeadError::Closed { .. } => None,
        }
    }
}

/// A parsed proxy request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CONNECT host:port`: a tunnel.
    Connect { host: Host, port: u16 },
    /// `GET http://host:port/path`: forwarded; `head` is the rewritten
    /// origin-form request head, ready to send upstream.
    Forward {
        method: String,
        host: Host,
        port: u16,
        path: String,
        head: Vec<u8>,
    },
}

/// Reads until the end of the request head. Returns the bytes read (head
/// plus anything after it) and the head's length.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
    timeout: Duration,
) -> Result<(Vec<u8>, usize), HeadError> {
    let read = async {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|_| HeadError::Closed {
                    received: buf.len(),
                })?;
            if n == 0 {
                return Err(HeadError::Closed {
                    received: buf.len(),
                });
            }
            let searched_from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find_head_end(&buf, searched_from) {
                if end > limit {
                    return Err(HeadError::TooLarge { limit });
                }
                return Ok((buf, end));
            }
            if buf.len() > limit {
                return Err(HeadError::TooLarge { limit });
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| HeadError::Timeout(timeout))?
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

/// Parses a complete request head (as returned by [`read_head`]).
pub fn parse(head: &[u8]) -> Result<Request, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
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
    let target = req.path.unwrap_or_default();
    if req.version != Some(1) && req.version != Some(0) {
        return Err(HeadError::Malformed("unsupported HTTP version".into()));
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = parse_authority(target, None)?;
        return Ok(Request::Connect { host, port });
    }
    let (scheme, rest) = target.split_once("://").ok_or_else(|| {
        HeadError::Malformed(format!(
            "{target:?} is not an absolute http:// URI (this is a proxy)"
        ))
    })?;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(HeadError::Malformed(format!(
            "scheme {scheme:?} is not forwarded (use CONNECT for https)"
        )));
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = parse_authority(authority, Some(80))?;
    let headers = req.headers.iter();
    let has = |name: &str| {
        req.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    if has("content-length") && has("transfer-encoding") {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding".into(),
        ));
    }
    let connection_named: Vec<String> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| {
            String::from_utf8_lossy(h.value)
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();

    let mut out = Vec::with_capacity(head.len() + 32);
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
    let host_header = match (&host, port) {
        (Host::Ip(std::net::IpAddr::V6(v6)), 80) => format!("[{v6}]"),
        (Host::Ip(std::net::IpAddr::V6(v6)), p) => format!("[{v6}]:{p}"),
        (h, 80) => h.to_string(),
        (h, p) => format!("{h}:{p}"),
    };
    out.extend_from_slice(format!("Host: {host_header}\r\n").as_bytes());
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        if name == "host"
            || name.starts_with("proxy-")
            || HOP_BY_HOP.contains(&name.as_str())
            || connection_named.contains(&name)
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Request::Forward {
        method,
        host,
        port,
        path,
        head: out,
    })
}

/// Sets header `name` in a complete request head: every existing field
/// with that name (any case) is dropped and one `name: value` is added
/// last. Line endings are normalised to CRLF.
pub fn set_header(head: &[u8], name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + name.len() + value.len() + 4);
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    if let Some(first) = lines.next() {
        out.extend_from_slice(first);
        out.extend_from_slice(b"\r\n");
    }
    for line in lines.take_while(|l| !l.is_empty()) {
        let field = line.split(|&b| b == b':').next().unwrap_or(line);
        if field.trim_ascii().eq_ignore_ascii_case(name.as_bytes()) {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("{name}: {value}\r\n\r\n").as_bytes());
    out
}

/// `host:port`, `[v6]:port`, or (with a default port) `host`.
fn parse_authority(s: &str, default_port: Option<u16>) -> Result<(Host, u16), HeadError> {
    let bad = |why: &str| HeadError::Malformed(format!("bad authority {s:?}: {why}"));
    if s.contains('@') {
        return Err(bad("user information is not allowed"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
        };
        (&s[..v6.len() + 2], port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("port must be a number from 1 to 65535")),
            Ok(p) => p,
        },
        (None, Some(d)) => d,
        (None, None) => return Err(bad("a port is required")),
    };
    let host = Host::parse(host).map_err(|e| bad(&e))?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(head: &str) -> (String, Host, u16, String, String) {
        match parse(head.as_bytes()).unwrap() {
            Request::Forward {
                method,
                host,
                port,
                path,
                head,
            } => (method, host, port, path, String::from_utf8(head).unwrap()),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn connect_targets() {
        let ok = [
            (
                "CONNECT example.com:443 HTTP/1.1\r\n\r\n",
                "example.com",
                443,
            ),
            (
                "CONNECT Example.COM:443 HTTP/1.1\r\nHost: x\r\n\r\n",
                "example.com",
                443,
            ),
            ("CONNECT 1.1.1.1:443 HTTP/1.1\r\n\r\n", "1.1.1.1", 443),
            ("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n", "::1", 8443),
        ];
        for (head, host, port) in ok {
            assert_eq!(
                parse(head.as_bytes()).unwrap(),
                Request::Connect {
                    host: Host::parse(host).unwrap(),
                    port
                }
            );
        }
    }

    #[test]
    fn malformed_requests() {
        let bad = [
            ("CONNECT example.com HTTP/1.1\r\n\r\n", "port is required"),
            ("CONNECT example.com:0 HTTP/1.1\r\n\r\n", "port must be"),
            ("CONNECT example.com:99999 HTTP/1.1\r\n\r\n", "port must be"),
            ("CONNECT user@example.com:443 HTTP/1.1\r\n\r\n", "user information"),
            ("CONNECT bad..name:443 HTTP/1.1\r\n\r\n", "empty label"),
            ("GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", "absolute http://"),
            ("GET https://example.com/ HTTP/1.1\r\n\r\n", "use CONNECT"),
            ("GET http://example.com/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
            ("GARBAGE\r\n\r\n", "malformed"),
            ("GET http://x.com/ HTTP/2.0\r\n\r\n", "malformed"),
            ("G\0ET http://x.com/ HTTP/1.1\r\n\r\n", "malformed"),
        ];
        for (head, want) in bad {
            let err = parse(head.as_bytes()).unwrap_err();
            assert_eq!(err.status(), Some((400, "Bad Request")), "{head:?}");
            assert!(err.to_string().contains(want), "{head:?}: {err}");
        }
    }

    #[test]
    fn forwarded_requests_are_rewritten_to_origin_form() {
        let (m, h, port, path, head) = forward(
            "POST http://Example.com:8080/a/b?q=1 HTTP/1.1\r\nHost: wrong\r\nProxy-Authorization: Basic eA==\r\n\
             Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\
             TE: trailers\r\nUpgrade: h2c\r\nContent-Length: 3\r\nX-Keep: yes\r\n\r\n",
        );
        assert_eq!(
            (m.as_str(), port, path.as_str()),
            ("POST", 8080, "/a/b?q=1")
        );
        assert_eq!(h, Host::Name("example.com".into()));
        assert_eq!(
            head,
            "POST /a/b?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 3\r\nX-Keep: yes\r\nConnection: close\r\n\r\n"
        );
        let (_, _, port, path, head) = forward("GET http://example.com HTTP/1.1\r\n\r\n");
        assert_eq!((port, path.as_str()), (80, "/"));
        assert!(head.starts_with("GET / HTTP/1.1\r\nHost: example.com\r\n"));
        let (_, _, _, path, _) = forward("GET http://example.com?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!(path, "/?x=1");
        let (_, h, port, _, head) = forward("GET http://[2001:db8::1]:81/ HTTP/1.1\r\n\r\n");
        assert_eq!((h, port), (Host::Ip("2001:db8::1".parse().unwrap()), 81));
        assert!(head.contains("Host: [2001:db8::1]:81\r\n"));
    }

    #[test]
    fn set_header_replaces_every_copy() {
        let head = b"GET /v1 HTTP/1.1\r\nHost: a\r\nX-Api-Key: guest\r\nx-api-key : other\nAccept: */*\r\n\r\n";
        assert_eq!(
            String::from_utf8(set_header(head, "x-api-key", "sk-1")).unwrap(),
            "GET /v1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nx-api-key: sk-1\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn head_limits() {
        let mut ok: &[u8] = b"CONNECT a.com:443 HTTP/1.1\r\n\r\nextra";
        let (buf, end) = read_head(&mut ok, 1024, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(&buf[end..], b"extra");
        let big = format!(
            "GET http://a.com/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "y".repeat(2000)
        );
        let err = read_head(&mut big.as_bytes(), 1024, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err, HeadError::TooLarge { limit: 1024 });
        let err = read_head(
            &mut &b"GET http://a.com/ HTTP/1.1\r\n"[..],
            1024,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(err, HeadError::Closed { received: 28 });
        let many: String = std::iter::once("GET http://a.com/ HTTP/1.1\r\n".to_string())
            .chain((0..200).map(|i| format!("X-{i}: v\r\n")))
            .chain(std::iter::once("\r\n".to_string()))
            .collect();
        assert_eq!(parse(many.as_bytes()).unwrap_err().status().unwrap().0, 431);
    }
}
