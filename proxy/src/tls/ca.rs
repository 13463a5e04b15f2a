//! A sandbox's certificate authority: generated once, kept as PEM in a
//! directory (`ca.pem`, and `ca-key.pem` with mode 0600), and used to sign
//! leaf certificates for the hosts whose TLS the proxy terminates.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use time::{Duration, OffsetDateTime};

/// The CA's certificate file in its directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key file (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create CA directory {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", file.display())]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a usable CA file: {message}", file.display())]
    Bad { file: PathBuf, message: String },
    #[error("cannot make a certificate for {host}: {message}")]
    Leaf { host: String, message: String },
}

/// A loaded (or newly made) CA with its cache of leaf server configs.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("dir", &self.dir).finish()
    }
}

/// The CA's subject; the same every time, so a reloaded key signs as the
/// certificate on disk names it.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "hutch sandbox CA");
    dn.push(DnType::OrganizationName, "hutch");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Ca {
    /// Loads the CA kept in `dir`, or makes one there (directory 0700,
    /// key 0600) when the directory holds none.
    pub fn load_or_create(dir: &Path) -> Result<Ca, CaError> {
        let cert_file = dir.join(CA_CERT_FILE);
        let key_file = dir.join(CA_KEY_FILE);
        if cert_file.exists() && key_file.exists() {
            let read = |f: &Path| {
                std::fs::read_to_string(f).map_err(|source| CaError::Read {
                    file: f.into(),
                    source,
                })
            };
            let cert_pem = read(&cert_file)?;
            let key = KeyPair::from_pem(&read(&key_file)?).map_err(|e| CaError::Bad {
                file: key_file.clone(),
                message: e.to_string(),
            })?;
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CaError::Bad {
                file: cert_file.clone(),
                message: e.to_string(),
            })?;
            return Ok(Ca::from_parts(dir, cert_pem, key));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CaError::Dir {
                dir: dir.into(),
                source,
            })?;
        let bad = |e: rcgen::Error| CaError::Bad {
            file: cert_file.clone(),
            message: e.to_string(),
        };
        let key = KeyPair::generate().map_err(bad)?;
        let mut params = ca_params();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let cert_pem = params.self_signed(&key).map_err(bad)?.pem();
        write_file(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_file, cert_pem.as_bytes(), 0o644)?;
        Ok(Ca::from_parts(dir, cert_pem, key))
    }

    fn from_parts(dir: &Path, cert_pem: String, key: KeyPair) -> Ca {
        Ca {
            dir: dir.into(),
            cert_pem,
            issuer: Issuer::new(ca_params(), key),
            leaves: Mutex::new(HashMap::new()),
        }
    }

    /// The CA certificate (PEM), for the guest's trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate's file.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// A TLS server config presenting a certificate for `host` signed by
    /// this CA (made once per host, then cached).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = leaves.get(host) {
            return Ok(c.clone());
        }
        let leaf_err = |message: String| CaError::Leaf {
            host: host.into(),
            message,
        };
        let key = KeyPair::generate().map_err(|e| leaf_err(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.subject_alt_names = vec![match host.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.to_string()
                    .try_into()
                    .map_err(|e: rcgen::Error| leaf_err(e.to_string()))?,
            ),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(365);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| leaf_err(e.to_string()))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| leaf_err(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .map_err(|e| leaf_err(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        leaves.insert(host.into(), config.clone());
        Ok(config)
    }
}

fn write_file(file: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let write_err = |source| CaError::Write {
        file: file.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(file)
        .map_err(write_err)?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_then_reloaded_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca/web");
        let ca = Ca::load_or_create(&ca_dir).unwrap();
        let mode = |f: &str| {
            std::fs::metadata(ca_dir.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(""), 0o700);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let again = Ca::load_or_create(&ca_dir).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let a = again.server_config("api.example.com").unwrap();
        let b = again.server_config("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "leaf configs are cached");
    }

    #[test]
    fn a_corrupt_key_is_reported_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        std::fs::write(dir.path().join(CA_KEY_FILE), "junk").unwrap();
        let err = Ca::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ca-key.pem is not a usable CA file"), "{err}");
    }
}
