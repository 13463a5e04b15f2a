//! The proxy server: one task per accepted stream, HTTP/1.1 forwarding and
//! CONNECT tunnels, with limits on header size, header time and concurrent
//! connections. Hosts with a credential get their TLS terminated and the
//! credential added (see [`crate::tls`]). Streams come from TCP or Unix
//! listeners, or any `AsyncRead + AsyncWrite` through [`Proxy::accept`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::credential::{Credential, Credentials};
use crate::http::{self, HeadError, Request};
use crate::log::{now_ms, DecisionLog, Entry, LogError, Verdict};
use crate::policy::Policy;
use crate::redact::Redactor;
use crate::relay::{forward, respond, tunnel, ESTABLISHED};
use crate::resolve::Resolver;
use crate::rule::Host;
use crate::ssrf::{Guard, Refusal};
use crate::stream::{Client, Plain, Prefixed};
use crate::tls::intercept::{self, Limits};
use crate::tls::{self, Ca, CaError, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {}: {source}", path.display())]
    BindUnix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the proxy's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("sandbox {sandbox} has credentials but no CA directory (Config::ca_dir)")]
    NoCaDir { sandbox: String },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Tls(#[from] TlsError),
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
    /// Time allowed to connect to a destination (and for its TLS handshake).
    pub connect_timeout: Duration,
    /// Where the decision log is appended as JSON lines, if anywhere.
    pub log_file: Option<PathBuf>,
    /// How many decisions are kept in memory.
    pub log_capacity: usize,
    /// Headers to add, by host. Hosts listed here get their TLS terminated.
    pub credentials: Credentials,
    /// The sandbox CA's directory (made on first use); needed with credentials.
    pub ca_dir: Option<PathBuf>,
    /// Trust the host's root certificates for upstream TLS.
    pub native_roots: bool,
    /// More trusted roots for upstream TLS (PEM files), e.g. a test CA.
    pub upstream_roots: Vec<PathBuf>,
    /// Pipe size for each direction of a spliced CONNECT tunnel.
    pub relay_pipe_bytes: usize,
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
            credentials: Credentials::default(),
            ca_dir: None,
            native_roots: true,
            upstream_roots: Vec::new(),
            relay_pipe_bytes: crate::splice::PIPE_SIZE,
        }
    }
}

/// What TLS termination needs, made once per proxy.
struct Termination {
    ca: Ca,
    upstream: Arc<ClientConfig>,
}

/// A running proxy's shared state.
pub struct Proxy {
    config: Config,
    guard: Guard,
    log: DecisionLog,
    permits: Arc<Semaphore>,
    served: AtomicU64,
    tls: Option<Termination>,
}

