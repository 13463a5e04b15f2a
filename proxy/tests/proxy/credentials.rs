use std::time::Duration;

use hutch_proxy::log::Verdict;
use hutch_proxy::{Config, Credentials, FakeResolver, Service};
use tokio::io::AsyncWriteExt;

use crate::common::*;
use crate::tls_support::*;

const SECRET: &str = "sk-ant-test-0123456789";

fn config(dir: &std::path::Path, ca: &TestCa, allow: &[&str]) -> Config {
    let mut c = Config::new("web", policy(allow, &[]));
    c.credentials = Credentials::new([
        (Service::Anthropic, SECRET),
        (Service::OpenAi, "sk-openai-42"),
    ]);
    c.ca_dir = Some(dir.join("ca"));
    c.native_roots = false;
    c.upstream_roots = vec![ca.pem_file.clone()];
    c
}

fn loopback(names: &[&str]) -> FakeResolver {
    names.iter().fold(FakeResolver::new(), |r, n| {
        r.answer(n, &["127.0.0.1".parse().unwrap()])
    })
}

async fn wait_for_log(proxy: &hutch_proxy::Proxy, n: usize) -> Vec<hutch_proxy::log::Entry> {
    bounded("log entries", async {
        while proxy.log().entries().len() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    proxy.log().entries()
}

#[tokio::test]
async fn https_upstream_gets_the_header_and_the_sandbox_never_sees_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (upstream, mut seen) = https_echo(ca.server("api.anthropic.com")).await;
    let cfg = config(dir.path(), &ca, &["api.anthropic.com", "127.0.0.1/32"]);
    let (proxy_addr, proxy) = start_proxy(cfg, loopback(&["api.anthropic.com"])).await;

    let target = format!("api.anthropic.com:{}", upstream.port());
    let tcp = connect_raw(proxy_addr, &target).await.unwrap();
    // The sandbox trusts only the proxy's CA for this host.
    let mut tls = tls_through(tcp, "api.anthropic.com", &dir.path().join("ca/ca.pem")).await;
    let requests = [
        format!(
            "GET /v1/models HTTP/1.1\r\nHost: api.anthropic.com\r\nx-api-key: {s}\r\nX-API-KEY: {s}\r\n\r\n",
            s = hutch_proxy::SENTINEL
        ),
        "POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string(),
    ];
    let mut buf = Vec::new();
    for (req, (want, want_body)) in requests.iter().zip([
        ("GET /v1/models", &b""[..]),
        ("POST /v1/messages", b"5\r\nhello\r\n0\r\n\r\n"),
    ]) {
        tls.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = bounded("upstream request", seen.recv()).await.unwrap();
        assert!(head.starts_with(want), "{head}");
        assert_eq!(
            head.to_ascii_lowercase().matches("x-api-key").count(),
            1,
            "{head}"
        );
        assert!(head.contains(&format!("x-api-key: {SECRET}\r\n")), "{head}");
        assert!(!head.contains(hutch_proxy::SENTINEL), "{head}");
        assert_eq!(body, want_body);
        // The upstream echoes each request head back: the secret is masked.
        let (status, body) = bounded("response", read_message(&mut tls, &mut buf))
            .await
            .unwrap();
        assert!(status.starts_with("HTTP/1.1 200 OK"), "{status}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with(want), "{body}");
        assert!(
            !body.contains(SECRET),
            "secret echoed to the sandbox: {body}"
        );
        assert!(
            body.contains(&format!("x-api-key: {}\r\n", "*".repeat(SECRET.len()))),
            "{body}"
        );
    }
    drop(tls);

    let log = wait_for_log(&proxy, 2).await;
    let got: Vec<_> = log
        .iter()
        .map(|e| {
            (
                e.method.as_str(),
                e.path.as_deref(),
                e.credential.as_deref(),
                e.verdict,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("GET", Some("/v1/models"), Some("anthropic"), Verdict::Allow),
            (
                "POST",
                Some("/v1/messages"),
                Some("anthropic"),
                Verdict::Allow
            )
        ]
    );
    assert!(log
        .iter()
        .all(|e| e.bytes_up > 0 && e.bytes_down > 0 && e.port == upstream.port()));
    assert_eq!(log[0].rule.as_deref(), Some("api.anthropic.com"));
    let json = serde_json::to_string(&log).unwrap();
    assert!(!json.contains(SECRET));
}

#[tokio::test]
async fn plain_http_to_a_credential_host_gets_the_header_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (upstream, mut heads) = http_server("ok").await;
    let cfg = config(dir.path(), &ca, &["api.openai.com", "127.0.0.1/32"]);
    let (proxy_addr, _) = start_proxy(cfg, loopback(&["api.openai.com"])).await;
    let req = format!(
        "GET http://api.openai.com:{}/v1/models HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
        upstream.port(),
        hutch_proxy::SENTINEL
    );
    let response = exchange(proxy_addr, req.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let head = bounded("upstream head", heads.recv()).await.unwrap();
    assert!(
        head.ends_with("Authorization: Bearer sk-openai-42\r\n\r\n"),
        "{head}"
    );
    assert_eq!(head.matches("Authorization").count(), 1, "{head}");
}

#[tokio::test]
async fn bad_upstream_certificates_are_refused_with_502() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (self_signed, _) = https_echo(self_signed_server("api.anthropic.com")).await;
    let (wrong_name, _) = https_echo(ca.server("wrong.test")).await;
    let cfg = config(dir.path(), &ca, &["api.anthropic.com", "127.0.0.1/32"]);
    let (proxy_addr, proxy) = start_proxy(cfg, loopback(&["api.anthropic.com"])).await;
    let cases = [
        (
            self_signed.port(),
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            wrong_name.port(),
            "invalid peer certificate: certificate not valid for name",
        ),
    ];
    for (port, why) in cases {
        let err = connect_raw(proxy_addr, &format!("api.anthropic.com:{port}"))
            .await
            .unwrap_err();
        assert!(err.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{err}");
        let want = format!("hutch: api.anthropic.com:{port}: upstream TLS failed: {why}");
        assert!(err.contains(&want), "want {want:?} in {err}");
        assert!(!err.contains(SECRET));
    }
    let log = proxy.log().entries();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|e| e.verdict == Verdict::Error));
    assert!(log[0].reason.as_deref().unwrap().contains("UnknownIssuer"));
}

#[tokio::test]
async fn hosts_without_a_credential_are_tunnelled_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (upstream, mut seen) = https_echo(ca.server("other.test")).await;
    let cfg = config(dir.path(), &ca, &["other.test", "127.0.0.1/32"]);
    let (proxy_addr, proxy) = start_proxy(cfg, loopback(&["other.test"])).await;
    let tcp = connect_raw(proxy_addr, &format!("other.test:{}", upstream.port()))
        .await
        .unwrap();
    // End-to-end TLS: the client verifies the upstream's own certificate.
    let mut tls = tls_through(tcp, "other.test", &ca.pem_file).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: other.test\r\nx-api-key: mine\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = bounded("upstream request", seen.recv()).await.unwrap();
    assert!(head.contains("x-api-key: mine\r\n"), "{head}");
    let mut buf = Vec::new();
    let (status, _) = bounded("response", read_message(&mut tls, &mut buf))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    drop(tls);
    let log = wait_for_log(&proxy, 1).await;
    assert_eq!(
        (log[0].method.as_str(), log[0].credential.as_deref()),
        ("CONNECT", None)
    );
}

