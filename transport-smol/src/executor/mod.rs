//! The DuckDB executor: a bounded pool of worker threads, each query on its own connection
//! cloned from the one database, interrupts, conflict retries, the result cache, uploads.

pub mod connection;
pub mod database;
pub mod failure;
mod interrupts;
pub mod ipc;
pub mod json;
mod result_buffer;
/// SQL classification lives in the core (it decides what a GET may run).
pub use duckwire_core::sql;
mod statements;
pub mod stream;
pub mod upload;
pub use statements::run_sql;
use statements::{in_transaction, run_sql_planned, Output, Plans};

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::Connection;
use duckwire_core::{
    Gate, JsonReply, JsonReplyHeader, QueryHandle, QueryKind, QueryOutcome, StreamPolicy,
    UploadOutcome, Verdict,
};
use stream::{Begin, ResultStream};

use crate::cache::ResultCache;
use crate::metrics::Metrics;
use connection::{WorkerConnection, WriteEpoch};
use database::{Classifier, Database};
use failure::FailureKind;
use interrupts::Interrupts;

/// The database the workers run on: the connection every worker's own is cloned from, and the
/// C API handle that clones (and classifiers) connect through. Fields drop in order: the
/// connection before the handle.
pub struct SharedDatabase {
    pub base: Mutex<Connection>,
    pub handle: Arc<Database>,
}

impl SharedDatabase {
    pub fn new(base: Connection, handle: Arc<Database>) -> Arc<SharedDatabase> {
        Arc::new(SharedDatabase {
            base: Mutex::new(base),
            handle,
        })
    }
}

/// What a worker reports for a query DuckDB calls something other than a read when only a
/// read may run: the transaction was read-only and DuckDB refused to write (`nextval`, …).
const WRITES_IN_A_READ: &str = "a statement that writes the database";

/// What a client sees when its job hit a bug (a panic) in the executor.
const INTERNAL_ERROR: &str = "internal error while running the query";

/// Conflict retries (PROTOCOL §3): up to 5, 10 ms doubling, capped at 500 ms, ±30 % jitter.
const MAX_CONFLICT_RETRIES: u32 = 5;
const FIRST_BACKOFF_MS: f64 = 10.0;
const MAX_BACKOFF_MS: f64 = 500.0;

pub enum Job {
    Query {
        handle: QueryHandle,
        kind: QueryKind,
        sql: String,
        persist: bool,
        arrow_header: Bytes,
        /// `None`: bare rows text (HTTP); else the whole SQLRooms reply is built here.
        json_header: Option<JsonReplyHeader>,
        /// What may run (DuckDB's verdict decides; see [`Gate`]).
        gate: Gate,
        /// Arrow results past its threshold are streamed ([`Completion::Streaming`]).
        stream: Option<StreamPolicy>,
    },
    Upload {
        handle: QueryHandle,
        table_name: String,
        payload: Bytes,
    },
}

/// How the executor reports back to the driver.
pub enum Completion {
    /// A [`Gate::ClassifyFirst`] query is a read; it runs now.
    Classified { handle: QueryHandle },
    /// The query's result passed its stream threshold: its first part waits in `stream`,
    /// the rest follows as DuckDB produces it; the query's end is reported as usual.
    Streaming {
        handle: QueryHandle,
        stream: ResultStream,
    },
    Query {
        handle: QueryHandle,
        outcome: QueryOutcome,
        wrote: bool,
    },
    Upload {
        handle: QueryHandle,
        outcome: UploadOutcome,
    },
}

pub type CompletionSink = Arc<dyn Fn(Completion) + Send + Sync>;

pub struct Executor {
    jobs: async_channel::Sender<Job>,
    interrupts: Arc<Interrupts>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    reinterrupter: Mutex<Option<JoinHandle<()>>>,
    write_epoch: Arc<WriteEpoch>,
}

