//! The driver carrying out the core's effects: bytes and closes to connection tasks, queries
//! and uploads to the worker pool (persisted reads the in-memory cache holds answered at
//! once), rooms to meta storage or the cluster broker. (A child of `driver`.)

use super::*;
use duckwire_core::StreamReader;

impl Driver {
    /// Carries out the core's effects, and answers persisted reads the in-memory cache holds
    /// right here (their answers are more effects), so a cache hit never waits for a worker.
    pub(super) fn carry_out_effects(&mut self, state: &mut State, now: Millis) {
        loop {
            let hits = self.carry_out_effects_once(&state.writers, &mut state.streams);
            if hits.is_empty() {
                return;
            }
            for (handle, outcome) in hits {
                let answered =
                    self.call_core(|server| server.handle_query_done(handle, outcome, false, now));
                if let Err(ServerError::Poisoned) = answered {
                    self.poisoned(state);
                    return;
                }
            }
        }
    }

    /// A cluster-mode request to Redis; the core asks for none without `--redis-url`.
    fn to_broker(&self, request: Control) {
        if let Some(broker) = &self.broker {
            broker.control(request);
        }
    }

    /// A persisted read answered from the in-memory cache, or `None` (run it).
    fn cache_hit(&self, run: &RunQuery) -> Option<QueryOutcome> {
        if !run.persist || !self.cache.is_enabled() {
            return None;
        }
        let started = Instant::now();
        let form = crate::cache::cache_form(run.kind, run.json_header.is_some());
        let value = self.cache.memory_hit(&(form, run.sql.clone()))?;
        let outcome = crate::cache::cached_outcome(
            run.kind,
            &run.arrow_header,
            run.json_header.as_ref(),
            value,
        );
        self.metrics
            .record_query(run.kind.as_str(), "ok", started.elapsed().as_secs_f64());
        Some(outcome)
    }

    fn carry_out_effects_once(
        &mut self,
        writers: &HashMap<ConnId, ConnectionWriter>,
        streams: &mut HashMap<QueryHandle, (ConnId, ResultStream)>,
    ) -> Vec<(QueryHandle, QueryOutcome)> {
        let mut hits = Vec::new();
        while let Some(effect) = self.server.poll_effect() {
            match effect {
                Effect::RunQuery(run) => hits.extend(self.run_query(run)),
                Effect::Interrupt { query } => {
                    self.executor.interrupt(query);
                    // A worker waiting to hand over its next piece stops too.
                    streams.remove(&query);
                }
                Effect::ShareStream {
                    source,
                    cut,
                    readers,
                } => share_stream(streams, source, cut, readers),
                Effect::SendStream {
                    conn,
                    query,
                    window,
                } => stream_to_connection(writers, streams, conn, query, window),
                Effect::Respond {
                    conn,
                    response: HttpResponse::Streamed { query, window },
                } => stream_to_connection(writers, streams, conn, query, window),
                Effect::UploadTable(upload) => self.upload(upload),
                Effect::RunRoomDocJob {
                    room_id,
                    job_id,
                    job,
                } => self.run_room_doc_job(room_id, job_id, job),
                Effect::CheckRoomChange {
                    conn,
                    check_id,
                    change,
                } => self.check_room_change(conn, check_id, change),
                Effect::InvalidateCache => self.cache.invalidate(),
                effect @ (Effect::Send { .. }
                | Effect::Respond { .. }
                | Effect::Close { .. }
                | Effect::Ping { .. }
                | Effect::PauseReading { .. }
                | Effect::ResumeReading { .. }) => to_connection(writers, effect),
                effect => self.send_to_storage_or_broker(effect),
            }
        }
        self.publish_core_gauges();
        hits
    }

    /// A query to the worker pool, or its answer at once from the in-memory cache.
    fn run_query(&mut self, run: RunQuery) -> Option<(QueryHandle, QueryOutcome)> {
        if let Some(outcome) = self.cache_hit(&run) {
            return Some((run.query, outcome));
        }
        tracing::debug!(
            conn = run.conn.0,
            query_id = %run.query_id,
            kind = run.kind.as_str(),
            "query submitted"
        );
        self.executor.submit(Job::Query {
            handle: run.query,
            kind: run.kind,
            sql: run.sql,
            persist: run.persist,
            arrow_header: run.arrow_header,
            json_header: run.json_header,
            gate: run.gate,
            stream: run.stream,
        });
        None
    }

    /// Loro's work on a room's document, on the blocking pool: its cost grows with the
    /// room's history, and on this thread it would hold up every connection's replies. The
    /// core hands out one job per room at a time, so a room's jobs run in order.
    fn run_room_doc_job(&self, room_id: String, job_id: u64, job: duckwire_core::RoomDocJob) {
        let back = self.inputs_back.clone();
        smol::unblock(move || {
            let worked = job.run();
            let _ = back.try_send(DriverInput::RoomDocWorked {
                room_id,
                job_id,
                worked,
            });
        })
        .detach();
    }

    /// A large CRDT change's check, on the blocking pool: it costs time in proportion to
    /// the change (the core pauses its connection meanwhile).
    fn check_room_change(&self, conn: ConnId, check_id: u64, change: bytes::Bytes) {
        let back = self.inputs_back.clone();
        smol::unblock(move || {
            let result = duckwire_core::check_room_change(&change);
            let _ = back.try_send(DriverInput::RoomChangeChecked {
                conn,
                check_id,
                result,
            });
        })
        .detach();
    }

