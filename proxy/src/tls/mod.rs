//! TLS termination for hosts that get a credential: the sandbox's CA
//! ([`ca`]), the verified connection upstream (here), and the relay that
//! adds the header to each request ([`intercept`]).

pub mod ca;
pub mod intercept;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use ca::{Ca, CaError};

/// Where the host's trust store usually is (Debian, Ubuntu, Alpine, Arch).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read upstream root certificates from {}: {message}", file.display())]
    Roots { file: PathBuf, message: String },
    #[error("no trusted root certificates (the host's store is empty or unreadable{extra})")]
    NoRoots { extra: String },
    #[error("TLS set-up: {0}")]
    Config(String),
    #[error("{host}: not a valid TLS server name")]
    ServerName { host: String },
    #[error("{host}:{port}: upstream TLS failed: {message}")]
    Handshake {
        host: String,
        port: u16,
        message: String,
    },
    #[error("{host}:{port}: TLS with the sandbox failed: {message}")]
    Accept {
        host: String,
        port: u16,
        message: String,
    },
}

/// The crypto provider everything here uses (ring: no C build tools needed
/// beyond a C compiler, no cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client config for upstream connections: the host's trusted roots
/// (when `native` is set) plus the certificates in `extra` PEM files.
pub fn upstream_config(native: bool, extra: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if native {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
    }
    for file in extra {
        for cert in read_pem_certs(file)? {
            roots.add(cert).map_err(|e| TlsError::Roots {
                file: file.clone(),
                message: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        let extra = match extra.len() {
            0 => String::new(),
            _ => ", and the extra root files hold none".into(),
        };
        return Err(TlsError::NoRoots { extra });
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_pem_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Roots {
        file: file.into(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificates in the file".into()));
    }
    Ok(certs)
}

/// Opens TLS to `host` over `tcp`, verifying its certificate.
pub async fn connect_upstream(
    config: Arc<ClientConfig>,
    host: &str,
    port: u16,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, TlsError> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::ServerName { host: host.into() })?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| TlsError::Handshake {
            host: host.into(),
            port,
            message: e.to_string(),
        })
}

/// A CA bundle for the guest: the host's bundle (when readable) followed
/// by the sandbox CA, so one file serves `SSL_CERT_FILE` and friends.
pub fn guest_bundle(ca: &Ca) -> String {
    let mut bundle = std::fs::read_to_string(SYSTEM_BUNDLE).unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str("# hutch sandbox CA\n");
    bundle.push_str(ca.cert_pem());
    bundle
}