struct Worker {
    database: Arc<SharedDatabase>,
    /// Asks DuckDB what a SQL text is; connected on first use.
    classifier: Option<Classifier>,
    /// The connection kept between reads (see [`connection`]).
    connection: WorkerConnection,
    write_epoch: Arc<WriteEpoch>,
    interrupts: Arc<Interrupts>,
    cache: Arc<ResultCache>,
    metrics: Arc<Metrics>,
    completions: CompletionSink,
    jitter: u64,
}

impl Executor {
    pub fn start(
        database: Arc<SharedDatabase>,
        threads: usize,
        cache: Arc<ResultCache>,
        metrics: Arc<Metrics>,
        completions: CompletionSink,
        write_epoch: Arc<WriteEpoch>,
    ) -> Executor {
        let (jobs, queue) = async_channel::unbounded::<Job>();
        let interrupts = Arc::new(Interrupts::default());
        let workers = (0..threads.max(1))
            .map(|i| {
                let queue = queue.clone();
                let mut worker = Worker {
                    database: database.clone(),
                    classifier: None,
                    connection: WorkerConnection::default(),
                    write_epoch: write_epoch.clone(),
                    interrupts: interrupts.clone(),
                    cache: cache.clone(),
                    metrics: metrics.clone(),
                    completions: completions.clone(),
                    jitter: seed() ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                };
                std::thread::Builder::new()
                    .name(format!("duckdb-worker-{i}"))
                    .spawn(move || {
                        while let Ok(job) = next_job(&queue) {
                            worker.run_guarded(job);
                        }
                    })
                    .expect("spawn DuckDB worker thread")
            })
            .collect();
        let reinterrupter = {
            let interrupts = interrupts.clone();
            std::thread::Builder::new()
                .name("duckdb-reinterrupt".into())
                .spawn(move || interrupts.reinterrupt_until_stopped())
                .expect("spawn re-interrupt thread")
        };
        Executor {
            jobs,
            interrupts,
            workers: Mutex::new(workers),
            reinterrupter: Mutex::new(Some(reinterrupter)),
            write_epoch,
        }
    }

    /// Writers outside the pool (CRDT persistence) advance it too, so no worker reuses a plan
    /// made before their write.
    pub fn write_epoch(&self) -> Arc<WriteEpoch> {
        self.write_epoch.clone()
    }

    pub fn submit(&self, job: Job) {
        match &job {
            Job::Query { handle, .. } | Job::Upload { handle, .. } => {
                self.interrupts.queued(*handle)
            }
        }
        // The queue is closed only at shutdown; a job then is dropped (its connection is gone).
        let _ = self.jobs.try_send(job);
    }

    pub fn interrupt(&self, handle: QueryHandle) {
        self.interrupts.interrupt(handle);
    }

    /// Interrupts running queries, drops queued ones, and waits for the workers to stop.
    pub fn shutdown(&self) {
        self.interrupts.interrupt_all();
        self.jobs.close();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for worker in workers {
            let _ = worker.join();
        }
        self.interrupts.stop();
        if let Some(thread) = self
            .reinterrupter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = thread.join();
        }
    }
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes) | 1
}

/// How long a worker that just finished a job polls for the next one before it sleeps on the
/// queue. Waking a sleeping thread costs 100+ µs on a small VM, as much as a small query: with
/// `recv_blocking` alone, sequential `select 1` went from 129–177 µs to 235–266 µs. The poll
/// runs only right after a job, so an idle server still sleeps: 0.00 % of a core over 10 s
/// after a 10 000-query burst (`scripts/bench/idle-cpu.sh`).
const POLL_AFTER_JOB: Duration = Duration::from_micros(300);

