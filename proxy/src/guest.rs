//! What a sandbox's environment needs so its tools use the proxy and trust
//! the sandbox CA, plus the sentinel variables for its credentials.

use crate::credential::Credentials;

/// The guest port the in-guest agent listens on (and the host vsock port
/// its connections go to).
pub const PROXY_PORT: u16 = 3128;

/// Variables naming the proxy (curl, git, pip, cargo, npm read these).
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "npm_config_proxy",
    "npm_config_https_proxy",
];

/// Variables naming a CA bundle (OpenSSL, Node, Python requests, curl,
/// cargo, git, pip).
const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "CARGO_HTTP_CAINFO",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
];

/// The guest's environment: proxy variables for `http://127.0.0.1:PORT`,
/// `NO_PROXY` for the guest's own loopback, CA-bundle variables when
/// `ca_bundle` (a path inside the guest) is given, and one sentinel per
/// credential variable, e.g. `ANTHROPIC_API_KEY=hutch-managed-secret`.
pub fn env(port: u16, ca_bundle: Option<&str>, credentials: &Credentials) -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{port}");
    let mut vars: Vec<(String, String)> = PROXY_VARS
        .iter()
        .map(|k| (k.to_string(), url.clone()))
        .collect();
    for k in ["NO_PROXY", "no_proxy"] {
        vars.push((k.into(), "localhost,127.0.0.1,::1".into()));
    }
    if let Some(bundle) = ca_bundle {
        vars.extend(CA_VARS.iter().map(|k| (k.to_string(), bundle.to_string())));
    }
    vars.extend(credentials.env());
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{Service, SENTINEL};

    #[test]
    fn proxy_ca_and_sentinels() {
        let creds = Credentials::new([(Service::Anthropic, "sk-real")]);
        let vars = env(PROXY_PORT, Some("/run/hutch/ca.pem"), &creds);
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HTTPS_PROXY"), Some("http://127.0.0.1:3128"));
        assert_eq!(get("no_proxy"), Some("localhost,127.0.0.1,::1"));
        assert_eq!(get("SSL_CERT_FILE"), Some("/run/hutch/ca.pem"));
        assert_eq!(get("GIT_SSL_CAINFO"), Some("/run/hutch/ca.pem"));
        assert_eq!(get("ANTHROPIC_API_KEY"), Some(SENTINEL));
        assert!(vars.iter().all(|(_, v)| !v.contains("sk-real")));
        assert!(env(PROXY_PORT, None, &Credentials::default())
            .iter()
            .all(|(k, _)| k != "SSL_CERT_FILE"));
    }
}
