//! Which addresses outbound requests may reach: public unicast only, unless the driver
//! is granted `allow_private`. Refused are the host's own addresses (every local
//! interface, re-read when they change) and every range of IANA's IPv4 and IPv6
//! special-purpose registries, with the IPv6 forms that embed an IPv4 address (IPv4-mapped,
//! IPv4-compatible, IPv4-translated, NAT64, 6to4, Teredo) judged by the address they
//! embed.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// An IPv4 range: network, prefix length, what it is.
type V4Range = (Ipv4Addr, u8, &'static str);
/// An IPv6 range.
type V6Range = (Ipv6Addr, u8, &'static str);

/// IANA IPv4 Special-Purpose Address Registry (and multicast), all refused.
const V4_SPECIAL: &[V4Range] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" 0.0.0.0/8"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private 10.0.0.0/8"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space 100.64.0.0/10",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback 127.0.0.0/8"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local and metadata services 169.254.0.0/16",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private 172.16.0.0/12"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments 192.0.0.0/24",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation 192.0.2.0/24",
    ),
    (Ipv4Addr::new(192, 31, 196, 0), 24, "AS112 192.31.196.0/24"),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT 192.52.193.0/24"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast 192.88.99.0/24",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private 192.168.0.0/16"),
    (Ipv4Addr::new(192, 175, 48, 0), 24, "AS112 192.175.48.0/24"),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        "benchmarking 198.18.0.0/15",
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation 198.51.100.0/24",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation 203.0.113.0/24",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast 224.0.0.0/4"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved 240.0.0.0/4 (and broadcast)",
    ),
];

/// IANA IPv6 Special-Purpose Address Registry (and multicast) that are refused outright;
/// the ranges embedding an IPv4 address are judged in [`refusal_v6`].
const V6_SPECIAL: &[V6Range] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback ::1"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified ::"),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use IPv4/IPv6 translation 64:ff9b:1::/48",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only 100::/64",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        "dummy prefix 100:0:0:1::/64",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments 2001::/23 (Teredo, ORCHID, benchmarking, …)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation 2001:db8::/32",
    ),
    (
        Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0),
        48,
        "AS112 2620:4f:8000::/48",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation 3fff::/20",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing 5f00::/16",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local fc00::/7",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local fe80::/10",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local fec0::/10",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast ff00::/8",
    ),
];

fn in_v4(ip: Ipv4Addr, (net, len, _): &V4Range) -> bool {
    let mask = if *len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(*len))
    };
    u32::from(ip) & mask == u32::from(*net) & mask
}

fn in_v6(ip: Ipv6Addr, (net, len, _): &V6Range) -> bool {
    let mask = if *len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(*len))
    };
    u128::from(ip) & mask == u128::from(*net) & mask
}

/// Why an IPv4 address is refused (the range it is in), or `None` for public unicast.
pub fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_SPECIAL.iter().find(|r| in_v4(ip, r)).map(|r| r.2)
}

/// Why an IPv6 address is refused, or `None` for public unicast. An address that embeds
/// an IPv4 address is refused when that address is (NAT64 64:ff9b::/96, 6to4 2002::/16),
/// or outright where the form itself has no public use (IPv4-mapped ::ffff:0:0/96,
/// IPv4-translated ::ffff:0:0:0/96, IPv4-compatible ::/96).
pub fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(r) = V6_SPECIAL.iter().find(|r| in_v6(ip, r)) {
        return Some(r.2);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some("IPv4-mapped ::ffff:0:0/96"),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some("IPv4-translated ::ffff:0:0:0/96"),
        [0, 0, 0, 0, 0, 0, _, _] => Some("IPv4-compatible ::/96 (deprecated)"),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            refusal_v4(embedded(hi, lo)).map(|_| "NAT64 64:ff9b::/96 of a refused IPv4 address")
        }
        [0x2002, hi, lo, ..] => {
            refusal_v4(embedded(hi, lo)).map(|_| "6to4 2002::/16 of a refused IPv4 address")
        }
        _ => None,
    }
}

/// Why an address is refused (without `allow_private`): a special-purpose range, or one
/// of this host's own addresses.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    let special = match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    };
    special.or_else(|| {
        LocalAddresses::global()
            .contains(ip)
            .then_some("an address of this host")
    })
}

/// Whether an address is refused without `allow_private` ([`refusal`]).
pub fn is_private(ip: IpAddr) -> bool {
    refusal(ip).is_some()
}

/// How long a reading of the host's interface addresses is trusted.
const LOCAL_REFRESH: Duration = Duration::from_secs(1);

/// The addresses of this host's interfaces, re-read at most every [`LOCAL_REFRESH`]
/// (interfaces come and go: DHCP, VPNs, containers).
pub struct LocalAddresses {
    cached: Mutex<(Instant, Arc<HashSet<IpAddr>>)>,
}

impl LocalAddresses {
    /// The process-wide reading.
    pub fn global() -> &'static LocalAddresses {
        static GLOBAL: std::sync::OnceLock<LocalAddresses> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(|| LocalAddresses {
            cached: Mutex::new((Instant::now(), Arc::new(read_interfaces()))),
        })
    }

    /// Whether `ip` is an address of one of this host's interfaces now.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let set = {
            let mut cached = self.cached.lock();
            if cached.0.elapsed() >= LOCAL_REFRESH {
                *cached = (Instant::now(), Arc::new(read_interfaces()));
            }
            cached.1.clone()
        };
        let ip = match ip {
            // An IPv4-mapped spelling of a local IPv4 address is that address.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        set.contains(&ip)
    }

    /// Every address of this host's interfaces (for tests and `check`).
    pub fn all(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = read_interfaces().into_iter().collect();
        v.sort();
        v
    }
}

/// The addresses of this host's interfaces (getifaddrs(3)); empty if they cannot be
/// read.
fn read_interfaces() -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list it allocates, which is freed with
    // freeifaddrs below; the pointers are only read in between.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(a: &str) -> bool {
        is_private(a.parse().unwrap())
    }

    /// One address (or more) in every refused range, and the edges around some.
    #[test]
    fn every_special_purpose_range_is_refused() {
        for a in [
            // IPv4
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.1",
            "192.0.0.170",
            "192.0.2.1",
            "192.31.196.1",
            "192.52.193.1",
            "192.88.99.1",
            "192.168.1.1",
            "192.175.48.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::c0a8:101",
            "64:ff9b:1::1",
            "100::1",
            "100:0:0:1::1",
            "2001::1",
            "2001:0:4136:e378::1",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "2002:c0a8:101::1",
            "2620:4f:8000::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(refused(a), "{a} must be refused");
        }
        for a in [
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:200::1",
        ] {
            assert!(!refused(a), "{a} is public");
        }
    }

    /// Every address of this host's interfaces is refused, in any spelling.
    #[test]
    fn the_hosts_own_addresses_are_refused() {
        let all = LocalAddresses::global().all();
        assert!(!all.is_empty(), "a host has interfaces");
        for ip in all {
            assert!(is_private(ip), "{ip} is this host's");
            if let IpAddr::V4(v4) = ip {
                assert!(is_private(IpAddr::V6(v4.to_ipv6_mapped())));
            }
        }
    }
}
