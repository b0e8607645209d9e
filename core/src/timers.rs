//! The core's own timers (as `quinn-proto` keeps them): handlers arm and disarm them, the
//! driver asks [`Server::poll_timeout`](crate::Server::poll_timeout) when to call
//! [`Server::handle_timeout`](crate::Server::handle_timeout). No timer ever leaves the core.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{ConnId, Millis, QueryHandle};

/// What a timer is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TimerKey {
    /// Save a room after `save_debounce_ms` without changes.
    RoomDebounce(String),
    /// Save a room at the latest `max_save_latency_ms` after its first unsaved change.
    RoomMaxLatency(String),
    /// Drop an idle, saved room from memory.
    RoomEvict(String),
    /// Import the changes a room accepted (due at once: it runs after the replies went out).
    RoomImport(String),
    /// Close a connection that has not authenticated by now.
    AuthDeadline(ConnId),
    /// Close a kept-alive HTTP connection that has been idle this long.
    HttpIdle(ConnId),
    /// Ping a WebSocket peer.
    Ping(ConnId),
    /// Close a WebSocket peer not heard from (no frame, no pong) for `idle_timeout_ms`.
    PeerSilent(ConnId),
    /// A query ran longer than `query_timeout_ms`.
    QueryTimeout(QueryHandle),
}

/// Armed timers, by key (one deadline per key) and by deadline (the next one in O(log n)).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    by_key: BTreeMap<TimerKey, Millis>,
    by_deadline: BTreeSet<(Millis, TimerKey)>,
}

impl Timers {
    /// Arms `key` at `at`, replacing its earlier deadline.
    pub(crate) fn set(&mut self, key: TimerKey, at: Millis) {
        if let Some(previous) = self.by_key.insert(key.clone(), at) {
            self.by_deadline.remove(&(previous, key.clone()));
        }
        self.by_deadline.insert((at, key));
    }

    pub(crate) fn cancel(&mut self, key: &TimerKey) {
        if let Some(at) = self.by_key.remove(key) {
            self.by_deadline.remove(&(at, key.clone()));
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// Disarms and returns the earliest timer due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: Millis) -> Option<TimerKey> {
        let (at, _) = self.by_deadline.first()?;
        if *at > now {
            return None;
        }
        let (_, key) = self.by_deadline.pop_first()?;
        self.by_key.remove(&key);
        Some(key)
    }

    #[cfg(test)]
    pub(crate) fn is_armed(&self, key: &TimerKey) -> bool {
        self.by_key.contains_key(key)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rearming_replaces_the_deadline_and_due_timers_pop_in_order() {
        let mut timers = Timers::default();
        timers.set(TimerKey::RoomEvict("a".into()), Millis(50));
        timers.set(TimerKey::RoomDebounce("a".into()), Millis(10));
        timers.set(TimerKey::RoomEvict("a".into()), Millis(30));
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.next_deadline(), Some(Millis(10)));
        assert_eq!(timers.pop_due(Millis(9)), None);
        assert_eq!(
            timers.pop_due(Millis(40)),
            Some(TimerKey::RoomDebounce("a".into()))
        );
        assert_eq!(
            timers.pop_due(Millis(40)),
            Some(TimerKey::RoomEvict("a".into()))
        );
        assert_eq!(timers.pop_due(Millis(100)), None);
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn cancelled_timers_never_fire() {
        let mut timers = Timers::default();
        let key = TimerKey::AuthDeadline(ConnId(1));
        timers.set(key.clone(), Millis(5));
        assert!(timers.is_armed(&key));
        timers.cancel(&key);
        assert!(!timers.is_armed(&key));
        assert_eq!(timers.pop_due(Millis(10)), None);
    }
}
