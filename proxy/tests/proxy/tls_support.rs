//! A test CA, HTTPS upstreams on 127.0.0.1 signed by it (or not), and a
//! TLS client that goes through the proxy with CONNECT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::common::bounded;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA for test upstreams, written to `dir/test-ca.pem`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem_file: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem_file = dir.join("test-ca.pem");
        std::fs::write(&pem_file, issuer.pem()).unwrap();
        TestCa { issuer, pem_file }
    }

    /// A server config for `name`, signed by this CA.
    pub fn server(&self, name: &str) -> rustls::ServerConfig {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        server_config(cert.der().clone(), key)
    }
}

/// A self-signed server config for `name` (no CA vouches for it).
pub fn self_signed_server(name: &str) -> rustls::ServerConfig {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    server_config(cert.der().clone(), key)
}

fn server_config(cert: CertificateDer<'static>, key: KeyPair) -> rustls::ServerConfig {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap()
}

/// Reads one request or response head, then a `Content-Length` or chunked
/// body; returns (head, body) or `None` at a clean EOF.
pub async fn read_message<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if lower.contains("transfer-encoding: chunked") {
        // Good enough for tests: read until the last-chunk marker, keep raw.
        while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let i = buf.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5;
        body = buf.drain(..i).collect();
    } else if let Some(cl) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
    {
        let n: usize = cl.trim().parse().unwrap();
        while buf.len() < n {
            let m = s.read(&mut chunk).await.ok()?;
            if m == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..m]);
        }
        body = buf.drain(..n).collect();
    }
    Some((head, body))
}

/// An HTTPS server on 127.0.0.1:0 with keep-alive: each request's head is
/// sent on the channel and echoed back as the response body.
pub async fn https_echo(
    config: rustls::ServerConfig,
) -> (SocketAddr, UnboundedReceiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                while let Some((head, body)) = read_message(&mut s, &mut buf).await {
                    let _ = tx.send((head.clone(), body));
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = s.flush().await;
                }
            });
        }
    });
    (addr, rx)
}

/// Sends CONNECT; returns the stream after 200, or the whole answer.
pub async fn connect_raw(proxy: SocketAddr, target: &str) -> Result<TcpStream, String> {
    crate::common::connect(proxy, target).await
}

/// CONNECT through the proxy, then TLS for `name`, trusting `roots` only.
pub async fn tls_through<S>(tcp: S, name: &str, roots: &Path) -> tokio_rustls::client::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(roots).unwrap() {
        store.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    bounded(
        "client TLS handshake",
        connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp),
    )
    .await
    .expect("TLS handshake through the proxy")
}
