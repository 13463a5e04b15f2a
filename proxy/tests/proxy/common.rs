use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hutch_proxy::{Config, FakeResolver, Policy, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(10);

pub async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out after {STEP:?}"))
}

pub fn policy(allow: &[&str], deny: &[&str]) -> Policy {
    Policy::from_rules(allow, deny).unwrap()
}

/// Starts a proxy on 127.0.0.1:0 with `config`, serving in the background.
pub async fn start_proxy(config: Config, resolver: FakeResolver) -> (SocketAddr, Arc<Proxy>) {
    let (proxy, listener) = Proxy::bind("127.0.0.1:0".parse().unwrap(), config, Arc::new(resolver))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy.clone().run_tcp(listener));
    (addr, proxy)
}

/// A TCP echo server on 127.0.0.1:0.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// An HTTP server on 127.0.0.1:0 that answers every request with `body`
/// and sends each request head it received (as text) on the channel.
pub async fn http_server(
    body: &'static str,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, rx)
}

/// Sends `request` to the proxy and reads until it closes the connection.
pub async fn exchange(proxy: SocketAddr, request: &[u8]) -> String {
    bounded("exchange", async {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
}

/// Opens a CONNECT tunnel; returns the stream after a 200, or the whole
/// refusal as text.
pub async fn connect(proxy: SocketAddr, target: &str) -> Result<TcpStream, String> {
    bounded("connect", async {
        let mut s = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return Err(format!("closed after {:?}", String::from_utf8_lossy(&head))),
            }
        }
        if head.starts_with(b"HTTP/1.1 200 ") {
            Ok(s)
        } else {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            head.extend_from_slice(&rest);
            Err(String::from_utf8_lossy(&head).into_owned())
        }
    })
    .await
}

/// Writes `data` into an open tunnel and reads the same number of bytes back.
pub async fn echo_through(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    bounded("echo", async {
        s.write_all(data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).await.unwrap();
        back
    })
    .await
}
