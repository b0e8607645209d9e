//! A room's Loro document, the changes it accepted but has not imported yet, and the work on
//! it that runs off the protocol thread.
//!
//! Why the work leaves: Loro's import of a change and its export of a snapshot cost time in
//! proportion to the peers a document has seen (its version vectors are cloned, compared and
//! merged: profiled in BENCHMARKS.md), and a room gets a new peer on every page load. On the
//! thread that answers every connection, that cost grew every edit's acknowledgement with the
//! room's history. So an accepted change is checked on a scratch document (a cost
//! independent of the history), relayed and acknowledged at once, and kept as *pending*;
//! imports and snapshot exports run as a [`RoomDocJob`] the driver carries out on a thread
//! of its own (`Effect::RunRoomDocJob`) and reports back (`handle_room_doc_worked`).
//!
//! While a job runs the document is *lent*: one job per room at a time, and nothing here
//! imports into it or exports from it (a job's snapshot is then exactly the document as lent,
//! with every change handed to the job). Changes accepted meanwhile stay pending for the next
//! job; what needs the document now (a joiner's snapshot, a save, a client's seed) waits in
//! the room for the job's report (`rooms/mod.rs`). A room's load (its stored snapshot and
//! logged updates) and other replicas' changes are imported by jobs too: a long log or a
//! burst from the cluster costs the thread that answers every connection nothing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use loro::{ExportMode, LoroDoc};

use crate::ids::ConnId;

/// Where a change the room imports comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeFrom {
    /// A member, who has it and to whom the others' copies were relayed on acceptance.
    Member(ConnId),
    /// Another replica (cluster mode): relayed to the members once imported, if it held
    /// something this document lacked (the shared log also carries whole states).
    Replica,
    /// The room's storage, on load: the stored snapshot, then the logged updates.
    Storage,
}

/// A change accepted into the room, not yet imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingChange {
    pub from: ChangeFrom,
    pub bytes: Bytes,
}

impl PendingChange {
    /// The member who sent it, if a member did.
    pub fn sender(&self) -> Option<ConnId> {
        match self.from {
            ChangeFrom::Member(conn) => Some(conn),
            ChangeFrom::Replica | ChangeFrom::Storage => None,
        }
    }
}

pub(crate) struct RoomDoc {
    doc: LoroDoc,
    /// Accepted (checked, relayed, acknowledged or waiting for the log), not handed to a job.
    pending: Vec<PendingChange>,
    /// The job holding the document, with the changes handed to it.
    lent: Option<(u64, Vec<PendingChange>)>,
    next_job: u64,
    /// Other replicas' changes imported here (not by a driver's job) that held something
    /// new: the room relays them (`take_new_from_replicas`).
    new_from_replicas: Vec<Bytes>,
    /// Changes that passed the check and that the document refused on import (a Loro bug,
    /// or bytes crafted to decode alone but not against this document), counted with every
    /// room's: the count outlives the room (a metric counter never goes down).
    refused_on_import: Arc<AtomicU64>,
}

/// Work on a room's document for the driver to run off the protocol thread: import the
/// changes in order, then (if asked) export the whole document. The document is shared with
/// the room (a Loro handle), which does not touch it until [`RoomDocWorked`] is reported.
pub struct RoomDocJob {
    doc: LoroDoc,
    changes: Vec<PendingChange>,
    export: bool,
}

/// What a [`RoomDocJob`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomDocWorked {
    /// Changes the document refused on import.
    pub refused: u64,
    /// The whole document after the imports, when the job was asked for it.
    pub snapshot: Option<Vec<u8>>,
    /// With the snapshot: the changes the document holds that wait for a dependency it has
    /// not seen (a snapshot leaves them out), as one Loro update, if any.
    pub waiting: Option<Vec<u8>>,
    /// Other replicas' changes that held something the document lacked, in import order:
    /// the members get them.
    pub new_from_replicas: Vec<Bytes>,
    /// A load's first stored change the document refused (its place among the stored ones,
    /// the snapshot first) and Loro's reason: the stored state is corrupt, the job stopped
    /// there and exported nothing.
    pub load_refused: Option<(usize, String)>,
}

impl RoomDocJob {
    /// Imports the changes one by one, in the order they were accepted (as they would have
    /// been on arrival: `import_batch` would amortise Loro's per-import cost over the batch,
    /// but it leaves a different record of containers created and emptied within the batch
    /// than importing them one by one, which clients do), then exports if asked.
    pub fn run(self) -> RoomDocWorked {
        let mut worked = RoomDocWorked::default();
        let mut stored = 0;
        for change in &self.changes {
            match (self.doc.import(&change.bytes), change.from) {
                (Ok(status), ChangeFrom::Replica) if !status.success.is_empty() => {
                    worked.new_from_replicas.push(change.bytes.clone())
                }
                (Ok(_), ChangeFrom::Storage) => stored += 1,
                (Ok(_), _) => {}
                (Err(e), ChangeFrom::Storage) => {
                    worked.refused += 1;
                    worked.load_refused = Some((stored, e.to_string()));
                    return worked;
                }
                (Err(_), _) => worked.refused += 1,
            }
        }
        if self.export {
            // Exporting a snapshot of a document we hold cannot fail short of a Loro bug; an
            // empty snapshot would still be importable by clients.
            worked.snapshot = Some(self.doc.export(ExportMode::Snapshot).unwrap_or_default());
            worked.waiting = self.doc.export_pending_updates().ok().flatten();
        }
        worked
    }

    /// The changes the job imports.
    pub fn changes(&self) -> usize {
        self.changes.len()
    }

    /// Whether the job exports a snapshot.
    pub fn exports(&self) -> bool {
        self.export
    }
}

