//! Who may do what: token comparison and the rights a credential carries, the origin policy
//! and the host policy (PROTOCOL §1, §4, §4a).

/// Constant-time comparison (`subtle`): the time taken depends only on the lengths, never
/// on where the first differing byte is.
pub fn tokens_match(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// What a client may do, decided by the credential it presented (PROTOCOL §4a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rights {
    /// `--read-token`: reads (what DuckDB classifies as a read), subscriptions, joining rooms.
    /// Nothing that writes: no `exec`, upload, writing SQL, notify or CRDT change.
    ReadOnly,
    /// The `--auth-token`, or any client when no token is configured: everything.
    Full,
}

/// The rights of a client presenting `given` (every token it sent: header, URL, `auth`
/// message) to a deployment with these tokens; `None` when none of them is valid. Without an
/// `auth_token` every client has every right; the full token wins over the read token. Every
/// comparison is constant-time and all of them are made.
pub fn rights_of<'a>(
    auth_token: Option<&str>,
    read_token: Option<&str>,
    given: impl IntoIterator<Item = &'a str>,
) -> Option<Rights> {
    let Some(full) = auth_token else {
        return Some(Rights::Full);
    };
    let mut rights = None;
    for token in given {
        if tokens_match(full, token) {
            rights = Some(Rights::Full);
        } else if read_token.is_some_and(|read| tokens_match(read, token)) {
            rights = rights.max(Some(Rights::ReadOnly));
        }
    }
    rights
}

/// Which `Host` names the server answers (PROTOCOL §4, DNS rebinding): a page on a domain
/// that re-resolves to 127.0.0.1 is same-origin with the server and sends no `Origin` on a
/// GET, but its requests still carry its own name in `Host`. Addresses are
/// `core::net::IpAddr`, plain values of Rust's `core` library (no sockets, no name
/// resolution): the transport hands in the address a connection reached; the core compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// `--allowed-hosts` entries (host names, without port), lowercased; `*` allows any.
    pub allowed: Vec<String>,
}

impl HostPolicy {
    pub fn from_list(list: &str) -> Self {
        HostPolicy {
            allowed: list_entries(list, '.'),
        }
    }

    /// `host` is the request's `Host` header (`None`: an HTTP/1.0 client that sent none, which
    /// no browser does); `local_ip` the address the connection reached the server at. Allowed:
    /// loopback names and addresses, that address, listed names; any port.
    pub fn allows(&self, host: Option<&str>, local_ip: Option<core::net::IpAddr>) -> bool {
        let Some(host) = host else {
            return true;
        };
        if self.allowed.iter().any(|entry| entry == "*") {
            return true;
        }
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" {
            return true;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<core::net::IpAddr>() {
            let local_ip = local_ip.map(|local| local.to_canonical());
            if ip.is_loopback() || Some(ip.to_canonical()) == local_ip {
                return true;
            }
        }
        self.allowed.contains(&name)
    }
}

/// The name part of a `Host` header value (`name`, `name:port`, `[v6]:port`).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _port)| name)
}

/// Which browser origins may open a WebSocket (PROTOCOL §1, a deliberate divergence).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// `--allowed-origins` entries: full origins (`https://app.example.com`), bare hosts
    /// (`app.example.com`), or `*`.
    pub allowed: Vec<String>,
}

impl OriginPolicy {
    pub fn from_list(list: &str) -> Self {
        OriginPolicy {
            allowed: list_entries(list, '/'),
        }
    }

    /// `origin` is the `Origin` header; requests without one (non-browser clients) are
    /// always allowed, so callers only ask when the header is present.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.allowed.iter().any(|entry| entry == "*") {
            return true;
        }
        let host = origin_host(&origin);
        if matches!(host, Some("localhost" | "127.0.0.1" | "[::1]")) {
            return true;
        }
        self.allowed
            .iter()
            .any(|entry| *entry == origin || Some(entry.as_str()) == host)
    }
}

/// The entries of a comma-separated flag value, trimmed, without a trailing `trailing`,
/// lowercased, empty ones dropped.
fn list_entries(list: &str, trailing: char) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().trim_end_matches(trailing).to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The host of `scheme://host[:port]`, keeping IPv6 brackets.
fn origin_host(origin: &str) -> Option<&str> {
    let rest = origin.split_once("://")?.1;
    if rest.starts_with('[') {
        let end = rest.find(']')?;
        return Some(&rest[..=end]);
    }
    Some(rest.split(':').next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(tokens_match("secret", "secret"));
        assert!(!tokens_match("secret", "secreT"));
        assert!(!tokens_match("secret", "secret2"));
        assert!(!tokens_match("secret", ""));
    }

    #[test]
    fn loopback_origins_are_allowed() {
        let policy = OriginPolicy::default();
        assert!(policy.allows("http://localhost:5173"));
        assert!(policy.allows("http://127.0.0.1"));
        assert!(policy.allows("http://[::1]:3000"));
        assert!(!policy.allows("https://evil.example"));
        assert!(!policy.allows("http://localhost.evil.example"));
        assert!(!policy.allows("null"));
    }

    #[test]
    fn the_full_token_wins_and_a_read_token_reads() {
        assert_eq!(rights_of(None, None, []), Some(Rights::Full));
        let both = |given: &[&str]| rights_of(Some("full"), Some("read"), given.iter().copied());
        assert_eq!(both(&[]), None);
        assert_eq!(both(&["wrong"]), None);
        assert_eq!(both(&["read"]), Some(Rights::ReadOnly));
        assert_eq!(both(&["full"]), Some(Rights::Full));
        assert_eq!(both(&["read", "full"]), Some(Rights::Full));
        assert_eq!(both(&["full", "read"]), Some(Rights::Full));
        assert_eq!(rights_of(Some("full"), None, ["read"]), None);
    }

    #[test]
    fn loopback_hosts_the_local_address_and_listed_names_are_answered() {
        let policy = HostPolicy::default();
        let local: core::net::IpAddr = "192.168.1.5".parse().unwrap();
        for host in [
            "localhost",
            "localhost:4000",
            "LOCALHOST.:4000",
            "127.0.0.1:3000",
            "127.0.0.2",
            "[::1]:3000",
            "[::1]",
        ] {
            assert!(policy.allows(Some(host), None), "{host}");
        }
        assert!(policy.allows(Some("192.168.1.5:4000"), Some(local)));
        assert!(!policy.allows(Some("192.168.1.6:4000"), Some(local)));
        assert!(!policy.allows(Some("attacker.example:4000"), Some(local)));
        assert!(!policy.allows(Some("localhost.attacker.example"), None));
        assert!(!policy.allows(Some("127.0.0.1.nip.io"), None));
        assert!(policy.allows(None, None));
        let listed = HostPolicy::from_list("dash.example.com, Other.Example");
        assert!(listed.allows(Some("dash.example.com:443"), None));
        assert!(listed.allows(Some("other.example"), None));
        assert!(!listed.allows(Some("evil.example"), None));
        assert!(HostPolicy::from_list("*").allows(Some("anything.example"), None));
    }

    #[test]
    fn listed_origins_and_wildcard() {
        let policy = OriginPolicy::from_list("https://app.example.com, other.example");
        assert!(policy.allows("https://app.example.com"));
        assert!(policy.allows("https://other.example:8443"));
        assert!(!policy.allows("http://app.example.com"));
        assert!(OriginPolicy::from_list("*").allows("https://anything.example"));
    }
}
