//! The query lifecycle: the in-flight table, cancel, and exactly one terminal reply per
//! query (PROTOCOL §3).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::codec::{encode_arrow_frame_header, Frame, JsonReplyHeader, QueryKind, ServerMessage};
use crate::effect::{Effect, QueryOutcome, RunQuery, UploadTable};
use crate::http::Slot;
use crate::ids::{ConnId, Millis, QueryHandle, QueryId};
use crate::limits::check_cap;
use crate::server::Server;
use crate::ProtocolError;

/// What a handle stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    Query(QueryKind),
    Upload,
}

#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) conn: ConnId,
    pub(crate) query_id: QueryId,
    pub(crate) work: Work,
    /// The client cancelled it; a failure is then reported as "Query was cancelled".
    pub(crate) cancelled: bool,
    /// On an ordered connection (HTTP), the answer slot it fills.
    pub(crate) slot: Option<Slot>,
}

/// Every query in flight, across connections, by handle.
#[derive(Debug, Default)]
pub(crate) struct Queries {
    by_handle: BTreeMap<QueryHandle, InFlight>,
    next_handle: u64,
}

impl Queries {
    fn insert(&mut self, entry: InFlight) -> QueryHandle {
        self.next_handle += 1;
        let handle = QueryHandle(self.next_handle);
        self.by_handle.insert(handle, entry);
        handle
    }

    pub(crate) fn remove(&mut self, handle: QueryHandle) -> Option<InFlight> {
        self.by_handle.remove(&handle)
    }

    fn work_of(&self, handle: QueryHandle) -> Option<Work> {
        self.by_handle.get(&handle).map(|entry| entry.work)
    }

    fn get_mut(&mut self, handle: QueryHandle) -> Option<&mut InFlight> {
        self.by_handle.get_mut(&handle)
    }
}

impl Server {
    /// Validates and registers a query or upload; `Err` carries the error and the id to
    /// reply with.
    fn admit(
        &mut self,
        conn: ConnId,
        query_id: Option<QueryId>,
        work: Work,
        slot: Option<Slot>,
    ) -> Result<(QueryHandle, QueryId), (ProtocolError, Option<QueryId>)> {
        if self.shutting_down {
            return Err((ProtocolError::ShuttingDown, query_id));
        }
        let query_id = match query_id {
            Some(id) => id,
            None => QueryId::Str(self.ids.next_uuid_v4()),
        };
        let limit = self.config.limits.max_inflight_per_conn;
        let Some(c) = self.conns.get(&conn) else {
            return Err((ProtocolError::Unauthorized, Some(query_id)));
        };
        if c.inflight.contains_key(&query_id) {
            return Err((ProtocolError::DuplicateQueryId, Some(query_id)));
        }
        if let Err(e) = check_cap("max_inflight_per_conn", limit, c.inflight.len() + 1) {
            return Err((e, Some(query_id)));
        }
        let handle = self.queries.insert(InFlight {
            conn,
            query_id: query_id.clone(),
            work,
            cancelled: false,
            slot,
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.inflight.insert(query_id.clone(), handle);
        }
        Ok((handle, query_id))
    }

    /// Fault-injection builds: the configured SQL makes the handler panic.
    fn maybe_inject_panic(&self, _sql: &str) {
        #[cfg(feature = "fault-injection")]
        if self.config.panic_on_sql.as_deref() == Some(_sql) {
            panic!("fault injection: panic_on_sql matched");
        }
    }

    pub(crate) fn start_query(
        &mut self,
        conn: ConnId,
        kind: QueryKind,
        sql: String,
        query_id: Option<QueryId>,
        persist: bool,
        now: Millis,
    ) {
        self.maybe_inject_panic(&sql);
        if sql.trim().is_empty() {
            let id = query_id.unwrap_or_else(|| QueryId::Str(self.ids.next_uuid_v4()));
            self.send_error(conn, ProtocolError::EmptySql, Some(id), now);
            return;
        }
        match self.admit(conn, query_id, Work::Query(kind), None) {
            Ok((query, query_id)) => self.push(Effect::RunQuery(RunQuery {
                query,
                conn,
                kind,
                sql,
                persist: persist && kind != QueryKind::Exec,
                arrow_header: encode_arrow_frame_header(&query_id),
                json_header: Some(JsonReplyHeader::new(&query_id)),
                query_id,
            })),
            Err((error, id)) => self.send_error(conn, error, id, now),
        }
    }

    /// A query of an ordered connection: bare results, answered in its `slot`'s turn.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_query_answered_in_order(
        &mut self,
        conn: ConnId,
        kind: QueryKind,
        sql: String,
        query_id: QueryId,
        persist: bool,
        slot: Slot,
        _now: Millis,
    ) -> Result<(), ProtocolError> {
        self.maybe_inject_panic(&sql);
        if sql.trim().is_empty() {
            return Err(ProtocolError::EmptySql);
        }
        let (query, query_id) = self
            .admit(conn, Some(query_id), Work::Query(kind), Some(slot))
            .map_err(|(error, _)| error)?;
        self.push(Effect::RunQuery(RunQuery {
            query,
            conn,
            kind,
            sql,
            persist: persist && kind != QueryKind::Exec,
            arrow_header: Bytes::new(),
            json_header: None,
            query_id,
        }));
        Ok(())
    }

