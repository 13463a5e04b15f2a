use std::time::{Duration, Instant};

use hutch_proxy::{Config, FakeResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

fn open_config() -> Config {
    Config::new("sb", policy(&["127.0.0.1/32", "**"], &[]))
}

/// The proxy still serves a tunnel (used after each abuse).
async fn still_serves(proxy_addr: std::net::SocketAddr) {
    let echo = echo_server().await;
    let mut s = connect(proxy_addr, &echo.to_string())
        .await
        .expect("proxy still serves");
    assert_eq!(echo_through(&mut s, b"alive").await, b"alive");
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let (proxy_addr, _) = start_proxy(open_config(), FakeResolver::new()).await;
    let cases: [&[u8]; 5] = [
        b"GARBAGE\r\n\r\n",
        b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT no-port HTTP/1.1\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ];
    for req in cases {
        let response = exchange(proxy_addr, req).await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request"),
            "{req:?}: {response}"
        );
    }
    still_serves(proxy_addr).await;
}

#[tokio::test]
async fn oversized_header_gets_431() {
    let mut config = open_config();
    config.max_header_bytes = 16 * 1024;
    let (proxy_addr, _) = start_proxy(config, FakeResolver::new()).await;
    let req = format!(
        "GET http://a.test/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let response = exchange(proxy_addr, req.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{response}"
    );
    // A head that never ends is cut at the limit too.
    let endless = "X-Y: z\r\n".repeat(4 * 1024);
    let response = exchange(
        proxy_addr,
        format!("GET http://a.test/ HTTP/1.1\r\n{endless}").as_bytes(),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    still_serves(proxy_addr).await;
}

#[tokio::test]
async fn slowloris_client_is_cut_off_after_the_header_timeout() {
    let mut config = open_config();
    config.header_timeout = Duration::from_millis(500);
    let (proxy_addr, _) = start_proxy(config, FakeResolver::new()).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(proxy_addr).await.unwrap();
    // One byte every 100 ms, never finishing the head.
    let dribble = async {
        for b in
            b"CONNECT slow.test:443 HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .iter()
        {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    let out = bounded("slowloris", dribble).await;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408 Request Timeout"),
        "{text}"
    );
    assert!(
        elapsed >= Duration::from_millis(450),
        "cut too early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "not cut off: {elapsed:?}");
    still_serves(proxy_addr).await;
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_the_proxy_recovers() {
    let mut config = open_config();
    config.max_connections = 4;
    let (proxy_addr, proxy) = start_proxy(config, FakeResolver::new()).await;
    let echo = echo_server().await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(proxy_addr, &echo.to_string()).await.unwrap());
    }
    let err = connect(proxy_addr, &echo.to_string()).await.unwrap_err();
    assert!(err.starts_with("HTTP/1.1 503 Service Unavailable"), "{err}");
    assert!(err.contains("too many connections (limit 4)"), "{err}");
    drop(held);
    bounded("slots freed", async {
        while proxy.served() < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    still_serves(proxy_addr).await;
}

/// The soft open-files limit of this process, from /proc.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tunnels() {
    // Each tunnel holds 4 descriptors in this process (client, proxy's
    // client side, proxy's upstream side, echo server's side).
    let n = 1000.min(open_files_limit().saturating_sub(256) / 4);
    if n < 1000 {
        eprintln!("open-files limit allows only {n} concurrent tunnels; testing {n}");
    }
    let mut config = open_config();
    config.max_connections = n + 16;
    let (proxy_addr, proxy) = start_proxy(config, FakeResolver::new()).await;
    let echo = echo_server().await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let mut s = connect(proxy_addr, &echo.to_string()).await?;
            // All n tunnels are open at once before any is used or closed.
            barrier.wait().await;
            let msg = format!("tunnel {i}");
            let back = echo_through(&mut s, msg.as_bytes()).await;
            if back != msg.as_bytes() {
                return Err(format!("tunnel {i} echoed {back:?}"));
            }
            Ok::<_, String>(())
        });
    }
    let results = tokio::time::timeout(Duration::from_secs(60), tasks.join_all())
        .await
        .expect("1000 tunnels within 60 s");
    let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failed.is_empty(),
        "{} tunnels failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    bounded("all tunnels closed", async {
        while proxy.served() < n as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    still_serves(proxy_addr).await;
}
