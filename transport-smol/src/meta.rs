//! Meta storage (PROTOCOL §6, §8): the `ui_state`, `sync_rooms` and `sync_updates` tables in a
//! schema of the main database or an `ATTACH`ed `--meta-db`, and a dedicated thread that
//! loads rooms, appends their updates to the durable log and saves snapshots, so persistence
//! never waits behind long queries on the worker pool.
//!
//! The log: every CRDT change is appended to `sync_updates` before its acknowledgement goes
//! out (DuckDB syncs its WAL at commit). Appends waiting together are written in one
//! transaction (group commit) and reported once per room. A snapshot save deletes the log
//! rows it contains, in the same transaction; a room loads as snapshot + log.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use std::collections::BTreeMap;

use duckdb::{params, Connection, OptionalExt};
use duckwire_core::StoredRoom;

use crate::executor::connection::WriteEpoch;
use crate::executor::upload::quote_identifier;

pub enum MetaJob {
    Load {
        room_id: String,
    },
    Persist {
        room_id: String,
        snapshot: Vec<u8>,
        version: u64,
        /// Log rows up to here are in the snapshot.
        log_seq: u64,
    },
    Append {
        room_id: String,
        seq: u64,
        update: bytes::Bytes,
    },
}

pub enum MetaDone {
    Loaded {
        room_id: String,
        result: Result<StoredRoom, String>,
    },
    /// Every update of the room up to `seq` is durable (or the batch failed).
    Appended {
        room_id: String,
        seq: u64,
        result: Result<(), String>,
    },
    Persisted {
        room_id: String,
        version: u64,
        result: Result<(), String>,
    },
}

/// The namespace as later statements quote it.
pub fn quoted_namespace(namespace: &str) -> String {
    quote_identifier(namespace)
}

/// Creates the namespace and tables; returns the quoted namespace for later statements.
pub fn init(conn: &Connection, namespace: &str, meta_db: Option<&Path>) -> Result<String, String> {
    let alias = quote_identifier(namespace);
    // An attached meta database is addressed by catalog and schema (`alias.main`): the main
    // database may also have a schema of that name (from a run without --meta-db).
    let ns = match meta_db {
        Some(_) => format!("{alias}.main"),
        None => alias.clone(),
    };
    match meta_db {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            let path = path.to_string_lossy().replace('\'', "''");
            conn.execute_batch(&format!(
                "ATTACH IF NOT EXISTS '{path}' AS {alias} (READ_WRITE)"
            ))
            .map_err(|e| format!("cannot attach meta database: {e}"))?;
        }
        None => conn
            .execute_batch(&format!("CREATE SCHEMA IF NOT EXISTS {alias}"))
            .map_err(|e| format!("cannot create meta schema: {e}"))?,
    }
    let ui_state = |json_type: &str| {
        format!(
            "CREATE TABLE IF NOT EXISTS {ns}.ui_state (key TEXT PRIMARY KEY, payload_json {json_type}, updated_at TIMESTAMPTZ)"
        )
    };
    // The JSON type needs DuckDB's json extension; without it the column is plain text.
    if conn.execute_batch(&ui_state("JSON")).is_err() {
        tracing::warn!("JSON type unavailable; meta ui_state.payload_json is VARCHAR");
        conn.execute_batch(&ui_state("VARCHAR"))
            .map_err(|e| format!("cannot create meta tables: {e}"))?;
    }
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {ns}.sync_rooms (room_id TEXT PRIMARY KEY, snapshot BLOB, updated_at TIMESTAMPTZ);
         CREATE TABLE IF NOT EXISTS {ns}.sync_updates (room_id TEXT, seq UBIGINT, \"update\" BLOB, PRIMARY KEY (room_id, seq))"
    ))
    .map_err(|e| format!("cannot create meta tables: {e}"))?;
    Ok(ns)
}

