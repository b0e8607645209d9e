//! Results sent as they are produced (PROTOCOL §3b). Once the executor says a result is
//! larger than `stream_results_above`, its reply starts at once: on a SQLRooms or Mosaic
//! socket as one WebSocket message whose fragments follow DuckDB's batches, over HTTP as a
//! chunked body. A WebSocket message cannot be taken back, so a query that fails (DuckDB's
//! error, a timeout, a cancel) after its reply began closes its connection (1011) instead of
//! ending the message as if the result were whole.
//!
//! Identical persisted reads waiting for a query whose result streams read its stream (one
//! DuckDB run, the same pieces written to every reader's connection, each reply with its own
//! header). A reader that is cancelled, times out or goes stops reading alone; the run stops
//! when nobody reads. (A child of `queries`: it reads a query's entry.)

use super::*;
use crate::effect::StreamReader;
use crate::server::close_code;

impl Server {
    /// The executor is holding the first part of `handle`'s result and sends the rest as
    /// it comes: its reply starts now, and so do those of the identical persisted reads
    /// waiting for it that can take the stream at once (they read the same pieces).
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
        let readers = match self.flights.land(handle) {
            Some(flight) => self.readers_of_stream(handle, flight),
            None => Vec::new(),
        };
        self.start_streamed_reply(conn, slot, handle, now);
        for reader in readers {
            self.start_streamed_reply(reader.conn, reader.slot, reader.query, now);
        }
    }

    /// Which of a streaming leader's waiters read its stream (announced with
    /// `Effect::ShareStream`, before any reply starts); the others run on their own. A waiter
    /// reads it when its reply would be written at once (on a connection no other reader of
    /// it uses), and only when the leader's would too: the stream goes at the pace of its
    /// slowest reader, and a reader whose reply waits behind another stream (this one
    /// included) could, through that stream's readers, end up waiting for itself.
    fn readers_of_stream(&mut self, source: QueryHandle, flight: Flight) -> Vec<StreamingReader> {
        let Some((leader_id, leader_conn, leader_slot)) = self
            .queries
            .by_handle
            .get(&source)
            .map(|e| (e.query_id.clone(), e.conn, e.slot))
        else {
            return Vec::new();
        };
        // The leader reads its own stream: were its reply to wait behind another, every
        // reader would wait with it.
        let leader_at_once = self
            .conns
            .get(&leader_conn)
            .is_some_and(|c| c.would_write_at_once(leader_slot));
        if !leader_at_once {
            self.release_waiters(flight);
            return Vec::new();
        }
        let (kind, bare) = (flight.key.kind, flight.key.bare);
        let mut readers = Vec::new();
        let mut on_their_own = Vec::new();
        // One reader per connection: a second reply on a connection waits for the first
        // to end, and the first could not end while the stream waits for the second.
        let mut reading_conns = std::collections::BTreeSet::from([leader_conn]);
        for waiter in flight.waiters.iter().copied() {
            let Some(entry) = self.queries.get_mut(waiter) else {
                continue;
            };
            let at_once = !reading_conns.contains(&entry.conn)
                && self
                    .conns
                    .get(&entry.conn)
                    .is_some_and(|c| c.would_write_at_once(entry.slot));
            if !at_once {
                on_their_own.push(waiter);
                continue;
            }
            reading_conns.insert(entry.conn);
            entry.streaming = true;
            readers.push(StreamingReader {
                query: waiter,
                conn: entry.conn,
                slot: entry.slot,
                header: reply_header(kind, bare, &entry.query_id),
            });
        }
        if !on_their_own.is_empty() {
            self.release_waiters(Flight {
                waiters: on_their_own,
                ..flight
            });
        }
        if readers.is_empty() {
            return readers;
        }
        self.flights.shared += readers.len() as u64;
        let all = std::iter::once(source).chain(readers.iter().map(|r| r.query));
        self.flights.share_stream(source, all.collect());
        self.push(Effect::ShareStream {
            source,
            cut: reply_header(kind, bare, &leader_id).len(),
            readers: readers
                .iter()
                .map(|r| StreamReader {
                    query: r.query,
                    conn: r.conn,
                    header: r.header.clone(),
                })
                .collect(),
        });
        readers
    }

    /// A streamed reply starts: in its turn among an HTTP connection's answers, or at once
    /// on a socket.
    fn start_streamed_reply(
        &mut self,
        conn: ConnId,
        slot: Option<Slot>,
        query: QueryHandle,
        now: Millis,
    ) {
        let window = self.config.stream_window_bytes;
        match slot {
            Some(slot) => {
                let response = HttpResponse::Streamed { query, window };
                self.answer(conn, slot, response, now);
            }
            None => self.send_stream(conn, query, window, now),
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

    /// Whether `handle`'s executor runs a stream several queries read (reported under
    /// `handle` even after its own query is gone).
    pub(crate) fn is_shared_stream(&self, handle: QueryHandle) -> bool {
        self.flights.is_shared_stream(handle)
    }

    /// A reader of a shared stream is cancelled or times out: it alone stops reading (its
    /// connection closes as a stream cut short does, saying `why`), and the executor is
    /// interrupted only once nobody reads. `false` if it reads no shared stream.
    pub(crate) fn stop_reading_shared(
        &mut self,
        reader: QueryHandle,
        why: ProtocolError,
        now: Millis,
    ) -> bool {
        let Some(stopped) = self.flights.stop_reading(reader) else {
            return false;
        };
        if let Some(entry) = self.finish(reader) {
            self.close_cut_stream(&entry, why.to_string(), now);
        }
        if let StoppedReading::Last { source } = stopped {
            self.push(Effect::Interrupt { query: source });
        }
        true
    }

    /// A query whose reply is a stream ended: whole (nothing more to send), or not, and then
    /// the message cut short is never ended: its connection closes and says why. A shared
    /// stream ends so for every query still reading it.
    pub(crate) fn streamed_query_done(
        &mut self,
        handle: QueryHandle,
        outcome: QueryOutcome,
        wrote: bool,
        now: Millis,
    ) {
        if wrote {
            self.invalidate_cache();
        }
        let readers = self
            .flights
            .end_stream(handle)
            .unwrap_or_else(|| vec![handle]);
        for reader in readers {
            if let Some(entry) = self.finish(reader) {
                self.end_streamed_reply(entry, &outcome, now);
            }
        }
        self.start_held_queries(now);
    }

    fn end_streamed_reply(&mut self, entry: InFlight, outcome: &QueryOutcome, now: Millis) {
        let why = match outcome {
            QueryOutcome::Streamed => None,
            _ if entry.timed_out => Some(
                ProtocolError::QueryTimeout(self.config.query_timeout_ms.unwrap_or_default())
                    .to_string(),
            ),
            _ if entry.cancelled || outcome.is_interruption() => {
                Some(ProtocolError::Cancelled.to_string())
            }
            QueryOutcome::Failed(message) => Some(message.clone()),
            // Nothing else follows the start of a stream; were it to, the reply is still
            // not whole.
            other => Some(format!("unexpected end: {other:?}")),
        };
        if let Some(why) = why {
            self.close_cut_stream(&entry, why, now);
        }
    }

    /// A streamed reply that will never be whole: its connection closes (1011) saying which
    /// query's result was cut and why.
    fn close_cut_stream(&mut self, entry: &InFlight, why: String, now: Millis) {
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
}

/// A waiter that reads its leader's stream.
struct StreamingReader {
    query: QueryHandle,
    conn: ConnId,
    slot: Option<Slot>,
    header: Bytes,
}

/// What a query's reply starts with before the result's own bytes: the SQLRooms frame
/// header (Arrow) or the `json` reply's opening (JSON); nothing for bare results.
pub(super) fn reply_header(kind: QueryKind, bare: bool, query_id: &QueryId) -> Bytes {
    match (bare, kind) {
        (true, _) | (false, QueryKind::Exec) => Bytes::new(),
        (false, QueryKind::Arrow) => encode_arrow_frame_header(query_id),
        (false, QueryKind::Json) => {
            Bytes::copy_from_slice(JsonReplyHeader::new(query_id).as_str().as_bytes())
        }
    }
}
