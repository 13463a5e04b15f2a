//! Credentials the proxy adds to requests: services (anthropic, openai,
//! github, or a custom host plus header), the header each one sets, and the
//! sentinel environment a sandbox sees instead of the secret.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::rule::{normalize_name, Host};

/// What the guest sees in place of a secret (`ANTHROPIC_API_KEY=...`).
pub const SENTINEL: &str = "hutch-managed-secret";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("unknown service {0:?} (expected anthropic, openai, github, or HOST:HEADER such as api.example.com:X-Api-Key)")]
    UnknownService(String),
    #[error("bad service {service:?}: {reason}")]
    BadCustom { service: String, reason: String },
    #[error("the secret for {service} is empty")]
    Empty { service: String },
    #[error("the secret for {service} contains a control character (only printable text can go in an HTTP header)")]
    NotPrintable { service: String },
}

/// A service whose requests get a credential.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    /// api.anthropic.com, `x-api-key: SECRET`.
    Anthropic,
    /// api.openai.com, `Authorization: Bearer SECRET`.
    OpenAi,
    /// api.github.com (`Authorization: Bearer SECRET`) and github.com
    /// (git over HTTPS: `Authorization: Basic base64(x-access-token:SECRET)`).
    Github,
    /// Any host (a DNS name), the header set to the secret as it is.
    Custom { host: String, header: String },
}

/// How the header value is made from the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Raw,
    Bearer,
    /// HTTP Basic with this user name and the secret as password.
    Basic(&'static str),
}

impl Service {
    /// (host, header, style) for each host the service covers.
    fn targets(&self) -> Vec<(String, String, Style)> {
        let t = |h: &str, n: &str, s| (h.to_string(), n.to_string(), s);
        match self {
            Service::Anthropic => vec![t("api.anthropic.com", "x-api-key", Style::Raw)],
            Service::OpenAi => vec![t("api.openai.com", "Authorization", Style::Bearer)],
            Service::Github => vec![
                t("api.github.com", "Authorization", Style::Bearer),
                t(
                    "github.com",
                    "Authorization",
                    Style::Basic("x-access-token"),
                ),
            ],
            Service::Custom { host, header } => vec![t(host, header, Style::Raw)],
        }
    }

    /// The guest environment variables that carry the sentinel.
    pub fn env_vars(&self) -> &'static [&'static str] {
        match self {
            Service::Anthropic => &["ANTHROPIC_API_KEY"],
            Service::OpenAi => &["OPENAI_API_KEY"],
            Service::Github => &["GITHUB_TOKEN", "GH_TOKEN"],
            Service::Custom { .. } => &[],
        }
    }

    /// The hosts this service's credential goes to.
    pub fn hosts(&self) -> Vec<String> {
        self.targets().into_iter().map(|(h, _, _)| h).collect()
    }
}

impl FromStr for Service {
    type Err = CredentialError;

    fn from_str(s: &str) -> Result<Service, CredentialError> {
        match s.to_ascii_lowercase().as_str() {
            "anthropic" => return Ok(Service::Anthropic),
            "openai" => return Ok(Service::OpenAi),
            "github" => return Ok(Service::Github),
            _ => {}
        }
        let Some((host, header)) = s.split_once(':') else {
            return Err(CredentialError::UnknownService(s.into()));
        };
        let bad = |reason: String| CredentialError::BadCustom {
            service: s.into(),
            reason,
        };
        let host = normalize_name(host).map_err(bad)?;
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if header.is_empty() || !header.chars().all(token) {
            return Err(bad(format!("{header:?} is not an HTTP header name")));
        }
        Ok(Service::Custom {
            host,
            header: header.into(),
        })
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Anthropic => f.write_str("anthropic"),
            Service::OpenAi => f.write_str("openai"),
            Service::Github => f.write_str("github"),
            Service::Custom { host, header } => write!(f, "{host}:{header}"),
        }
    }
}

/// Checks that a secret can be sent in a header; trims one trailing newline.
pub fn check_secret(service: &Service, value: &str) -> Result<String, CredentialError> {
    let v = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(value);
    if v.is_empty() {
        return Err(CredentialError::Empty {
            service: service.to_string(),
        });
    }
    if v.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CredentialError::NotPrintable {
            service: service.to_string(),
        });
    }
    Ok(v.to_string())
}

/// One header to set on requests to one host. `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub service: Service,
    pub host: String,
    pub header: String,
    value: String,
    secret: String,
}

impl Credential {
    /// The header value sent upstream.
    pub fn header_value(&self) -> &str {
        &self.value
    }