/// A room's snapshot and the updates logged after it.
pub fn load(conn: &Connection, ns: &str, room_id: &str) -> Result<StoredRoom, String> {
    let snapshot = conn
        .query_row(
            &format!("SELECT snapshot FROM {ns}.sync_rooms WHERE room_id = ?"),
            params![room_id],
            |row| row.get::<_, Vec<u8>>(0),
        )
        .optional()
        .map_err(|e| e.to_string())?;
    let mut statement = conn
        .prepare(&format!(
            "SELECT seq, \"update\" FROM {ns}.sync_updates WHERE room_id = ? ORDER BY seq"
        ))
        .map_err(|e| e.to_string())?;
    let rows = statement
        .query_map(params![room_id], |row| {
            Ok((row.get::<_, u64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .map_err(|e| e.to_string())?;
    let mut stored = StoredRoom {
        snapshot,
        ..StoredRoom::default()
    };
    for row in rows {
        let (seq, update) = row.map_err(|e| e.to_string())?;
        stored.last_seq = seq;
        stored.updates.push(update);
    }
    Ok(stored)
}

/// Saves a snapshot and drops the log rows it contains, atomically.
pub fn save(
    conn: &Connection,
    ns: &str,
    room_id: &str,
    snapshot: &[u8],
    log_seq: u64,
) -> Result<(), String> {
    in_transaction(conn, || {
        conn.execute(
            &format!(
                "INSERT INTO {ns}.sync_rooms (room_id, snapshot, updated_at) VALUES (?, ?, now()) \
                 ON CONFLICT (room_id) DO UPDATE SET snapshot = excluded.snapshot, updated_at = excluded.updated_at"
            ),
            params![room_id, snapshot],
        )?;
        conn.execute(
            &format!("DELETE FROM {ns}.sync_updates WHERE room_id = ? AND seq <= ?"),
            params![room_id, log_seq],
        )?;
        Ok(())
    })
}

/// Appends a batch of updates in one transaction (one WAL sync for all of them).
pub fn append(
    conn: &Connection,
    ns: &str,
    batch: &[(String, u64, bytes::Bytes)],
) -> Result<(), String> {
    in_transaction(conn, || {
        let mut statement = conn.prepare_cached(&format!(
            "INSERT OR REPLACE INTO {ns}.sync_updates (room_id, seq, \"update\") VALUES (?, ?, ?)"
        ))?;
        for (room_id, seq, update) in batch {
            statement.execute(params![room_id, seq, update.as_ref()])?;
        }
        Ok(())
    })
}

fn in_transaction(
    conn: &Connection,
    work: impl FnOnce() -> duckdb::Result<()>,
) -> Result<(), String> {
    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| e.to_string())?;
    match work().and_then(|()| conn.execute_batch("COMMIT")) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e.to_string())
        }
    }
}

pub struct MetaWorker {
    jobs: async_channel::Sender<MetaJob>,
    thread: Option<JoinHandle<()>>,
}

impl MetaWorker {
    /// `write_epoch` is advanced after every save, so no query worker answers from a plan
    /// made before it (see `executor::connection`).
    pub fn start(
        conn: Connection,
        ns: String,
        write_epoch: Arc<WriteEpoch>,
        done: Arc<dyn Fn(MetaDone) + Send + Sync>,
    ) -> Self {
        let (jobs, queue) = async_channel::unbounded::<MetaJob>();
        let thread = std::thread::Builder::new()
            .name("duckwire-meta".into())
            .spawn(move || {
                let mut next = None;
                loop {
                    let job = match next.take() {
                        Some(job) => job,
                        None => match queue.recv_blocking() {
                            Ok(job) => job,
                            Err(_) => break,
                        },
                    };
                    match job {
                        MetaJob::Load { room_id } => done(MetaDone::Loaded {
                            result: load(&conn, &ns, &room_id),
                            room_id,
                        }),
                        MetaJob::Persist {
                            room_id,
                            snapshot,
                            version,
                            log_seq,
                        } => {
                            let result = save(&conn, &ns, &room_id, &snapshot, log_seq);
                            write_epoch.advance();
                            if let Err(e) = &result {
                                tracing::error!(room_id, "saving CRDT room failed: {e}");
                            }
                            done(MetaDone::Persisted {
                                room_id,
                                version,
                                result,
                            })
                        }
                        MetaJob::Append {
                            room_id,
                            seq,
                            update,
                        } => {
                            // Group commit: every append already waiting joins this batch.
                            let mut batch = vec![(room_id, seq, update)];
                            while let Ok(job) = queue.try_recv() {
                                match job {
                                    MetaJob::Append {
                                        room_id,
                                        seq,
                                        update,
                                    } => batch.push((room_id, seq, update)),
                                    other => {
                                        next = Some(other);
                                        break;
                                    }
                                }
                            }
                            let result = append(&conn, &ns, &batch);
                            write_epoch.advance();
                            if let Err(e) = &result {
                                tracing::error!("appending CRDT updates to the log failed: {e}");
                            }
                            let mut highest: BTreeMap<String, u64> = BTreeMap::new();
                            for (room_id, seq, _) in batch {
                                let entry = highest.entry(room_id).or_default();
                                *entry = (*entry).max(seq);
                            }
                            for (room_id, seq) in highest {
                                done(MetaDone::Appended {
                                    room_id,
                                    seq,
                                    result: result.clone(),
                                });
                            }
                        }
                    }
                }
            })
            .expect("spawn meta thread");
        MetaWorker {
            jobs,
            thread: Some(thread),
        }
    }

    pub fn submit(&self, job: MetaJob) {
        let _ = self.jobs.try_send(job);
    }

    /// Finishes queued saves, then stops.
    pub fn stop(&mut self) {
        self.jobs.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
