//! The SSRF guard: which addresses the proxy refuses to connect to, and the
//! check-then-connect sequence that resolves a name exactly once.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::cidr::Cidr;
use crate::policy::Policy;
use crate::resolve::Resolver;
use crate::rule::{Host, HOST_INTERNAL};

/// Why the proxy refuses (or cannot reach) a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{host}:{port} denied by rule {rule}")]
    DeniedByRule { host: Host, port: u16, rule: String },
    #[error("{host}:{port}: no rule allows it")]
    NoRule { host: Host, port: u16 },
    #[error("{host}:{port}: blocked: {why}")]
    Blocked { host: Host, port: u16, why: Blocked },
    #[error("{host}:{port}: blocked: {addr} is the proxy's own address")]
    SelfAddress {
        host: Host,
        port: u16,
        addr: SocketAddr,
    },
    #[error("{host}:{port}: blocked: address {addr} denied by rule {rule}")]
    DeniedAddress {
        host: Host,
        port: u16,
        addr: IpAddr,
        rule: String,
    },
    #[error("{host}: cannot resolve: {message}")]
    Resolve { host: Host, message: String },
    #[error("{host}: the name has no addresses")]
    NoAddresses { host: Host },
    #[error("{host}:{port}: cannot connect to {addrs}: {message}")]
    Connect {
        host: Host,
        port: u16,
        addrs: String,
        message: String,
    },
}

impl Refusal {
    /// True for policy and SSRF refusals (403); false for failures to
    /// reach an allowed destination (502).
    pub fn is_forbidden(&self) -> bool {
        !matches!(
            self,
            Refusal::Resolve { .. } | Refusal::NoAddresses { .. } | Refusal::Connect { .. }
        )
    }

    /// The rule involved, for the log.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Refusal::DeniedByRule { rule, .. } | Refusal::DeniedAddress { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

/// A special-purpose address, with the range it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub addr: IpAddr,
    /// The special-purpose range that holds `addr` (an explicit allow rule
    /// for a network inside it opens the address).
    pub range: Cidr,
    /// What the range is, e.g. "private address".
    pub what: &'static str,
    /// For IPv6 forms that carry an IPv4 address: that address, and what it is.
    pub embeds: Option<(Ipv4Addr, Option<&'static str>)>,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.what, self.addr)?;
        match self.embeds {
            Some((v4, Some(what))) => write!(f, " (embeds {v4}, a {what})"),
            Some((v4, None)) => write!(f, " (embeds {v4})"),
            None => Ok(()),
        }
    }
}

const V4_RANGES: &[(Cidr, &str)] = &[
    (
        Cidr::v4(0, 0, 0, 0, 8),
        "unspecified (\"this network\") address",
    ),
    (Cidr::v4(10, 0, 0, 0, 8), "private address"),
    (Cidr::v4(100, 64, 0, 0, 10), "shared (CGNAT) address"),
    (Cidr::v4(127, 0, 0, 0, 8), "loopback address"),
    (Cidr::v4(169, 254, 169, 254, 32), "cloud metadata address"),
    (Cidr::v4(169, 254, 0, 0, 16), "link-local address"),
    (Cidr::v4(172, 16, 0, 0, 12), "private address"),
    (
        Cidr::v4(192, 0, 0, 0, 24),
        "IETF protocol assignment address",
    ),
    (Cidr::v4(192, 0, 2, 0, 24), "documentation address"),
    (Cidr::v4(192, 88, 99, 0, 24), "6to4 relay anycast address"),
    (Cidr::v4(192, 168, 0, 0, 16), "private address"),
    (Cidr::v4(198, 18, 0, 0, 15), "benchmarking address"),
    (Cidr::v4(198, 51, 100, 0, 24), "documentation address"),
    (Cidr::v4(203, 0, 113, 0, 24), "documentation address"),
    (Cidr::v4(224, 0, 0, 0, 4), "multicast address"),
    (Cidr::v4(255, 255, 255, 255, 32), "broadcast address"),
    (Cidr::v4(240, 0, 0, 0, 4), "reserved address"),
];

const V6_RANGES: &[(Cidr, &str)] = &[
    (
        Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
        "unspecified address",
    ),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback address"),
    (
        Cidr::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
        "IPv4-mapped address",
    ),
    (
        Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "IPv4-compatible address",
    ),
    (
        Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
        "NAT64 address",
    ),
    (
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use NAT64 address",
    ),
    (
        Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        "discard-only address",
    ),
    (
        Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),
        "Teredo address",
    ),
    (
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation address",
    ),
    (
        Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignment address",
    ),
    (Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), "6to4 address"),
    (
        Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        "documentation address",
    ),
    (
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique-local address",
    ),
    (
        Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "link-local address",
    ),
    (
        Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local address",
    ),
    (
        Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        "multicast address",
    ),
];

