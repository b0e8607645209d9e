//! Token comparison and the origin policy (PROTOCOL §1, §4).

/// Constant-time comparison (`subtle`): the time taken depends only on the lengths, never
/// on where the first differing byte is.
pub fn tokens_match(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
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
            allowed: list
                .split(',')
                .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
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
    fn listed_origins_and_wildcard() {
        let policy = OriginPolicy::from_list("https://app.example.com, other.example");
        assert!(policy.allows("https://app.example.com"));
        assert!(policy.allows("https://other.example:8443"));
        assert!(!policy.allows("http://app.example.com"));
        assert!(OriginPolicy::from_list("*").allows("https://anything.example"));
    }
}