#[tokio::test]
async fn garbage_inside_a_terminated_connection_is_cut_off_and_the_proxy_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (upstream, mut seen) = https_echo(ca.server("api.anthropic.com")).await;
    let mut cfg = config(dir.path(), &ca, &["api.anthropic.com", "127.0.0.1/32"]);
    cfg.max_header_bytes = 4096;
    let (proxy_addr, proxy) = start_proxy(cfg, loopback(&["api.anthropic.com"])).await;
    let target = format!("api.anthropic.com:{}", upstream.port());
    let ca_pem = dir.path().join("ca/ca.pem");

    // Not TLS at all after the 200: the handshake fails and is logged.
    let mut raw = connect_raw(proxy_addr, &target).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = bounded(
        "closed",
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut sink),
    )
    .await;
    let log = wait_for_log(&proxy, 1).await;
    assert_eq!(log[0].verdict, Verdict::Error);
    assert!(
        log[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("TLS with the sandbox failed"),
        "{:?}",
        log[0]
    );

    // A malformed request and an oversized head inside TLS: the connection
    // is closed, nothing reaches the upstream.
    for bad in [
        b"NOT HTTP\r\n\r\n".to_vec(),
        format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(8192)).into_bytes(),
    ] {
        let tcp = connect_raw(proxy_addr, &target).await.unwrap();
        let mut tls = tls_through(tcp, "api.anthropic.com", &ca_pem).await;
        tls.write_all(&bad).await.unwrap();
        let mut out = Vec::new();
        let _ = bounded(
            "closed",
            tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut out),
        )
        .await;
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }
    assert!(seen.try_recv().is_err(), "nothing was forwarded");

    // Still serving, with the credential added.
    let tcp = connect_raw(proxy_addr, &target).await.unwrap();
    let mut tls = tls_through(tcp, "api.anthropic.com", &ca_pem).await;
    tls.write_all(b"GET /ok HTTP/1.1\r\nHost: api.anthropic.com\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = bounded("upstream request", seen.recv()).await.unwrap();
    assert!(head.contains(&format!("x-api-key: {SECRET}\r\n")), "{head}");
}
