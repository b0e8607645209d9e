//! Single flight for persisted reads (`persist: true`): identical requests that arrive while
//! one is running wait for it here, in the core, instead of each occupying a DuckDB worker
//! (or a worker blocking on another's computation). A waiter is an ordinary query in flight
//! (same cancel, caps and close handling); cancelling it answers at once.
//!
//! A flight is joinable until something writes (`InvalidateCache`): a request that arrives
//! after a write was acknowledged never shares a result computed before it. A leader whose
//! result cannot be shared (its client cancelled it, it wrote, or its connection went away)
//! releases its waiters to run on their own.
//!
//! A leader whose result streams (PROTOCOL §3b) lands its flight as it starts: the waiters
//! whose replies would be written at once read its stream (`shared_streams`), the others run
//! on their own, and the flight can no longer be joined (a reply cannot begin midway).

use std::collections::BTreeMap;

use crate::codec::QueryKind;
use crate::ids::QueryHandle;

/// What makes two requests identical: the kind, the exact SQL, and the reply shape (bare
/// results for ordered dialects, SQLRooms frames otherwise).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FlightKey {
    pub(super) kind: QueryKind,
    pub(super) sql: String,
    pub(super) bare: bool,
}

#[derive(Debug)]
pub(crate) struct Flight {
    pub(super) key: FlightKey,
    /// Bytes of the leader's Arrow frame header, cut before re-heading the IPC stream.
    pub(super) leader_arrow_header_len: usize,
    pub(super) waiters: Vec<QueryHandle>,
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    joinable: BTreeMap<FlightKey, QueryHandle>,
    by_leader: BTreeMap<QueryHandle, Flight>,
    leader_of: BTreeMap<QueryHandle, QueryHandle>,
    /// Streams read by several queries: the stream's source (the leader's handle, which the
    /// executor reports under) and the queries still reading it, the leader's while it stays.
    shared_streams: BTreeMap<QueryHandle, Vec<QueryHandle>>,
    reading: BTreeMap<QueryHandle, QueryHandle>,
    /// Waiters answered from a leader's result since the server started.
    pub(super) shared: u64,
}

/// A reader that stopped reading a shared stream ([`Flights::stop_reading`]).
pub(super) enum StoppedReading {
    /// Others still read it: its source runs on.
    OthersRead,
    /// It was the last reader: nobody wants the source's result any more.
    Last { source: QueryHandle },
}

impl Flights {
    /// The leader a new identical request may wait for.
    pub(super) fn joinable(&self, key: &FlightKey) -> Option<QueryHandle> {
        self.joinable.get(key).copied()
    }

    pub(super) fn lead(&mut self, leader: QueryHandle, key: FlightKey, arrow_header_len: usize) {
        self.joinable.insert(key.clone(), leader);
        self.by_leader.insert(
            leader,
            Flight {
                key,
                leader_arrow_header_len: arrow_header_len,
                waiters: Vec::new(),
            },
        );
    }

    pub(super) fn wait(&mut self, leader: QueryHandle, waiter: QueryHandle) {
        if let Some(flight) = self.by_leader.get_mut(&leader) {
            flight.waiters.push(waiter);
            self.leader_of.insert(waiter, leader);
        }
    }

    /// A write was acknowledged: no running flight may be joined any more.
    pub(super) fn seal_all(&mut self) {
        self.joinable.clear();
    }

    /// The leader finished or went away: its flight, with the waiters to settle.
    pub(super) fn land(&mut self, leader: QueryHandle) -> Option<Flight> {
        let flight = self.by_leader.remove(&leader)?;
        if self.joinable.get(&flight.key) == Some(&leader) {
            self.joinable.remove(&flight.key);
        }
        for waiter in &flight.waiters {
            self.leader_of.remove(waiter);
        }
        Some(flight)
    }

    /// Takes a waiter out of its flight (cancelled, or its connection went away); `false` if
    /// it was not waiting.
    pub(super) fn leave(&mut self, waiter: QueryHandle) -> bool {
        let Some(leader) = self.leader_of.remove(&waiter) else {
            return false;
        };
        if let Some(flight) = self.by_leader.get_mut(&leader) {
            flight.waiters.retain(|w| *w != waiter);
        }
        true
    }

    /// The requests waiting for `leader`'s result.
    pub(super) fn waiters_of(&self, leader: QueryHandle) -> &[QueryHandle] {
        self.by_leader
            .get(&leader)
            .map_or(&[], |flight| flight.waiters.as_slice())
    }

    pub(super) fn is_waiting(&self, handle: QueryHandle) -> bool {
        self.leader_of.contains_key(&handle)
    }

    /// `readers` (the source first) read the stream `source` began.
    pub(super) fn share_stream(&mut self, source: QueryHandle, readers: Vec<QueryHandle>) {
        for reader in &readers {
            self.reading.insert(*reader, source);
        }
        self.shared_streams.insert(source, readers);
    }

    /// `reader` stops reading its shared stream; `None` if it reads none.
    pub(super) fn stop_reading(&mut self, reader: QueryHandle) -> Option<StoppedReading> {
        let source = self.reading.remove(&reader)?;
        let readers = self.shared_streams.get_mut(&source)?;
        readers.retain(|r| *r != reader);
        if !readers.is_empty() {
            return Some(StoppedReading::OthersRead);
        }
        self.shared_streams.remove(&source);
        Some(StoppedReading::Last { source })
    }

    /// The shared stream `source` ended (whole or not): the queries still reading it.
    pub(super) fn end_stream(&mut self, source: QueryHandle) -> Option<Vec<QueryHandle>> {
        let readers = self.shared_streams.remove(&source)?;
        for reader in &readers {
            self.reading.remove(reader);
        }
        Some(readers)
    }

    /// Whether `reader` reads a shared stream.
    pub(super) fn reads_shared_stream(&self, reader: QueryHandle) -> bool {
        self.reading.contains_key(&reader)
    }

    /// Whether `source` began a stream others read.
    pub(super) fn is_shared_stream(&self, source: QueryHandle) -> bool {
        self.shared_streams.contains_key(&source)
    }

    /// Requests waiting.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.leader_of.len()
    }
}
