use hutch_proxy::log::Verdict;
use hutch_proxy::{Config, FakeResolver};

use crate::common::*;

#[tokio::test]
async fn connect_tunnel_to_a_cidr_allowed_echo_server() {
    let echo = echo_server().await;
    let config = Config::new("sb", policy(&["127.0.0.1/32"], &[]));
    let (proxy_addr, proxy) = start_proxy(config, FakeResolver::new()).await;
    let mut s = connect(proxy_addr, &echo.to_string()).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    assert_eq!(echo_through(&mut s, &data).await, data);
    drop(s);
    // The log entry is written when the tunnel closes.
    bounded("log entry", async {
        while proxy.log().entries().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let e = &proxy.log().entries()[0];
    assert_eq!((e.method.as_str(), e.verdict), ("CONNECT", Verdict::Allow));
    assert_eq!(e.rule.as_deref(), Some("127.0.0.1/32"));
    assert_eq!((e.bytes_up, e.bytes_down), (200_000, 200_000));
}

#[tokio::test]
async fn connect_tunnel_through_host_internal_mapping() {
    let echo = echo_server().await;
    let port = echo.port();
    let rule = format!("host.hutch.internal:{port}");
    let config = Config::new("sb", policy(&[&rule], &[]));
    let (proxy_addr, _) = start_proxy(config, FakeResolver::new()).await;
    let mut s = connect(proxy_addr, &format!("host.hutch.internal:{port}"))
        .await
        .unwrap();
    assert_eq!(echo_through(&mut s, b"ping").await, b"ping");
    // Another port on the host is not covered by the rule.
    let err = connect(
        proxy_addr,
        &format!("host.hutch.internal:{}", port.wrapping_add(1).max(1)),
    )
    .await
    .unwrap_err();
    assert!(err.starts_with("HTTP/1.1 403 Forbidden"), "{err}");
}

#[tokio::test]
async fn rebinding_name_is_connected_at_the_checked_address() {
    let echo = echo_server().await;
    // First answer: loopback (opened by the rule); later answers: metadata.
    let resolver = FakeResolver::new()
        .answer("rebind.test", &["127.0.0.1".parse().unwrap()])
        .answer("rebind.test", &["169.254.169.254".parse().unwrap()]);
    let config = Config::new("sb", policy(&["rebind.test", "127.0.0.1/32"], &[]));
    let (proxy_addr, _) = start_proxy(config, resolver).await;
    let mut s = connect(proxy_addr, &format!("rebind.test:{}", echo.port()))
        .await
        .unwrap();
    assert_eq!(echo_through(&mut s, b"checked").await, b"checked");
    let err = connect(proxy_addr, &format!("rebind.test:{}", echo.port()))
        .await
        .unwrap_err();
    assert!(
        err.contains("blocked: cloud metadata address 169.254.169.254"),
        "{err}"
    );
}
