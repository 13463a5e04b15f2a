//! IPv4 and IPv6 networks (`10.0.0.0/8`, `2001:db8::/32`).

use std::fmt;
use std::net::IpAddr;

/// An IP network: an address whose host bits are zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// A network; fails (with the reason) when `len` is too long for the
    /// address family or the address has bits set below the prefix.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, String> {
        let max = max_len(addr);
        if len > max {
            return Err(format!("prefix length /{len} is longer than {max}"));
        }
        let net = Cidr { addr, len };
        if bits(addr) & !net.mask() != 0 {
            return Err(format!(
                "{addr}/{len} has host bits set (did you mean {}/{len}?)",
                net.network()
            ));
        }
        Ok(net)
    }

    /// The network holding exactly one address.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            len: max_len(addr),
        }
    }

    /// Const-friendly constructor for the built-in tables (host bits must be clear).
    pub(crate) const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)),
            len,
        }
    }

    /// Const-friendly constructor for the built-in tables (host bits must be clear).
    pub(crate) const fn v6(segments: [u16; 8], len: u8) -> Cidr {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            addr: IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            len,
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is inside this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(self.addr, ip) && bits(ip) & self.mask() == bits(self.addr)
    }

    /// Whether all of `other` is inside this network.
    pub fn contains_net(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    fn mask(&self) -> u128 {
        let max = max_len(self.addr);
        let host_bits = u32::from(max - self.len);
        let all: u128 = if max == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        all.checked_shl(host_bits).map_or(0, |m| m & all)
    }

    fn network(&self) -> IpAddr {
        let masked = bits(self.addr) & self.mask();
        match self.addr {
            // The masked value of an IPv4 address fits in 32 bits.
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(masked as u32)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(masked)),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn containment() {
        let cases = [
            ("10.0.0.0", 8, "10.255.1.2", true),
            ("10.0.0.0", 8, "11.0.0.0", false),
            ("0.0.0.0", 0, "203.0.113.9", true),
            ("0.0.0.0", 0, "::1", false),
            ("127.0.0.1", 32, "127.0.0.1", true),
            ("127.0.0.1", 32, "127.0.0.2", false),
            ("2001:db8::", 32, "2001:db8:ffff::1", true),
            ("2001:db8::", 32, "2001:db9::1", false),
            ("::", 0, "10.0.0.1", false),
            ("fc00::", 7, "fdff::1", true),
        ];
        for (net, len, addr, want) in cases {
            let c = Cidr::new(ip(net), len).unwrap();
            assert_eq!(c.contains(ip(addr)), want, "{c} contains {addr}");
        }
    }

    #[test]
    fn bad_networks() {
        assert!(Cidr::new(ip("10.0.0.1"), 8)
            .unwrap_err()
            .contains("host bits"));
        assert!(Cidr::new(ip("10.0.0.0"), 33)
            .unwrap_err()
            .contains("longer than 32"));
        assert!(Cidr::new(ip("::"), 129)
            .unwrap_err()
            .contains("longer than 128"));
    }

    #[test]
    fn nested_networks() {
        let ten = Cidr::new(ip("10.0.0.0"), 8).unwrap();
        assert!(ten.contains_net(&Cidr::host(ip("10.1.2.3"))));
        assert!(!Cidr::host(ip("10.1.2.3")).contains_net(&ten));
        assert!(!ten.contains_net(&Cidr::new(ip("0.0.0.0"), 0).unwrap()));
    }
}
