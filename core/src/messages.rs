//! What a WebSocket message does (SQLRooms' protocol; Mosaic's socket goes on to `mosaic.rs`):
//! the frame cap, decoding, authentication (three wrong tokens close the connection), and
//! the dispatch of each message type to the module that decides about it.

use crate::auth::Rights;
use crate::codec::{decode_client_frame, ClientMessage, Frame, ServerMessage};
use crate::conn::Conn;
use crate::http::Dialect;
use crate::ids::{ConnId, Millis};
use crate::server::{close_code, Server, MAX_AUTH_STRIKES};
use crate::timers::TimerKey;
use crate::ProtocolError;

impl Server {
    pub(crate) fn frame(&mut self, conn: ConnId, frame: Frame, now: Millis) {
        self.budget.arriving(frame.len());
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.heard(now);
        if !c.is_open() {
            return;
        }
        // After a change being checked off the thread, in the order sent (`rooms/checks.rs`).
        let Some(frame) = self.defer_while_checking(conn, frame) else {
            return;
        };
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (dialect, authenticated) = (c.dialect(), c.authenticated());
        if dialect == Dialect::Http {
            return;
        }
        if self.config.limits.check_frame(frame.len()).is_err() {
            // Answered as a frame the transport could not take (close 1009), in one place.
            return self.malformed(conn, crate::Malformed::FrameTooLarge, now);
        }
        if dialect == Dialect::MosaicSocket {
            return self.mosaic_frame(conn, frame, authenticated, now);
        }
        let message = match decode_client_frame(&frame, &self.config.limits) {
            Ok(message) => message,
            Err(e) => {
                // An unauthenticated peer learns nothing about the protocol.
                let error = if authenticated {
                    e.error
                } else {
                    ProtocolError::Unauthorized
                };
                self.send_error(conn, error, e.query_id, now);
                return;
            }
        };
        if let ClientMessage::Auth { token } = &message {
            self.authenticate(conn, token, now);
            return;
        }
        if !authenticated {
            let query_id = message.query_id().cloned();
            self.send_error(conn, ProtocolError::Unauthorized, query_id, now);
            return;
        }
        self.dispatch(conn, message, now);
    }

    fn authenticate(&mut self, conn: ConnId, token: &str, now: Millis) {
        let rights = self.config.rights_of([token]);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(rights) = rights {
            // A second `auth` may change the rights (a read token, then the full one).
            let was_authenticated = c.grant(rights);
            if !was_authenticated && self.config.auth_token.is_some() {
                self.timers.cancel(&TimerKey::AuthDeadline(conn));
            }
            self.send(conn, ServerMessage::AuthAck, now);
            return;
        }
        let strikes = c.strike();
        self.send_error(conn, ProtocolError::Unauthorized, None, now);
        if strikes >= MAX_AUTH_STRIKES {
            self.close(
                conn,
                close_code::POLICY_VIOLATION,
                "too many failed authentication attempts",
                now,
            );
        }
    }

    fn dispatch(&mut self, conn: ConnId, message: ClientMessage, now: Millis) {
        // `exec` and uploads are refused where they start, with every other restriction
        // (`queries::reads_only_for`); notifies and CRDT changes, which carry no id, here.
        let read_token = self.conns.get(&conn).and_then(Conn::rights) == Some(Rights::ReadOnly);
        let starts_work = matches!(
            message,
            ClientMessage::Query { .. } | ClientMessage::UploadArrow { .. }
        );
        if read_token && message.writes_by_type() && !starts_work {
            let refused = crate::queries::refused_message(message.type_name());
            return self.send_error(conn, ProtocolError::ReadTokenWrite(refused), None, now);
        }
        match message {
            ClientMessage::Auth { .. } => unreachable!("handled before dispatch"),
            ClientMessage::Query {
                kind,
                sql,
                query_id,
                persist,
            } => self.start_query(conn, kind, sql, query_id, persist, now),
            ClientMessage::UploadArrow {
                query_id,
                table_name,
                payload,
            } => self.start_upload(conn, query_id, table_name, payload, now),
            ClientMessage::Cancel { query_id } => self.cancel_query(conn, query_id, now),
            ClientMessage::Subscribe { channel } => self.subscribe(conn, channel, now),
            ClientMessage::Unsubscribe { channel } => self.unsubscribe(conn, channel, now),
            ClientMessage::Notify { channel, payload } => self.notify(conn, channel, payload, now),
            ClientMessage::CrdtJoin { room_id } => self.join_room(conn, room_id, now),
            ClientMessage::CrdtSnapshot { room_id, data } => {
                self.client_snapshot(conn, room_id, data, now)
            }
            ClientMessage::CrdtUpdate(update) => self.room_update(conn, update, now),
        }
    }
}
