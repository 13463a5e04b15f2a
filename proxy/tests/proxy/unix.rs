use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use hutch_proxy::{spawn_unix_with, Config, FakeResolver};

use crate::common::policy;

/// A blocking TCP echo server on 127.0.0.1:0 (one thread per connection).
fn echo_thread() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    addr
}

fn read_head(s: &mut UnixStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn serves_a_unix_socket_from_a_blocking_caller_and_stops_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock_3128");
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let echo = echo_thread();
    let config = Config::new("vm", policy(&["127.0.0.1/32"], &[]));
    let handle = spawn_unix_with(&path, config, Arc::new(FakeResolver::new())).unwrap();

    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "CONNECT {echo} HTTP/1.1\r\n\r\n").unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 200 "));
    let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    let mut w = s.try_clone().unwrap();
    let send = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&send).unwrap());
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data);

    let mut refused = UnixStream::connect(&path).unwrap();
    refused
        .write_all(b"CONNECT 10.1.2.3:443 HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    refused.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 403 Forbidden"), "{text}");
    assert!(
        text.contains("hutch: 10.1.2.3:443: no rule allows it"),
        "{text}"
    );
    assert_eq!(
        handle.proxy().log().entries().last().unwrap().host,
        "10.1.2.3"
    );

    drop(s);
    drop(handle);
    assert!(!path.exists(), "socket removed on drop");
    assert!(UnixStream::connect(&path).is_err());
}
