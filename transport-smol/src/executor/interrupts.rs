//! Interrupts: queued queries cancelled before they start, running ones interrupted through
//! their connection (and again until they stop: DuckDB clears the flag when a statement starts).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duckdb::InterruptHandle;
use duckwire_core::QueryHandle;

use super::stream::StreamCloser;

/// How often a cancelled query that is still running is interrupted again.
const REINTERRUPT_EVERY: Duration = Duration::from_millis(20);

/// Interrupt bookkeeping: queued handles can be cancelled before they start, running ones
/// through their connection's interrupt handle.
#[derive(Default)]
pub(super) struct Interrupts {
    state: Mutex<InterruptState>,
    /// Wakes the re-interrupt thread when a running query is cancelled (or at shutdown);
    /// it sleeps on it otherwise, so an idle server uses no CPU.
    cancelled_while_running: std::sync::Condvar,
}

#[derive(Default)]
struct InterruptState {
    queued: HashSet<QueryHandle>,
    cancelled_before_start: HashSet<QueryHandle>,
    running: HashMap<QueryHandle, Arc<InterruptHandle>>,
    /// Cancelled while running. DuckDB clears a connection's interrupt flag when a statement
    /// begins, so an interrupt that lands between two statements (or just before the first)
    /// would be lost; these are interrupted again until they finish.
    cancel_requested: HashSet<QueryHandle>,
    /// Running queries whose result streams: an interrupt also ends the stream, since their
    /// worker may be waiting for a reader that does not read (DuckDB's interrupt reaches a
    /// worker only while it runs DuckDB).
    streams: HashMap<QueryHandle, StreamCloser>,
    shutting_down: bool,
    stopped: bool,
}

impl InterruptState {
    fn interrupted(&self, handle: QueryHandle) -> bool {
        self.running.contains_key(&handle)
            && (self.shutting_down || self.cancel_requested.contains(&handle))
    }
}

impl Interrupts {
    fn lock(&self) -> std::sync::MutexGuard<'_, InterruptState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn queued(&self, handle: QueryHandle) {
        self.lock().queued.insert(handle);
    }

    pub(super) fn interrupt(&self, handle: QueryHandle) {
        let mut state = self.lock();
        if let Some(stream) = state.streams.get(&handle) {
            stream.close();
        }
        if let Some(running) = state.running.get(&handle) {
            running.interrupt();
            state.cancel_requested.insert(handle);
            self.cancelled_while_running.notify_one();
        } else if state.queued.contains(&handle) {
            state.cancelled_before_start.insert(handle);
        }
    }

    /// Registers a starting query; `false` if it was cancelled while queued.
    pub(super) fn start(&self, handle: QueryHandle, interrupt: Arc<InterruptHandle>) -> bool {
        let mut state = self.lock();
        state.queued.remove(&handle);
        if state.cancelled_before_start.remove(&handle) || state.shutting_down {
            return false;
        }
        state.running.insert(handle, interrupt);
        true
    }

    /// Whether the executor has interrupted the running query `handle` (a cancel, a timeout,
    /// a closed connection, or shutdown): a fact of its own, so a failure of that query is
    /// its interruption without reading DuckDB's error text.
    pub(super) fn was_interrupted(&self, handle: QueryHandle) -> bool {
        self.lock().interrupted(handle)
    }

    /// The running query `handle` began to stream its result: an interrupt (already
    /// requested, or to come) ends the stream too.
    pub(super) fn streaming(&self, handle: QueryHandle, closer: StreamCloser) {
        let mut state = self.lock();
        if state.interrupted(handle) {
            closer.close();
        }
        state.streams.insert(handle, closer);
    }

    /// The query stopped running; whether it had been interrupted ([`Self::was_interrupted`]).
    pub(super) fn finish(&self, handle: QueryHandle) -> bool {
        let mut state = self.lock();
        let interrupted = state.interrupted(handle);
        state.streams.remove(&handle);
        state.running.remove(&handle);
        state.cancel_requested.remove(&handle);
        interrupted
    }

    /// Re-interrupts cancelled queries (and, at shutdown, all) until they finish; sleeps
    /// while no cancelled query is running.
    pub(super) fn reinterrupt_until_stopped(&self) {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return;
            }
            let pending = state
                .running
                .keys()
                .any(|handle| state.shutting_down || state.cancel_requested.contains(handle));
            if !pending {
                state = self
                    .cancelled_while_running
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            for (handle, running) in &state.running {
                if state.shutting_down || state.cancel_requested.contains(handle) {
                    running.interrupt();
                }
            }
            state = self
                .cancelled_while_running
                .wait_timeout(state, REINTERRUPT_EVERY)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(super) fn stop(&self) {
        self.lock().stopped = true;
        self.cancelled_while_running.notify_all();
    }

    pub(super) fn interrupt_all(&self) {
        let mut state = self.lock();
        state.shutting_down = true;
        for running in state.running.values() {
            running.interrupt();
        }
        for stream in state.streams.values() {
            stream.close();
        }
        self.cancelled_while_running.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle_of(conn: &duckdb::Connection) -> Arc<InterruptHandle> {
        conn.interrupt_handle()
    }

    #[test]
    fn a_query_is_known_interrupted_only_once_the_executor_interrupted_it() {
        let conn = duckdb::Connection::open_in_memory().unwrap();
        let interrupts = Interrupts::default();
        let (quiet, cancelled) = (QueryHandle(1), QueryHandle(2));
        for handle in [quiet, cancelled] {
            interrupts.queued(handle);
            assert!(interrupts.start(handle, handle_of(&conn)));
        }
        interrupts.interrupt(cancelled);
        assert!(!interrupts.was_interrupted(quiet));
        assert!(interrupts.was_interrupted(cancelled));
        assert!(!interrupts.finish(quiet));
        assert!(interrupts.finish(cancelled));
        // Shutdown interrupts whatever runs.
        let last = QueryHandle(3);
        interrupts.queued(last);
        assert!(interrupts.start(last, handle_of(&conn)));
        interrupts.interrupt_all();
        assert!(interrupts.finish(last));
    }
}
