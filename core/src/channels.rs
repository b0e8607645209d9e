//! User pub/sub channels (PROTOCOL §5). They live in their own namespace: query results and
//! CRDT updates never travel over them, so no channel name reaches another connection's
//! replies (the Python server's `__conn:<n>` leak).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::codec::ServerMessage;
use crate::ids::{ConnId, Millis};
use crate::limits::check_cap;
use crate::server::Server;

#[derive(Debug, Default)]
pub(crate) struct Channels {
    subscribers: BTreeMap<String, BTreeSet<ConnId>>,
    by_conn: BTreeMap<ConnId, BTreeSet<String>>,
}

impl Channels {
    fn subscribe(&mut self, conn: ConnId, channel: &str) {
        self.subscribers
            .entry(channel.to_string())
            .or_default()
            .insert(conn);
        self.by_conn
            .entry(conn)
            .or_default()
            .insert(channel.to_string());
    }

    fn unsubscribe(&mut self, conn: ConnId, channel: &str) {
        if let Some(set) = self.subscribers.get_mut(channel) {
            set.remove(&conn);
            if set.is_empty() {
                self.subscribers.remove(channel);
            }
        }
        if let Some(set) = self.by_conn.get_mut(&conn) {
            set.remove(channel);
            if set.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
    }

    pub(crate) fn remove_connection(&mut self, conn: ConnId) {
        for channel in self.by_conn.remove(&conn).unwrap_or_default() {
            if let Some(set) = self.subscribers.get_mut(&channel) {
                set.remove(&conn);
                if set.is_empty() {
                    self.subscribers.remove(&channel);
                }
            }
        }
    }

    fn count(&self, conn: ConnId) -> usize {
        self.by_conn.get(&conn).map_or(0, BTreeSet::len)
    }

    fn is_subscribed(&self, conn: ConnId, channel: &str) -> bool {
        self.by_conn
            .get(&conn)
            .is_some_and(|set| set.contains(channel))
    }

    fn others(&self, channel: &str, sender: ConnId) -> Vec<ConnId> {
        self.subscribers
            .get(channel)
            .map(|set| set.iter().copied().filter(|c| *c != sender).collect())
            .unwrap_or_default()
    }
}

impl Server {
    pub(crate) fn subscribe(&mut self, conn: ConnId, channel: String, now: Millis) {
        if !self.channels.is_subscribed(conn, &channel) {
            let limit = self.config.limits.max_subscriptions_per_conn;
            let wanted = self.channels.count(conn) + 1;
            if let Err(error) = check_cap("max_subscriptions_per_conn", limit, wanted) {
                self.send_error(conn, error, None, now);
                return;
            }
            self.channels.subscribe(conn, &channel);
        }
        self.send(conn, ServerMessage::Subscribed { channel }, now);
    }

    pub(crate) fn unsubscribe(&mut self, conn: ConnId, channel: String, now: Millis) {
        self.channels.unsubscribe(conn, &channel);
        self.send(conn, ServerMessage::Unsubscribed { channel }, now);
    }

    /// Echo to the sender, ack, then exactly one copy to every other subscriber.
    pub(crate) fn notify(&mut self, conn: ConnId, channel: String, payload: Value, now: Millis) {
        let notify = ServerMessage::Notify {
            channel: channel.clone(),
            payload,
        };
        let frame = notify.encode();
        self.send_frame(conn, frame.clone(), now);
        self.send(
            conn,
            ServerMessage::NotifyAck {
                channel: channel.clone(),
            },
            now,
        );
        for other in self.channels.others(&channel, conn) {
            self.send_frame(other, frame.clone(), now);
        }
    }
}
