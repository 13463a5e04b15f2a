//! One allow or deny rule: `example.com`, `*.example.com`, `**.example.com`,
//! `host:port`, `10.0.0.0/8`, `2001:db8::/32`, `[2001:db8::/32]:443`, `**`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::cidr::Cidr;

/// The name that maps to the host's loopback (`127.0.0.1:PORT`); only an
/// exact rule naming it matches it, never a wildcard.
pub const HOST_INTERNAL: &str = "host.hutch.internal";

/// Why a rule or a destination host was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rule {rule:?}: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub reason: String,
}

/// What part of the destination host a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `**`: every host name (not IP literals, not `host.hutch.internal`).
    AnyName,
    /// `example.com`: exactly this name.
    Exact(String),
    /// `*.example.com`: exactly one more label in front of the suffix.
    OneLabel(String),
    /// `**.example.com`: one or more labels in front of the suffix (not the apex).
    AnyDepth(String),
    /// `10.0.0.0/8`, `1.2.3.4`, `2001:db8::/32`: IP addresses in the network.
    Net(Cidr),
}

/// A parsed rule; `port: None` matches every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    text: String,
    pattern: HostPattern,
    port: Option<u16>,
}

/// The host part of a destination: a (normalised) name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// Parses a destination host as a client wrote it (`Example.COM.`,
    /// `10.0.0.1`, `[::1]` or `::1`).
    pub fn parse(s: &str) -> Result<Host, String> {
        let inner = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = inner.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if inner.len() != s.len() {
            return Err(format!("{s:?} is not an IPv6 address"));
        }
        normalize_name(s).map(Host::Name)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Lower-cases a DNS name, drops one trailing dot and checks its syntax.
/// A name whose last label starts with a digit is refused: resolvers read
/// `127.1` or `0x7f.1` as IP addresses, which would dodge the CIDR rules.
pub fn normalize_name(s: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty host name".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "host name is {} characters long (at most 253)",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label in host name".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("character {c:?} is not allowed in a host name"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_digit()))
    {
        return Err(format!(
            "{name:?} looks like a numeric IP address, not a host name"
        ));
    }
    Ok(name)
}

impl Rule {
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn pattern(&self) -> &HostPattern {
        &self.pattern
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    /// Whether the rule matches a destination as the client named it.
    pub fn matches(&self, host: &Host, port: u16) -> bool {
        if !self.port_matches(port) {
            return false;
        }
        match (&self.pattern, host) {
            (HostPattern::Net(net), Host::Ip(ip)) => net.contains(*ip),
            (HostPattern::Exact(want), Host::Name(name)) => want == name,
            (_, Host::Name(name)) if name == HOST_INTERNAL => false,
            (HostPattern::AnyName, Host::Name(_)) => true,
            (HostPattern::OneLabel(suffix), Host::Name(name)) => {
                front_labels(name, suffix).is_some_and(|front| !front.contains('.'))
            }
            (HostPattern::AnyDepth(suffix), Host::Name(name)) => {
                front_labels(name, suffix).is_some()
            }
            _ => false,
        }
    }

    /// Whether this is a network rule covering `ip` on `port`.
    pub fn matches_addr(&self, ip: IpAddr, port: u16) -> bool {
        matches!(&self.pattern, HostPattern::Net(net) if net.contains(ip))
            && self.port_matches(port)
    }
}

/// The labels in front of `.suffix` in `name`, if `name` ends with it.
fn front_labels<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    name.strip_suffix(suffix)?
        .strip_suffix('.')
        .filter(|front| !front.is_empty())
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("port {s:?} is not a number from 1 to 65535")),
    }
}

fn parse_net(s: &str) -> Result<Cidr, String> {
    match s.split_once('/') {
        Some((addr, len)) => {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("{addr:?} is not an IP address"))?;
            let len: u8 = len
                .parse()
                .map_err(|_| format!("prefix length {len:?} is not a number"))?;
            Cidr::new(addr, len)
        }
        None => s
            .parse()
            .map(Cidr::host)
            .map_err(|_| format!("{s:?} is not an IP address")),
    }
}