fn next_job(queue: &async_channel::Receiver<Job>) -> Result<Job, async_channel::RecvError> {
    let started = Instant::now();
    while started.elapsed() < POLL_AFTER_JOB {
        match queue.try_recv() {
            Ok(job) => return Ok(job),
            Err(async_channel::TryRecvError::Closed) => return Err(async_channel::RecvError),
            Err(async_channel::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    queue.recv_blocking()
}

impl Worker {
    /// A new connection, for jobs that write (uploads).
    fn fresh_connection(&self) -> Result<Connection, String> {
        self.database
            .base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_clone()
            .map_err(|e| format!("cannot open a DuckDB connection: {e}"))
    }

    /// xorshift, for backoff jitter only.
    fn next_jitter(&mut self) -> f64 {
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        (self.jitter % 10_000) as f64 / 10_000.0
    }

    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = (FIRST_BACKOFF_MS * 2f64.powi(attempt as i32)).min(MAX_BACKOFF_MS);
        let factor = 0.7 + 0.6 * self.next_jitter();
        Duration::from_secs_f64(base * factor / 1000.0)
    }

    /// Runs a job; a panic inside DuckDB glue or an Arrow reader (hostile upload bytes) is
    /// answered as a failure of that job and the worker lives on.
    fn run_guarded(&mut self, job: Job) {
        let (handle, is_upload) = match &job {
            Job::Query { handle, .. } => (*handle, false),
            Job::Upload { handle, .. } => (*handle, true),
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(job)));
        if run.is_ok() {
            return;
        }
        tracing::error!("a DuckDB worker recovered from a panic while running a job");
        self.interrupts.finish(handle);
        (self.completions)(if is_upload {
            Completion::Upload {
                handle,
                outcome: UploadOutcome::Failed(INTERNAL_ERROR.into()),
            }
        } else {
            Completion::Query {
                handle,
                outcome: QueryOutcome::Failed(INTERNAL_ERROR.into()),
                wrote: true,
            }
        });
    }

    fn run(&mut self, job: Job) {
        let started = Instant::now();
        match job {
            Job::Query {
                handle,
                kind,
                sql,
                persist,
                arrow_header,
                json_header,
                gate,
                stream,
            } => {
                // Set once the result began to leave: it cannot be retried then.
                let began = std::cell::Cell::new(false);
                let completions = self.completions.clone();
                let interrupts = self.interrupts.clone();
                let begin = |stream: ResultStream| {
                    began.set(true);
                    interrupts.streaming(handle, stream.closer());
                    completions(Completion::Streaming { handle, stream });
                };
                let output = Output {
                    kind,
                    arrow_header: &arrow_header,
                    json_reply: json_header.as_ref(),
                    stream: stream.map(|policy| (policy, &begin as Begin<'_>)),
                    began: &began,
                };
                let (outcome, wrote) = self.query(handle, output, &sql, persist, gate);
                self.record(kind.as_str(), &outcome, started);
                (self.completions)(Completion::Query {
                    handle,
                    outcome,
                    wrote,
                });
            }
            Job::Upload {
                handle,
                table_name,
                payload,
            } => {
                let outcome = self.upload(handle, &table_name, payload);
                let recorded = match &outcome {
                    UploadOutcome::Written => QueryOutcome::NoResultSet,
                    UploadOutcome::Failed(e) => QueryOutcome::Failed(e.clone()),
                    UploadOutcome::Cancelled => QueryOutcome::Cancelled,
                };
                self.record("upload", &recorded, started);
                (self.completions)(Completion::Upload { handle, outcome });
            }
        }
    }

    fn record(&self, kind: &'static str, outcome: &QueryOutcome, started: Instant) {
        let label = match outcome {
            QueryOutcome::Failed(_) => "error",
            QueryOutcome::Cancelled => "cancelled",
            _ => "ok",
        };
        self.metrics
            .record_query(kind, label, started.elapsed().as_secs_f64());
    }

    /// Runs `run` again after a conflict, unless `began` says its result began to leave.
    fn with_retries<T>(
        &mut self,
        began: &std::cell::Cell<bool>,
        mut run: impl FnMut() -> Result<T, String>,
    ) -> Result<T, String> {
        let mut attempt = 0;
        loop {
            match run() {
                Err(message)
                    if FailureKind::of(&message) == FailureKind::Conflict
                        && attempt < MAX_CONFLICT_RETRIES
                        && !began.get() =>
                {
                    std::thread::sleep(self.backoff(attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// DuckDB's verdict on `sql` (see [`database`]): where only a read may run, its parser's
    /// alone (nothing is bound); otherwise the prepared statement's type. A statement DuckDB
    /// cannot prepare fails here (running it would fail the same way), unless the write
    /// barrier asked: then it is not known to be a read and runs alone.
    fn verdict(&mut self, sql: &str, gate: Gate) -> Result<Verdict, String> {
        let classifier = match &mut self.classifier {
            Some(classifier) => classifier,
            empty => empty.insert(Classifier::new(&self.database.handle)?),
        };
        match gate {
            Gate::ReadsOnly => classifier.reads_only_verdict(sql),
            Gate::ClassifyFirst => Ok(classifier
                .classify(sql)
                .unwrap_or_else(|_| Verdict::NotARead("not prepared".into()))),
            Gate::Any => classifier.classify(sql),
        }
    }

    /// Runs a query as its gate allows; the `bool` says whether it may have written (DuckDB's
    /// verdict: anything but a read).
    fn query(
        &mut self,
        handle: QueryHandle,
        output: Output<'_>,
        sql: &str,
        persist: bool,
        gate: Gate,
    ) -> (QueryOutcome, bool) {
        // Nothing runs before DuckDB has said what the text is. Text its parser or binder
        // rejects fails here, as it would when run.
        let verdict = match self.verdict(sql, gate) {
            Ok(verdict) => verdict,
            Err(message) => return (QueryOutcome::Failed(message), false),
        };
        let read = match (&verdict, gate) {
            (Verdict::NotARead(what), Gate::ReadsOnly | Gate::ClassifyFirst) => {
                return (QueryOutcome::NotARead(what.clone()), false);
            }
            (Verdict::Read, Gate::ClassifyFirst) => {
                (self.completions)(Completion::Classified { handle });
                true
            }
            (verdict, _) => verdict.is_read(),
        };
        let epoch = self.write_epoch.current();
        let conn = match self.connection.take(&self.database.base, epoch) {
            Ok(conn) => conn,
            Err(e) => return (QueryOutcome::Failed(e), false),
        };
        if !self.interrupts.start(handle, conn.interrupt_handle()) {
            self.connection.give_back(conn, epoch, true);
            return (QueryOutcome::Cancelled, false);
        }
        let plans = if read && sql::plan_is_reusable(sql) {
            Plans::Reuse
        } else {
            Plans::Fresh
        };
        let result = in_transaction(&conn, gate == Gate::ReadsOnly, || {
            if persist && self.cache.is_enabled() {
                self.cached_query(handle, &conn, output, sql, plans, read)
            } else {
                self.with_retries(output.began, || run_sql_planned(&conn, output, sql, plans))
            }
        });
        let interrupted = self.interrupts.finish(handle);
        if !read {
            // Even a failed or interrupted write may have changed what plans see.
            self.write_epoch.advance();
        }
        self.connection.give_back(conn, epoch, read);
        let message = match result {
            Ok(outcome) => return (outcome, !read),
            // Stopped by the executor's own interrupt.
            Err(_) if interrupted => return (QueryOutcome::Cancelled, false),
            Err(message) => message,
        };
        match FailureKind::of(&message) {
            FailureKind::WriteInReadOnlyTransaction if gate == Gate::ReadsOnly => {
                (QueryOutcome::NotARead(WRITES_IN_A_READ.into()), false)
            }
            _ => (QueryOutcome::Failed(message), !read),
        }
    }

    /// Through the cache: the stored value is the IPC stream (Arrow), the rows text (JSON for
    /// Mosaic's doors) or the escaped rows of a SQLRooms `json` reply ([`cache_form`]).
    ///
    /// [`cache_form`]: crate::cache::cache_form
    /// `read`: DuckDB's verdict; only a read's result is kept.
    fn cached_query(
        &mut self,
        handle: QueryHandle,
        conn: &Connection,
        output: Output<'_>,
        sql: &str,
        plans: Plans,
        read: bool,
    ) -> Result<QueryOutcome, String> {
        let (kind, arrow_header) = (output.kind, output.arrow_header);
        let cache = self.cache.clone();
        let mut computed: Option<QueryOutcome> = None;
        let form = crate::cache::cache_form(kind, output.json_reply.is_some());
        let (value, _) = cache.get_or_compute((form, sql.to_string()), || {
            let run = || run_sql_planned(conn, output, sql, plans);
            let outcome = match self.with_retries(output.began, run) {
                Ok(outcome) => outcome,
                // Interrupted (our client cancelled): nothing to cache.
                Err(_) if self.interrupts.was_interrupted(handle) => {
                    computed = Some(QueryOutcome::Cancelled);
                    return Ok((Bytes::new(), false));
                }
                Err(message) => return Err(message),
            };
            let shareable = match (&outcome, read) {
                (QueryOutcome::Arrow(frame), true) => Some(frame.slice(arrow_header.len()..)),
                (QueryOutcome::Json(rows), true) => Some(Bytes::copy_from_slice(rows.as_bytes())),
                (QueryOutcome::JsonReply(reply), true) => {
                    Some(Bytes::copy_from_slice(reply.escaped_rows().as_bytes()))
                }
                _ => None,
            };
            computed = Some(outcome);
            Ok(match shareable {
                Some(value) => (value, true),
                None => (Bytes::new(), false),
            })
        })?;
        if let Some(done) = computed {
            return Ok(done);
        }
        // Served from the cache.
        Ok(crate::cache::cached_outcome(
            kind,
            arrow_header,
            output.json_reply,
            value,
        ))
    }

    fn upload(&mut self, handle: QueryHandle, table_name: &str, payload: Bytes) -> UploadOutcome {
        let conn = match self.fresh_connection() {
            Ok(conn) => conn,
            Err(error) => return UploadOutcome::Failed(error),
        };
        if !self.interrupts.start(handle, conn.interrupt_handle()) {
            return UploadOutcome::Cancelled;
        }
        let never_streams = std::cell::Cell::new(false);
        let result = self.with_retries(&never_streams, || {
            upload::upload(&conn, table_name, payload.clone())
        });
        let interrupted = self.interrupts.finish(handle);
        self.write_epoch.advance();
        match result {
            Ok(()) => UploadOutcome::Written,
            Err(_) if interrupted => UploadOutcome::Cancelled,
            Err(error) => UploadOutcome::Failed(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_10ms_caps_at_500ms_with_30_percent_jitter() {
        let handle = Database::open(":memory:", &[]).unwrap();
        let mut worker = Worker {
            database: SharedDatabase::new(handle.connect().unwrap(), handle),
            classifier: None,
            connection: WorkerConnection::default(),
            write_epoch: Arc::default(),
            interrupts: Arc::default(),
            cache: Arc::new(ResultCache::new(None, None, Arc::default(), Arc::default()).unwrap()),
            metrics: Arc::default(),
            completions: Arc::new(|_| {}),
            jitter: 12345,
        };
        for _ in 0..100 {
            let first = worker.backoff(0).as_secs_f64() * 1000.0;
            assert!((7.0..=13.0).contains(&first), "{first}");
            let third = worker.backoff(2).as_secs_f64() * 1000.0;
            assert!((28.0..=52.0).contains(&third), "{third}");
            let capped = worker.backoff(10).as_secs_f64() * 1000.0;
            assert!((350.0..=650.0).contains(&capped), "{capped}");
        }
    }
}
