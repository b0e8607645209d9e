//! The core's own timers: what happens when one is due (pings and silent peers, the
//! authentication deadline, room saves and eviction, HTTP idleness, query timeouts).

use crate::conn::Conn;
use crate::effect::Effect;
use crate::ids::{ConnId, Millis};
use crate::server::{close_code, Server};
use crate::timers::TimerKey;

impl Server {
    pub(crate) fn timer(&mut self, key: TimerKey, now: Millis) {
        match key {
            TimerKey::AuthDeadline(conn) => self.auth_deadline(conn, now),
            TimerKey::RoomDebounce(room_id) | TimerKey::RoomMaxLatency(room_id) => {
                self.room_save_due(&room_id, now)
            }
            TimerKey::RoomEvict(room_id) => self.room_evict_due(&room_id),
            TimerKey::RoomImport(room_id) => self.room_import_due(&room_id, now),
            TimerKey::HttpIdle(conn) => self.http_idle_due(conn, now),
            TimerKey::Ping(conn) => self.ping_due(conn, now),
            TimerKey::PeerSilent(conn) => self.silence_due(conn, now),
            TimerKey::QueryTimeout(query) => self.query_timed_out(query, now),
        }
    }

    /// Time to ping `conn` again.
    fn ping_due(&mut self, conn: ConnId, now: Millis) {
        let (Some(every), true) = (
            self.config.ping_interval_ms,
            self.conns.get(&conn).is_some_and(Conn::is_open),
        ) else {
            return;
        };
        self.push(Effect::Ping { conn });
        self.timers.set(TimerKey::Ping(conn), now.plus(every));
    }

    /// The silence deadline of `conn` came: close it if nothing was heard since, unless we
    /// are the ones not reading it.
    fn silence_due(&mut self, conn: ConnId, now: Millis) {
        let Some(silence) = self.config.idle_timeout_ms else {
            return;
        };
        let Some(c) = self.conns.get(&conn).filter(|c| c.is_open()) else {
            return;
        };
        let heard = if self.is_reading_paused(conn) {
            now
        } else {
            c.last_heard()
        };
        let deadline = heard.plus(silence);
        if deadline <= now {
            let reason = format!("idle timeout: nothing heard for {silence} ms");
            self.close(conn, close_code::GOING_AWAY, &reason, now);
        } else {
            self.timers.set(TimerKey::PeerSilent(conn), deadline);
        }
    }

    /// The authentication deadline of `conn` passed.
    fn auth_deadline(&mut self, conn: ConnId, now: Millis) {
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.is_open() && !c.authenticated())
        {
            self.close(
                conn,
                close_code::POLICY_VIOLATION,
                "authentication timeout",
                now,
            );
        }
    }
}
