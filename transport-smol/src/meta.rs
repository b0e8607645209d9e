//! Meta storage (PROTOCOL §6, §8): the `ui_state` and `sync_rooms` tables in a schema of the main
//! database or an `ATTACH`ed `--meta-db`, and a dedicated thread that loads and saves room
//! snapshots so persistence never waits behind long queries on the worker pool.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use duckdb::{params, Connection, OptionalExt};

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
    },
}

pub enum MetaDone {
    Loaded {
        room_id: String,
        result: Result<Option<Vec<u8>>, String>,
    },
    Persisted {
        room_id: String,
        version: u64,
        result: Result<(), String>,
    },
}

/// Creates the namespace and tables; returns the quoted namespace for later statements.
pub fn init(conn: &Connection, namespace: &str, meta_db: Option<&Path>) -> Result<String, String> {
    let ns = quote_identifier(namespace);
    match meta_db {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            let path = path.to_string_lossy().replace('\'', "''");
            conn.execute_batch(&format!("ATTACH IF NOT EXISTS '{path}' AS {ns}"))
                .map_err(|e| format!("cannot attach meta database: {e}"))?;
        }
        None => conn
            .execute_batch(&format!("CREATE SCHEMA IF NOT EXISTS {ns}"))
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
        "CREATE TABLE IF NOT EXISTS {ns}.sync_rooms (room_id TEXT PRIMARY KEY, snapshot BLOB, updated_at TIMESTAMPTZ)"
    ))
    .map_err(|e| format!("cannot create meta tables: {e}"))?;
    Ok(ns)
}

pub fn load(conn: &Connection, ns: &str, room_id: &str) -> Result<Option<Vec<u8>>, String> {
    conn.query_row(
        &format!("SELECT snapshot FROM {ns}.sync_rooms WHERE room_id = ?"),
        params![room_id],
        |row| row.get::<_, Vec<u8>>(0),
    )
    .optional()
    .map_err(|e| e.to_string())
}

pub fn save(conn: &Connection, ns: &str, room_id: &str, snapshot: &[u8]) -> Result<(), String> {
    conn.execute(
        &format!(
            "INSERT INTO {ns}.sync_rooms (room_id, snapshot, updated_at) VALUES (?, ?, now()) \
             ON CONFLICT (room_id) DO UPDATE SET snapshot = excluded.snapshot, updated_at = excluded.updated_at"
        ),
        params![room_id, snapshot],
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
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
                while let Ok(job) = queue.recv_blocking() {
                    done(match job {
                        MetaJob::Load { room_id } => MetaDone::Loaded {
                            result: load(&conn, &ns, &room_id),
                            room_id,
                        },
                        MetaJob::Persist {
                            room_id,
                            snapshot,
                            version,
                        } => {
                            let result = save(&conn, &ns, &room_id, &snapshot);
                            write_epoch.advance();
                            if let Err(e) = &result {
                                tracing::error!(room_id, "saving CRDT room failed: {e}");
                            }
                            MetaDone::Persisted {
                                room_id,
                                version,
                                result,
                            }
                        }
                    });
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
