//! Identifiers: connections, queries, and the caller-seeded id generator.

use std::fmt;

/// A connection, numbered by the caller (the transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// One query (or upload) in flight, numbered by the core; the executor's handle for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryHandle(pub u64);

/// Milliseconds on a monotonic clock the caller owns. The core never reads a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
}

/// A client's `queryId`, kept with its JSON type so it is echoed exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueryId {
    Str(String),
    /// The number's JSON text, exactly as the client wrote it.
    Num(String),
}

impl QueryId {
    /// Length in bytes, as checked against `max_query_id_len`.
    pub fn len(&self) -> usize {
        match self {
            QueryId::Str(s) | QueryId::Num(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            QueryId::Str(s) => serde_json::Value::String(s.clone()),
            QueryId::Num(n) => serde_json::from_str(n).unwrap_or(serde_json::Value::Null),
        }
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryId::Str(s) | QueryId::Num(s) => f.write_str(s),
        }
    }
}

/// Deterministic generator of UUID v4 strings from entropy the caller supplied
/// (splitmix64; not cryptographic — ids only need to be unique per server).
#[derive(Debug, Clone)]
pub(crate) struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    /// The id a reply carries: the client's, or one generated for it.
    pub(crate) fn id_or_new(&mut self, id: Option<QueryId>) -> QueryId {
        id.unwrap_or_else(|| QueryId::Str(self.next_uuid_v4()))
    }

    pub(crate) fn new(seed: [u8; 16]) -> Self {
        let lo = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(seed[8..].try_into().expect("8 bytes"));
        IdGenerator {
            state: lo ^ hi.rotate_left(32),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn next_peer_id(&mut self) -> u64 {
        // Loro reserves u64::MAX.
        self.next_u64() % (u64::MAX - 1)
    }

    /// A UUID v4 in canonical lowercase form.
    pub(crate) fn next_uuid_v4(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v4_has_version_and_variant_bits() {
        let mut ids = IdGenerator::new([7; 16]);
        let id = ids.next_uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(id, ids.next_uuid_v4());
    }

    #[test]
    fn same_seed_same_ids() {
        let mut a = IdGenerator::new([1; 16]);
        let mut b = IdGenerator::new([1; 16]);
        assert_eq!(a.next_uuid_v4(), b.next_uuid_v4());
    }

    #[test]
    fn numeric_query_id_round_trips_its_text() {
        let id = QueryId::Num("42".into());
        assert_eq!(id.to_json(), serde_json::json!(42));
    }
}
