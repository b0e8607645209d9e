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
//! job; what needs the document now (a joiner's snapshot, a save, a client's seed, another
//! replica's change) waits in the room for the job's report (`rooms/mod.rs`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use loro::{ExportMode, LoroDoc};

use crate::ids::ConnId;

/// A change accepted into the room, not yet imported, with the connection that sent it
/// (`None`: another replica), which already has it.
#[derive(Debug, Clone)]
pub(crate) struct PendingChange {
    pub sender: Option<ConnId>,
    pub bytes: Bytes,
}

pub(crate) struct RoomDoc {
    doc: LoroDoc,
    /// Accepted (checked, relayed, acknowledged or waiting for the log), not handed to a job.
    pending: Vec<PendingChange>,
    /// The job holding the document, with the changes handed to it.
    lent: Option<(u64, Vec<Bytes>)>,
    next_job: u64,
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
    changes: Vec<Bytes>,
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
}

impl RoomDocJob {
    /// Imports the changes one by one, in the order they were accepted (as they would have
    /// been on arrival: `import_batch` would amortise Loro's per-import cost over the batch,
    /// but it leaves a different record of containers created and emptied within the batch
    /// than importing them one by one, which clients do), then exports if asked.
    pub fn run(self) -> RoomDocWorked {
        let refused = self
            .changes
            .iter()
            .filter(|change| self.doc.import(change).is_err())
            .count() as u64;
        // Exporting a snapshot of a document we hold cannot fail short of a Loro bug; an
        // empty snapshot would still be importable by clients.
        let snapshot = self
            .export
            .then(|| self.doc.export(ExportMode::Snapshot).unwrap_or_default());
        let waiting = self
            .export
            .then(|| self.doc.export_pending_updates().ok().flatten())
            .flatten();
        RoomDocWorked {
            refused,
            snapshot,
            waiting,
        }
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

    /// A checked change, to import later; `true` when it is the first one waiting (the
    /// caller arms the import).
    pub(crate) fn accept(&mut self, sender: Option<ConnId>, update: Bytes) -> bool {
        self.pending.push(PendingChange {
            sender,
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
        let changes: Vec<Bytes> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|change| change.bytes)
            .collect();
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
    /// changes imported (the same code the driver runs), then a snapshot if `export`.
    fn work_here(&mut self, export: bool) -> RoomDocWorked {
        debug_assert!(self.lent.is_none());
        let Some((id, job)) = self.lend(export) else {
            return RoomDocWorked::default();
        };
        let worked = job.run();
        self.returned(id, &worked);
        worked
    }

    /// Imports the waiting changes here, on the caller's thread (the document is home).
    fn import_pending(&mut self) {
        if self.has_pending() {
            self.work_here(false);
        }
    }

    /// Imports `bytes` now (after the waiting changes): a stored snapshot, a logged update,
    /// a client's seed, another replica's change. Whether the document changed. Only while
    /// the document is home (callers wait for the job's report otherwise).
    pub(crate) fn import_now(&mut self, bytes: &[u8]) -> Result<bool, String> {
        self.import_pending();
        let status = self.doc.import(bytes).map_err(|e| e.to_string())?;
        Ok(!status.success.is_empty())
    }

    /// Whether the document holds no change at all (waiting ones imported first). Only while
    /// the document is home.
    pub(crate) fn is_empty(&mut self) -> bool {
        self.import_pending();
        self.doc.oplog_vv().is_empty()
    }

    /// The whole document, every accepted change included, on the caller's thread: for
    /// the rare readers that cannot wait for a job (observers, republishing to the cluster,
    /// salvage after a panic). While a job holds the document it is read from a copy with
    /// the job's and the pending changes imported (Loro's import is idempotent), so neither
    /// the job nor its snapshot is disturbed.
    pub(crate) fn snapshot_now(&mut self) -> Vec<u8> {
        let Some((_, handed)) = &self.lent else {
            return self.work_here(true).snapshot.unwrap_or_default();
        };
        // A fork holds the document's applied history only: the changes in it that wait for
        // a dependency are carried over too, or a pending change that completes them would
        // be imported without them.
        let copy = self.doc.fork();
        if let Ok(Some(waiting)) = self.doc.export_pending_updates() {
            let _ = copy.import(&waiting);
        }
        for change in handed.iter().chain(self.pending.iter().map(|c| &c.bytes)) {
            let _ = copy.import(change);
        }
        copy.export(ExportMode::Snapshot).unwrap_or_default()
    }
}