impl Proxy {
    /// A proxy; `own` lists its listening addresses (never connected to).
    pub fn new(
        config: Config,
        resolver: Arc<dyn Resolver>,
        own: Vec<SocketAddr>,
    ) -> Result<Arc<Proxy>, ServerError> {
        let log = DecisionLog::new(config.log_capacity, config.log_file.as_deref())?;
        let tls = if config.credentials.is_empty() {
            None
        } else {
            let dir = config.ca_dir.as_ref().ok_or_else(|| ServerError::NoCaDir {
                sandbox: config.sandbox.clone(),
            })?;
            Some(Termination {
                ca: Ca::load_or_create(dir)?,
                upstream: tls::upstream_config(config.native_roots, &config.upstream_roots)?,
            })
        };
        Ok(Arc::new(Proxy {
            guard: Guard::new(resolver, own).with_connect_timeout(config.connect_timeout),
            permits: Arc::new(Semaphore::new(config.max_connections)),
            log,
            config,
            served: AtomicU64::new(0),
            tls,
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

    /// The sandbox CA, when the proxy terminates TLS for credentials.
    pub fn ca(&self) -> Option<&Ca> {
        self.tls.as_ref().map(|t| &t.ca)
    }

    /// Connections served to the end so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Accepts TCP connections until the listener fails.
    pub async fn run_tcp(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(self.clone().serve_client(stream));
                }
                // Out of file descriptors and the like: back off, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Accepts Unix-socket connections (a sandbox's vsock connections to
    /// the host) until the listener fails.
    pub async fn run_unix(self: Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(self.clone().serve_client(stream));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Serves one accepted stream of any kind, or answers 503 when at the
    /// connection limit.
    pub async fn accept<S>(self: Arc<Self>, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.serve_client(Plain(stream)).await;
    }

    async fn serve_client<C: Client>(self: Arc<Self>, mut stream: C) {
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
    async fn serve<C: Client>(&self, mut client: C) {
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
        let cred = self.config.credentials.for_host(&host);
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
            credential: cred.map(|c| c.service.to_string()),
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
                let code = if refusal.is_forbidden() { 403 } else { 502 };
                return self.refuse(client, entry, code, &refusal.to_string()).await;
            }
        };
        entry.verdict = Verdict::Allow;
        let relayed = match (request, cred, &self.tls) {
            (Request::Connect { .. }, Some(cred), Some(tls)) => {
                let client = Prefixed::new(rest, client);
                return self.intercept(client, upstream, cred, tls, entry).await;
            }
            (Request::Connect { .. }, _, _) => {
                tunnel(client, upstream, &rest, self.config.relay_pipe_bytes).await
            }
            (Request::Forward { head, .. }, cred, _) => {
                let (head, filter) = match cred {
                    Some(c) => (
                        http::set_header(&head, &c.header, c.header_value()),
                        Redactor::new(c.needles()),
                    ),
                    None => (head, Redactor::default()),
                };
                forward(client, upstream, &head, &rest, filter).await
            }
        };
        (entry.bytes_up, entry.bytes_down) = relayed;
        self.record(entry);
    }

    /// A CONNECT to a host with a credential: TLS to the destination
    /// (verified) first, so a bad certificate is a plain 502; then 200,
    /// TLS with the sandbox under a leaf from the sandbox CA, and the
    /// request-by-request relay.
    async fn intercept<C: Client>(
        &self,
        mut client: Prefixed<C>,
        upstream: TcpStream,
        cred: &Credential,
        tls: &Termination,
        mut entry: Entry,
    ) {
        let port = entry.port;
        let connect = tls::connect_upstream(tls.upstream.clone(), &cred.host, port, upstream);
        let upstream = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.refuse(client, entry, 502, &e.to_string()).await,
            Err(_) => {
                let e = format!(
                    "{}:{port}: upstream TLS handshake timed out after {:?}",
                    cred.host, self.config.connect_timeout
                );
                return self.refuse(client, entry, 502, &e).await;
            }
        };
        let server_config = match tls.ca.server_config(&cred.host) {
            Ok(c) => c,
            Err(e) => return self.refuse(client, entry, 502, &e.to_string()).await,
        };
        use tokio::io::AsyncWriteExt;
        if client.write_all(ESTABLISHED).await.is_err() {
            return;
        }
        let accept = TlsAcceptor::from(server_config).accept(client);
        let client = match tokio::time::timeout(self.config.header_timeout, accept).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                entry.verdict = Verdict::Error;
                entry.reason = Some(
                    TlsError::Accept {
                        host: cred.host.clone(),
                        port,
                        message: e.to_string(),
                    }
                    .to_string(),
                );
                return self.record(entry);
            }
            Err(_) => return,
        };
        let limits = Limits {
            max_header_bytes: self.config.max_header_bytes,
            header_timeout: self.config.header_timeout,
        };
        let (exchanges, up, down) = intercept::relay(client, upstream, cred, limits).await;
        if exchanges.is_empty() {
            (entry.bytes_up, entry.bytes_down) = (up, down);
            return self.record(entry);
        }
        for x in exchanges {
            self.record(Entry {
                time_ms: now_ms(),
                method: x.method,
                path: Some(x.path),
                bytes_up: x.bytes_up,
                bytes_down: x.bytes_down,
                ..entry.clone()
            });
        }
    }

    /// Records a refusal (403) or failure (502), then answers with `why`.
    async fn refuse<C: Client>(&self, mut client: C, mut entry: Entry, code: u16, why: &str) {
        let reason = if code == 403 {
            "Forbidden"
        } else {
            entry.verdict = Verdict::Error;
            "Bad Gateway"
        };
        entry.reason = Some(why.to_string());
        // Recorded before answering, so the log already shows why when the
        // client reads the refusal.
        self.record(entry);
        respond(&mut client, code, reason, &format!("hutch: {why}\n")).await;
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
