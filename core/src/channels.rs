//! User pub/sub channels (PROTOCOL §5). They live in their own namespace: query results and
//! CRDT updates never travel over them, so no channel name reaches another connection's
//! replies (the Python server's `__conn:<n>` leak).
//!
//! With [`Config::replica_id`](crate::Config::replica_id) set, replicas share channels
//! through a broker (Redis pub/sub in the driver): a `notify` is delivered locally as in
//! single-node mode and published once ([`Effect::PublishNotify`]); every other replica
//! delivers it to its own subscribers ([`Server::handle_remote_notify`]) and the sender's
//! replica drops its own echo. A replica holds the broker subscription of a channel only
//! while it has local subscribers, and a client's `subscribed` waits until the broker
//! confirmed it ([`Server::handle_broker_subscribed`]), so a notify sent after `subscribed`
//! reaches it from every replica.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use bytes::Bytes;

use crate::codec::ServerMessage;
use crate::effect::Effect;
use crate::ids::{ConnId, Millis};
use crate::limits::check_cap;
use crate::server::Server;

#[derive(Debug, Default)]
pub(crate) struct Channels {
    subscribers: BTreeMap<String, BTreeSet<ConnId>>,
    by_conn: BTreeMap<ConnId, BTreeSet<String>>,
    /// Cluster mode: channels whose broker subscription was asked for, with the token of
    /// the request and whether the broker confirmed it.
    broker: BTreeMap<String, BrokerSubscription>,
    next_token: u64,
    /// Cluster mode: publications the broker has not taken yet, by token, with their sender
    /// and the inbound bytes they hold.
    publishing: BTreeMap<u64, (ConnId, usize)>,
}

#[derive(Debug)]
struct BrokerSubscription {
    token: u64,
    confirmed: bool,
    /// Connections whose `subscribed` waits for the confirmation, in order.
    waiting: Vec<ConnId>,
}

