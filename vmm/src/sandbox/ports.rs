//! Published ports: `[[HOST_IP:]HOST_PORT:]GUEST_PORT[/tcp]` specs, and the
//! listeners that forward each accepted connection over vsock to the guest
//! agent, which connects it to the guest port.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use hutch_proto::Msg;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::agent::client;

/// Errors publishing ports, naming the spec or address involved.
#[derive(Debug, Error)]
pub enum PortError {
    #[error("bad port spec {spec:?}: {reason} (expected [[HOST_IP:]HOST_PORT:]GUEST_PORT[/tcp])")]
    BadSpec { spec: String, reason: String },
    #[error("host address {addr} is already in use; pick another host port, or leave it out for a free one")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("no published port matches {0}")]
    NotPublished(String),
}

/// A port as asked for: unset parts match anything (unpublish) or take the
/// defaults (publish: loopback, a free port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub host_ip: Option<IpAddr>,
    pub host_port: Option<u16>,
    pub guest_port: u16,
}

/// A port being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = SocketAddr::new(self.host_ip, self.host_port);
        write!(f, "{addr}->{}/tcp", self.guest_port)
    }
}

impl Published {
    fn matches(&self, s: &PortSpec) -> bool {
        self.guest_port == s.guest_port
            && s.host_port.is_none_or(|p| p == self.host_port)
            && s.host_ip.is_none_or(|ip| ip == self.host_ip)
    }
}

/// Parses `[[HOST_IP:]HOST_PORT:]GUEST_PORT[/tcp]`; an IPv6 host address
/// goes in brackets (`[::1]:8080:80`).
pub fn parse(spec: &str) -> Result<PortSpec, PortError> {
    let bad = |reason: &str| PortError::BadSpec {
        spec: spec.into(),
        reason: reason.into(),
    };
    let body = match spec.rsplit_once('/') {
        Some((b, "tcp")) => b,
        Some((_, proto)) => {
            return Err(bad(&format!("protocol {proto} is not supported, only tcp")))
        }
        None => spec,
    };
    let port = |s: &str, what: &str| -> Result<u16, PortError> {
        s.parse::<u16>()
            .map_err(|_| bad(&format!("{what} {s:?} is not a port number")))
    };
    let (ip_part, rest) = if let Some(r) = body.strip_prefix('[') {
        let (ip, after) = r.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| bad("expected ':' after the host address"))?;
        (Some(ip), after)
    } else {
        let parts: Vec<&str> = body.split(':').collect();
        match parts.len() {
            1 | 2 => (None, body),
            3 => (Some(parts[0]), &body[parts[0].len() + 1..]),
            _ => return Err(bad("too many ':'")),
        }
    };
    let host_ip = ip_part
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| bad(&format!("{ip:?} is not an IP address")))
        })
        .transpose()?;
    let (host_port, guest) = match rest.split_once(':') {
        Some((h, g)) => (Some(port(h, "host port")?), g),
        None if host_ip.is_some() => return Err(bad("a host address needs a host port")),
        None => (None, rest),
    };
    let guest_port = port(guest, "guest port")?;
    if guest_port == 0 {
        return Err(bad("guest port 0"));
    }
    Ok(PortSpec {
        host_ip,
        host_port,
        guest_port,
    })
}

struct Open {
    published: Published,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The listeners of one sandbox.
pub struct Forwarder {
    vsock: PathBuf,
    open: Mutex<Vec<Open>>,
}

impl Forwarder {
    /// Forwards through the sandbox's hybrid vsock socket at `vsock`.
    pub fn new(vsock: PathBuf) -> Forwarder {
        Forwarder {
            vsock,
            open: Mutex::new(Vec::new()),
        }
    }

    /// Binds the host side of `spec` (loopback and a free port unless
    /// given) and starts forwarding.
    pub fn publish(&self, spec: &PortSpec) -> Result<Published, PortError> {
        let ip = spec.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let addr = SocketAddr::new(ip, spec.host_port.unwrap_or(0));
        let listener = TcpListener::bind(addr).map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => PortError::InUse { addr },
            _ => PortError::Bind { addr, source },
        })?;
        let bound = listener
            .local_addr()
            .map_err(|source| PortError::Bind { addr, source })?;
        let published = Published {
            host_ip: ip,
            host_port: bound.port(),
            guest_port: spec.guest_port,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (vsock, st) = (self.vsock.clone(), stop.clone());
        let guest_port = spec.guest_port;
        let thread = thread::Builder::new()
            .name(format!("port-{}", bound.port()))
            .spawn(move || accept_loop(listener, &vsock, guest_port, &st))
            .map_err(|source| PortError::Bind { addr, source })?;
        self.lock().push(Open {
            published,
            stop,
            thread: Some(thread),
        });
        Ok(published)
    }

