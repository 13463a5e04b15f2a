//! Byte relays: a published port (host to a guest TCP port) and the egress
//! proxy (guest `127.0.0.1:3128` to the host's proxy).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use hutch_proto::agent::PROXY_PORT;
use hutch_proto::{write_msg, Msg};

use crate::{console, vsock};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects `conn` to `port` on the guest's loopback: answers OK and relays,
/// or answers with why not.
pub fn to_guest_port(mut conn: UnixStream, port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(tcp) => {
            if write_msg(&mut conn, &Msg::Ok).is_ok() {
                relay(conn, tcp);
            }
        }
        Err(e) => super::refuse(conn, &format!("guest port {port}: {e}")),
    }
}

/// Listens on `127.0.0.1:3128` and relays each connection to the host's
/// proxy port over vsock. Runs forever.
pub fn serve_proxy() {
    let listener = match TcpListener::bind(("127.0.0.1", PROXY_PORT as u16)) {
        Ok(l) => l,
        Err(e) => {
            console::say(&format!(
                "proxy relay: listen on 127.0.0.1:{PROXY_PORT}: {e}"
            ));
            return;
        }
    };
    for tcp in listener.incoming().flatten() {
        let _ = thread::Builder::new().name("proxy".into()).spawn(move || {
            match vsock::connect(vsock::HOST_CID, PROXY_PORT) {
                Ok(v) => relay(v, tcp),
                // No proxy on the host side: the client sees a reset.
                Err(_) => drop(tcp),
            }
        });
    }
}

/// Copies bytes both ways until both directions reach end of file.
pub fn relay(v: UnixStream, tcp: TcpStream) {
    let (v2, t2) = match (v.try_clone(), tcp.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return,
    };
    let up = thread::spawn(move || {
        copy(v2, t2, |s: &TcpStream| s.shutdown(Shutdown::Write));
    });
    copy(tcp, v, |s: &UnixStream| s.shutdown(Shutdown::Write));
    let _ = up.join();
}

fn copy<R: Read, W: Write>(mut from: R, mut to: W, close: impl Fn(&W) -> io::Result<()>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = close(&to);
}
