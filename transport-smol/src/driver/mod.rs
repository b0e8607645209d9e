//! The effect loop: one task owns the core `Server`, feeds it every input with the current
//! time, carries out the effects it emits, and sleeps until the next input or the core's
//! next timeout (`poll_timeout`).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use duckwire_core::{
    close_code, ConnId, ConnectionInfo, Effect, Frame, HttpRequest, HttpResponse, Millis,
    QueryHandle, QueryOutcome, RunQuery, Server, ServerError, UploadTable,
};

use crate::broker::Control;
use crate::cache::ResultCache;
use crate::executor::stream::ResultStream;
use crate::executor::{Completion, Executor, Job};
use crate::meta::{MetaDone, MetaJob, MetaWorker};
use crate::metrics::Metrics;

pub use crate::writer::{ConnectionWriter, Outbound, ReadGate, SentCounter, SentReports};

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
    Http {
        conn: ConnId,
        request: HttpRequest,
    },
    /// A WebSocket pong arrived.
    Pong {
        conn: ConnId,
    },
    /// What the connection sent could not be framed: the core answers and closes it.
    Malformed {
        conn: ConnId,
        malformed: duckwire_core::Malformed,
    },
    Closed {
        conn: ConnId,
    },
    Executor(Completion),
    Meta(MetaDone),
    /// A large CRDT change's check (`Effect::CheckRoomChange`) finished on the blocking pool.
    RoomChangeChecked {
        conn: ConnId,
        check_id: u64,
        result: Result<(), String>,
    },
    /// A room document job (`Effect::RunRoomDocJob`) finished on the blocking pool.
    RoomDocWorked {
        room_id: String,
        job_id: u64,
        worked: duckwire_core::RoomDocWorked,
    },
    /// Cluster mode: Redis confirmed (or could not make) a subscription the core asked for.
    BrokerSubscribed {
        channel: String,
        token: u64,
    },
    /// Cluster mode: Redis took (or lost) these publications.
    NotifiesPublished {
        tokens: Vec<u64>,
    },
    /// Cluster mode: a message Redis delivered on a user channel.
    RemoteNotify {
        channel: String,
        message: Vec<u8>,
    },
    /// Cluster mode: a room's local snapshot and log with its shared log added.
    RoomLoaded {
        room_id: String,
        result: Result<duckwire_core::StoredRoom, String>,
    },
    /// Cluster mode: another replica's change of a room loaded here.
    RemoteRoomUpdate {
        room_id: String,
        update: Bytes,
    },
    /// Cluster mode: every entry of a room's shared log up to `position` was delivered.
    SharedLogPosition {
        room_id: String,
        position: String,
    },
    /// Cluster mode: the Redis connection is back after a loss.
    BrokerReconnected,
    /// Begin shutdown; `done` is signalled once every dirty room is saved.
    Shutdown {
        done: async_channel::Sender<()>,
    },
}

/// Queued inputs the driver handles in a row before it lets other tasks run.
const INPUTS_PER_YIELD: usize = 64;

pub struct Driver {
    pub server: Server,
    pub inputs: async_channel::Receiver<DriverInput>,
    /// Where work the driver hands to other threads (room document jobs) reports back.
    pub inputs_back: async_channel::Sender<DriverInput>,
    pub executor: Arc<Executor>,
    pub meta: MetaWorker,
    pub cache: Arc<ResultCache>,
    /// Cluster mode (`--redis-url`).
    pub broker: Option<crate::broker::Broker>,
    pub metrics: Arc<Metrics>,
    /// What the connections' writers have sent (shared with them).
    pub sent_reports: Arc<SentReports>,
    /// Signalled if the core is poisoned: the server must stop.
    pub fatal: async_channel::Sender<()>,
    pub started: Instant,
}

