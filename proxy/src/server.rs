//! The proxy server: one task per accepted stream, HTTP/1.1 forwarding and
//! CONNECT tunnels, with limits on header size, header time and concurrent
//! connections. Streams are any `AsyncRead + AsyncWrite`, so a vsock stream
//! plugs in where the tests use loopback TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::http::{self, HeadError, Request};
use crate::log::{now_ms, DecisionLog, Entry, LogError, Verdict};
use crate::policy::Policy;
use crate::resolve::Resolver;
use crate::rule::Host;
use crate::ssrf::{Guard, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What one proxy instance (one sandbox) runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The sandbox's name, for the log.
    pub sandbox: String,
    /// Its effective rules.
    pub policy: Policy,
    /// Largest request head accepted (larger: 431).
    pub max_header_bytes: usize,
    /// Time allowed for a complete request head (then 408 and close).
    pub header_timeout: Duration,
    /// Connections served at once (more: 503 and close).
    pub max_connections: usize,
    /// Time allowed to connect to a destination.
    pub connect_timeout: Duration,
    /// Where the decision log is appended as JSON lines, if anywhere.
    pub log_file: Option<PathBuf>,
    /// How many decisions are kept in memory.
    pub log_capacity: usize,
}

impl Config {
    pub fn new(sandbox: &str, policy: Policy) -> Config {
        Config {
            sandbox: sandbox.into(),
            policy,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            connect_timeout: Duration::from_secs(10),
            log_file: None,
            log_capacity: 10_000,
        }
    }
}

/// A running proxy's shared state.
pub struct Proxy {
    config: Config,
    guard: Guard,
    log: DecisionLog,
    permits: Arc<Semaphore>,
    served: AtomicU64,
}

impl Proxy {
    /// A proxy; `own` lists its listening addresses (never connected to).
    pub fn new(
        config: Config,
        resolver: Arc<dyn Resolver>,
        own: Vec<SocketAddr>,
    ) -> Result<Arc<Proxy>, ServerError> {
        let log = DecisionLog::new(config.log_capacity, config.log_file.as_deref())?;
        Ok(Arc::new(Proxy {
            guard: Guard::new(resolver, own).with_connect_timeout(config.connect_timeout),
            permits: Arc::new(Semaphore::new(config.max_connections)),
            log,
            config,
            served: AtomicU64::new(0),
        }))
    }

    /// Binds `addr` (port 0 picks one), records it as the proxy's own
    /// address, and returns the proxy with its listener.
    pub async fn bind(
        addr: SocketAddr,
        config: Config,
        resolver: Arc<dyn Resolver>,
    ) -> Result<(Arc<Proxy>, TcpListener), ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok((Proxy::new(config, resolver, vec![local])?, listener))
    }

    pub fn log(&self) -> &DecisionLog {
        &self.log
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Connections served to the end so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Accepts TCP connections until the listener fails.
    pub async fn run_tcp(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                // Out of file descriptors and the like: back off, keep serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            tokio::spawn(async move { proxy.accept(stream).await });
        }
    }

    /// Serves one accepted stream, or answers 503 when at the connection limit.
    pub async fn accept<S>(self: Arc<Self>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match self.permits.clone().try_acquire_owned() {
            Ok(_permit) => {
                self.serve(stream).await;
                self.served.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let body = format!(
                    "hutch: too many connections (limit {})\n",
                    self.config.max_connections
                );
                respond(&mut stream, 503, "Service Unavailable", &body).await;
            }
        }
    }

    /// Serves one stream: one request head, then a tunnel or one forwarded request.
    pub async fn serve<S>(&self, mut client: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let read = http::read_head(
            &mut client,
            self.config.max_header_bytes,
            self.config.header_timeout,
        )
        .await;
        let request =
            read.and_then(|(buf, end)| Ok((http::parse(&buf[..end])?, buf[end..].to_vec())));
        let (request, rest) = match request {
            Ok(r) => r,
            Err(e) => return refuse_head(&mut client, &e).await,
        };
        let (method, host, port, path) = match &request {
            Request::Connect { host, port } => ("CONNECT".to_string(), host.clone(), *port, None),
            Request::Forward {
                method,
                host,
                port,
                path,
                ..
            } => (method.clone(), host.clone(), *port, Some(path.clone())),
        };
        let mut entry = Entry {
            time_ms: now_ms(),
            sandbox: self.config.sandbox.clone(),
            host: host.to_string(),
            port,
            method,
            path,
            rule: None,
            verdict: Verdict::Deny,
            reason: None,
            bytes_up: 0,
            bytes_down: 0,
        };
        let upstream = match self.open(&host, port).await {
            Ok((upstream, rule)) => {
                entry.rule = Some(rule);
                upstream
            }
            Err(refusal) => {
                entry.rule = refusal.rule().map(str::to_string);
                entry.reason = Some(refusal.to_string());
                let (code, reason) = if refusal.is_forbidden() {
                    (403, "Forbidden")
                } else {
                    entry.verdict = Verdict::Error;
                    (502, "Bad Gateway")
                };
                // Recorded before answering, so the log already shows why
                // when the client reads the refusal.
                self.record(entry);
                respond(&mut client, code, reason, &format!("hutch: {refusal}\n")).await;
                return;
            }
        };
        entry.verdict = Verdict::Allow;
        let relayed = match request {
            Request::Connect { .. } => tunnel(client, upstream, &rest).await,
            Request::Forward { head, .. } => forward(client, upstream, &head, &rest).await,
        };
        (entry.bytes_up, entry.bytes_down) = relayed;
        self.record(entry);
    }

    async fn open(&self, host: &Host, port: u16) -> Result<(TcpStream, String), Refusal> {
        let checked = self.guard.check(&self.config.policy, host, port).await?;
        let stream = self.guard.connect(host, port, &checked).await?;
        Ok((stream, checked.rule))
    }

    fn record(&self, entry: Entry) {
        if let Err(e) = self.log.record(entry) {
            eprintln!("hutch-proxy: {e}");
        }
    }
}

async fn refuse_head<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S, e: &HeadError) {
    if let Some((code, reason)) = e.status() {
        respond(client, code, reason, &format!("hutch: {e}\n")).await;
    }
}

/// Writes a short response and closes the stream. Unread request bytes are
/// drained for a moment first, so the client sees the response rather than
/// a reset.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
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

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// A CONNECT tunnel: 200, then bytes both ways until both sides close.
async fn tunnel<S>(mut client: S, mut upstream: TcpStream, rest: &[u8]) -> (u64, u64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if client.write_all(ESTABLISHED).await.is_err() {
        return (0, 0);
    }
    if !rest.is_empty() && upstream.write_all(rest).await.is_err() {
        return (0, 0);
    }
    let early = rest.len() as u64;
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, 64 * 1024, 64 * 1024)
        .await
    {
        Ok((up, down)) => (early + up, down),
        Err(_) => (early, 0),
    }
}

/// One forwarded request: the rewritten head, then the body as it comes,
/// and the response back until the destination closes (the rewritten
/// request says `Connection: close`).
async fn forward<S>(client: S, upstream: TcpStream, head: &[u8], rest: &[u8]) -> (u64, u64)
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
        let _ = pump(&mut ur, &mut cw, &down_bytes).await;
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
