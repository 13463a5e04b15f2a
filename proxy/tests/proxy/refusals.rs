use hutch_proxy::log::Verdict;
use hutch_proxy::{Config, FakeResolver, Policy, Preset};

use crate::common::*;

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn denied_host_gets_403_naming_the_rule() {
    let config = Config::new("sb", policy(&["**.example.com"], &["evil.example.com:443"]));
    let (proxy_addr, proxy) = start_proxy(config, FakeResolver::new()).await;
    let err = connect(proxy_addr, "evil.example.com:443")
        .await
        .unwrap_err();
    assert!(err.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{err}");
    assert_eq!(
        body(&err),
        "hutch: evil.example.com:443 denied by rule evil.example.com:443\n"
    );

    let err = connect(proxy_addr, "other.test:443").await.unwrap_err();
    assert_eq!(body(&err), "hutch: other.test:443: no rule allows it\n");

    let response = exchange(proxy_addr, b"GET http://other.test/secret HTTP/1.1\r\n\r\n").await;
    assert!(
        response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{response}"
    );
    assert_eq!(body(&response), "hutch: other.test:80: no rule allows it\n");

    let log = proxy.log().entries();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|e| e.verdict == Verdict::Deny));
    assert_eq!(log[0].rule.as_deref(), Some("evil.example.com:443"));
    assert_eq!(log[2].path.as_deref(), Some("/secret"));
}

#[tokio::test]
async fn balanced_policy_refuses_what_the_seed_list_lacks() {
    let config = Config::new("sb", Policy::from_preset(Preset::Balanced).unwrap());
    let (proxy_addr, _) = start_proxy(config, FakeResolver::new()).await;
    let err = connect(proxy_addr, "learn.microsoft.com:443")
        .await
        .unwrap_err();
    assert_eq!(
        body(&err),
        "hutch: learn.microsoft.com:443: no rule allows it\n"
    );
}

#[tokio::test]
async fn metadata_and_loopback_without_a_rule_are_refused() {
    // Even the open preset (every name, 0.0.0.0/0, ::/0) does not open them.
    let config = Config::new("sb", Policy::from_preset(Preset::Open).unwrap());
    let resolver = FakeResolver::new().answer("internal.test", &["10.0.0.1".parse().unwrap()]);
    let (proxy_addr, _) = start_proxy(config, resolver).await;
    let echo = echo_server().await;
    let cases = [
        (
            "169.254.169.254:80".to_string(),
            "blocked: cloud metadata address 169.254.169.254",
        ),
        (echo.to_string(), "blocked: loopback address 127.0.0.1"),
        (
            format!("[::1]:{}", echo.port()),
            "blocked: loopback address ::1",
        ),
        (
            "[::ffff:127.0.0.1]:80".to_string(),
            "blocked: IPv4-mapped address ::ffff:127.0.0.1",
        ),
        (
            "internal.test:443".to_string(),
            "blocked: private address 10.0.0.1",
        ),
    ];
    for (target, want) in cases {
        let err = connect(proxy_addr, &target).await.unwrap_err();
        assert!(err.starts_with("HTTP/1.1 403 Forbidden"), "{target}: {err}");
        assert!(body(&err).contains(want), "{target}: {err}");
    }
    let response = exchange(
        proxy_addr,
        b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(
        body(&response).contains("blocked: cloud metadata address"),
        "{response}"
    );
}

#[tokio::test]
async fn ip_literal_without_a_cidr_rule_is_refused() {
    let config = Config::new("sb", policy(&["**"], &[]));
    let (proxy_addr, _) = start_proxy(config, FakeResolver::new()).await;
    let err = connect(proxy_addr, "1.1.1.1:443").await.unwrap_err();
    assert_eq!(body(&err), "hutch: 1.1.1.1:443: no rule allows it\n");
    let response = exchange(proxy_addr, b"GET http://1.1.1.1/ HTTP/1.1\r\n\r\n").await;
    assert_eq!(body(&response), "hutch: 1.1.1.1:80: no rule allows it\n");
}

#[tokio::test]
async fn the_proxys_own_port_is_refused() {
    let config = Config::new("sb", policy(&["127.0.0.1/32"], &[]));
    let (proxy_addr, _) = start_proxy(config, FakeResolver::new()).await;
    let err = connect(proxy_addr, &proxy_addr.to_string())
        .await
        .unwrap_err();
    assert_eq!(
        body(&err),
        format!("hutch: {proxy_addr}: blocked: {proxy_addr} is the proxy's own address\n")
    );
    // An exact rule for host.hutch.internal on every port still never reaches the proxy.
    let config = Config::new("sb", policy(&["host.hutch.internal"], &[]));
    let (proxy_addr2, _) = start_proxy(config, FakeResolver::new()).await;
    let err = connect(
        proxy_addr2,
        &format!("host.hutch.internal:{}", proxy_addr2.port()),
    )
    .await;
    assert!(err.unwrap_err().contains("is the proxy's own address"));
}

#[tokio::test]
async fn unreachable_allowed_destination_is_502() {
    // Bind and drop a listener so nothing is listening on its port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = Config::new("sb", policy(&["127.0.0.1/32"], &[]));
    let (proxy_addr, proxy) = start_proxy(config, FakeResolver::new()).await;
    let err = connect(proxy_addr, &format!("127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(err.starts_with("HTTP/1.1 502 Bad Gateway"), "{err}");
    assert!(body(&err).contains("cannot connect to 127.0.0.1"), "{err}");
    assert_eq!(proxy.log().entries()[0].verdict, Verdict::Error);
}
