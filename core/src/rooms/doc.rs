//! A room's Loro document, with the changes it accepted but has not imported yet.
//!
//! Why imports wait: Loro's import costs time in proportion to the peers a document has seen
//! (its version vectors are cloned, compared and merged per change: profiled in BENCHMARKS.md),
//! and a room gets a new peer on every page load. An accepted change is therefore checked on
//! a scratch document (a cost independent of the room's history), relayed and acknowledged
//! at once, and imported with the other changes accepted meanwhile when the core's
//! `RoomImport` timer runs (right after the driver sent the replies). Before
//! anything reads the document (a join's snapshot, a save, a client's seed, a cluster
//! delivery), the pending changes are imported first, so what is read includes everything
//! acknowledged.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use loro::{ExportMode, LoroDoc};

pub(crate) struct RoomDoc {
    doc: LoroDoc,
    /// Accepted (checked, relayed, acknowledged or waiting for the log), not imported yet.
    pending: Vec<Bytes>,
    /// Changes that passed the check and that the document refused on import (a Loro bug,
    /// or bytes crafted to decode alone but not against this document), counted with every
    /// room's: the count outlives the room (a metric counter never goes down).
    refused_on_import: Arc<AtomicU64>,
}

impl RoomDoc {
    pub(crate) fn new(doc: LoroDoc, refused_on_import: Arc<AtomicU64>) -> RoomDoc {
        RoomDoc {
            doc,
            pending: Vec::new(),
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
    pub(crate) fn accept(&mut self, update: Bytes) -> bool {
        self.pending.push(update);
        self.pending.len() == 1
    }

    /// Imports the waiting changes, one by one, in the order they were accepted (as they
    /// would have been on arrival: `import_batch` would amortise Loro's per-import cost over
    /// the batch, but it leaves a different record of containers created and emptied within
    /// the batch than importing them one by one, which clients do). Whether the document
    /// changed.
    pub(crate) fn import_pending(&mut self) -> bool {
        let mut changed = false;
        for update in std::mem::take(&mut self.pending) {
            match self.doc.import(&update) {
                Ok(status) => changed |= !status.success.is_empty(),
                Err(_) => {
                    self.refused_on_import.fetch_add(1, Relaxed);
                }
            }
        }
        changed
    }

    /// Imports `bytes` now (after the waiting changes): a stored snapshot, a logged update,
    /// a client's seed, another replica's change. Whether the document changed.
    pub(crate) fn import_now(&mut self, bytes: &[u8]) -> Result<bool, String> {
        self.import_pending();
        let status = self.doc.import(bytes).map_err(|e| e.to_string())?;
        Ok(!status.success.is_empty())
    }

    /// Whether the document holds no change at all (waiting ones imported first).
    pub(crate) fn is_empty(&mut self) -> bool {
        self.import_pending();
        self.doc.oplog_vv().is_empty()
    }

    /// The whole document, every accepted change included.
    pub(crate) fn snapshot(&mut self) -> Vec<u8> {
        self.import_pending();
        // Exporting a snapshot of a document we hold cannot fail short of a Loro bug; an
        // empty snapshot would still be importable by clients.
        self.doc.export(ExportMode::Snapshot).unwrap_or_default()
    }
}
