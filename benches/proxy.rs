//! hutch-bench-proxy: CONNECT set-up latency and bulk throughput through
//! hutch-proxy against a direct loopback connection and against tinyproxy
//! (Debian package `tinyproxy`; skipped with a reason when it is not
//! installed). All traffic is on 127.0.0.1.
//! Usage: hutch-bench-proxy [MIB] [CONNECTS] [RUNS]
//! `HUTCH_BENCH_PIPES=65536,262144` adds hutch columns with those tunnel
//! pipe sizes (the shipped size is `hutch_proxy::splice::PIPE_SIZE`).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hutch_proxy::{Config, Policy, Proxy, SystemResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads an 8-byte length, then discards that many bytes and answers with
/// the count (8 bytes). No half-close needed: tinyproxy does not relay one.
async fn sink_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut len = [0u8; 8];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let want = u64::from_le_bytes(len);
                let mut total = 0u64;
                while total < want {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = s.write_all(&total.to_le_bytes()).await;
            });
        }
    });
    addr
}

/// hutch-proxy on its own runtime thread, as a sandbox's proxy runs; `pipe`
/// overrides its tunnels' pipe size.
fn start_hutch(pipe: Option<usize>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let workers = std::env::var("HUTCH_BENCH_PROXY_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("hutch-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        rt.block_on(async move {
            let policy = Policy::from_rules(&["127.0.0.1/32"], &[]).expect("rule");
            let mut config = Config::new("bench", policy);
            if let Some(p) = pipe {
                config.relay_pipe_bytes = p;
            }
            let (proxy, listener) = Proxy::bind(
                "127.0.0.1:0".parse().expect("addr"),
                config,
                Arc::new(SystemResolver),
            )
            .await
            .expect("bind proxy");
            tx.send(listener.local_addr().expect("proxy addr"))
                .expect("send addr");
            let _ = proxy.run_tcp(listener).await;
        });
    });
    rx.recv().expect("proxy started")
}

/// tinyproxy on a free loopback port with a generated config, or why not.
struct Tinyproxy {
    child: Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start_tinyproxy() -> Result<Tinyproxy, String> {
    let bin = [
        "/usr/bin/tinyproxy",
        "/usr/sbin/tinyproxy",
        "/usr/local/bin/tinyproxy",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .ok_or("tinyproxy is not installed (Debian package tinyproxy)")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let dir = std::env::temp_dir().join(format!("hutch-bench-tinyproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let conf = dir.join("tinyproxy.conf");
    // No ConnectPort lines: CONNECT to every port is allowed.
    let text = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 2000\nLogLevel Critical\n\
         LogFile \"{}\"\nPidFile \"{}\"\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
        dir.join("tinyproxy.log").display(),
        dir.join("tinyproxy.pid").display()
    );
    std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
    let child = Command::new(bin)
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let t = Tinyproxy {
        child,
        addr,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!("tinyproxy did not listen on {addr} within 5 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t)
}

async fn tunnel(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.expect("connect proxy");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("send CONNECT");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.expect("read CONNECT reply");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Sends `bytes` and waits for the sink's count; returns MiB/s.
async fn throughput(mut s: TcpStream, bytes: u64) -> f64 {
    let chunk = vec![0x5au8; 256 * 1024];
    let bytes = bytes.div_ceil(chunk.len() as u64) * chunk.len() as u64;
    let start = Instant::now();
    s.write_all(&bytes.to_le_bytes())
        .await
        .expect("send length");
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&chunk).await.expect("send");
        sent += chunk.len() as u64;
    }
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.expect("sink count");
    assert_eq!(u64::from_le_bytes(count), sent);
    sent as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One way of reaching the sink: direct, or through a proxy.
#[derive(Clone, Copy)]
enum Path {
    Direct,
    Via(SocketAddr),
}

async fn open(path: Path, sink: SocketAddr) -> TcpStream {
    match path {
        Path::Direct => {
            let s = TcpStream::connect(sink).await.expect("direct connect");
            s.set_nodelay(true).expect("nodelay");
            s
        }
        Path::Via(p) => tunnel(p, sink).await,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let connects: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);

    let sink = sink_server().await;
    let hutch = start_hutch(None);
    let tiny = start_tinyproxy();
    let mut paths = vec![("direct", Path::Direct), ("hutch", Path::Via(hutch))];
    match &tiny {
        Ok(t) => paths.push(("tinyproxy", Path::Via(t.addr))),
        Err(why) => println!("tinyproxy comparison skipped: {why}"),
    }
    // HUTCH_BENCH_PIPES=65536,262144: more hutch columns, with those pipe sizes.
    let pipes: Vec<usize> = std::env::var("HUTCH_BENCH_PIPES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    for p in &pipes {
        let name: &'static str = format!("pipe-{}k", p / 1024).leak();
        paths.push((name, Path::Via(start_hutch(Some(*p)))));
    }

    // Set-up latency: direct = TCP connect; proxies = TCP connect + CONNECT + 200.
    // The paths take turns, so drift in machine load hits each alike.
    let mut setup: Vec<Vec<Duration>> = vec![Vec::with_capacity(connects); paths.len()];
    for _ in 0..connects {
        for (i, (_, path)) in paths.iter().enumerate() {
            let t = Instant::now();
            let s = open(*path, sink).await;
            setup[i].push(t.elapsed());
            drop(s);
        }
    }
    setup.iter_mut().for_each(|v| v.sort());

    let bytes = mib * 1024 * 1024;
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..runs {
        for (i, (_, path)) in paths.iter().enumerate() {
            tput[i].push(throughput(open(*path, sink).await, bytes).await);
        }
    }
    let tput: Vec<f64> = tput.into_iter().map(median).collect();

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("hutch-proxy on loopback ({connects} connects; {mib} MiB bulk, median of {runs})");
    let mut header = format!("{:<22}", "measure");
    for (name, _) in &paths {
        header.push_str(&format!(" {name:>10}"));
    }
    println!("{header}");
    for (name, p) in [("set-up p50 (us)", 0.5), ("set-up p99 (us)", 0.99)] {
        let mut line = format!("{name:<22}");
        for s in &setup {
            line.push_str(&format!(" {:>10.1}", us(percentile(s, p))));
        }
        println!("{line}");
    }
    let mut line = format!("{:<22}", "throughput (MiB/s)");
    for t in &tput {
        line.push_str(&format!(" {t:>10.0}"));
    }
    println!("{line}");

    println!(
        "hutch throughput / direct:      {:.2}x  (target >= 0.90x)",
        tput[1] / tput[0]
    );
    if tiny.is_ok() {
        let p50 = |i: usize| us(percentile(&setup[i], 0.5));
        println!(
            "hutch set-up p50 / tinyproxy:   {:.2}x  (target <= 1.20x)",
            p50(1) / p50(2)
        );
        println!("tinyproxy throughput / direct:  {:.2}x", tput[2] / tput[0]);
    }
    for (i, (name, _)) in paths.iter().enumerate().skip(2 + usize::from(tiny.is_ok())) {
        println!("{name} throughput / direct: {:.2}x", tput[i] / tput[0]);
    }
}
