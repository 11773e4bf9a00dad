//! The one address classifier: whether an IP address is on the public internet, and so a
//! destination the platform may connect to on a user's (or the agent's) behalf.
//!
//! Every check of an outgoing destination (callback URLs when a request is created and again
//! when the callback is sent) asks [`is_public`]; nothing else decides.
//!
//! IPv6 addresses that carry an IPv4 address are judged by the address they carry, since a
//! packet to them ends up there (through a translator, a relay or the host's own stack):
//!
//! | range | what it carries | source |
//! |---|---|---|
//! | `::ffff:0:0/96` IPv4-mapped | the last 32 bits | RFC 4291 §2.5.5.2 |
//! | `::/96` IPv4-compatible (deprecated) | the last 32 bits | RFC 4291 §2.5.5.1 |
//! | `::ffff:0:0:0/96` IPv4-translated | the last 32 bits | RFC 2765 §2.1 |
//! | `64:ff9b::/96` NAT64 well-known prefix | the last 32 bits | RFC 6052 §2.1 |
//! | `2002::/16` 6to4 | bits 16..48 | RFC 3056 §2 |
//! | `2001::/32` Teredo | server: bits 32..64; client: the last 32 bits, inverted | RFC 4380 §4 |
//!
//! A Teredo address is public only if both the server and the client address are.
//! `64:ff9b:1::/48` (NAT64 for local use, RFC 8215) is never public.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is reachable on the public internet: not loopback, private, link-local
/// (the cloud metadata address), shared (CGNAT), multicast, reserved or documentation, and for
/// IPv6 not any of those through an embedded IPv4 address (see the module docs).
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: &Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space, RFC 6598
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments, RFC 6890
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast, RFC 7526
        || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking, RFC 2544
        || o[0] >= 224) // multicast and reserved
}

fn is_public_v6(v6: &Ipv6Addr) -> bool {
    let s = v6.segments();
    if v6.is_loopback() || v6.is_unspecified() {
        return false;
    }
    if let Some(carried) = teredo(v6) {
        return carried.iter().all(is_public_v4);
    }
    if let Some(v4) = embedded_ipv4(v6) {
        return is_public_v4(&v4);
    }
    !(v6.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001) // local NAT64, RFC 8215
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only, 100::/64
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && (0x0010..0x0020).contains(&s[1])) // ORCHID, 2001:10::/28
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0)) // benchmarking, 2001:2::/48
}

/// The IPv4 address carried by an IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64 or
/// 6to4 address (Teredo: see [`teredo`]).
pub fn embedded_ipv4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let last = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last), // mapped
        [0, 0, 0, 0, 0, 0, _, _] => Some(last),      // compatible (:: and ::1 included)
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(last), // translated
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some(last), // NAT64
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )), // 6to4
        _ => None,
    }
}

/// The Teredo server and client IPv4 addresses of a `2001::/32` address (the client's is
/// stored inverted, RFC 4380 §4).
pub fn teredo(v6: &Ipv6Addr) -> Option<[Ipv4Addr; 2]> {
    let s = v6.segments();
    if s[0] != 0x2001 || s[1] != 0 {
        return None;
    }
    let server = Ipv4Addr::new((s[2] >> 8) as u8, s[2] as u8, (s[3] >> 8) as u8, s[3] as u8);
    let client = Ipv4Addr::from(!(((s[6] as u32) << 16) | s[7] as u32));
    Some([server, client])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(a: &str) -> bool {
        is_public(&a.parse().unwrap())
    }

    #[test]
    fn private_loopback_and_metadata_addresses_are_not_public() {
        for a in [
            "10.0.0.1",
            "172.16.3.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.0.170",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(!public(a), "{a}");
        }
        for a in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(public(a), "{a}");
        }
    }

    /// Each transition range carrying loopback, the metadata address and a private address
    /// is refused, and carrying a public address is accepted.
    #[test]
    fn ipv6_transition_addresses_are_judged_by_the_ipv4_address_they_carry() {
        let cases = [
            // IPv4-mapped
            ("::ffff:127.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:8.8.8.8", true),
            // IPv4-compatible
            ("::127.0.0.1", false),
            ("::169.254.169.254", false),
            ("::10.1.2.3", false),
            ("::8.8.8.8", true),
            // IPv4-translated
            ("::ffff:0:127.0.0.1", false),
            ("::ffff:0:8.8.8.8", true),
            // NAT64, well-known prefix
            ("64:ff9b::127.0.0.1", false),
            ("64:ff9b::a9fe:a9fe", false), // 169.254.169.254
            ("64:ff9b::192.168.0.1", false),
            ("64:ff9b::8.8.8.8", true),
            // NAT64 for local use: never
            ("64:ff9b:1::808:808", false),
            // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD
            ("2002:7f00:1::1", false),    // 127.0.0.1
            ("2002:a9fe:a9fe::1", false), // 169.254.169.254
            ("2002:c0a8:101::1", false),  // 192.168.1.1
            ("2002:808:808::1", true),    // 8.8.8.8
        ];
        for (a, expected) in cases {
            assert_eq!(public(a), expected, "{a}");
        }
    }

    #[test]
    fn teredo_addresses_carry_a_server_and_an_inverted_client_address() {
        // RFC 4380 §4's layout: server 65.54.227.120 (4136:e378), client 192.0.2.45
        // inverted (3fff:fdd2), port 40000 inverted (63bf).
        let addr: Ipv6Addr = "2001:0:4136:e378:8000:63bf:3fff:fdd2".parse().unwrap();
        assert_eq!(
            teredo(&addr),
            Some([
                Ipv4Addr::new(65, 54, 227, 120),
                Ipv4Addr::new(192, 0, 2, 45)
            ])
        );
        // A client address of 127.0.0.1 is stored as 80ff:fffe; 169.254.169.254 as 5601:5601.
        assert!(!public("2001:0:4136:e378:8000:63bf:80ff:fffe"));
        assert!(!public("2001:0:4136:e378:8000:63bf:5601:5601"));
        // A private server address is refused even with a public client.
        assert!(!public("2001:0:a00:1:8000:63bf:f7f7:f7f7"));
        // Public server and client (8.8.8.8 inverted is f7f7:f7f7): public.
        assert!(public("2001:0:4136:e378:8000:63bf:f7f7:f7f7"));
        // Other 2001::/23 space is not Teredo.
        assert_eq!(teredo(&"2001:4860::8888".parse().unwrap()), None);
        assert!(public("2001:4860:4860::8888"));
    }
}
