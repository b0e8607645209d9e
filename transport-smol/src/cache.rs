//! The result cache of `persist: true` queries (PROTOCOL §3): key = (query type, exact SQL),
//! a byte budget with LRU eviction, an optional on-disk tier, and invalidation by writes.
//! Identical requests that arrive while one runs never reach it twice: the core makes them
//! wait for the running one (single flight without holding a worker; `duckwire_core`'s
//! `flights`).
//!
//! Freshness is the one write epoch the whole server shares ([`WriteEpoch`]: advanced by the
//! core's `InvalidateCache`, by every write a worker runs, and by room saves; it also tells
//! workers to forget their plans). An entry is served only in the epoch it was computed in,
//! and a read that started before a write and finishes after it is not cached.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::executor::connection::WriteEpoch;
use crate::metrics::Metrics;

pub type CacheKey = (&'static str, String);

/// What the cache stores: Arrow IPC stream bytes or a JSON rows string (as bytes).
pub type CachedValue = Bytes;

#[derive(Default)]
struct Lru {
    /// Value, recency tick, and the write epoch it was computed in.
    entries: HashMap<CacheKey, (CachedValue, u64, u64)>,
    /// Recency tick → key.
    order: BTreeMap<u64, CacheKey>,
    tick: u64,
    bytes: usize,
}

/// The lock guards the memory tier only: the driver thread takes it for every memory lookup,
/// so no file is read, written or deleted while it is held (disk writes happen on the worker
/// that computed the value; stale files are deleted by the janitor thread).
pub struct ResultCache {
    budget: Option<usize>,
    disk: Option<PathBuf>,
    /// Deletes the files of past write epochs, off every thread that serves queries.
    janitor: Option<Mutex<std::sync::mpsc::Sender<Sweep>>>,
    lru: Mutex<Lru>,
    metrics: Arc<Metrics>,
    epoch: Arc<WriteEpoch>,
}

impl ResultCache {
    /// `budget`: bytes for the in-memory tier (`None` → no in-memory tier). The on-disk tier
    /// is emptied at start: the database may have changed while the server was down.
    pub fn new(
        budget: Option<usize>,
        disk: Option<PathBuf>,
        metrics: Arc<Metrics>,
        epoch: Arc<WriteEpoch>,
    ) -> std::io::Result<Self> {
        let mut janitor = None;
        if let Some(dir) = &disk {
            std::fs::create_dir_all(dir)?;
            clear_dir(dir, u64::MAX);
            janitor = Some(Mutex::new(spawn_janitor(dir.clone())?));
        }
        Ok(ResultCache {
            budget,
            disk,
            janitor,
            lru: Mutex::new(Lru::default()),
            metrics,
            epoch,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.budget.is_some() || self.disk.is_some()
    }

    /// Drops every cached result (a write went through the server).
    /// Runs on the driver thread: the disk tier's files of the past epochs are left to the
    /// janitor (no lookup finds them: their names carry their epoch).
    pub fn invalidate(&self) {
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.advance();
        lru.entries.clear();
        lru.order.clear();
        lru.bytes = 0;
        self.metrics.cache_bytes.set(0);
        drop(lru);
        self.sweep(Sweep::Before(self.epoch.current()));
    }

    fn sweep(&self, sweep: Sweep) {
        if let Some(janitor) = &self.janitor {
            let janitor = janitor.lock().unwrap_or_else(|e| e.into_inner());
            // The janitor only stops when the cache is dropped.
            let _ = janitor.send(sweep);
        }
    }

    /// Waits until the janitor has deleted what it was asked to (tests).
    #[cfg(test)]
    fn janitor_done(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        self.sweep(Sweep::Report(done));
        let _ = wait.recv();
    }

    /// Returns the cached value for `key` (`true`), or computes it (`false`) and keeps it
    /// when `compute` says it may be cached and no write happened meanwhile.
    pub fn get_or_compute(
        &self,
        key: CacheKey,
        compute: impl FnOnce() -> Result<(CachedValue, bool), String>,
    ) -> Result<(CachedValue, bool), String> {
        if let Some(value) = self.lookup(&key) {
            self.metrics.cache_hits.inc();
            return Ok((value, true));
        }
        self.metrics.cache_misses.inc();
        let generation = self.generation();
        let computed = compute()?;
        if computed.1 {
            self.insert(key, computed.0.clone(), generation);
        }
        Ok((computed.0, false))
    }

    fn generation(&self) -> u64 {
        self.epoch.current()
    }

    /// An in-memory hit, counted, for answering on the driver thread without a worker hop;
    /// `None` (and nothing counted) otherwise: the query then goes to a worker, which looks
    /// again (in the disk tier too) and counts the hit or the miss.
    pub fn memory_hit(&self, key: &CacheKey) -> Option<CachedValue> {
        let value = self.memory_lookup(key, self.epoch.current())?;
        self.metrics.cache_hits.inc();
        Some(value)
    }

    fn lookup(&self, key: &CacheKey) -> Option<CachedValue> {
        let epoch = self.epoch.current();
        if let Some(value) = self.memory_lookup(key, epoch) {
            return Some(value);
        }
        let path = self.disk_path(key, epoch)?;
        let bytes = std::fs::read(path).ok()?;
        Some(Bytes::from(bytes))
    }

    fn memory_lookup(&self, key: &CacheKey, epoch: u64) -> Option<CachedValue> {
        {
            let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
            lru.tick += 1;
            let tick = lru.tick;
            match lru.entries.get_mut(key) {
                Some((value, old_tick, computed_in)) if *computed_in == epoch => {
                    let value = value.clone();
                    let old = std::mem::replace(old_tick, tick);
                    lru.order.remove(&old);
                    lru.order.insert(tick, key.clone());
                    return Some(value);
                }
                Some((_, old_tick, _)) => {
                    // Something wrote since: a stale entry goes.
                    let old = *old_tick;
                    lru.order.remove(&old);
                    if let Some((stale, _, _)) = lru.entries.remove(key) {
                        lru.bytes -= stale.len();
                    }
                }
                None => {}
            }
        }
        None
    }

    /// Runs on the worker that computed `value`. The file is written before the memory
    /// tier's lock is taken; if a write came meanwhile, its name's epoch is past and the
    /// janitor deletes it.
    fn insert(&self, key: CacheKey, value: CachedValue, generation: u64) {
        if self.epoch.current() != generation {
            return;
        }
        if let Some(path) = self.disk_path(&key, generation) {
            // Best effort: a failed disk write only means a later miss. Written aside and
            // renamed, so a reader (another worker) never sees half a file.
            let partial = path.with_extension("partial");
            if std::fs::write(&partial, &value).is_err()
                || std::fs::rename(&partial, &path).is_err()
            {
                let _ = std::fs::remove_file(&partial);
            }
        }
        let Some(budget) = self.budget else {
            return;
        };
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch.current() != generation {
            return;
        }
        if value.len() > budget {
            return;
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.bytes += value.len();
        if let Some((old, old_tick, _)) = lru.entries.insert(key.clone(), (value, tick, generation))
        {
            lru.bytes -= old.len();
            lru.order.remove(&old_tick);
        }
        lru.order.insert(tick, key);
        while lru.bytes > budget {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some((evicted, _, _)) = lru.entries.remove(&oldest) {
                lru.bytes -= evicted.len();
            }
        }
        self.metrics.cache_bytes.set(lru.bytes as u64);
    }

    /// The file of `key` computed in write epoch `epoch`: entries of older epochs are never
    /// found (and `invalidate` deletes them).
    fn disk_path(&self, key: &CacheKey, epoch: u64) -> Option<PathBuf> {
        let dir = self.disk.as_ref()?;
        let mut hasher = Sha256::new();
        hasher.update(epoch.to_le_bytes());
        hasher.update(key.0.as_bytes());
        hasher.update([0]);
        hasher.update(key.1.as_bytes());
        let name = format!("{epoch}-{}.bin", hex::encode(hasher.finalize()));
        Some(dir.join(name))
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lru.lock().unwrap().bytes
    }
}

/// The form a query's answer is cached in, which is part of its key: the Arrow IPC stream,
/// the rows text (Mosaic's doors), or the rows already escaped as the `data` string of a
/// SQLRooms `json` reply, so that a hit answers with a copy and no escaping.
pub fn cache_form(kind: duckwire_core::QueryKind, json_reply: bool) -> &'static str {
    match kind {
        duckwire_core::QueryKind::Json if json_reply => "json-reply",
        _ => kind.as_str(),
    }
}

/// The answer a cached value gives a query of `kind`: the Arrow frame (`arrow_header`, empty
/// for bare IPC answers, then the stored stream; no copy without a header), the SQLRooms
/// `json` reply (`json_header`, then the stored escaped rows), or the rows.
pub fn cached_outcome(
    kind: duckwire_core::QueryKind,
    arrow_header: &Bytes,
    json_header: Option<&duckwire_core::JsonReplyHeader>,
    value: CachedValue,
) -> duckwire_core::QueryOutcome {
    use duckwire_core::{JsonReplyWriter, QueryKind, QueryOutcome};
    match (kind, json_header) {
        (QueryKind::Arrow, _) if arrow_header.is_empty() => QueryOutcome::Arrow(value),
        (QueryKind::Arrow, _) => {
            let mut frame = Vec::with_capacity(arrow_header.len() + value.len());
            frame.extend_from_slice(arrow_header);
            frame.extend_from_slice(&value);
            QueryOutcome::Arrow(Bytes::from(frame))
        }
        (_, Some(header)) => {
            let mut reply = JsonReplyWriter::new(header, value.len());
            // Stored from a finished reply (and written to disk whole, by rename).
            reply.push_escaped_rows(&String::from_utf8_lossy(&value));
            QueryOutcome::JsonReply(reply.finish())
        }
        _ => QueryOutcome::Json(String::from_utf8_lossy(&value).into_owned()),
    }
}

/// What the janitor is asked to do.
enum Sweep {
    /// Delete the files of every write epoch before this one.
    Before(u64),
    /// Say when everything asked before is done.
    #[cfg(test)]
    Report(std::sync::mpsc::Sender<()>),
}

fn spawn_janitor(dir: PathBuf) -> std::io::Result<std::sync::mpsc::Sender<Sweep>> {
    let (sender, sweeps) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("duckwire-cache-janitor".into())
        .spawn(move || {
            while let Ok(sweep) = sweeps.recv() {
                match sweep {
                    Sweep::Before(epoch) => clear_dir(&dir, epoch),
                    #[cfg(test)]
                    Sweep::Report(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })?;
    Ok(sender)
}

/// Deletes the cache files (and half-written ones) of write epochs before `epoch`.
fn clear_dir(dir: &std::path::Path, epoch: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .extension()
            .is_some_and(|e| e == "bin" || e == "partial");
        let epoch_of = path
            .file_stem()
            .and_then(|stem| stem.to_str()?.split_once('-')?.0.parse::<u64>().ok());
        // Files without an epoch in their name come from an older release: stale too.
        if is_ours && epoch_of.is_none_or(|written_in| written_in < epoch) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(budget: Option<usize>) -> ResultCache {
        ResultCache::new(budget, None, Arc::default(), Arc::default()).unwrap()
    }

    fn value(text: &str) -> Result<(CachedValue, bool), String> {
        Ok((Bytes::copy_from_slice(text.as_bytes()), true))
    }

    #[test]
    fn a_write_epoch_advanced_elsewhere_makes_entries_stale() {
        let epoch = Arc::new(WriteEpoch::default());
        let cache = ResultCache::new(Some(1024), None, Arc::default(), epoch.clone()).unwrap();
        let key = ("json", "select 1".to_string());
        cache.get_or_compute(key.clone(), || value("a")).unwrap();
        // A worker's write or a room save: no `invalidate` call, the epoch alone.
        epoch.advance();
        let (fresh, was_hit) = cache.get_or_compute(key, || value("b")).unwrap();
        assert_eq!((&fresh[..], was_hit), (b"b".as_slice(), false));
        assert_eq!(cache.bytes(), 1, "the stale entry's bytes are released");
    }

    #[test]
    fn hit_after_miss_and_invalidation_drops_everything() {
        let cache = cache(Some(1024));
        let key = ("json", "select 1".to_string());
        assert!(!cache.get_or_compute(key.clone(), || value("a")).unwrap().1);
        let (hit, was_hit) = cache
            .get_or_compute(key.clone(), || panic!("cached"))
            .unwrap();
        assert!(was_hit);
        assert_eq!(&hit[..], b"a");
        cache.invalidate();
        assert_eq!(
            cache.get_or_compute(key, || value("b")).unwrap().0,
            Bytes::from("b")
        );
    }

    #[test]
    fn lru_eviction_keeps_the_budget() {
        let cache = cache(Some(10));
        for i in 0..5 {
            cache
                .get_or_compute(("json", format!("q{i}")), || value("xxxx"))
                .unwrap();
        }
        assert!(cache.bytes() <= 10);
        // The most recent entries survive.
        assert!(
            cache
                .get_or_compute(("json", "q4".into()), || value("new"))
                .unwrap()
                .1
        );
        assert!(
            !cache
                .get_or_compute(("json", "q0".into()), || value("new"))
                .unwrap()
                .1
        );
    }

    #[test]
    fn a_result_computed_across_an_invalidation_is_not_cached() {
        let cache = cache(Some(1024));
        let key = ("json", "select * from t".to_string());
        cache
            .get_or_compute(key.clone(), || {
                cache.invalidate();
                value("stale")
            })
            .unwrap();
        assert!(!cache.get_or_compute(key, || value("fresh")).unwrap().1);
    }

    #[test]
    fn a_cached_sqlrooms_json_reply_equals_a_fresh_one_under_another_header() {
        use duckwire_core::{JsonReplyHeader, JsonReplyWriter, QueryId, QueryKind, QueryOutcome};
        let rows = "[{\"s\":\"a \\\"quoted\\\" \\\\ é\\n\u{1}\"}]";
        let header = |id: &str| JsonReplyHeader::new(&QueryId::Str(id.into()));
        let fresh = |id: &str| {
            let mut writer = JsonReplyWriter::new(&header(id), rows.len());
            writer.push_rows(rows);
            writer.finish()
        };
        let stored = Bytes::copy_from_slice(fresh("first").escaped_rows().as_bytes());
        let second = header("second");
        match cached_outcome(QueryKind::Json, &Bytes::new(), Some(&second), stored) {
            QueryOutcome::JsonReply(reply) => assert_eq!(reply, fresh("second")),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn disk_tier_serves_entries_evicted_from_memory() {
        let dir = std::env::temp_dir().join(format!("duckwire-cache-test-{}", std::process::id()));
        let cache =
            ResultCache::new(Some(4), Some(dir.clone()), Arc::default(), Arc::default()).unwrap();
        cache
            .get_or_compute(("json", "a".into()), || value("aaaa"))
            .unwrap();
        cache
            .get_or_compute(("json", "b".into()), || value("bbbb"))
            .unwrap();
        let (value_a, hit) = cache
            .get_or_compute(("json", "a".into()), || value("miss"))
            .unwrap();
        assert!(hit);
        assert_eq!(&value_a[..], b"aaaa");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn invalidation_leaves_the_disk_to_the_janitor_which_deletes_past_epochs_only() {
        let dir =
            std::env::temp_dir().join(format!("duckwire-janitor-test-{}", std::process::id()));
        let cache = ResultCache::new(
            Some(1 << 20),
            Some(dir.clone()),
            Arc::default(),
            Arc::default(),
        )
        .unwrap();
        let files = || std::fs::read_dir(&dir).unwrap().count();
        cache
            .get_or_compute(("json", "a".into()), || value("a"))
            .unwrap();
        assert_eq!(files(), 1);
        cache.invalidate();
        cache
            .get_or_compute(("json", "b".into()), || value("b"))
            .unwrap();
        cache.janitor_done();
        assert_eq!(files(), 1, "the past epoch's file went, the new one stayed");
        let (value_b, hit) = cache
            .get_or_compute(("json", "b".into()), || value("miss"))
            .unwrap();
        assert!(hit);
        assert_eq!(&value_b[..], b"b");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
