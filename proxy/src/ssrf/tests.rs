use super::*;
use crate::resolve::FakeResolver;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn host(s: &str) -> Host {
    Host::parse(s).unwrap()
}

#[test]
fn classifies_special_addresses() {
    // (address, what it is; None = public)
    let cases = [
        ("127.0.0.1", Some("loopback")),
        ("127.255.0.9", Some("loopback")),
        ("10.0.0.1", Some("private")),
        ("172.16.5.4", Some("private")),
        ("172.32.0.1", None),
        ("192.168.1.1", Some("private")),
        ("169.254.169.254", Some("cloud metadata")),
        ("169.254.1.1", Some("link-local")),
        ("100.64.0.1", Some("CGNAT")),
        ("100.127.255.255", Some("CGNAT")),
        ("100.128.0.1", None),
        ("0.0.0.0", Some("unspecified")),
        ("255.255.255.255", Some("broadcast")),
        ("224.0.0.1", Some("multicast")),
        ("240.0.0.1", Some("reserved")),
        ("192.0.2.10", Some("documentation")),
        ("198.51.100.1", Some("documentation")),
        ("203.0.113.1", Some("documentation")),
        ("198.18.0.1", Some("benchmarking")),
        ("1.1.1.1", None),
        ("93.184.216.34", None),
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        ("fc00::1", Some("unique-local")),
        ("fd12:3456::1", Some("unique-local")),
        ("fe80::1", Some("link-local")),
        ("ff02::1", Some("multicast")),
        ("::ffff:127.0.0.1", Some("IPv4-mapped")),
        ("::ffff:1.1.1.1", Some("IPv4-mapped")),
        ("::127.0.0.1", Some("IPv4-compatible")),
        ("64:ff9b::a9fe:a9fe", Some("NAT64")),
        ("2002:7f00:1::1", Some("6to4")),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", Some("Teredo")),
        ("2001:db8::1", Some("documentation")),
        ("2606:4700:4700::1111", None),
        ("2a00:1450:4001::200e", None),
    ];
    for (addr, want) in cases {
        let got = classify(ip(addr));
        match (want, &got) {
            (None, None) => {}
            (Some(w), Some(b)) => assert!(b.what.contains(w), "{addr}: {b} should say {w}"),
            _ => panic!("{addr}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn ipv6_forms_name_the_embedded_ipv4() {
    let cases = [
        ("::ffff:10.0.0.1", "10.0.0.1", "private address"),
        (
            "::ffff:a9fe:a9fe",
            "169.254.169.254",
            "cloud metadata address",
        ),
        ("64:ff9b::7f00:1", "127.0.0.1", "loopback address"),
        (
            "2002:a9fe:a9fe::",
            "169.254.169.254",
            "cloud metadata address",
        ),
        // Teredo client 127.0.0.1, stored inverted: !0x7f000001 = 0x80fffffe.
        (
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "127.0.0.1",
            "loopback address",
        ),
    ];
    for (addr, v4, what) in cases {
        let b = classify(ip(addr)).unwrap();
        assert_eq!(b.embeds, Some((v4.parse().unwrap(), Some(what))), "{addr}");
        assert!(
            b.to_string().contains(&format!("(embeds {v4}, a {what})")),
            "{b}"
        );
    }
}

fn guard(resolver: FakeResolver) -> (Guard, Arc<FakeResolver>) {
    let r = Arc::new(resolver);
    (
        Guard::new(r.clone(), vec!["127.0.0.1:3128".parse().unwrap()]),
        r,
    )
}

fn policy(allow: &[&str]) -> Policy {
    Policy::from_rules(allow, &[]).unwrap()
}

#[tokio::test]
async fn a_name_resolving_to_loopback_or_private_is_refused() {
    let (g, _) = guard(
        FakeResolver::new()
            .answer("local.example", &[ip("127.0.0.1")])
            .answer("ten.example", &[ip("10.0.0.1")])
            .answer("meta.example", &[ip("169.254.169.254")])
            .answer("mapped.example", &[ip("::ffff:127.0.0.1")])
            .answer("nat64.example", &[ip("64:ff9b::a00:1")])
            .answer("sixtofour.example", &[ip("2002:a00:1::1")])
            .answer(
                "teredo.example",
                &[ip("2001:0:4136:e378:8000:63bf:80ff:fffe")],
            )
            .answer("ula.example", &[ip("fd00::1")])
            .answer("mixed.example", &[ip("93.184.216.34"), ip("10.0.0.1")]),
    );
    let p = policy(&["**"]);
    let cases = [
        ("local.example", "blocked: loopback address 127.0.0.1"),
        ("ten.example", "blocked: private address 10.0.0.1"),
        (
            "meta.example",
            "blocked: cloud metadata address 169.254.169.254",
        ),
        (
            "mapped.example",
            "blocked: IPv4-mapped address ::ffff:127.0.0.1 (embeds 127.0.0.1, a loopback address)",
        ),
        (
            "nat64.example",
            "blocked: NAT64 address 64:ff9b::a00:1 (embeds 10.0.0.1, a private address)",
        ),
        (
            "sixtofour.example",
            "blocked: 6to4 address 2002:a00:1::1 (embeds 10.0.0.1, a private address)",
        ),
        ("teredo.example", "(embeds 127.0.0.1, a loopback address)"),
        ("ula.example", "blocked: unique-local address fd00::1"),
        ("mixed.example", "blocked: private address 10.0.0.1"),
    ];
    for (name, want) in cases {
        let err = g.check(&p, &host(name), 443).await.unwrap_err();
        assert!(err.is_forbidden());
        assert!(err.to_string().contains(want), "{name}: {err}");
    }
}

#[tokio::test]
async fn ip_literals_pass_only_with_a_network_rule() {
    let (g, r) = guard(FakeResolver::new());
    let none = g
        .check(&policy(&["**"]), &host("1.1.1.1"), 443)
        .await
        .unwrap_err();
    assert_eq!(none.to_string(), "1.1.1.1:443: no rule allows it");
    let ok = g
        .check(&policy(&["1.1.1.0/24:443"]), &host("1.1.1.1"), 443)
        .await
        .unwrap();
    assert_eq!(ok.addrs, vec!["1.1.1.1:443".parse::<SocketAddr>().unwrap()]);
    assert_eq!(ok.rule, "1.1.1.0/24:443");
    let wrong_port = g
        .check(&policy(&["1.1.1.0/24:443"]), &host("1.1.1.1"), 80)
        .await;
    assert!(wrong_port.is_err());
    assert_eq!(r.calls(), 0, "IP literals are never resolved");
}

#[tokio::test]
async fn metadata_and_private_literals_need_an_explicit_rule_inside_the_range() {
    let (g, _) = guard(FakeResolver::new());
    let wide = policy(&["0.0.0.0/0", "::/0"]);
    for addr in [
        "169.254.169.254",
        "10.0.0.1",
        "127.0.0.1",
        "::1",
        "::ffff:10.0.0.1",
    ] {
        let err = g.check(&wide, &host(addr), 80).await.unwrap_err();
        assert!(err.to_string().contains("blocked:"), "{addr}: {err}");
    }
    let narrow = policy(&["127.0.0.1/32", "10.1.0.0/16:5432"]);
    assert!(g.check(&narrow, &host("127.0.0.1"), 8080).await.is_ok());
    assert!(g.check(&narrow, &host("10.1.2.3"), 5432).await.is_ok());
    assert!(g.check(&narrow, &host("10.1.2.3"), 22).await.is_err());
}

#[tokio::test]
async fn the_proxys_own_address_is_always_refused() {
    let (g, _) = guard(FakeResolver::new().answer("self.example", &[ip("127.0.0.1")]));
    let p = policy(&["127.0.0.1/32", "host.hutch.internal:3128", "self.example"]);
    for h in ["127.0.0.1", "host.hutch.internal", "self.example"] {
        let err = g.check(&p, &host(h), 3128).await.unwrap_err();
        assert!(
            err.to_string()
                .ends_with("blocked: 127.0.0.1:3128 is the proxy's own address"),
            "{h}: {err}"
        );
    }
    let mut g = g;
    g.add_own_addr("0.0.0.0:9000".parse().unwrap());
    assert!(matches!(
        g.check(&p, &host("127.0.0.1"), 9000).await,
        Err(Refusal::SelfAddress { .. })
    ));
}

#[tokio::test]
async fn host_internal_maps_to_loopback_only_under_an_exact_rule() {
    let (g, _) = guard(FakeResolver::new());
    let h = host("host.hutch.internal");
    for rules in [
        &["**"][..],
        &["**.internal", "0.0.0.0/0"][..],
        &["host.hutch.internal:81"][..],
    ] {
        let err = g.check(&policy(rules), &h, 8080).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "host.hutch.internal:8080: no rule allows it",
            "{rules:?}"
        );
    }
    let ok = g
        .check(&policy(&["host.hutch.internal:8080"]), &h, 8080)
        .await
        .unwrap();
    assert_eq!(
        ok.addrs,
        vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
    );
}

#[tokio::test]
async fn dns_rebinding_resolves_once_and_keeps_the_checked_address() {
    let (g, r) = guard(
        FakeResolver::new()
            .answer("rebind.example", &[ip("93.184.216.34")])
            .answer("rebind.example", &[ip("127.0.0.1")]),
    );
    let p = policy(&["rebind.example"]);
    let first = g.check(&p, &host("rebind.example"), 443).await.unwrap();
    assert_eq!(
        first.addrs,
        vec!["93.184.216.34:443".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(r.calls(), 1, "one lookup per check");
    // The name now points at loopback: a new check refuses it, and the
    // earlier result still holds only the address that was checked.
    let second = g.check(&p, &host("rebind.example"), 443).await.unwrap_err();
    assert!(
        second.to_string().contains("loopback address 127.0.0.1"),
        "{second}"
    );
    assert_eq!(r.calls(), 2);
}

#[tokio::test]
async fn deny_networks_apply_to_resolved_addresses() {
    let (g, _) = guard(FakeResolver::new().answer("cdn.example", &[ip("93.184.216.34")]));
    let p = Policy::from_rules(&["**"], &["93.184.0.0/16"]).unwrap();
    let err = g.check(&p, &host("cdn.example"), 443).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cdn.example:443: blocked: address 93.184.216.34 denied by rule 93.184.0.0/16"
    );
}

#[tokio::test]
async fn resolver_failures_are_not_policy_refusals() {
    let (g, _) = guard(FakeResolver::new().answer("empty.example", &[]));
    let p = policy(&["**"]);
    let unknown = g
        .check(&p, &host("unknown.example"), 443)
        .await
        .unwrap_err();
    assert!(!unknown.is_forbidden());
    assert!(
        unknown
            .to_string()
            .starts_with("unknown.example: cannot resolve"),
        "{unknown}"
    );
    let empty = g.check(&p, &host("empty.example"), 443).await.unwrap_err();
    assert_eq!(
        empty,
        Refusal::NoAddresses {
            host: host("empty.example")
        }
    );
}
