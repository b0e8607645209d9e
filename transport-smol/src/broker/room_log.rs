//! Cluster mode's rooms: each room's changes in a Redis Stream (appended in batches, read
//! on top of the local snapshot when a room loads, followed while it is loaded) and its
//! shared snapshot, saved by whichever replica holds the room's save lease. (A child of
//! `broker`: it uses the task's connection state.)

use super::*;

/// How long a replica's right to save a room's snapshot lasts without a save renewing it.
const SAVE_LEASE_MS: u64 = 30_000;

/// Stores a room's snapshot if the caller still holds the room's save lease and its fencing
/// number is not older than the stored snapshot's, then trims the stream below the id the
/// snapshot covers. KEYS: lease, snapshot hash, stream. ARGV: replica id, fencing number,
/// state, covered id. Returns 1 when saved.
const SAVE_SNAPSHOT_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if tonumber(ARGV[2]) < stored then return 0 end
redis.call('HSET', KEYS[2], 'state', ARGV[3], 'covers', ARGV[4], 'fence', ARGV[2])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[4])
return 1
";

/// A change waiting for its append to the room's stream.
pub(super) struct PendingAppend {
    pub(super) room_id: String,
    pub(super) seq: u64,
    pub(super) update: Bytes,
}

impl BrokerTask {
    /// The Redis Stream of a room (its snapshot, lease and fence keys add a suffix).
    pub(super) fn room_key(&self, room_id: &str) -> String {
        format!("{}{room_id}", self.rooms_prefix)
    }

    pub(super) fn appended(&self, room_id: String, seq: u64, result: Result<(), String>) {
        let _ = self.driver.try_send(DriverInput::Meta(MetaDone::Appended {
            room_id,
            seq,
            result,
        }));
    }

    pub(super) fn loaded(&self, room_id: String, result: Result<StoredRoom, String>) {
        let _ = self
            .driver
            .try_send(DriverInput::RoomLoaded { room_id, result });
    }

