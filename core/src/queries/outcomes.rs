//! How a query ends: the executor's outcome delivered as the reply its door expects (a
//! SQLRooms frame, a Mosaic answer, an HTTP response), shared with the queries that waited
//! for the same result, or refused. (A child of `queries`: it reads a query's entry.)

use super::*;

impl Server {
    pub(crate) fn query_done(
        &mut self,
        handle: QueryHandle,
        outcome: QueryOutcome,
        wrote: bool,
        now: Millis,
    ) {
        if self.queries.work_of(handle) == Some(Work::Upload) {
            // An executor that reports an upload as a query still gets the upload reply.
            let outcome = match outcome {
                QueryOutcome::Failed(message) => crate::UploadOutcome::Failed(message),
                QueryOutcome::Cancelled => crate::UploadOutcome::Cancelled,
                _ => crate::UploadOutcome::Written,
            };
            return self.upload_done(handle, outcome, now);
        }
        if self.is_streaming(handle) || self.is_shared_stream(handle) {
            return self.streamed_query_done(handle, outcome, wrote, now);
        }
        // The end of a stream the core never began: `query_streaming` refused it because the
        // query had been interrupted first, so it went nowhere, and the query ends as an
        // interrupted one (cancelled, or its timeout).
        let outcome = match outcome {
            QueryOutcome::Streamed => QueryOutcome::Cancelled,
            other => other,
        };
        if matches!(outcome, QueryOutcome::NotARead(_)) && self.hand_back_to_barrier(handle) {
            // Nothing ran; those waiting for its result run on their own.
            if let Some(flight) = self.flights.land(handle) {
                self.release_waiters(flight);
            }
            self.start_held_queries(now);
            return;
        }
        let flight = self.flights.land(handle);
        let entry = self.finish(handle);
        let is_exec = entry
            .as_ref()
            .is_some_and(|e| e.work == Work::Query(QueryKind::Exec));
        // Even a query whose connection is gone may have written.
        if wrote || is_exec || matches!(outcome, QueryOutcome::NoResultSet) {
            self.invalidate_cache();
        }
        if let Some(flight) = flight {
            let leader_cancelled = entry.as_ref().is_none_or(|e| e.cancelled);
            let shared = (!wrote && !leader_cancelled)
                .then(|| outcome_to_share(&outcome))
                .flatten();
            match shared {
                Some(shared) => self.share_with_waiters(flight, &shared, now),
                None => self.release_waiters(flight),
            }
        }
        if let Some(entry) = entry {
            self.deliver(entry, outcome, now);
        }
        self.start_held_queries(now);
    }

    /// Answers every waiter of a flight from its leader's result, under their own ids.
    fn share_with_waiters(&mut self, flight: Flight, shared: &QueryOutcome, now: Millis) {
        let ipc_start = flight.leader_arrow_header_len;
        for waiter in flight.waiters {
            let Some(entry) = self.finish(waiter) else {
                continue;
            };
            self.flights.shared += 1;
            let outcome = match shared {
                QueryOutcome::Arrow(frame) => {
                    let ipc = frame.slice(ipc_start.min(frame.len())..);
                    if entry.slot.is_some() {
                        QueryOutcome::Arrow(ipc)
                    } else {
                        let header = encode_arrow_frame_header(&entry.query_id);
                        let mut reframed = Vec::with_capacity(header.len() + ipc.len());
                        reframed.extend_from_slice(&header);
                        reframed.extend_from_slice(&ipc);
                        QueryOutcome::Arrow(Bytes::from(reframed))
                    }
                }
                QueryOutcome::JsonReply(reply) => {
                    QueryOutcome::JsonReply(reply.reheaded(&JsonReplyHeader::new(&entry.query_id)))
                }
                other => other.clone(),
            };
            self.deliver(entry, outcome, now);
        }
    }

    /// The leader's result cannot be shared: every waiter runs on its own.
    pub(crate) fn release_waiters(&mut self, flight: Flight) {
        for waiter in flight.waiters {
            let Some(entry) = self.queries.get_mut(waiter) else {
                continue;
            };
            let (conn, query_id, work, bare, gate) = (
                entry.conn,
                entry.query_id.clone(),
                entry.work,
                entry.slot.is_some(),
                entry.gate,
            );
            let Work::Query(kind) = work else {
                continue;
            };
            let run = self.run_query(
                waiter,
                conn,
                kind,
                flight.key.sql.clone(),
                true,
                query_id,
                bare,
                gate,
            );
            self.push(Effect::RunQuery(run));
        }
    }

    /// Sends a finished query's reply in its connection's dialect.
    fn deliver(&mut self, entry: InFlight, outcome: QueryOutcome, now: Millis) {
        if entry.timed_out && outcome.is_interruption() {
            let limit = self.config.query_timeout_ms.unwrap_or_default();
            return self.deliver_timeout(entry, limit, now);
        }
        if let QueryOutcome::NotARead(classified_as) = outcome {
            return self.refuse(entry, &classified_as, now);
        }
        let is_exec = entry.work == Work::Query(QueryKind::Exec);
        let InFlight {
            conn,
            query_id,
            cancelled,
            slot,
            work,
            ..
        } = entry;
        if let (Some(slot), Work::Query(kind)) = (slot, work) {
            return self.answer_query(conn, slot, kind, outcome, now);
        }
        match outcome {
            // An exec answers `ok` whatever the last statement returned.
            _ if is_exec
                && !matches!(outcome, QueryOutcome::Failed(_) | QueryOutcome::Cancelled) =>
            {
                self.send(conn, ServerMessage::Ok { query_id }, now)
            }
            QueryOutcome::Arrow(frame) => self.send_frame(conn, Frame::Binary(frame), now),
            QueryOutcome::Json(data) => {
                self.send(conn, ServerMessage::Json { query_id, data }, now)
            }
            QueryOutcome::JsonReply(reply) => {
                self.send_frame(conn, Frame::Text(reply.into_text()), now)
            }
            QueryOutcome::NoResultSet => self.send(conn, ServerMessage::Ok { query_id }, now),
            QueryOutcome::Failed(_) if cancelled => {
                self.send_error(conn, ProtocolError::Cancelled, Some(query_id), now)
            }
            QueryOutcome::Failed(message) => self.send(
                conn,
                ServerMessage::Error {
                    error: message,
                    query_id: Some(query_id),
                },
                now,
            ),
            QueryOutcome::Cancelled => {
                self.send_error(conn, ProtocolError::Cancelled, Some(query_id), now)
            }
            // Answered by `refuse` above; a stream's end is an interruption here
            // (`query_done`).
            QueryOutcome::NotARead(_) | QueryOutcome::Streamed => {}
        }
    }

    /// A query that was not run because DuckDB says it is not a read and it may only read.
    fn refuse(&mut self, entry: InFlight, classified_as: &str, now: Millis) {
        let error = match entry.reads_only {
            Some(restriction) => restriction.refusal(refused_sql(classified_as)),
            // Only gated queries come back unrun; anything else is an executor bug.
            None => ProtocolError::ReadOnly,
        };
        match entry.slot {
            Some(slot) => self.answer(entry.conn, slot, HttpResponse::refusal(error), now),
            None => self.send_error(entry.conn, error, Some(entry.query_id), now),
        }
    }
}