/// The driver's own bookkeeping beside the core.
#[derive(Default)]
struct State {
    writers: HashMap<ConnId, ConnectionWriter>,
    shutdown_waiter: Option<async_channel::Sender<()>>,
    /// The core panicked: it answers nothing more, and the server is stopping.
    poisoned: bool,
    /// Room saves issued after the core was poisoned, not yet finished.
    salvage_saves: usize,
    /// The frame the core just handled: its reader is told after the effects are applied.
    frame_taken: Option<(ConnId, usize)>,
    /// Streamed results the core has not yet sent to their connection's writer (an HTTP
    /// answer may wait for earlier ones), with the connection they belong to.
    streams: HashMap<QueryHandle, (ConnId, ResultStream)>,
    /// Connections with sent bytes to report, swapped with [`SentReports`]' list (the two
    /// vectors keep their capacity, so reporting allocates nothing).
    sent_to_report: Vec<ConnId>,
}

mod effects;

impl Driver {
    pub async fn run(mut self) -> MetaWorker {
        let mut state = State::default();
        // One timer for the core's deadlines, re-armed only when the core wants to wake
        // earlier than it is set for: arming a timer costs syscalls and a wake-up of the
        // reactor, and the earliest deadline moves on almost every frame (idle timers).
        // A timer that fires before the core's deadline only costs a `handle_timeout` with
        // nothing due.
        let mut timer = smol::Timer::never();
        let mut armed: Option<Instant> = None;
        // Inputs handled since the driver last gave the executor's other tasks a turn.
        let mut without_yield = 0;
        loop {
            let input = match self.inputs.try_recv() {
                // Work already queued: no timer to look at. A long burst yields now and
                // then, or the connection writers and the Redis tasks on this thread would
                // wait for the whole burst (Redis calls time out after 500 ms).
                Ok(input) => {
                    without_yield += 1;
                    if without_yield >= INPUTS_PER_YIELD {
                        without_yield = 0;
                        smol::future::yield_now().await;
                    }
                    Some(Ok(input))
                }
                Err(async_channel::TryRecvError::Closed) => break,
                Err(async_channel::TryRecvError::Empty) => {
                    without_yield = 0;
                    let wanted = self
                        .server
                        .poll_timeout()
                        .filter(|_| !state.poisoned)
                        .map(|at| self.started + std::time::Duration::from_millis(at.0));
                    if let Some(deadline) = wanted {
                        if armed.is_none_or(|armed| deadline < armed) {
                            timer.set_at(deadline);
                            armed = Some(deadline);
                        }
                    }
                    smol::future::or(async { Some(self.inputs.recv().await) }, async {
                        (&mut timer).await;
                        armed = None;
                        None
                    })
                    .await
                }
            };
            let now = self.now();
            if !state.poisoned {
                self.fold_sent_bytes(&mut state);
            }
            let result = match input {
                None => {
                    // Timers due at once (a room's import of the changes it just accepted)
                    // run after the connection tasks sent the replies those inputs queued.
                    smol::future::yield_now().await;
                    let now = self.now();
                    self.call_core(|server| server.handle_timeout(now))
                }
                Some(Err(_)) => break,
                Some(Ok(input)) => self.handle(input, now, &mut state),
            };
            if let Err(ServerError::Poisoned) = result {
                self.poisoned(&mut state);
            }
            if !state.poisoned {
                self.carry_out_effects(&mut state, now);
            }
            if let Some((conn, bytes)) = state.frame_taken.take() {
                if let Some(writer) = state.writers.get(&conn) {
                    writer.gate.taken(bytes);
                }
            }
            let saved = if state.poisoned {
                state.salvage_saves == 0
            } else {
                self.server.pending_persists() == 0
            };
            if saved {
                if let Some(done) = state.shutdown_waiter.take() {
                    let _ = done.try_send(());
                }
            }
        }
        self.meta
    }

    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    /// Tells the core what the writers sent since it last heard (see [`SentReports`]).
    fn fold_sent_bytes(&mut self, state: &mut State) {
        let mut connections = std::mem::take(&mut state.sent_to_report);
        std::mem::swap(
            &mut connections,
            &mut *self
                .sent_reports
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for conn in connections.drain(..) {
            let Some((bytes, payload)) = state.writers.get(&conn).map(|w| w.sent.take()) else {
                continue;
            };
            self.metrics.bytes_out.inc_by(payload as u64);
            if bytes > 0 {
                if let Err(ServerError::Poisoned) =
                    self.call_core(|server| server.handle_sent(conn, bytes))
                {
                    self.poisoned(state);
                    return;
                }
            }
        }
        state.sent_to_report = connections;
    }

    /// Calls the core; a panic inside it is caught here, so it stops the server through the
    /// shutdown path instead of unwinding out of the driver task.
    fn call_core(
        &mut self,
        input: impl FnOnce(&mut Server) -> Result<(), ServerError>,
    ) -> Result<(), ServerError> {
        match catch_unwind(AssertUnwindSafe(|| input(&mut self.server))) {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!("protocol core panicked: {message}");
                Err(ServerError::Poisoned)
            }
        }
    }