    pub(super) fn unfollow(&self, room_id: &str) {
        self.followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room_id);
    }

    pub(super) fn follow(&self, room_id: String, after: String) {
        self.followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room_id, after);
        let _ = self.follow_changed.try_send(());
    }

    /// The append just received and every append queued behind it (up to [`PIPELINE_LIMIT`]);
    /// a request of another kind met on the way is held for the next turn, so requests
    /// stay in order.
    pub(super) fn gather_appends(&mut self, first: PendingAppend) -> Vec<PendingAppend> {
        let mut batch = vec![first];
        while batch.len() < PIPELINE_LIMIT {
            match self.control.try_recv() {
                Ok(Control::Append {
                    room_id,
                    seq,
                    update,
                }) => batch.push(PendingAppend {
                    room_id,
                    seq,
                    update,
                }),
                Ok(other) => {
                    self.held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Appends `(room id, update)` entries to their rooms' streams, in order, in one round
    /// trip.
    pub(super) async fn append_entries<'a>(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> redis::RedisResult<()> {
        let mut pipeline = redis::pipe();
        for (room_id, update) in entries {
            pipeline
                .cmd("XADD")
                .arg(self.room_key(room_id))
                .arg("*")
                .arg("origin")
                .arg(&self.replica_id)
                .arg("update")
                .arg(update)
                .ignore();
        }
        pipeline.query_async::<()>(connection).await
    }

    /// The room's local snapshot and log, plus its shared snapshot and the stream's entries
    /// after the id that snapshot covers; the id of the last entry (where following starts).
    pub(super) async fn with_shared_log(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        room_id: &str,
        mut stored: StoredRoom,
    ) -> redis::RedisResult<(StoredRoom, String)> {
        let key = self.room_key(room_id);
        let shared: std::collections::HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(format!("{key}:snapshot"))
            .query_async(connection)
            .await?;
        let covers = shared
            .get("covers")
            .and_then(|id| String::from_utf8(id.clone()).ok());
        if let Some(state) = shared.get("state") {
            stored.updates.push(state.clone());
        }
        // Entries after the covered id (exclusive range); all of them without a snapshot.
        let start = covers
            .as_ref()
            .map_or("-".to_string(), |id| format!("({id}"));
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg(start)
            .arg("+")
            .query_async(connection)
            .await?;
        let mut last = covers.unwrap_or_else(|| "0-0".to_string());
        for entry in reply.ids {
            if let Some(update) = entry_update(&entry) {
                stored.updates.push(update);
            }
            last = entry.id;
        }
        stored.shared_log_position = Some(last.clone());
        Ok((stored, last))
    }

    /// Saves a room's snapshot beside its stream if this replica holds (or takes) the room's
    /// save lease; `Ok(false)` when another replica holds it or the save was refused as stale.
    pub(super) async fn save_snapshot(
        &mut self,
        connection: &mut redis::aio::MultiplexedConnection,
        room_id: &str,
        state: &[u8],
        covers: &str,
    ) -> redis::RedisResult<bool> {
        let key = self.room_key(room_id);
        let lease = format!("{key}:lease");
        let taken: Option<String> = redis::cmd("SET")
            .arg(&lease)
            .arg(&self.replica_id)
            .arg("NX")
            .arg("PX")
            .arg(SAVE_LEASE_MS)
            .query_async(connection)
            .await?;
        let fence = if taken.is_some() {
            // A new lease: a fencing number above every earlier holder's.
            let fence: u64 = redis::cmd("INCR")
                .arg(format!("{key}:fence"))
                .query_async(connection)
                .await?;
            self.fences.insert(room_id.to_string(), fence);
            fence
        } else {
            let holder: Option<String> = redis::cmd("GET")
                .arg(&lease)
                .query_async(connection)
                .await?;
            match (
                holder.as_deref() == Some(self.replica_id.as_str()),
                self.fences.get(room_id),
            ) {
                (true, Some(fence)) => {
                    let _: i64 = redis::cmd("PEXPIRE")
                        .arg(&lease)
                        .arg(SAVE_LEASE_MS)
                        .query_async(connection)
                        .await?;
                    *fence
                }
                _ => return Ok(false), // another replica saves this room
            }
        };
        let saved: i64 = redis::cmd("EVAL")
            .arg(SAVE_SNAPSHOT_SCRIPT)
            .arg(3)
            .arg(&lease)
            .arg(format!("{key}:snapshot"))
            .arg(&key)
            .arg(&self.replica_id)
            .arg(fence)
            .arg(state)
            .arg(covers)
            .query_async(connection)
            .await?;
        Ok(saved == 1)
    }

    /// One append, with those waiting behind it, in one round trip; their senders learn the
    /// result.
    pub(super) async fn append_batch(
        &mut self,
        publisher: &mut redis::aio::MultiplexedConnection,
        first: PendingAppend,
    ) -> redis::RedisResult<()> {
        let batch = self.gather_appends(first);
        let entries = batch
            .iter()
            .map(|append| (append.room_id.as_str(), append.update.as_ref()));
        let appended = self.append_entries(publisher, entries).await;
        self.metrics.shared_log_round_trips.inc();
        self.metrics.shared_log_appends.inc_by(batch.len() as u64);
        let failure = appended.as_ref().err().map(|e| format!("Redis: {e}"));
        for PendingAppend { room_id, seq, .. } in batch {
            let result = failure.clone().map_or(Ok(()), Err);
            self.appended(room_id, seq, result);
        }
        appended
    }

    /// A room's local part with its shared log added, to the driver; the room is followed.
    pub(super) async fn load_room(
        &mut self,
        publisher: &mut redis::aio::MultiplexedConnection,
        room_id: String,
        local: Result<duckwire_core::StoredRoom, String>,
    ) -> redis::RedisResult<()> {
        let local = match local {
            Ok(local) => local,
            Err(e) => {
                self.loaded(room_id, Err(e));
                return Ok(());
            }
        };
        match self.with_shared_log(publisher, &room_id, local).await {
            Ok((stored, last)) => {
                self.loaded(room_id.clone(), Ok(stored));
                self.follow(room_id, last);
                Ok(())
            }
            Err(e) => {
                self.loaded(room_id, Err(format!("Redis: {e}")));
                Err(e)
            }
        }
    }
}
