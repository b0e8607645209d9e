//! Mosaic's WebSocket protocol (`socketConnector`), a dialect of the same core: messages
//! `{"type":"arrow"|"json"|"exec","sql":…}` without ids, answered strictly in the order
//! received (they may run concurrently): Arrow as a bare IPC stream in a binary message,
//! `json` as a JSON array text, `exec` as `{}`, errors as `{"error":…}`. Authentication is
//! the connection's (upgrade header or `?token=`; Mosaic clients send no `auth` message),
//! and caps, the cache, flights, the inbound budget and metrics are the same as for every
//! other door.

use crate::codec::{decode_client_frame, ClientMessage, Frame};
use crate::http::{HttpResponse, Slot};
use crate::ids::{ConnId, Millis, QueryId};
use crate::server::Server;
use crate::ProtocolError;

impl HttpResponse {
    /// The Mosaic socket message for an answer.
    pub(crate) fn into_mosaic_frame(self) -> Frame {
        match self {
            HttpResponse::Arrow(ipc) => Frame::Binary(ipc),
            HttpResponse::Json(rows) => Frame::Text(rows),
            HttpResponse::Error { message, .. } => {
                Frame::Text(serde_json::json!({ "error": message }).to_string())
            }
            // `Done`, and routes that cannot occur on a socket.
            _ => Frame::Text("{}".into()),
        }
    }
}

impl Server {
    /// A message on a Mosaic socket (its size already checked by `frame`).
    pub(crate) fn mosaic_frame(
        &mut self,
        conn: ConnId,
        frame: Frame,
        authenticated: bool,
        now: Millis,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let slot = c.reserve_answer_slot();
        let refusal = match self.mosaic_query(conn, slot, authenticated, frame, now) {
            Ok(()) => return,
            Err(error) => error,
        };
        self.answer(conn, slot, HttpResponse::refusal(refusal), now);
    }

    fn mosaic_query(
        &mut self,
        conn: ConnId,
        slot: Slot,
        authenticated: bool,
        frame: Frame,
        now: Millis,
    ) -> Result<(), ProtocolError> {
        if !authenticated {
            return Err(ProtocolError::Unauthorized);
        }
        if matches!(frame, Frame::Binary(_)) {
            return Err(ProtocolError::MosaicBinary);
        }
        match decode_client_frame(&frame, &self.config.limits).map_err(|e| e.error)? {
            ClientMessage::Query {
                kind, sql, persist, ..
            } => {
                let query_id = QueryId::Num(slot.to_string());
                self.start_query_answered_in_order(
                    conn, kind, sql, query_id, persist, slot, None, now,
                )
            }
            other => Err(ProtocolError::NotMosaic(other.type_name())),
        }
    }
}