    /// First poisoning: close every connection, save what rooms can still be exported, and
    /// tell the server to stop.
    fn poisoned(&mut self, state: &mut State) {
        if state.poisoned {
            return;
        }
        state.poisoned = true;
        tracing::error!(
            "protocol core poisoned by an internal error: closing connections, saving rooms, \
             stopping the server"
        );
        for writer in state.writers.values() {
            let _ = writer
                .close
                .try_send((close_code::INTERNAL_ERROR, "internal server error".into()));
        }
        let rooms = catch_unwind(AssertUnwindSafe(|| self.server.unsaved_room_snapshots()))
            .unwrap_or_default();
        for (room_id, snapshot) in rooms {
            state.salvage_saves += 1;
            // The log rows stay: a later load replays them over this snapshot (idempotent).
            self.meta.submit(MetaJob::Persist {
                room_id,
                snapshot,
                version: 0,
                log_seq: 0,
            });
        }
        let _ = self.fatal.try_send(());
    }

    fn handle(
        &mut self,
        input: DriverInput,
        now: Millis,
        state: &mut State,
    ) -> Result<(), ServerError> {
        if state.poisoned {
            self.handle_while_poisoned(input, state);
            return Ok(());
        }
        match input {
            DriverInput::Open { conn, info, writer } => {
                state.writers.insert(conn, writer);
                self.metrics.connections_open.inc();
                self.metrics.connections_total.inc();
                self.call_core(|server| server.handle_open(conn, info, now))
            }
            DriverInput::Frame { conn, frame } => {
                let bytes = frame.len();
                self.metrics.bytes_in.inc_by(bytes as u64);
                // Once the core decided (and its pause, if any, is applied) the reader may go on.
                state.frame_taken = Some((conn, bytes));
                self.call_core(|server| server.handle_frame(conn, frame, now))
            }
            DriverInput::Http { conn, request } => {
                self.metrics.bytes_in.inc_by(request.body.len() as u64);
                self.call_core(|server| server.handle_http_request(conn, request, now))
            }
            DriverInput::Pong { conn } => self.call_core(|server| server.handle_pong(conn, now)),
            DriverInput::Malformed { conn, malformed } => {
                self.call_core(|server| server.handle_malformed(conn, malformed, now))
            }
            DriverInput::Closed { conn } => {
                if state.writers.remove(&conn).is_some() {
                    self.metrics.connections_open.dec();
                }
                // Its unsent streams go: their workers stop at their next piece.
                state.streams.retain(|_, (owner, _)| *owner != conn);
                self.call_core(|server| server.handle_closed(conn, now))
            }
            DriverInput::Executor(Completion::Classified { handle }) => self.call_core(|server| {
                server.handle_query_classified(handle, duckwire_core::Verdict::Read, now)
            }),
            DriverInput::Executor(Completion::Streaming { handle, stream }) => {
                // A query the core no longer knows drops its stream here (its worker stops).
                let Some(conn) = self.server.connection_of(handle) else {
                    return Ok(());
                };
                state.streams.insert(handle, (conn, stream));
                let started = self.call_core(|server| server.handle_query_streaming(handle, now));
                if !self.server.is_streaming(handle) {
                    state.streams.remove(&handle);
                }
                started
            }
            DriverInput::Executor(Completion::Query {
                handle,
                outcome,
                wrote,
            }) => self.call_core(|server| server.handle_query_done(handle, outcome, wrote, now)),
            DriverInput::Executor(Completion::Upload { handle, outcome }) => {
                self.call_core(|server| server.handle_upload_done(handle, outcome, now))
            }
            DriverInput::Shutdown { done } => {
                state.shutdown_waiter = Some(done);
                self.call_core(|server| server.handle_shutdown(now))
            }
            input => self.handle_storage_or_broker(input, now),
        }
    }