    /// Stops forwarding every port that matches `spec`; returns them.
    pub fn unpublish(&self, spec: &PortSpec, text: &str) -> Result<Vec<Published>, PortError> {
        let mut open = self.lock();
        let (gone, kept): (Vec<Open>, Vec<Open>) =
            open.drain(..).partition(|o| o.published.matches(spec));
        *open = kept;
        drop(open);
        if gone.is_empty() {
            return Err(PortError::NotPublished(text.into()));
        }
        Ok(gone.into_iter().map(close).collect())
    }

    /// The ports being forwarded, in publish order.
    pub fn list(&self) -> Vec<Published> {
        self.lock().iter().map(|o| o.published).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for o in self.lock().drain(..) {
            close(o);
        }
    }
}

fn close(mut o: Open) -> Published {
    o.stop.store(true, Ordering::SeqCst);
    // Wake the accept call with a connection of our own.
    let mut wake = SocketAddr::new(o.published.host_ip, o.published.host_port);
    if wake.ip().is_unspecified() {
        wake.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let _ = TcpStream::connect(wake);
    if let Some(t) = o.thread.take() {
        let _ = t.join();
    }
    o.published
}

fn accept_loop(listener: TcpListener, vsock: &std::path::Path, guest_port: u16, stop: &AtomicBool) {
    for tcp in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(tcp) = tcp else { continue };
        let vsock = vsock.to_path_buf();
        let _ = thread::Builder::new()
            .name("forward".into())
            .spawn(
                move || match client::request(&vsock, &Msg::Forward(guest_port)) {
                    Ok(guest) => relay(tcp, guest),
                    Err(e) => log::info!("forwarding to guest port {guest_port}: {e}"),
                },
            );
    }
}

/// Copies bytes both ways until both directions end.
pub fn relay(tcp: TcpStream, guest: UnixStream) {
    let (t2, g2) = match (tcp.try_clone(), guest.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return,
    };
    let up = thread::spawn(move || copy(t2, g2, |g: &UnixStream| g.shutdown(Shutdown::Write)));
    copy(guest, tcp, |t: &TcpStream| t.shutdown(Shutdown::Write));
    let _ = up.join();
}

fn copy<R: Read, W: Write>(mut from: R, mut to: W, close: impl Fn(&W) -> io::Result<()>) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = close(&to);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ip: Option<&str>, host: Option<u16>, guest: u16) -> PortSpec {
        PortSpec {
            host_ip: ip.map(|i| i.parse().unwrap()),
            host_port: host,
            guest_port: guest,
        }
    }

    #[test]
    fn specs_parse() {
        assert_eq!(parse("80").unwrap(), p(None, None, 80));
        assert_eq!(parse("80/tcp").unwrap(), p(None, None, 80));
        assert_eq!(parse("8080:80").unwrap(), p(None, Some(8080), 80));
        assert_eq!(parse("0:80").unwrap(), p(None, Some(0), 80));
        assert_eq!(
            parse("0.0.0.0:8080:80").unwrap(),
            p(Some("0.0.0.0"), Some(8080), 80)
        );
        assert_eq!(
            parse("[::1]:9:80/tcp").unwrap(),
            p(Some("::1"), Some(9), 80)
        );
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, why) in [
            ("", "guest port \"\""),
            ("80/udp", "protocol udp"),
            ("x", "not a port number"),
            ("70000", "not a port number"),
            ("1:2:3:4", "too many"),
            ("nope:1:2", "not an IP address"),
            ("[::1:80", "missing ']'"),
            ("[::1]80", "expected ':'"),
            ("0", "guest port 0"),
        ] {
            let e = parse(spec).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn publish_in_use_list_and_unpublish() {
        let dir = tempfile::tempdir().unwrap();
        let f = Forwarder::new(dir.path().join("vsock"));
        let a = f.publish(&parse("80").unwrap()).unwrap();
        assert_eq!(a.host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(a.host_port, 0, "an ephemeral port was picked");
        let spec = parse(&format!("{}:81", a.host_port)).unwrap();
        let e = f.publish(&spec).unwrap_err().to_string();
        assert!(
            e.contains("already in use") && e.contains(&a.host_port.to_string()),
            "{e}"
        );
        let b = f.publish(&parse("81").unwrap()).unwrap();
        assert_eq!(f.list(), [a, b]);
        // With no guest behind the socket, a connection is accepted and closed.
        let mut c = TcpStream::connect(("127.0.0.1", a.host_port)).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
        assert!(f.unpublish(&parse("82").unwrap(), "82").is_err());
        assert_eq!(f.unpublish(&parse("80").unwrap(), "80").unwrap(), [a]);
        assert_eq!(f.list(), [b]);
        assert!(
            TcpStream::connect(("127.0.0.1", a.host_port)).is_err(),
            "closed"
        );
        assert_eq!(b.to_string(), format!("127.0.0.1:{}->81/tcp", b.host_port));
    }
}
