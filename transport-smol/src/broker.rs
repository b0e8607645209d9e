//! Cluster mode (`--redis-url`): user channels shared between replicas through Redis
//! pub/sub (PROTOCOL §5a). The core decides what to publish and which broker channels it
//! needs ([`Effect::BrokerSubscribe`](duckwire_core::Effect) and friends); this task only
//! carries those to Redis and Redis' deliveries back to the driver.
//!
//! Redis down: publications are dropped (cross-replica notifies are lost while it is down,
//! as with any pub/sub), subscriptions are confirmed at once so local clients never wait for
//! it, and the task reconnects with backoff and subscribes again to every channel the core
//! still wants. The `redis` crate runs on smol (`smol-comp`); no tokio runtime is started.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::driver::DriverInput;

/// Publications waiting for Redis; more are dropped (counted in the log) rather than held.
const PUBLISH_QUEUE: usize = 4096;
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Subscribe/unsubscribe requests from the core (few: bounded by the subscription caps).
pub enum Control {
    Subscribe { channel: String, token: u64 },
    Unsubscribe { channel: String },
}

/// The driver's handle on the broker task.
pub struct Broker {
    control: async_channel::Sender<Control>,
    publications: async_channel::Sender<(String, Bytes)>,
}

impl Broker {
    /// Checks the URL and starts the task (which connects in the background: a replica
    /// starts and serves local clients even while Redis is unreachable).
    pub fn start(
        url: &str,
        prefix: &str,
        driver: async_channel::Sender<DriverInput>,
    ) -> Result<Broker, String> {
        // `rediss://`: rustls needs a process-wide crypto provider; ours is ring, as for
        // --tls-cert (an error only means one is installed already).
        let _ = futures_rustls::rustls::crypto::ring::default_provider().install_default();
        let client = redis::Client::open(url).map_err(|e| format!("--redis-url {url}: {e}"))?;
        let (control, control_rx) = async_channel::unbounded();
        let (publications, publications_rx) = async_channel::bounded(PUBLISH_QUEUE);
        let task = BrokerTask {
            client,
            url: url.to_string(),
            prefix: format!("{prefix}:channel:"),
            driver,
            control: control_rx,
            publications: publications_rx,
            wanted: BTreeMap::new(),
        };
        crate::spawn(task.run()).detach();
        Ok(Broker {
            control,
            publications,
        })
    }

    pub fn subscribe(&self, channel: String, token: u64) {
        let _ = self.control.try_send(Control::Subscribe { channel, token });
    }

    pub fn unsubscribe(&self, channel: String) {
        let _ = self.control.try_send(Control::Unsubscribe { channel });
    }

    pub fn publish(&self, channel: String, message: Bytes) {
        if self.publications.try_send((channel, message)).is_err() {
            tracing::warn!("Redis publication queue full: a cross-replica notify was dropped");
        }
    }
}

struct BrokerTask {
    client: redis::Client,
    url: String,
    /// `<--redis-prefix>:channel:`, before the user channel's name.
    prefix: String,
    driver: async_channel::Sender<DriverInput>,
    control: async_channel::Receiver<Control>,
    publications: async_channel::Receiver<(String, Bytes)>,
    /// Channels the core wants, with the token of its latest request.
    wanted: BTreeMap<String, u64>,
}

/// What woke the connected loop.
enum Event {
    Control(Control),
    Publish(String, Bytes),
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
            match self.connected().await {
                Ok(()) => return,
                Err(e) => tracing::warn!(url = self.url, "Redis unavailable: {e}"),
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
                    Some(_) => {} // publications while down are lost
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
        }
    }

    fn confirm(&self, channel: String, token: u64) {
        let _ = self
            .driver
            .try_send(DriverInput::BrokerSubscribed { channel, token });
    }

    async fn next_event_without_redis(&self) -> Event {
        smol::future::or(
            async {
                match self.control.recv().await {
                    Ok(control) => Event::Control(control),
                    Err(_) => Event::Stopped,
                }
            },
            async {
                match self.publications.recv().await {
                    Ok((channel, message)) => Event::Publish(channel, message),
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
        let mut publisher = self.client.get_multiplexed_async_connection().await?;
        let (mut sink, mut deliveries) = pubsub.split();
        for (channel, token) in self.wanted.clone() {
            sink.subscribe(format!("{}{channel}", self.prefix)).await?;
            // Subscriptions made while Redis was down were confirmed then; a repeat
            // confirmation with the same token is ignored by the core.
            self.confirm(channel, token);
        }
        tracing::info!(url = self.url, "connected to Redis");
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
                    let subscribed = sink.subscribe(format!("{}{channel}", self.prefix)).await;
                    // Confirmed even on failure: local subscribers must not wait for Redis.
                    self.confirm(channel, token);
                    subscribed?;
                }
                Event::Control(Control::Unsubscribe { channel }) => {
                    self.wanted.remove(&channel);
                    sink.unsubscribe(format!("{}{channel}", self.prefix))
                        .await?;
                }
                Event::Publish(channel, message) => {
                    redis::cmd("PUBLISH")
                        .arg(format!("{}{channel}", self.prefix))
                        .arg(message.as_ref())
                        .query_async::<()>(&mut publisher)
                        .await?;
                }
                Event::Delivered(message) => {
                    let Some(channel) = message
                        .get_channel_name()
                        .strip_prefix(&self.prefix)
                        .map(str::to_string)
                    else {
                        continue;
                    };
                    let message = message.get_payload_bytes().to_vec();
                    if self
                        .driver
                        .send(DriverInput::RemoteNotify { channel, message })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            }
        }
    }
}