fn lookup(ranges: &[(Cidr, &'static str)], ip: IpAddr) -> Option<(Cidr, &'static str)> {
    ranges.iter().find(|(net, _)| net.contains(ip)).copied()
}

/// The IPv4 address carried by an IPv4-mapped, IPv4-compatible, NAT64,
/// 6to4 or Teredo address.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low32 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(low32),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low32),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        // Teredo: the client's address is the last 32 bits, inverted.
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(low32))),
        _ => None,
    }
}

/// Whether the proxy must refuse to connect to `ip`, and why. `None` means
/// an ordinary public unicast address.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(_) => lookup(V4_RANGES, ip).map(|(range, what)| Blocked {
            addr: ip,
            range,
            what,
            embeds: None,
        }),
        IpAddr::V6(v6) => {
            let embedded = embedded_ipv4(v6);
            let (range, what) = lookup(V6_RANGES, ip).or_else(|| {
                // A public IPv6 address that still carries a special IPv4 one.
                let inner = lookup(V4_RANGES, IpAddr::V4(embedded?))?;
                Some((Cidr::host(ip), inner.1))
            })?;
            Some(Blocked {
                addr: ip,
                range,
                what,
                embeds: embedded
                    .filter(|_| !matches!(what, "unspecified address" | "loopback address"))
                    .map(|v4| (v4, lookup(V4_RANGES, IpAddr::V4(v4)).map(|(_, w)| w))),
            })
        }
    }
}

/// A destination that passed the policy and the SSRF guard: connect to
/// exactly these addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub addrs: Vec<SocketAddr>,
    /// The allow rule that let it through.
    pub rule: String,
}

/// The policy plus the address checks, with the resolver they use.
pub struct Guard {
    resolver: Arc<dyn Resolver>,
    own: Vec<SocketAddr>,
    connect_timeout: Duration,
}

impl Guard {
    /// `own`: the proxy's own listening addresses (always refused).
    pub fn new(resolver: Arc<dyn Resolver>, own: Vec<SocketAddr>) -> Guard {
        Guard {
            resolver,
            own,
            connect_timeout: Duration::from_secs(10),
        }
    }

    pub fn with_connect_timeout(mut self, t: Duration) -> Guard {
        self.connect_timeout = t;
        self
    }

    /// Adds a listening address of the proxy (after binding port 0, say).
    pub fn add_own_addr(&mut self, addr: SocketAddr) {
        self.own.push(addr);
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        self.own
            .iter()
            .any(|o| o.port() == addr.port() && (o.ip() == addr.ip() || o.ip().is_unspecified()))
    }

    /// Decides, resolves once, and checks every resolved address.
    pub async fn check(&self, policy: &Policy, host: &Host, port: u16) -> Result<Checked, Refusal> {
        let decision = policy.decide(host, port);
        let rule = match (decision.allowed, decision.rule) {
            (true, Some(rule)) => rule,
            (false, Some(rule)) => {
                return Err(Refusal::DeniedByRule {
                    host: host.clone(),
                    port,
                    rule,
                })
            }
            (_, None) => {
                return Err(Refusal::NoRule {
                    host: host.clone(),
                    port,
                })
            }
        };
        // host.hutch.internal is the host's loopback; only an exact rule
        // matches the name, so reaching here means the user allowed it.
        let internal = matches!(host, Host::Name(n) if n == HOST_INTERNAL);
        let ips = match host {
            _ if internal => vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => {
                self.resolver
                    .resolve(name)
                    .await
                    .map_err(|e| Refusal::Resolve {
                        host: host.clone(),
                        message: e.to_string(),
                    })?
            }
        };
        if ips.is_empty() {
            return Err(Refusal::NoAddresses { host: host.clone() });
        }
        let mut addrs = Vec::with_capacity(ips.len());
        for ip in ips {
            let addr = SocketAddr::new(ip, port);
            if self.is_own(addr) {
                return Err(Refusal::SelfAddress {
                    host: host.clone(),
                    port,
                    addr,
                });
            }
            if !internal {
                if let Some(r) = policy.deny_for_addr(ip, port) {
                    return Err(Refusal::DeniedAddress {
                        host: host.clone(),
                        port,
                        addr: ip,
                        rule: r.to_string(),
                    });
                }
                if let Some(why) = classify(ip) {
                    if policy.exemption(ip, port, &why.range).is_none() {
                        return Err(Refusal::Blocked {
                            host: host.clone(),
                            port,
                            why,
                        });
                    }
                }
            }
            addrs.push(addr);
        }
        Ok(Checked { addrs, rule })
    }

    /// Connects to the checked addresses, in order, and to nothing else.
    pub async fn connect(
        &self,
        host: &Host,
        port: u16,
        checked: &Checked,
    ) -> Result<TcpStream, Refusal> {
        let mut last = String::from("no addresses");
        for addr in &checked.addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("timed out after {:?}", self.connect_timeout),
            }
        }
        Err(Refusal::Connect {
            host: host.clone(),
            port,
            addrs: checked
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            message: last,
        })
    }
}

#[cfg(test)]
mod tests;