    /// Byte strings that must never reach the sandbox: the secret and the
    /// header value made from it.
    pub fn needles(&self) -> Vec<Vec<u8>> {
        let mut n = vec![self.secret.as_bytes().to_vec()];
        if self.value != self.secret {
            n.push(self.value.as_bytes().to_vec());
        }
        n
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("service", &self.service)
            .field("host", &self.host)
            .field("header", &self.header)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// The credentials of one sandbox, by host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_host: BTreeMap<String, Credential>,
    services: Vec<Service>,
}

impl Credentials {
    /// From (service, secret) pairs; a later pair for the same host wins.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (Service, &'a str)>) -> Credentials {
        let mut c = Credentials::default();
        for (service, secret) in secrets {
            for (host, header, style) in service.targets() {
                let value = match style {
                    Style::Raw => secret.to_string(),
                    Style::Bearer => format!("Bearer {secret}"),
                    Style::Basic(user) => {
                        format!("Basic {}", base64(format!("{user}:{secret}").as_bytes()))
                    }
                };
                let cred = Credential {
                    service: service.clone(),
                    host: host.clone(),
                    header,
                    value,
                    secret: secret.to_string(),
                };
                c.by_host.insert(host, cred);
            }
            if !c.services.contains(&service) {
                c.services.push(service);
            }
        }
        c
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The credential for a destination, if any (names only, never IP literals).
    pub fn for_host(&self, host: &Host) -> Option<&Credential> {
        match host {
            Host::Name(n) => self.by_host.get(n),
            Host::Ip(_) => None,
        }
    }

    /// Every credential, by host.
    pub fn iter(&self) -> impl Iterator<Item = &Credential> {
        self.by_host.values()
    }

    /// The sentinel variables for the guest, e.g. `ANTHROPIC_API_KEY=hutch-managed-secret`.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = self
            .services
            .iter()
            .flat_map(|s| s.env_vars())
            .map(|k| (k.to_string(), SENTINEL.to_string()))
            .collect();
        vars.sort();
        vars.dedup();
        vars
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    #[test]
    fn services_parse_and_print() {
        for s in ["anthropic", "openai", "github", "api.example.com:X-Api-Key"] {
            assert_eq!(s.parse::<Service>().unwrap().to_string(), s);
        }
        assert_eq!("GitHub".parse::<Service>().unwrap(), Service::Github);
        let err = |s: &str| s.parse::<Service>().unwrap_err().to_string();
        assert!(err("gitlab").contains("unknown service \"gitlab\""));
        assert!(err("bad..host:X-Key").contains("empty label"));
        assert!(err("api.example.com:X Key").contains("not an HTTP header name"));
        assert!(err("api.example.com:").contains("not an HTTP header name"));
    }

    #[test]
    fn each_service_maps_to_its_hosts_and_header() {
        let c = Credentials::new([
            (Service::Anthropic, "sk-ant"),
            (Service::OpenAi, "sk-oai"),
            (Service::Github, "ghp_x"),
            ("Api.Example.com:X-Key".parse().unwrap(), "k1"),
        ]);
        let get = |h: &str| {
            let c = c.for_host(&host(h)).unwrap();
            (c.header.clone(), c.header_value().to_string())
        };
        assert_eq!(
            get("api.anthropic.com"),
            ("x-api-key".into(), "sk-ant".into())
        );
        assert_eq!(
            get("api.openai.com"),
            ("Authorization".into(), "Bearer sk-oai".into())
        );
        assert_eq!(
            get("api.github.com"),
            ("Authorization".into(), "Bearer ghp_x".into())
        );
        assert_eq!(
            get("github.com"),
            (
                "Authorization".into(),
                format!("Basic {}", base64(b"x-access-token:ghp_x"))
            )
        );
        assert_eq!(get("api.example.com"), ("X-Key".into(), "k1".into()));
        assert!(c.for_host(&host("example.com")).is_none());
        assert!(c.for_host(&host("1.2.3.4")).is_none());
    }

    #[test]
    fn the_guest_sees_only_sentinels() {
        let c = Credentials::new([(Service::Anthropic, "sk-ant"), (Service::Github, "ghp_x")]);
        assert_eq!(
            c.env(),
            [
                ("ANTHROPIC_API_KEY".into(), SENTINEL.into()),
                ("GH_TOKEN".into(), SENTINEL.into()),
                ("GITHUB_TOKEN".into(), SENTINEL.into()),
            ]
        );
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("sk-ant") && !debug.contains("ghp_x"),
            "{debug}"
        );
    }

    #[test]
    fn secrets_must_fit_in_a_header() {
        let s = Service::Anthropic;
        assert_eq!(check_secret(&s, "abc\n").unwrap(), "abc");
        assert_eq!(check_secret(&s, "abc\r\n").unwrap(), "abc");
        assert!(check_secret(&s, "\n")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(check_secret(&s, "a\nb").is_err());
        assert!(check_secret(&s, "a\rb").is_err());
    }

    #[test]
    fn base64_matches_rfc4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (i, o) in cases {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
