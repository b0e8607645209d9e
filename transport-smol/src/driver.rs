//! The effect loop (DESIGN.md): one task owns the core `Server`, feeds it every input with
//! the current time, and carries out the effects it emits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use duckwire_core::{ConnId, ConnectionInfo, Effect, Frame, Millis, Server, ServerError, TimerKey};

use crate::cache::ResultCache;
use crate::executor::{Completion, Executor, Job};
use crate::meta::{MetaDone, MetaJob, MetaWorker};
use crate::metrics::Metrics;

/// What a connection's writer task is asked to do.
pub enum Outbound {
    Frame(Frame),
    Close(u16, String),
}

/// How the driver reaches one connection's writer task.
#[derive(Clone)]
pub struct ConnectionWriter {
    /// Frames (and the reader's own closes), written in order.
    pub queue: async_channel::Sender<Outbound>,
    /// A close the core decided on. It overtakes the queue: the frames still queued are
    /// dropped, so a peer that stopped reading is closed at its cap instead of holding
    /// its connection (and the queued bytes) open forever.
    pub close: async_channel::Sender<(u16, String)>,
}

pub enum DriverInput {
    Open {
        conn: ConnId,
        info: ConnectionInfo,
        writer: ConnectionWriter,
    },
    Frame {
        conn: ConnId,
        frame: Frame,
    },
    Sent {
        conn: ConnId,
        bytes: usize,
    },
    Closed {
        conn: ConnId,
    },
    Executor(Completion),
    Meta(MetaDone),
    /// Begin shutdown; `done` is signalled once every dirty room is saved.
    Shutdown {
        done: async_channel::Sender<()>,
    },
}

pub struct Driver {
    pub server: Server,
    pub inputs: async_channel::Receiver<DriverInput>,
    pub executor: Arc<Executor>,
    pub meta: MetaWorker,
    pub cache: Arc<ResultCache>,
    pub metrics: Arc<Metrics>,
    /// Signalled if the core is poisoned: the server must stop.
    pub fatal: async_channel::Sender<()>,
    pub started: Instant,
}

impl Driver {
    pub async fn run(mut self) -> MetaWorker {
        let mut writers: HashMap<ConnId, ConnectionWriter> = HashMap::new();
        let mut timers: BTreeMap<TimerKey, Millis> = BTreeMap::new();
        let mut shutdown_waiter: Option<async_channel::Sender<()>> = None;
        loop {
            let next_timer = timers.values().min().copied();
            let input = match next_timer {
                Some(at) => {
                    let deadline = self.started + std::time::Duration::from_millis(at.0);
                    smol::future::or(async { Some(self.inputs.recv().await) }, async {
                        smol::Timer::at(deadline).await;
                        None
                    })
                    .await
                }
                None => Some(self.inputs.recv().await),
            };
            let now = self.now();
            let mut result = match input {
                None => Ok(()),
                Some(Err(_)) => break,
                Some(Ok(input)) => self.handle(input, now, &mut writers, &mut shutdown_waiter),
            };
            let due: Vec<TimerKey> = timers
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(key, _)| key.clone())
                .collect();
            for key in due {
                timers.remove(&key);
                result = result.and(self.server.handle_timer(key, now));
            }
            if let Err(ServerError::Poisoned) = result {
                tracing::error!("protocol core poisoned by an internal error; shutting down");
                let _ = self.fatal.try_send(());
            }
            self.carry_out_effects(&mut writers, &mut timers);
            if shutdown_waiter.is_some() && self.server.pending_persists() == 0 {
                if let Some(done) = shutdown_waiter.take() {
                    let _ = done.try_send(());
                }
            }
        }
        self.meta
    }

    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    fn handle(
        &mut self,
        input: DriverInput,
        now: Millis,
        writers: &mut HashMap<ConnId, ConnectionWriter>,
        shutdown_waiter: &mut Option<async_channel::Sender<()>>,
    ) -> Result<(), ServerError> {
        match input {
            DriverInput::Open { conn, info, writer } => {
                writers.insert(conn, writer);
                self.metrics.connections_open.fetch_add(1, Relaxed);
                self.metrics.connections_total.fetch_add(1, Relaxed);
                self.server.handle_open(conn, info, now)
            }
            DriverInput::Frame { conn, frame } => {
                self.metrics.bytes_in.fetch_add(frame.len() as u64, Relaxed);
                self.server.handle_frame(conn, frame, now)
            }
            DriverInput::Sent { conn, bytes } => {
                self.metrics.bytes_out.fetch_add(bytes as u64, Relaxed);
                self.server.handle_sent(conn, bytes)
            }
            DriverInput::Closed { conn } => {
                if writers.remove(&conn).is_some() {
                    self.metrics.connections_open.fetch_sub(1, Relaxed);
                }
                self.server.handle_closed(conn, now)
            }
            DriverInput::Executor(Completion::Query {
                handle,
                outcome,
                wrote,
            }) => self.server.handle_query_done(handle, outcome, wrote, now),
            DriverInput::Executor(Completion::Upload { handle, result }) => {
                self.server.handle_upload_done(handle, result, now)
            }
            DriverInput::Meta(MetaDone::Loaded { room_id, result }) => {
                self.server.handle_snapshot_loaded(&room_id, result, now)
            }
            DriverInput::Meta(MetaDone::Persisted {
                room_id,
                version,
                result,
            }) => self
                .server
                .handle_snapshot_persisted(&room_id, version, result, now),
            DriverInput::Shutdown { done } => {
                *shutdown_waiter = Some(done);
                self.server.handle_shutdown(now)
            }
        }
    }

    fn carry_out_effects(
        &mut self,
        writers: &mut HashMap<ConnId, ConnectionWriter>,
        timers: &mut BTreeMap<TimerKey, Millis>,
    ) {
        while let Some(effect) = self.server.poll_effect() {
            match effect {
                Effect::Send { conn, frame } => {
                    if let Some(writer) = writers.get(&conn) {
                        let _ = writer.queue.try_send(Outbound::Frame(frame));
                    }
                }
                Effect::Close { conn, code, reason } => {
                    if let Some(writer) = writers.get(&conn) {
                        let _ = writer.close.try_send((code, reason));
                    }
                }
                Effect::RunQuery(run) => self.executor.submit(Job::Query {
                    handle: run.query,
                    kind: run.kind,
                    sql: run.sql,
                    persist: run.persist,
                    arrow_header: run.arrow_header,
                    json_header: run.json_header,
                }),
                Effect::Interrupt { query } => self.executor.interrupt(query),
                Effect::UploadTable(upload) => self.executor.submit(Job::Upload {
                    handle: upload.query,
                    table_name: upload.table_name,
                    payload: upload.payload,
                }),
                Effect::LoadSnapshot { room_id } => self.meta.submit(MetaJob::Load { room_id }),
                Effect::PersistSnapshot {
                    room_id,
                    snapshot,
                    version,
                } => self.meta.submit(MetaJob::Persist {
                    room_id,
                    snapshot,
                    version,
                }),
                Effect::SetTimer { key, at } => {
                    timers.insert(key, at);
                }
                Effect::CancelTimer { key } => {
                    timers.remove(&key);
                }
                Effect::InvalidateCache => self.cache.invalidate(),
            }
        }
        self.metrics
            .crdt_rooms
            .store(self.server.room_count() as u64, Relaxed);
        self.metrics
            .crdt_updates
            .store(self.server.crdt_updates_accepted(), Relaxed);
    }
}