    /// After the core was poisoned: only the salvage saves and shutdown matter.
    fn handle_while_poisoned(&mut self, input: DriverInput, state: &mut State) {
        match input {
            DriverInput::Meta(MetaDone::Persisted {
                room_id, result, ..
            }) => {
                state.salvage_saves = state.salvage_saves.saturating_sub(1);
                if let Err(e) = result {
                    tracing::error!(room_id, "room not saved after poisoning: {e}");
                }
            }
            DriverInput::Shutdown { done } => state.shutdown_waiter = Some(done),
            DriverInput::Open { writer, .. } => {
                let _ = writer
                    .close
                    .try_send((close_code::INTERNAL_ERROR, "internal server error".into()));
            }
            _ => {}
        }
    }

    /// What meta storage and the cluster broker report.
    fn handle_storage_or_broker(
        &mut self,
        input: DriverInput,
        now: Millis,
    ) -> Result<(), ServerError> {
        match input {
            DriverInput::Meta(MetaDone::Loaded { room_id, result }) => match &self.broker {
                // Cluster mode: the room's shared log comes on top of the local part.
                Some(broker) => {
                    broker.control(Control::Load {
                        room_id,
                        local: result,
                    });
                    Ok(())
                }
                None => self.call_core(|server| server.handle_room_loaded(&room_id, result, now)),
            },
            DriverInput::RoomLoaded { room_id, result } => {
                self.call_core(|server| server.handle_room_loaded(&room_id, result, now))
            }
            DriverInput::RemoteRoomUpdate { room_id, update } => self.call_core(|server| {
                if !server.handle_remote_room_update(&room_id, update, now)? {
                    tracing::debug!(room_id, "a change from another replica was not imported");
                }
                Ok(())
            }),
            DriverInput::SharedLogPosition { room_id, position } => {
                self.call_core(|server| server.handle_shared_log_position(&room_id, position))
            }
            DriverInput::BrokerReconnected => {
                self.call_core(|server| server.handle_broker_reconnected())
            }
            DriverInput::Meta(MetaDone::Appended {
                room_id,
                seq,
                result,
            }) => self
                .call_core(|server| server.handle_room_update_appended(&room_id, seq, result, now)),
            DriverInput::Meta(MetaDone::Persisted {
                room_id,
                version,
                result,
            }) => self.call_core(|server| {
                server.handle_snapshot_persisted(&room_id, version, result, now)
            }),
            DriverInput::RoomDocWorked {
                room_id,
                job_id,
                worked,
            } => self
                .call_core(|server| server.handle_room_doc_worked(&room_id, job_id, worked, now)),
            DriverInput::RoomChangeChecked {
                conn,
                check_id,
                result,
            } => self
                .call_core(|server| server.handle_room_change_checked(conn, check_id, result, now)),
            DriverInput::BrokerSubscribed { channel, token } => {
                self.call_core(|server| server.handle_broker_subscribed(&channel, token, now))
            }
            DriverInput::NotifiesPublished { tokens } => self.call_core(|server| {
                tokens
                    .into_iter()
                    .try_for_each(|token| server.handle_notify_published(token))
            }),
            DriverInput::RemoteNotify { channel, message } => self.call_core(|server| {
                if !server.handle_remote_notify(&channel, &message, now)? {
                    tracing::warn!(channel, "ignored a malformed message from Redis");
                }
                Ok(())
            }),
            // Every other input is handled by `Driver::handle`.
            _ => Ok(()),
        }
    }
}