/// A notify as it travels between replicas: the channel, the payload, and the replica that
/// published it (which drops its own echo). Stable JSON, documented in PROTOCOL §5a.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BrokerNotify {
    origin: String,
    channel: String,
    payload: Value,
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

    fn all(&self, channel: &str) -> Vec<ConnId> {
        self.subscribers
            .get(channel)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    fn has_subscribers(&self, channel: &str) -> bool {
        self.subscribers.contains_key(channel)
    }

    /// The channels `conn` was subscribed to (before it goes away).
    fn channels_of(&self, conn: ConnId) -> Vec<String> {
        self.by_conn
            .get(&conn)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
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
            if self.config.replica_id.is_some() {
                let subscription = match self.channels.broker.get_mut(&channel) {
                    Some(subscription) => subscription,
                    None => {
                        self.channels.next_token += 1;
                        let token = self.channels.next_token;
                        self.push(Effect::BrokerSubscribe {
                            channel: channel.clone(),
                            token,
                        });
                        self.channels
                            .broker
                            .entry(channel.clone())
                            .or_insert(BrokerSubscription {
                                token,
                                confirmed: false,
                                waiting: Vec::new(),
                            })
                    }
                };
                if !subscription.confirmed {
                    subscription.waiting.push(conn);
                    return;
                }
            }
        }
        self.send(conn, ServerMessage::Subscribed { channel }, now);
    }

    pub(crate) fn unsubscribe(&mut self, conn: ConnId, channel: String, now: Millis) {
        if self.stop_waiting(conn, &channel) {
            // Its `subscribed` was still waiting for the broker: replies stay in order.
            self.send(
                conn,
                ServerMessage::Subscribed {
                    channel: channel.clone(),
                },
                now,
            );
        }
        self.channels.unsubscribe(conn, &channel);
        self.release_broker_subscription(&channel);
        self.send(conn, ServerMessage::Unsubscribed { channel }, now);
    }

    /// A connection went away: its channels may no longer need the broker.
    pub(crate) fn forget_channels_of(&mut self, conn: ConnId) {
        let channels = self.channels.channels_of(conn);
        self.channels.remove_connection(conn);
        for channel in channels {
            self.stop_waiting(conn, &channel);
            self.release_broker_subscription(&channel);
        }
    }

    /// `true` if `conn` was waiting for the broker's confirmation of `channel`.
    fn stop_waiting(&mut self, conn: ConnId, channel: &str) -> bool {
        let Some(subscription) = self.channels.broker.get_mut(channel) else {
            return false;
        };
        let before = subscription.waiting.len();
        subscription.waiting.retain(|c| *c != conn);
        subscription.waiting.len() != before
    }

    /// Drops the broker subscription of a channel nobody here listens to any more.
    fn release_broker_subscription(&mut self, channel: &str) {
        if self.channels.has_subscribers(channel) {
            return;
        }
        if self.channels.broker.remove(channel).is_some() {
            self.push(Effect::BrokerUnsubscribe {
                channel: channel.to_string(),
            });
        }
    }

    /// Echo to the sender, ack, then exactly one copy to every other subscriber here, and
    /// (cluster mode) one publication for the other replicas.
    pub(crate) fn notify(&mut self, conn: ConnId, channel: String, payload: Value, now: Millis) {
        if let Some(origin) = &self.config.replica_id {
            let message = BrokerNotify {
                origin: origin.clone(),
                channel: channel.clone(),
                payload: payload.clone(),
            };
            let message = serde_json::to_vec(&message).expect("a JSON value serializes");
            // Held until the broker took it: a slow broker pauses this sender (PROTOCOL §7).
            let held = self.budget.hold_arriving(conn);
            self.channels.next_token += 1;
            let token = self.channels.next_token;
            self.channels.publishing.insert(token, (conn, held));
            self.push(Effect::PublishNotify {
                channel: channel.clone(),
                message: Bytes::from(message),
                token,
            });
        }
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
            if !self.awaits_broker(&channel, other) {
                self.send_frame(other, frame.clone(), now);
            }
        }
    }

    /// A subscriber whose `subscribed` still waits for the broker gets no notify yet:
    /// nothing reaches a client on a channel before it was told it is subscribed.
    fn awaits_broker(&self, channel: &str, conn: ConnId) -> bool {
        self.channels
            .broker
            .get(channel)
            .is_some_and(|s| s.waiting.contains(&conn))
    }

    /// The broker took (or, being down, dropped) the publication `token`: its bytes leave
    /// the sender's budget.
    pub(crate) fn notify_published(&mut self, token: u64) {
        if let Some((conn, held)) = self.channels.publishing.remove(&token) {
            self.budget.release(conn, held);
        }
    }

    pub(crate) fn broker_subscribed(&mut self, channel: &str, token: u64, now: Millis) {
        let Some(subscription) = self.channels.broker.get_mut(channel) else {
            return; // nobody here listens any more
        };
        if subscription.token != token || subscription.confirmed {
            return; // the confirmation of an earlier request
        }
        subscription.confirmed = true;
        for conn in std::mem::take(&mut subscription.waiting) {
            self.send(
                conn,
                ServerMessage::Subscribed {
                    channel: channel.to_string(),
                },
                now,
            );
        }
    }

    /// A notify from the broker. Returns `false` for a message that is not a notify of
    /// this channel (ignored: the broker is trusted for availability, not for format).
    pub(crate) fn remote_notify(&mut self, channel: &str, message: &[u8], now: Millis) -> bool {
        let Some(own) = &self.config.replica_id else {
            return false;
        };
        let Ok(notify) = serde_json::from_slice::<BrokerNotify>(message) else {
            return false;
        };
        if notify.channel != channel {
            return false;
        }
        if &notify.origin == own {
            return true; // our own publication: delivered locally already
        }
        let frame = ServerMessage::Notify {
            channel: notify.channel,
            payload: notify.payload,
        }
        .encode();
        for conn in self.channels.all(channel) {
            if !self.awaits_broker(channel, conn) {
                self.send_frame(conn, frame.clone(), now);
            }
        }
        true
    }
}
