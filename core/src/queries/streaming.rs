//! Results sent as they are produced (PROTOCOL §3b). Once the executor says a result is
//! larger than `stream_results_above`, its reply starts at once: on a SQLRooms or Mosaic
//! socket as one WebSocket message whose fragments follow DuckDB's batches, over HTTP as a
//! chunked body. A WebSocket message cannot be taken back, so a query that fails (DuckDB's
//! error, a timeout, a cancel) after its reply began closes its connection (1011) instead of
//! ending the message as if the result were whole. (A child of `queries`: it reads a
//! query's entry.)

use super::*;
use crate::server::close_code;

impl Server {
    /// The executor is holding the first part of `handle`'s result and sends the rest as
    /// it comes: its reply starts now.
    pub(crate) fn query_streaming(&mut self, handle: QueryHandle, now: Millis) {
        let Some(entry) = self.queries.get_mut(handle) else {
            // Its connection went (its interrupt is on the way): nothing to send to.
            return;
        };
        if entry.cancelled || entry.timed_out {
            // Interrupted before it began: it ends as an interrupted query does.
            return;
        }
        entry.streaming = true;
        let (conn, slot) = (entry.conn, entry.slot);
        // A stream has one reader: queries waiting for the same result run on their own.
        if let Some(flight) = self.flights.land(handle) {
            self.release_waiters(flight);
        }
        let window = self.config.stream_window_bytes;
        match slot {
            Some(slot) => {
                let response = HttpResponse::Streamed {
                    query: handle,
                    window,
                };
                self.answer(conn, slot, response, now);
            }
            None => self.send_stream(conn, handle, window, now),
        }
    }

    /// Starts a streamed reply on a socket: its window is counted as queued (the cap may
    /// close the connection instead), then `Effect::SendStream`.
    pub(crate) fn send_stream(
        &mut self,
        conn: ConnId,
        query: QueryHandle,
        window: usize,
        now: Millis,
    ) {
        if self.account_outbound(conn, window, now) {
            self.push(Effect::SendStream {
                conn,
                query,
                window,
            });
        }
    }

    /// Whether `handle`'s reply is a stream that began; its end is then
    /// [`streamed_query_done`](Self::streamed_query_done)'s.
    pub fn is_streaming(&self, handle: QueryHandle) -> bool {
        self.queries
            .by_handle
            .get(&handle)
            .is_some_and(|entry| entry.streaming)
    }

    /// The connection a query in flight belongs to.
    pub fn connection_of(&self, handle: QueryHandle) -> Option<ConnId> {
        self.queries.by_handle.get(&handle).map(|entry| entry.conn)
    }

    /// A query whose reply is a stream ended: whole (nothing more to send), or not, and then
    /// the message cut short is never ended: its connection closes and says why.
    pub(crate) fn streamed_query_done(
        &mut self,
        handle: QueryHandle,
        outcome: QueryOutcome,
        wrote: bool,
        now: Millis,
    ) {
        let Some(entry) = self.finish(handle) else {
            return;
        };
        if wrote {
            self.invalidate_cache();
        }
        let why = match outcome {
            QueryOutcome::Streamed => None,
            _ if entry.timed_out => Some(
                ProtocolError::QueryTimeout(self.config.query_timeout_ms.unwrap_or_default())
                    .to_string(),
            ),
            _ if entry.cancelled || outcome.is_interruption() => {
                Some(ProtocolError::Cancelled.to_string())
            }
            QueryOutcome::Failed(message) => Some(message),
            // Nothing else follows the start of a stream; were it to, the reply is still
            // not whole.
            other => Some(format!("unexpected end: {other:?}")),
        };
        if let Some(why) = why {
            let reason = ProtocolError::StreamBroken {
                query_id: entry.query_id.to_string(),
                why,
            };
            self.close(
                entry.conn,
                close_code::INTERNAL_ERROR,
                &reason.to_string(),
                now,
            );
        }
        self.start_held_queries(now);
    }
}
