use hutch_proxy::log::Verdict;
use hutch_proxy::{Config, FakeResolver};

use crate::common::*;

#[tokio::test]
async fn allowed_plain_http_get_is_forwarded_in_origin_form() {
    let (upstream, mut heads) = http_server("hello from upstream").await;
    let port = upstream.port();
    // The name resolves to loopback; the explicit 127.0.0.1/32 rule opens it.
    let resolver = FakeResolver::new().answer("app.test", &["127.0.0.1".parse().unwrap()]);
    let config = Config::new("web", policy(&["app.test", "127.0.0.1/32"], &[]));
    let (proxy_addr, proxy) = start_proxy(config, resolver).await;

    let request = format!(
        "GET http://app.test:{port}/path?q=1 HTTP/1.1\r\nHost: app.test:{port}\r\n\
         Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nUser-Agent: t\r\n\r\n"
    );
    let response = exchange(proxy_addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("hello from upstream"), "{response}");

    let head = bounded("upstream head", heads.recv()).await.unwrap();
    assert_eq!(
        head,
        format!("GET /path?q=1 HTTP/1.1\r\nHost: app.test:{port}\r\nUser-Agent: t\r\nConnection: close\r\n\r\n")
    );

    // The entry is recorded when the relay ends, just after the client's EOF.
    bounded("log entry", async {
        while proxy.log().entries().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let log = proxy.log().entries();
    assert_eq!(log.len(), 1);
    let e = &log[0];
    assert_eq!(
        (e.host.as_str(), e.port, e.method.as_str()),
        ("app.test", port, "GET")
    );
    assert_eq!(e.path.as_deref(), Some("/path?q=1"));
    assert_eq!(e.rule.as_deref(), Some("app.test"));
    assert_eq!(e.verdict, Verdict::Allow);
    assert_eq!(e.sandbox, "web");
    assert_eq!(e.bytes_down as usize, response.len());
    assert!(e.bytes_up == 0, "no body was sent: {}", e.bytes_up);
}

#[tokio::test]
async fn decisions_are_appended_to_the_log_file_as_json_lines() {
    let dir = std::env::temp_dir().join(format!("hutch-proxy-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("decisions.jsonl");
    let _ = std::fs::remove_file(&file);
    let mut config = Config::new("sb", policy(&["allowed.test"], &[]));
    config.log_file = Some(file.clone());
    let (proxy_addr, _) = start_proxy(config, FakeResolver::new()).await;
    let response = exchange(proxy_addr, b"GET http://denied.test/x HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    let text = std::fs::read_to_string(&file).unwrap();
    let entry: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(entry["host"], "denied.test");
    assert_eq!(entry["path"], "/x");
    assert_eq!(entry["verdict"], "deny");
    assert_eq!(entry["reason"], "denied.test:80: no rule allows it");
    std::fs::remove_dir_all(&dir).unwrap();
}
