//! Header hygiene: which client headers must never reach the upstream (the reserved identity
//! prefixes in any spelling, also when named in `Connection`; the forwarding headers the proxy owns),
//! the request id, and the forwarded-for headers.

use std::net::IpAddr;

use shared::identity::is_reserved_header;

/// Names of the headers to delete from a client request: every reserved identity header present.
#[cfg(test)]
pub fn reserved_present<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = names
        .filter(|n| is_reserved_header(n))
        .map(str::to_ascii_lowercase)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Forwarding headers a client may only send through a trusted proxy; from anyone else they are
/// deleted (the proxy sets `X-Forwarded-For` and `X-Forwarded-Proto` itself).
pub const PROXY_ONLY: [&str; 4] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
];

/// Headers the proxy writes itself; their underscore spellings (`x_forwarded_for`) would reach a
/// CGI-style upstream under the same variable, so they are always deleted.
const PROXY_WRITTEN: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-request-id"];

/// Names of the forwarding headers to delete from a client request (see [`forwarding_dropped`]).
#[cfg(test)]
pub fn forwarding_present<'a>(
    names: impl Iterator<Item = &'a str>,
    peer_trusted: bool,
) -> Vec<String> {
    let mut out: Vec<String> = names
        .filter(|n| forwarding_dropped(n, peer_trusted))
        .map(str::to_ascii_lowercase)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// True for a forwarding header a client request must not carry upstream: an underscore spelling
/// of any forwarding header or of the request id always, and [`PROXY_ONLY`] unless the peer is
/// trusted. Allocation-free: it runs for every header of every request.
pub fn forwarding_dropped(name: &str, peer_trusted: bool) -> bool {
    let proxy_only = PROXY_ONLY.iter().any(|k| loose_eq(name, k));
    let known = proxy_only || PROXY_WRITTEN.iter().any(|k| loose_eq(name, k));
    known && (name.contains('_') || (!peer_trusted && proxy_only))
}

/// True if a header name equals `known` (lower case, `-` between words), comparing ASCII letters
/// in any case and `_` as `-`.
pub fn loose_eq(name: &str, known: &str) -> bool {
    name.len() == known.len()
        && name.bytes().zip(known.bytes()).all(|(a, b)| {
            let a = if a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            a == b
        })
}

/// The hop-by-hop headers (RFC 9110 section 7.6.1, with the obsolete `Proxy-Connection` and the
/// upgrade headers): meaningful for one connection only, so never forwarded as a client sent them.
/// The one list every path uses: the tunnel removes them from a handshake, the lean path only
/// takes heads without them ([`crate::accept::door::eligible`]).
pub const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// True for a header in [`HOP_BY_HOP`] (any case).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The tokens of `Connection` header values, trimmed, empty ones skipped: the connection options
/// (`close`, `keep-alive`) and the header names the sender nominates as hop-by-hop. The one
/// reading of `Connection` on every path, in requests and in the agent's answers.
pub fn connection_tokens<'a>(
    values: impl Iterator<Item = &'a str>,
) -> impl Iterator<Item = &'a str> {
    values
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Headers of an upgrade a client asks for, never forwarded as sent: the edge's own tunnel sets
/// `Upgrade: websocket` itself, and on every other path the upgrade is declined (RFC 9110
/// section 7.8: the request is served as plain HTTP/1.1), so no path but the tunnel can switch
/// protocols.
pub const UPGRADE_HEADERS: [&str; 2] = ["upgrade", "http2-settings"];

/// True for a header a client request never carries upstream as sent ([`UPGRADE_HEADERS`]).
pub fn is_upgrade_header(name: &str) -> bool {
    UPGRADE_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// A `Connection` header value without tokens that name reserved headers or the upgrade headers;
/// `None` if nothing is left.
pub fn clean_connection(value: &str) -> Option<String> {
    let kept: Vec<&str> = connection_tokens(std::iter::once(value))
        .filter(|t| !is_reserved_header(t) && !is_upgrade_header(t))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// The request id: the client's, if adopting it is configured (`trust_client_request_id`) and it
/// is sane (1–128 of `A-Za-z0-9._:-`), else a new UUID.
pub fn request_id(given: Option<&[u8]>, adopt: bool) -> String {
    match given.filter(|_| adopt) {
        Some(v)
            if (1..=128).contains(&v.len())
                && v.iter().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
                }) =>
        {
            // All bytes are ASCII, checked above.
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// True if `ip` lies in one of the networks.
pub fn in_networks(ip: IpAddr, networks: &[(IpAddr, u8)]) -> bool {
    networks.iter().any(|(net, len)| match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => prefix_eq(&a.octets(), &n.octets(), *len),
        (IpAddr::V6(a), IpAddr::V6(n)) => prefix_eq(&a.octets(), &n.octets(), *len),
        (IpAddr::V6(a), IpAddr::V4(n)) => a
            .to_ipv4_mapped()
            .is_some_and(|a| prefix_eq(&a.octets(), &n.octets(), *len)),
        _ => false,
    })
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let full = (len / 8) as usize;
    let rest = len % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the right-most
/// address in `X-Forwarded-For` that is not itself trusted.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[(IpAddr, u8)]) -> IpAddr {
    if !in_networks(peer, trusted) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut chain = xff.split(',').rev().map(str::trim);
    let mut last = peer;
    for hop in chain.by_ref() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if in_networks(ip, trusted) => last = ip,
            Ok(ip) => return ip,
            Err(_) => return last,
        }
    }
    last
}