impl std::fmt::Debug for RoomDocJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomDocJob")
            .field("changes", &self.changes.len())
            .field("export", &self.export)
            .finish()
    }
}

impl Clone for RoomDocJob {
    fn clone(&self) -> Self {
        RoomDocJob {
            doc: self.doc.clone(), // the same document: a handle
            changes: self.changes.clone(),
            export: self.export,
        }
    }
}

/// Jobs compare by what they do (the document is a handle without equality).
impl PartialEq for RoomDocJob {
    fn eq(&self, other: &Self) -> bool {
        self.changes == other.changes && self.export == other.export
    }
}

impl RoomDoc {
    pub(crate) fn new(doc: LoroDoc, refused_on_import: Arc<AtomicU64>) -> RoomDoc {
        RoomDoc {
            doc,
            pending: Vec::new(),
            lent: None,
            next_job: 0,
            new_from_replicas: Vec::new(),
            refused_on_import,
        }
    }

    /// Whether Loro decodes `update` (a change or a snapshot), on a scratch document: its
    /// cost depends on the update alone. A change whose dependencies are missing decodes (it
    /// waits in the document, as it would in the room).
    pub(crate) fn check(update: &[u8]) -> Result<(), String> {
        LoroDoc::new()
            .import(update)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A change to import later; `true` when it is the first one waiting (the caller arms
    /// the import).
    pub(crate) fn accept(&mut self, from: ChangeFrom, update: Bytes) -> bool {
        self.pending.push(PendingChange {
            from,
            bytes: update,
        });
        self.pending.len() == 1
    }

    /// Whether a job holds the document.
    pub(crate) fn is_lent(&self) -> bool {
        self.lent.is_some()
    }

    /// Whether changes wait for a job.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether `cap` (`Limits::max_unimported_changes_per_room`) changes or more are accepted
    /// and not imported yet: pending, and handed to the running job.
    pub(crate) fn imports_behind(&self, cap: Option<usize>) -> bool {
        let unimported = self.pending.len() + self.lent.as_ref().map_or(0, |(_, h)| h.len());
        cap.is_some_and(|cap| unimported >= cap)
    }

    /// Changes accepted since the running job took the document (none when it is home).
    pub(crate) fn pending(&self) -> &[PendingChange] {
        &self.pending
    }

    /// Lends the document to a job that imports every pending change and, if `export`,
    /// exports it afterwards. `None` while another job holds it.
    pub(crate) fn lend(&mut self, export: bool) -> Option<(u64, RoomDocJob)> {
        if self.lent.is_some() {
            return None;
        }
        let changes = std::mem::take(&mut self.pending);
        self.next_job += 1;
        let id = self.next_job;
        self.lent = Some((id, changes.clone()));
        let job = RoomDocJob {
            doc: self.doc.clone(),
            changes,
            export,
        };
        Some((id, job))
    }

    /// The job `id` reported: the document is home again. `false` for a report of another
    /// job (stale or unknown), which changes nothing.
    pub(crate) fn returned(&mut self, id: u64, worked: &RoomDocWorked) -> bool {
        if self.lent.as_ref().is_none_or(|(lent, _)| *lent != id) {
            return false;
        }
        self.lent = None;
        if worked.refused > 0 {
            self.refused_on_import.fetch_add(worked.refused, Relaxed);
        }
        true
    }

    /// A job run here, on the caller's thread, while the document is home: the waiting
    /// changes imported (the same code the driver runs).
    fn work_here(&mut self) -> RoomDocWorked {
        debug_assert!(self.lent.is_none());
        let Some((id, job)) = self.lend(false) else {
            return RoomDocWorked::default();
        };
        let worked = job.run();
        self.returned(id, &worked);
        worked
    }

    /// Imports the waiting changes here, on the caller's thread (the document is home).
    fn import_pending(&mut self) {
        if self.has_pending() {
            let worked = self.work_here();
            self.new_from_replicas.extend(worked.new_from_replicas);
        }
    }

    /// Other replicas' changes imported here that the members have not been sent yet.
    pub(crate) fn take_new_from_replicas(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.new_from_replicas)
    }

    /// Imports a client's seed now (after the waiting changes). Only while the document is
    /// home (callers wait for the job's report otherwise).
    pub(crate) fn import_now(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.import_pending();
        self.doc
            .import(bytes)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Whether the document holds no change at all (waiting ones imported first). Only while
    /// the document is home.
    pub(crate) fn is_empty(&mut self) -> bool {
        self.import_pending();
        self.doc.oplog_vv().is_empty()
    }

    /// The whole document, every accepted change included, on the caller's thread: for
    /// the rare readers that cannot wait for a job (observers, republishing to the cluster,
    /// salvage after a panic). While a job holds the document, or changes wait for one, it
    /// is read from a copy with the job's and the pending changes imported (Loro's import is
    /// idempotent), so neither the job nor its snapshot is disturbed, and the changes are
    /// left for a job (which relays other replicas' ones).
    pub(crate) fn snapshot_now(&self) -> Vec<u8> {
        let handed = self.lent.as_ref().map_or(&[][..], |(_, handed)| handed);
        if self.lent.is_none() && self.pending.is_empty() {
            return self.doc.export(ExportMode::Snapshot).unwrap_or_default();
        }
        // A fork holds the document's applied history only: the changes in it that wait for
        // a dependency are carried over too, or a pending change that completes them would
        // be imported without them.
        let copy = self.doc.fork();
        if let Ok(Some(waiting)) = self.doc.export_pending_updates() {
            let _ = copy.import(&waiting);
        }
        for change in handed.iter().chain(&self.pending) {
            let _ = copy.import(&change.bytes);
        }
        copy.export(ExportMode::Snapshot).unwrap_or_default()
    }
}