    fn upload(&mut self, upload: UploadTable) {
        let (conn, bytes) = (upload.conn.0, upload.payload.len());
        let table = &upload.table_name;
        tracing::debug!(conn, query_id = %upload.query_id, table, bytes, "upload submitted");
        self.executor.submit(Job::Upload {
            handle: upload.query,
            table_name: upload.table_name,
            payload: upload.payload,
        })
    }

    /// Rooms' storage (meta storage, or the shared log in cluster mode) and the broker.
    fn send_to_storage_or_broker(&mut self, effect: Effect) {
        match effect {
            Effect::LoadSnapshot { room_id } => self.meta.submit(MetaJob::Load { room_id }),
            Effect::PersistSnapshot {
                room_id,
                snapshot,
                version,
                log_seq,
                covers,
            } => {
                // Cluster mode: also beside the room's shared log, by whichever replica
                // holds the room's save lease (the local copy is this replica's own).
                if let (Some(broker), Some(covers)) = (&self.broker, covers) {
                    broker.control(Control::SaveSnapshot {
                        room_id: room_id.clone(),
                        state: Bytes::from(snapshot.clone()),
                        covers,
                    });
                }
                self.meta.submit(MetaJob::Persist {
                    room_id,
                    snapshot,
                    version,
                    log_seq,
                })
            }
            Effect::AppendRoomUpdate {
                room_id,
                seq,
                update,
            } => match &self.broker {
                // Cluster mode: the room's shared log is the durable one.
                Some(broker) => broker.control(Control::Append {
                    room_id,
                    seq,
                    update,
                }),
                None => self.meta.submit(MetaJob::Append {
                    room_id,
                    seq,
                    update,
                }),
            },
            Effect::RoomUnloaded { room_id } => self.to_broker(Control::Unfollow { room_id }),
            Effect::RepublishRoom { room_id, state } => {
                self.to_broker(Control::Republish { room_id, state })
            }
            Effect::BrokerSubscribe { channel, token } => {
                self.to_broker(Control::Subscribe { channel, token })
            }
            Effect::BrokerUnsubscribe { channel } => {
                self.to_broker(Control::Unsubscribe { channel })
            }
            Effect::PublishNotify {
                channel,
                message,
                token,
            } => {
                if let Some(broker) = &self.broker {
                    broker.publish(channel, message, token);
                }
            }
            // Every other effect is carried out by `carry_out_effects_once`.
            _ => {}
        }
    }

    /// The core's counters, as metrics.
    fn publish_core_gauges(&self) {
        self.metrics.crdt_rooms.set(self.server.room_count() as u64);
        Metrics::set_counter(
            &self.metrics.crdt_updates,
            self.server.crdt_updates_accepted(),
        );
        Metrics::set_counter(&self.metrics.queries_shared, self.server.queries_shared());
        Metrics::set_counter(
            &self.metrics.crdt_refused_on_import,
            self.server.crdt_changes_refused_on_import(),
        );
        self.metrics
            .inbound_bytes
            .set(self.server.inbound_bytes_total() as u64);
    }
}

/// A streamed result to its connection's writer. One the driver no longer holds (its
/// query was interrupted) reaches the writer as a broken stream, which ends the connection's
/// output as a failed stream does: the core is closing it.
/// The stream `source`'s worker reported becomes one per reader (each taken by its
/// `SendStream` or streamed answer, which follow).
fn share_stream(
    streams: &mut HashMap<QueryHandle, (ConnId, ResultStream)>,
    source: QueryHandle,
    cut: usize,
    readers: Vec<StreamReader>,
) {
    let Some((conn, stream)) = streams.remove(&source) else {
        return;
    };
    let headers = readers.iter().map(|r| r.header.clone()).collect();
    let (own, theirs) = stream.share(cut, headers);
    streams.insert(source, (conn, own));
    for (reader, stream) in readers.into_iter().zip(theirs) {
        streams.insert(reader.query, (reader.conn, stream));
    }
}

fn stream_to_connection(
    writers: &HashMap<ConnId, ConnectionWriter>,
    streams: &mut HashMap<QueryHandle, (ConnId, ResultStream)>,
    conn: ConnId,
    query: QueryHandle,
    window: usize,
) {
    let stream = streams
        .remove(&query)
        .map_or_else(ResultStream::broken, |(_, stream)| stream);
    if let Some(writer) = writers.get(&conn) {
        let _ = writer.queue.try_send(Outbound::Stream { stream, window });
    }
}

/// Effects for one connection's task: what to write, when to close, whether to read.
fn to_connection(writers: &HashMap<ConnId, ConnectionWriter>, effect: Effect) {
    let conn = match &effect {
        Effect::Send { conn, .. }
        | Effect::Respond { conn, .. }
        | Effect::Close { conn, .. }
        | Effect::Ping { conn }
        | Effect::PauseReading { conn }
        | Effect::ResumeReading { conn } => *conn,
        _ => return,
    };
    // A connection whose task is gone has nothing left to write to.
    let Some(writer) = writers.get(&conn) else {
        return;
    };
    match effect {
        Effect::Send { frame, .. } => {
            let _ = writer.queue.try_send(Outbound::Frame(frame));
        }
        Effect::Respond { response, .. } => {
            let _ = writer.queue.try_send(Outbound::Response(response));
        }
        Effect::Close { code, reason, .. } => {
            let _ = writer.close.try_send((code, reason));
        }
        Effect::Ping { .. } => {
            let _ = writer.queue.try_send(Outbound::Ping);
        }
        Effect::PauseReading { .. } => writer.gate.pause(),
        Effect::ResumeReading { .. } => writer.gate.resume(),
        _ => {}
    }
}