    pub(crate) fn start_upload(
        &mut self,
        conn: ConnId,
        query_id: Option<QueryId>,
        table_name: String,
        payload: Bytes,
        now: Millis,
    ) {
        match self.admit(conn, query_id, Work::Upload, None) {
            Ok((query, query_id)) => self.push(Effect::UploadTable(UploadTable {
                query,
                conn,
                query_id,
                table_name,
                payload,
            })),
            Err((error, id)) => self.send_error(conn, error, id, now),
        }
    }

    pub(crate) fn cancel_query(&mut self, conn: ConnId, query_id: QueryId, now: Millis) {
        let handle = self
            .conns
            .get(&conn)
            .and_then(|c| c.inflight.get(&query_id).copied());
        let cancelled = match handle.and_then(|h| self.queries.get_mut(h).map(|q| (h, q))) {
            Some((handle, entry)) => {
                if !entry.cancelled {
                    entry.cancelled = true;
                    self.push(Effect::Interrupt { query: handle });
                }
                true
            }
            None => false,
        };
        self.send(
            conn,
            ServerMessage::CancelAck {
                query_id,
                cancelled,
            },
            now,
        );
    }

    /// Removes a finished query from both tables; `None` if it is unknown or its connection
    /// is gone (then nothing is sent).
    fn finish(&mut self, handle: QueryHandle) -> Option<InFlight> {
        let entry = self.queries.remove(handle)?;
        if let Some(c) = self.conns.get_mut(&entry.conn) {
            c.inflight.remove(&entry.query_id);
        }
        Some(entry)
    }

    pub(crate) fn query_done(
        &mut self,
        handle: QueryHandle,
        outcome: QueryOutcome,
        wrote: bool,
        now: Millis,
    ) {
        if self.queries.work_of(handle) == Some(Work::Upload) {
            // An executor that reports an upload as a query still gets the upload reply.
            let result = match outcome {
                QueryOutcome::Failed(message) => Err(message),
                QueryOutcome::Cancelled => Err(ProtocolError::Cancelled.to_string()),
                _ => Ok(()),
            };
            return self.upload_done(handle, result, now);
        }
        let entry = self.finish(handle);
        let is_exec = entry
            .as_ref()
            .is_some_and(|e| e.work == Work::Query(QueryKind::Exec));
        // Even a query whose connection is gone may have written.
        if wrote || is_exec || matches!(outcome, QueryOutcome::NoResultSet) {
            self.push(Effect::InvalidateCache);
        }
        let Some(InFlight {
            conn,
            query_id,
            cancelled,
            slot,
            work,
        }) = entry
        else {
            return;
        };
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
        }
    }

    pub(crate) fn upload_done(
        &mut self,
        handle: QueryHandle,
        result: Result<(), String>,
        now: Millis,
    ) {
        // An upload that ran (even partly) may have replaced a table.
        self.push(Effect::InvalidateCache);
        let Some(InFlight {
            conn,
            query_id,
            cancelled,
            ..
        }) = self.finish(handle)
        else {
            return;
        };
        match result {
            Ok(()) => self.send(conn, ServerMessage::UploadAck { query_id }, now),
            Err(_) if cancelled => {
                self.send_error(conn, ProtocolError::Cancelled, Some(query_id), now)
            }
            Err(message) => self.send(
                conn,
                ServerMessage::Error {
                    error: message,
                    query_id: Some(query_id),
                },
                now,
            ),
        }
    }
}
