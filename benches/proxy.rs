//! hutch-bench-proxy: CONNECT set-up latency and bulk throughput through
//! hutch-proxy against a direct loopback connection. All traffic is on
//! 127.0.0.1. Usage: hutch-bench-proxy [MIB] [CONNECTS]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hutch_proxy::{Config, Policy, Proxy, SystemResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Discards what it reads; at EOF answers with the byte count (8 bytes).
async fn sink_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_le_bytes()).await;
            });
        }
    });
    addr
}

async fn tunnel(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.expect("connect proxy");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .expect("send CONNECT");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.expect("read CONNECT reply");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Sends `bytes` and waits for the sink's count; returns MiB/s.
async fn throughput(mut s: TcpStream, bytes: u64) -> f64 {
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&chunk).await.expect("send");
        sent += chunk.len() as u64;
    }
    s.shutdown().await.expect("shutdown");
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.expect("sink count");
    assert_eq!(u64::from_le_bytes(count), sent);
    sent as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let connects: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);

    let sink = sink_server().await;
    let policy = Policy::from_rules(&["127.0.0.1/32"], &[]).expect("rule");
    let (proxy, listener) = Proxy::bind(
        "127.0.0.1:0".parse().expect("addr"),
        Config::new("bench", policy),
        Arc::new(SystemResolver),
    )
    .await
    .expect("bind proxy");
    let proxy_addr = listener.local_addr().expect("proxy addr");
    tokio::spawn(proxy.clone().run_tcp(listener));

    // Set-up latency: direct = TCP connect; proxy = TCP connect + CONNECT + 200.
    let mut direct = Vec::with_capacity(connects);
    let mut via = Vec::with_capacity(connects);
    for _ in 0..connects {
        let t = Instant::now();
        let s = TcpStream::connect(sink).await.expect("direct connect");
        direct.push(t.elapsed());
        drop(s);
        let t = Instant::now();
        let s = tunnel(proxy_addr, sink).await;
        via.push(t.elapsed());
        drop(s);
    }
    direct.sort();
    via.sort();

    let bytes = mib * 1024 * 1024;
    let direct_tp = throughput(TcpStream::connect(sink).await.expect("direct"), bytes).await;
    let via_tp = throughput(tunnel(proxy_addr, sink).await, bytes).await;

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("hutch-proxy on loopback ({connects} connects, {mib} MiB bulk)");
    println!(
        "{:<26} {:>12} {:>12} {:>8}",
        "measure", "direct", "proxy", "ratio"
    );
    for (name, p) in [("set-up p50 (us)", 0.5), ("set-up p99 (us)", 0.99)] {
        let (d, v) = (us(percentile(&direct, p)), us(percentile(&via, p)));
        println!("{name:<26} {d:>12.1} {v:>12.1} {:>7.2}x", v / d);
    }
    println!(
        "{:<26} {direct_tp:>12.0} {via_tp:>12.0} {:>7.2}x  (target >= 0.90x)",
        "throughput (MiB/s)",
        via_tp / direct_tp
    );
}
