//! Which addresses a fetch may connect to: public unicast addresses, plus the ranges an explicit
//! allow-list names (tests allow `127.0.0.0/8`; a user may allow a local search service).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The refused ranges of IPv4, with the name an error gives them.
const V4_REFUSED: [(&str, &str); 13] = [
    ("0.0.0.0/8", "unspecified (\"this network\")"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/3", "multicast or reserved"),
];

/// The refused ranges of IPv6 (IPv4 inside IPv6 is checked as IPv4 apart).
const V6_REFUSED: [(&str, &str); 7] = [
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
    ("2001:db8::/32", "documentation"),
];

/// Public unicast addresses are allowed, and any address inside one of `allow`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Ranges allowed although they are not public (e.g. `127.0.0.0/8` in tests).
    pub allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// A policy allowing `ranges` (`ADDRESS` or `ADDRESS/BITS`); the error names the bad entry.
    pub fn allowing(ranges: &[String]) -> Result<Self, String> {
        let allow = ranges
            .iter()
            .map(|r| r.parse::<IpNet>().or_else(|_| r.parse::<IpAddr>().map(IpNet::from)).map_err(|_| format!("{r:?} is not an address or a range (ADDRESS/BITS expected)")))
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// `Err(range name)` when `ip` may not be connected to.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        refused_range(ip).map_or(Ok(()), Err)
    }
}

/// The name of the refused range `ip` is in, if any.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_range(v4).or(v6_range(v6)),
            None => v6_range(v6),
        },
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_broadcast() {
        return Some("broadcast");
    }
    V4_REFUSED.iter().find(|(net, _)| net.parse::<IpNet>().expect("valid range").contains(&IpAddr::V4(ip))).map(|(_, name)| *name)
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    V6_REFUSED.iter().find(|(net, _)| net.parse::<IpNet>().expect("valid range").contains(&IpAddr::V6(ip))).map(|(_, name)| *name)
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:AABB:CCDD::`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, _, _] if ip != Ipv6Addr::UNSPECIFIED && ip != Ipv6Addr::LOCALHOST => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Option<&'static str> {
        refused_range(s.parse().unwrap())
    }

    #[test]
    fn non_public_ranges_are_named_and_public_ones_pass() {
        for (ip, name) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.31.255.255", "private"),
            ("192.168.0.1", "private"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast or reserved"),
            ("255.255.255.255", "broadcast"),
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "unique local (private)"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:c0a8:0101::1", "private"),
        ] {
            assert_eq!(range(ip), Some(name), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(range(ip), None, "{ip}");
        }
    }

    #[test]
    fn the_allow_list_opens_only_its_ranges() {
        let p = AddressPolicy::allowing(&["127.0.0.0/8".into(), "::1".into()]).unwrap();
        assert_eq!(p.check("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(p.check("::1".parse().unwrap()), Ok(()));
        assert_eq!(p.check("10.0.0.1".parse().unwrap()), Err("private"));
        assert_eq!(p.check("::ffff:127.0.0.1".parse().unwrap()), Err("loopback"));
        assert!(AddressPolicy::allowing(&["localhost".into()]).unwrap_err().contains("\"localhost\""));
    }
}
