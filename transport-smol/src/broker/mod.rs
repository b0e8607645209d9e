//! Cluster mode (`--redis-url`): user channels shared between replicas through Redis
//! pub/sub (PROTOCOL §5a), and CRDT rooms through one Redis Stream per room (§6a). The core
//! decides what to publish, which broker channels it needs, what to append and when to
//! acknowledge ([`Effect::BrokerSubscribe`](duckwire_core::Effect) and friends); these tasks
//! only carry those to Redis and Redis' deliveries back to the driver.
//!
//! Rooms: a change is appended to `<prefix>:room:<id>` (`XADD`, fields `origin` and
//! `update`) before the core acknowledges it; a room loading here gets the stream's entries
//! after its local snapshot; a follower task reads the streams of the rooms loaded here
//! (`XREAD BLOCK`) and hands other replicas' entries to the core.
//!
//! Redis slow: publications wait for it, and the core keeps their bytes in their senders'
//! inbound budgets until it took them (`handle_notify_published`), so a flood pauses its
//! senders instead of being dropped. Redis down: publications are dropped (cross-replica
//! notifies are lost while it is down, as with any pub/sub; counted in
//! `duckwire_notifies_dropped_total`), subscriptions are confirmed at once so local clients never wait for
//! it, and the task reconnects with backoff and subscribes again to every channel the core
//! still wants. The `redis` crate runs on smol (`smol-comp`); no tokio runtime is started.

use crate::room_follower::{entry_update, Follower};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use duckwire_core::StoredRoom;
use futures_util::StreamExt;

use crate::driver::DriverInput;
use crate::meta::MetaDone;

pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How long a command may wait for Redis' answer before it counts as failed (the sender of
/// a change then gets an error, never an ack, and the connection is made anew). The Redis
/// client's own default, 500 ms, turned a Redis pausing for a fork or a slow fsync into
/// failed edits and a reconnection that republishes every room.
const REDIS_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection for commands, waiting [`REDIS_ANSWER_TIMEOUT`] for each answer.
pub(crate) async fn command_connection(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(REDIS_ANSWER_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Appends (and publications) waiting together go to Redis as one pipeline (group commit:
/// one round trip for the lot instead of one each, which bounded a replica's acknowledged
/// edits per second by the Redis round-trip time); at most this many at once.
const PIPELINE_LIMIT: usize = 256;

/// Requests from the core, in order. Subscriptions are few (bounded by the subscription
/// caps); appends are bounded by the inbound budget, which holds their bytes until they are
/// reported.
pub enum Control {
    Subscribe {
        channel: String,
        token: u64,
    },
    Unsubscribe {
        channel: String,
    },
    Append {
        room_id: String,
        seq: u64,
        update: Bytes,
    },
    /// The local part of a room's load is done: add the shared log, then follow it.
    Load {
        room_id: String,
        local: Result<StoredRoom, String>,
    },
    Unfollow {
        room_id: String,
    },
    Republish {
        room_id: String,
        state: Bytes,
    },
    /// A snapshot holding every entry of the room's shared log up to `covers`.
    SaveSnapshot {
        room_id: String,
        state: Bytes,
        covers: String,
    },
}

/// The driver's handle on the broker task.
pub struct Broker {
    control: async_channel::Sender<Control>,
    publications: async_channel::Sender<Publication>,
}

mod room_log;
use room_log::PendingAppend;

impl Broker {
    /// Checks the URL and starts the task (which connects in the background: a replica
    /// starts and serves local clients even while Redis is unreachable).
    pub fn start(
        url: &str,
        prefix: &str,
        redis_ca: Option<&std::path::Path>,
        replica_id: &str,
        driver: async_channel::Sender<DriverInput>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Broker, String> {
        // `rediss://`: rustls needs a process-wide crypto provider; ours is ring, as for
        // --tls-cert (an error only means one is installed already).
        let _ = futures_rustls::rustls::crypto::ring::default_provider().install_default();
        let client = match redis_ca {
            None => redis::Client::open(url),
            // A Redis with a certificate from a private CA (`rediss://`): trust that CA.
            Some(ca) => {
                let root_cert =
                    std::fs::read(ca).map_err(|e| format!("--redis-ca {}: {e}", ca.display()))?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
        }
        .map_err(|e| format!("--redis-url {url}: {e}"))?;
        let (control, control_rx) = async_channel::unbounded();
        // Unbounded here: what waits is bounded by the core's inbound budgets (each
        // publication's bytes stay in its sender's until Redis took it).
        let (publications, publications_rx) = async_channel::unbounded();
        let followed = Arc::new(Mutex::new(BTreeMap::new()));
        let (follow_changed, follow_changes) = async_channel::bounded(1);
        let follower = Follower {
            client: client.clone(),
            rooms_prefix: format!("{prefix}:room:"),
            replica_id: replica_id.to_string(),
            followed: followed.clone(),
            changes: follow_changes,
            driver: driver.clone(),
        };
        crate::spawn(follower.run()).detach();
        let task = BrokerTask {
            client,
            url: url.to_string(),
            prefix: format!("{prefix}:channel:"),
            rooms_prefix: format!("{prefix}:room:"),
            replica_id: replica_id.to_string(),
            driver,
            control: control_rx,
            publications: publications_rx,
            wanted: BTreeMap::new(),
            followed,
            follow_changed,
            sessions: 0,
            fences: BTreeMap::new(),
            metrics,
            held: None,
        };
        crate::spawn(task.run()).detach();
        Ok(Broker {
            control,
            publications,
        })
    }

    pub fn control(&self, request: Control) {
        let _ = self.control.try_send(request);
    }

    pub fn publish(&self, channel: String, message: Bytes, token: u64) {
        // Fails only once the broker task stopped (the server is stopping).
        let _ = self.publications.try_send(Publication {
            channel,
            message,
            token,
        });
    }
}

struct BrokerTask {
    client: redis::Client,
    url: String,
    /// `<--redis-prefix>:channel:`, before the user channel's name.
    prefix: String,
    driver: async_channel::Sender<DriverInput>,
    control: async_channel::Receiver<Control>,
    publications: async_channel::Receiver<Publication>,
    /// Channels the core wants, with the token of its latest request.
    wanted: BTreeMap<String, u64>,
    /// `<--redis-prefix>:room:`, before a room's id.
    rooms_prefix: String,
    replica_id: String,
    /// Rooms loaded here, with the last stream entry id seen (shared with the follower).
    followed: Arc<Mutex<BTreeMap<String, String>>>,
    follow_changed: async_channel::Sender<()>,
    /// Connections made so far (a reconnection republishes the rooms).
    sessions: u64,
    /// Fencing numbers of the save leases this replica took, by room.
    fences: BTreeMap<String, u64>,
    metrics: Arc<crate::metrics::Metrics>,
    /// A request taken from the queue while gathering appends, handled next (keeps order).
    held: Option<Control>,
}

/// A notify for the other replicas, with the core's token for it.
pub struct Publication {
    channel: String,
    message: Bytes,
    token: u64,
}

/// What woke the connected loop.
enum Event {
    Control(Control),
    Publish(Publication),
    Delivered(redis::Msg),
    /// Our own inputs closed: the server is stopping.
    Stopped,
    /// The pub/sub connection ended.
    Lost,
}

impl BrokerTask {
    async fn run(mut self) {
        let mut backoff = RECONNECT_MIN;
        loop {
            let sessions_before = self.sessions;
            match self.connected().await {
                Ok(()) => return,
                Err(e) => tracing::warn!(url = self.url, "Redis unavailable: {e}"),
            }
            if self.sessions > sessions_before {
                // It was up for a while: retry soon, not after the last backoff.
                backoff = RECONNECT_MIN;
            }
            // Down: keep the core's requests answered until the next attempt.
            let retry_at = std::time::Instant::now() + backoff;
            loop {
                let event = smol::future::or(
                    async { Some(self.next_event_without_redis().await) },
                    async {
                        smol::Timer::at(retry_at).await;
                        None
                    },
                )
                .await;
                match event {
                    None => break,
                    Some(Event::Stopped) => return,
                    Some(Event::Control(control)) => self.note(control),
                    // Publications while Redis is down are lost: counted, and their bytes
                    // go back to their senders' budgets.
                    Some(Event::Publish(publication)) => {
                        self.metrics.notifies_dropped.inc();
                        self.published(vec![publication.token]);
                    }
                    Some(_) => {}
                }
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    /// Records a request while Redis is down; a subscription is confirmed at once so the
    /// client's `subscribed` does not wait for Redis (and is made on reconnect).
    fn note(&mut self, control: Control) {
        match control {
            Control::Subscribe { channel, token } => {
                self.wanted.insert(channel.clone(), token);
                self.confirm(channel, token);
            }
            Control::Unsubscribe { channel } => {
                self.wanted.remove(&channel);
            }
            // Never acknowledged without the shared log: the sender gets an error.
            Control::Append { room_id, seq, .. } => self.appended(
                room_id,
                seq,
                Err("Redis is unavailable (--redis-url)".into()),
            ),
            // A room cannot be served without the changes other replicas logged.
            Control::Load { room_id, local } => self.loaded(
                room_id,
                local.and(Err(
                    "cannot read the room's shared log: Redis is unavailable (--redis-url)".into(),
                )),
            ),
            Control::Unfollow { room_id } => self.unfollow(&room_id),
            // Republished at the reconnection anyway; saved again at the next save.
            Control::Republish { .. } | Control::SaveSnapshot { .. } => {}
        }
    }

    /// The Redis channel of a user channel.
    fn channel_key(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }

    fn confirm(&self, channel: String, token: u64) {
        let _ = self
            .driver
            .try_send(DriverInput::BrokerSubscribed { channel, token });
    }

    async fn next_event_without_redis(&mut self) -> Event {
        if let Some(control) = self.held.take() {
            return Event::Control(control);
        }
        let (control, publications) = (&self.control, &self.publications);
        smol::future::or(
            async {
                match control.recv().await {
                    Ok(control) => Event::Control(control),
                    Err(_) => Event::Stopped,
                }
            },
            async {
                match publications.recv().await {
                    Ok(publication) => Event::Publish(publication),
                    Err(_) => Event::Stopped,
                }
            },
        )
        .await
    }

    /// One connection's life: subscribe to what is wanted, then carry requests and
    /// deliveries until the connection fails (`Err`) or the server stops (`Ok`).
    async fn connected(&mut self) -> redis::RedisResult<()> {
        let pubsub = self.client.get_async_pubsub().await?;
        let mut publisher = command_connection(&self.client).await?;
        let (mut sink, mut deliveries) = pubsub.split();
        for (channel, token) in self.wanted.clone() {
            sink.subscribe(self.channel_key(&channel)).await?;
            // Subscriptions made while Redis was down were confirmed then; a repeat
            // confirmation with the same token is ignored by the core.
            self.confirm(channel, token);
        }
        tracing::info!(url = self.url, "connected to Redis");
        self.sessions += 1;
        if self.sessions > 1 {
            // Redis may have restarted empty: the rooms here go to it once more.
            let _ = self.driver.try_send(DriverInput::BrokerReconnected);
        }
        loop {
            let event = smol::future::or(self.next_event_without_redis(), async {
                match deliveries.next().await {
                    Some(message) => Event::Delivered(message),
                    None => Event::Lost,
                }
            })
            .await;
            match event {
                Event::Stopped => return Ok(()),
                Event::Lost => {
                    return Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the Redis pub/sub connection closed",
                    )))
                }
                Event::Control(Control::Subscribe { channel, token }) => {
                    self.wanted.insert(channel.clone(), token);
                    let subscribed = sink.subscribe(self.channel_key(&channel)).await;
                    // Confirmed even on failure: local subscribers must not wait for Redis.
                    self.confirm(channel, token);
                    subscribed?;
                }
                Event::Control(Control::Unsubscribe { channel }) => {
                    self.wanted.remove(&channel);
                    sink.unsubscribe(self.channel_key(&channel)).await?;
                }
                Event::Control(Control::Append {
                    room_id,
                    seq,
                    update,
                }) => {
                    let first = PendingAppend {
                        room_id,
                        seq,
                        update,
                    };
                    self.append_batch(&mut publisher, first).await?;
                }
                Event::Control(Control::Load { room_id, local }) => {
                    self.load_room(&mut publisher, room_id, local).await?;
                }
                Event::Control(Control::Unfollow { room_id }) => self.unfollow(&room_id),
                Event::Control(Control::Republish { room_id, state }) => {
                    self.append_entries(&mut publisher, [(room_id.as_str(), state.as_ref())])
                        .await?;
                }
                Event::Control(Control::SaveSnapshot {
                    room_id,
                    state,
                    covers,
                }) => {
                    let saved = self
                        .save_snapshot(&mut publisher, &room_id, &state, &covers)
                        .await?;
                    tracing::debug!(room_id, covers, saved, "shared room snapshot");
                    if saved {
                        self.metrics.shared_snapshots_saved.inc();
                    } else {
                        self.metrics.shared_snapshots_skipped.inc();
                    }
                }
                Event::Publish(publication) => {
                    self.publish_batch(&mut publisher, publication).await?;
                }
                Event::Delivered(message) => {
                    if !self.deliver(message).await {
                        return Ok(()); // the driver is gone
                    }
                }
            }
        }
    }

    /// Publications waiting together go in one round trip, in order, as appends do.
    /// The core learns they were taken (or lost, when the round trip failed: Redis went
    /// down meanwhile), so their senders' budgets get the bytes back.
    async fn publish_batch(
        &mut self,
        publisher: &mut redis::aio::MultiplexedConnection,
        first: Publication,
    ) -> redis::RedisResult<()> {
        let mut pipeline = redis::pipe();
        let mut tokens = Vec::new();
        let mut next = Some(first);
        while let Some(publication) = next.take() {
            pipeline
                .cmd("PUBLISH")
                .arg(self.channel_key(&publication.channel))
                .arg(publication.message.as_ref())
                .ignore();
            tokens.push(publication.token);
            if tokens.len() < PIPELINE_LIMIT {
                next = self.publications.try_recv().ok();
            }
        }
        let sent = pipeline.query_async::<()>(publisher).await;
        self.metrics.publish_round_trips.inc();
        match &sent {
            Ok(()) => self.metrics.publications.inc_by(tokens.len() as u64),
            Err(_) => self.metrics.notifies_dropped.inc_by(tokens.len() as u64),
        };
        self.published(tokens);
        sent
    }

    fn published(&self, tokens: Vec<u64>) {
        let _ = self
            .driver
            .try_send(DriverInput::NotifiesPublished { tokens });
    }

    /// A message Redis delivered, to the driver; `false` when the driver is gone.
    async fn deliver(&self, message: redis::Msg) -> bool {
        let Some(channel) = message
            .get_channel_name()
            .strip_prefix(&self.prefix)
            .map(str::to_string)
        else {
            return true; // not one of ours
        };
        let message = message.get_payload_bytes().to_vec();
        self.driver
            .send(DriverInput::RemoteNotify { channel, message })
            .await
            .is_ok()
    }
}
