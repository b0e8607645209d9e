//! Cluster mode: the follower that reads the Redis Streams of the rooms loaded here
//! (`XREAD BLOCK`, on its own connection) and hands other replicas' entries to the core.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::broker::{command_connection, RECONNECT_MAX, RECONNECT_MIN};
use crate::driver::DriverInput;

/// How long one `XREAD` waits for new entries before the follower looks again at which
/// rooms it follows.
const FOLLOW_BLOCK_MS: u64 = 200;
/// Entries read per stream and round.
const FOLLOW_COUNT: usize = 256;

/// The `update` field of a stream entry.
pub(crate) fn entry_update(entry: &redis::streams::StreamId) -> Option<Vec<u8>> {
    match entry.map.get("update")? {
        redis::Value::BulkString(bytes) => Some(bytes.clone()),
        _ => None,
    }
}

fn entry_origin(entry: &redis::streams::StreamId) -> Option<&[u8]> {
    match entry.map.get("origin")? {
        redis::Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

/// Reads the streams of the rooms loaded here and hands other replicas' entries to the
/// core, on its own connection (`XREAD BLOCK` holds it).
pub(crate) struct Follower {
    pub(crate) client: redis::Client,
    pub(crate) rooms_prefix: String,
    pub(crate) replica_id: String,
    pub(crate) followed: Arc<Mutex<BTreeMap<String, String>>>,
    /// Told when a room is followed, so an idle follower does not poll.
    pub(crate) changes: async_channel::Receiver<()>,
    pub(crate) driver: async_channel::Sender<DriverInput>,
}

impl Follower {
    pub(crate) async fn run(self) {
        let mut backoff = RECONNECT_MIN;
        loop {
            if let Err(e) = self.follow().await {
                tracing::debug!("following room logs stopped: {e}");
            }
            if self.driver.is_closed() {
                return;
            }
            smol::Timer::after(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    async fn follow(&self) -> redis::RedisResult<()> {
        let mut connection = command_connection(&self.client).await?;
        loop {
            let rooms: Vec<(String, String)> = self
                .followed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(room, id)| (room.clone(), id.clone()))
                .collect();
            if rooms.is_empty() {
                if self.changes.recv().await.is_err() {
                    return Ok(());
                }
                continue;
            }
            let mut command = redis::cmd("XREAD");
            command
                .arg("COUNT")
                .arg(FOLLOW_COUNT)
                .arg("BLOCK")
                .arg(FOLLOW_BLOCK_MS)
                .arg("STREAMS");
            for (room, _) in &rooms {
                command.arg(format!("{}{room}", self.rooms_prefix));
            }
            for (_, id) in &rooms {
                command.arg(id);
            }
            let reply: Option<redis::streams::StreamReadReply> =
                command.query_async(&mut connection).await?;
            let Some(reply) = reply else {
                continue;
            };
            for stream in reply.keys {
                let Some(room_id) = stream.key.strip_prefix(&self.rooms_prefix) else {
                    continue;
                };
                let mut position = None;
                for entry in &stream.ids {
                    position = Some(entry.id.clone());
                    {
                        let mut followed = self.followed.lock().unwrap_or_else(|e| e.into_inner());
                        match followed.get_mut(room_id) {
                            Some(last) => *last = entry.id.clone(),
                            None => break, // unloaded meanwhile
                        }
                    }
                    if entry_origin(entry) == Some(self.replica_id.as_bytes()) {
                        continue; // ours: applied here before it was acknowledged
                    }
                    let Some(update) = entry_update(entry) else {
                        continue;
                    };
                    let input = DriverInput::RemoteRoomUpdate {
                        room_id: room_id.to_string(),
                        update: Bytes::from(update),
                    };
                    if self.driver.send(input).await.is_err() {
                        return Ok(());
                    }
                }
                // After the batch's updates: the core's snapshots cover them from now on.
                if let Some(position) = position {
                    let input = DriverInput::SharedLogPosition {
                        room_id: room_id.to_string(),
                        position,
                    };
                    if self.driver.send(input).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