/// The `X-Forwarded-For` to send: the trusted chain extended with the peer, or just the client.
pub fn forwarded_for(peer: IpAddr, given: Option<&str>, trusted: &[(IpAddr, u8)]) -> String {
    match given {
        Some(chain) if in_networks(peer, trusted) && !chain.trim().is_empty() => {
            format!("{}, {peer}", chain.trim())
        }
        _ => peer.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_cidr;

    #[test]
    fn reserved_headers_are_found_in_any_case() {
        let names = [
            "Host",
            "X-User-Id",
            "x-auth-role",
            "X-Identity-Assertion",
            "x-request-id",
            "x-user-id",
        ];
        assert_eq!(
            reserved_present(names.into_iter()),
            vec!["x-auth-role", "x-identity-assertion", "x-user-id"]
        );
    }

    #[test]
    fn connection_tokens_naming_identity_headers_are_dropped() {
        assert_eq!(
            clean_connection("keep-alive, X-User-Id").as_deref(),
            Some("keep-alive")
        );
        assert_eq!(clean_connection("x-identity-assertion"), None);
        assert_eq!(clean_connection("Upgrade, HTTP2-Settings"), None);
        assert_eq!(
            clean_connection("keep-alive").as_deref(),
            Some("keep-alive")
        );
    }

    #[test]
    fn underscore_spellings_of_identity_headers_are_found() {
        let names = [
            "x_user_id",
            "X_User_Admin",
            "x_identity_assertion",
            "x_auth_x",
            "x_other",
        ];
        assert_eq!(
            reserved_present(names.into_iter()),
            vec![
                "x_auth_x",
                "x_identity_assertion",
                "x_user_admin",
                "x_user_id"
            ]
        );
        assert_eq!(
            clean_connection("close, x_user_id").as_deref(),
            Some("close")
        );
    }

    #[test]
    fn forwarding_headers_only_from_trusted_proxies() {
        let names = [
            "Forwarded",
            "X-Real-IP",
            "x-forwarded-host",
            "X-Forwarded-For",
            "x_forwarded_for",
            "X_Real_IP",
            "x_request_id",
            "x-request-id",
            "host",
        ];
        assert_eq!(
            forwarding_present(names.into_iter(), false),
            vec![
                "forwarded",
                "x-forwarded-host",
                "x-real-ip",
                "x_forwarded_for",
                "x_real_ip",
                "x_request_id"
            ]
        );
        assert_eq!(
            forwarding_present(names.into_iter(), true),
            vec!["x_forwarded_for", "x_real_ip", "x_request_id"]
        );
    }

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some(b"abc-123"), true), "abc-123");
        assert_ne!(request_id(Some(b"abc-123"), false), "abc-123");
        assert_ne!(request_id(Some(b"bad id"), true), "bad id");
        assert_ne!(request_id(Some(b""), true), "");
        assert_eq!(request_id(Some(&[b'a'; 129]), true).len(), 36);
        assert_eq!(request_id(None, true).len(), 36);
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let trusted = vec![parse_cidr("10.0.0.0/8").unwrap()];
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(stranger, Some("1.2.3.4"), &trusted), stranger);
        assert_eq!(
            client_ip(lb, Some("1.2.3.4"), &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(lb, Some("6.6.6.6, 1.2.3.4, 10.9.9.9"), &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(lb, Some("junk"), &trusted), lb);
        assert_eq!(client_ip(lb, None, &trusted), lb);
        assert_eq!(
            forwarded_for(stranger, Some("1.1.1.1"), &trusted),
            "203.0.113.9"
        );
        assert_eq!(
            forwarded_for(lb, Some("1.1.1.1"), &trusted),
            "1.1.1.1, 10.1.2.3"
        );
    }

    #[test]
    fn networks() {
        let n = vec![
            parse_cidr("192.168.0.0/23").unwrap(),
            parse_cidr("::1").unwrap(),
        ];
        assert!(in_networks("192.168.1.7".parse().unwrap(), &n));
        assert!(!in_networks("192.168.2.7".parse().unwrap(), &n));
        assert!(in_networks("::1".parse().unwrap(), &n));
        assert!(in_networks("::ffff:192.168.0.1".parse().unwrap(), &n));
    }
}