fn parse_name_pattern(host: &str) -> Result<HostPattern, String> {
    if host == "**" {
        return Ok(HostPattern::AnyName);
    }
    let (ctor, rest): (fn(String) -> HostPattern, &str) =
        if let Some(rest) = host.strip_prefix("**.") {
            (HostPattern::AnyDepth, rest)
        } else if let Some(rest) = host.strip_prefix("*.") {
            (HostPattern::OneLabel, rest)
        } else {
            (HostPattern::Exact, host)
        };
    if rest.contains('*') {
        return Err(
            "'*' is only allowed as the whole first label (*.example.com, **.example.com) or alone as **"
                .into(),
        );
    }
    let name = normalize_name(rest)?;
    if !matches!(ctor(String::new()), HostPattern::Exact(_)) && name == HOST_INTERNAL {
        return Err(format!("{HOST_INTERNAL} can only be named exactly"));
    }
    Ok(ctor(name))
}

fn parse_rule(s: &str) -> Result<(HostPattern, Option<u16>), String> {
    if s.is_empty() {
        return Err("empty rule".into());
    }
    if s.contains(char::is_whitespace) {
        return Err("a rule has no spaces".into());
    }
    if s.contains("://") || s.contains('@') {
        return Err("a rule is a host, host:port or network, not a URL".into());
    }
    // [v6addr]:port, [v6net]:port, [v6addr]
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after an IPv6 address".to_string())?;
        if !inner.contains(':') {
            return Err("only IPv6 addresses go in brackets".into());
        }
        let port = match after {
            "" => None,
            _ => Some(parse_port(after.strip_prefix(':').ok_or_else(|| {
                format!("expected ':PORT' after ']', found {after:?}")
            })?)?),
        };
        return Ok((HostPattern::Net(parse_net(inner)?), port));
    }
    // 10.0.0.0/8, 10.0.0.0/8:443, 2001:db8::/32, 2001:db8::/32:443
    if let Some((addr, rest)) = s.split_once('/') {
        let (len, port) = match rest.split_once(':') {
            Some((len, port)) => (len, Some(parse_port(port)?)),
            None => (rest, None),
        };
        return Ok((HostPattern::Net(parse_net(&format!("{addr}/{len}"))?), port));
    }
    // A bare IPv6 address (no port possible without brackets).
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((HostPattern::Net(Cidr::host(ip)), None));
    }
    let (host, port) = match s.split_once(':') {
        Some((host, port)) if !port.contains(':') => (host, Some(parse_port(port)?)),
        Some(_) => return Err("write an IPv6 address with a port as [addr]:port".into()),
        None => (s, None),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((HostPattern::Net(Cidr::host(ip)), port));
    }
    Ok((parse_name_pattern(host)?, port))
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Rule, RuleError> {
        let text = s.trim();
        let (pattern, port) = parse_rule(text).map_err(|reason| RuleError {
            rule: text.to_string(),
            reason,
        })?;
        Ok(Rule {
            text: text.to_ascii_lowercase(),
            pattern,
            port,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn host(s: &str) -> Host {
        Host::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn host_rules_match_by_form() {
        // (rule, destination host, port, matches)
        let cases = [
            ("example.com", "example.com", 443, true),
            ("example.com", "EXAMPLE.com.", 80, true),
            ("example.com", "www.example.com", 443, false),
            ("example.com", "notexample.com", 443, false),
            ("*.example.com", "www.example.com", 443, true),
            ("*.example.com", "example.com", 443, false),
            ("*.example.com", "a.b.example.com", 443, false),
            ("*.example.com", "wwwexample.com", 443, false),
            ("**.example.com", "www.example.com", 443, true),
            ("**.example.com", "a.b.c.example.com", 443, true),
            ("**.example.com", "example.com", 443, false),
            ("**.example.com", "badexample.com", 443, false),
            ("example.com:443", "example.com", 443, true),
            ("example.com:443", "example.com", 80, false),
            ("**.github.com:443", "api.github.com", 443, true),
            ("**.github.com:443", "api.github.com", 22, false),
            ("**", "anything.example", 443, true),
            ("**", HOST_INTERNAL, 443, false),
            ("**.internal", HOST_INTERNAL, 443, false),
            ("host.hutch.internal:8080", HOST_INTERNAL, 8080, true),
            ("host.hutch.internal:8080", HOST_INTERNAL, 8081, false),
            // Name rules never match IP literals.
            ("**", "10.0.0.1", 443, false),
            ("example.com", "93.184.216.34", 443, false),
        ];
        for (r, h, port, want) in cases {
            assert_eq!(rule(r).matches(&host(h), port), want, "{r} vs {h}:{port}");
        }
    }

    #[test]
    fn network_rules_match_ip_literals_only() {
        let cases = [
            ("10.0.0.0/8", "10.1.2.3", 80, true),
            ("10.0.0.0/8", "11.1.2.3", 80, false),
            ("10.0.0.0/8:443", "10.1.2.3", 443, true),
            ("10.0.0.0/8:443", "10.1.2.3", 80, false),
            ("1.2.3.4", "1.2.3.4", 80, true),
            ("1.2.3.4:443", "1.2.3.4", 443, true),
            ("1.2.3.4:443", "1.2.3.5", 443, false),
            ("2001:db8::/32", "2001:db8::1", 443, true),
            ("2001:db8::/32", "[2001:db8::1]", 443, true),
            ("2001:db8::/32", "2001:db9::1", 443, false),
            ("2001:db8::/32:443", "2001:db8::1", 443, true),
            ("2001:db8::/32:443", "2001:db8::1", 80, false),
            ("[2001:db8::/32]:443", "2001:db8::1", 443, true),
            ("[2001:db8::1]:443", "2001:db8::1", 443, true),
            ("2001:db8::1", "2001:db8::1", 8443, true),
            ("0.0.0.0/0", "::1", 80, false),
            ("10.0.0.0/8", "ten.example", 80, false),
        ];
        for (r, h, port, want) in cases {
            assert_eq!(rule(r).matches(&host(h), port), want, "{r} vs {h}:{port}");
        }
    }

    #[test]
    fn bad_rules_are_rejected_with_a_reason() {
        let cases = [
            ("", "empty rule"),
            ("exa mple.com", "no spaces"),
            ("https://example.com", "not a URL"),
            ("user@example.com", "not a URL"),
            ("ex*ample.com", "first label"),
            ("*example.com", "first label"),
            ("***.example.com", "first label"),
            ("www.*.example.com", "first label"),
            ("*.*.example.com", "first label"),
            ("example..com", "empty label"),
            ("exam_ple.com:0", "port 0"),
            ("example.com:http", "not a number"),
            ("example.com:65536", "not a number"),
            ("-bad.example.com", "starts or ends"),
            ("ex!ample.com", "not allowed"),
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "longer than 32"),
            ("10.0.0.0/x", "not a number"),
            ("2001:db8::/129", "longer than 128"),
            ("300.1.2.3/8", "not an IP address"),
            ("[2001:db8::1]443", "expected ':PORT'"),
            ("[2001:db8::1", "missing ']'"),
            ("[1.2.3.4]:80", "only IPv6"),
            ("127.1", "numeric IP"),
            ("0x7f.1", "numeric IP"),
            ("*.host.hutch.internal", "only be named exactly"),
            (&"a".repeat(64), "longer than 63"),
        ];
        for (r, reason) in cases {
            let err = r.parse::<Rule>().expect_err(r);
            assert!(
                err.to_string().contains(reason),
                "{r:?}: {err} should mention {reason:?}"
            );
            assert_eq!(err.rule, r.trim());
        }
    }

    #[test]
    fn bare_ipv6_with_colon_port_is_an_address_not_a_port() {
        // "2001:db8::1:443" would be ambiguous; it parses as the address 2001:db8::1:443.
        assert!(rule("2001:db8::1:443").matches(&host("2001:db8::1:443"), 1));
    }
}
