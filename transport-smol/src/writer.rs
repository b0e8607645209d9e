//! What a connection's reader and writer tasks share with the driver: the queue of outbound
//! frames and answers, the read gate (inbound budget), and the count of bytes sent.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use duckwire_core::{ConnId, Frame, HttpResponse};

/// What a connection's task is asked to write.
pub enum Outbound {
    /// A WebSocket message.
    Frame(Frame),
    /// The answer to an HTTP connection's oldest unanswered request.
    Response(HttpResponse),
    /// A WebSocket ping (the core keeps the schedule).
    Ping,
    /// Answer the peer's latest ping (its payload waits in the connection's [`PongSlot`]).
    Pong,
    /// A result sent as it is produced (PROTOCOL §3b): one WebSocket message or a chunked
    /// HTTP answer. `window` bytes were counted as queued by the core: reported sent once
    /// it ended (whatever became of it).
    Stream {
        stream: crate::executor::stream::ResultStream,
        window: usize,
    },
}

/// Bytes a reader may have handed to the driver that the core has not seen yet. Past it the
/// reader waits, so a connection holds at most its inbound budget plus one frame (plus this).
const IN_TRANSIT_ALLOWANCE: usize = 1 << 20;

/// Whether a connection's socket may be read: the core closes it when the connection's
/// inbound budget is spent (TCP backpressure) and opens it when work finished; the reader
/// also waits while the driver has not taken what it already handed over.
#[derive(Debug)]
pub struct ReadGate {
    paused: AtomicBool,
    in_transit: AtomicUsize,
    wake: async_channel::Sender<()>,
    woken: async_channel::Receiver<()>,
}

impl Default for ReadGate {
    fn default() -> Self {
        let (wake, woken) = async_channel::bounded(1);
        ReadGate {
            paused: AtomicBool::new(false),
            in_transit: AtomicUsize::new(0),
            wake,
            woken,
        }
    }
}

impl ReadGate {
    pub(crate) fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub(crate) fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        let _ = self.wake.try_send(());
    }

    /// The reader handed `bytes` to the driver.
    pub fn handed_over(&self, bytes: usize) {
        self.in_transit.fetch_add(bytes, Ordering::SeqCst);
    }

    /// The core has seen `bytes` the reader handed over.
    pub(crate) fn taken(&self, bytes: usize) {
        self.in_transit.fetch_sub(bytes, Ordering::SeqCst);
        let _ = self.wake.try_send(());
    }

    /// Returns once the socket may be read.
    pub async fn wait_open(&self) {
        while self.paused.load(Ordering::SeqCst)
            || self.in_transit.load(Ordering::SeqCst) >= IN_TRANSIT_ALLOWANCE
        {
            if self.woken.recv().await.is_err() {
                return;
            }
        }
    }
}

/// Bytes the writers put on the wire that the core has not been told of yet. They are
/// reported without waking the driver (one more wake-up per reply costs about as much as the
/// protocol work of a cached answer): the driver folds them into the core before it handles
/// its next input, which is the earliest moment the core can act on them — it only weighs a
/// connection's queued bytes against the next reply it queues.
#[derive(Default)]
pub struct SentReports {
    /// Connections whose counter went from 0 to more since the driver last looked.
    pub(crate) connections: Mutex<Vec<ConnId>>,
}

/// One connection's share of [`SentReports`].
pub struct SentCounter {
    conn: ConnId,
    /// Bytes of the core's queued output now written, or released: what `handle_sent` gets.
    unreported: AtomicUsize,
    /// Payload bytes written (for `duckwire_bytes_out`): the same, except that a streamed
    /// result counts its pieces here and its window (released once it ended) above.
    payload: AtomicUsize,
    reports: Arc<SentReports>,
}

impl SentCounter {
    pub fn new(conn: ConnId, reports: &Arc<SentReports>) -> Arc<Self> {
        Arc::new(SentCounter {
            conn,
            unreported: AtomicUsize::new(0),
            payload: AtomicUsize::new(0),
            reports: reports.clone(),
        })
    }

    /// The writer put `bytes` of the core's output on the wire.
    pub fn sent(&self, bytes: usize) {
        self.payload.fetch_add(bytes, Ordering::SeqCst);
        self.released(bytes);
    }

    /// A streamed result ended: the `window` the core counted for it is free again.
    pub fn released(&self, window: usize) {
        if window > 0 && self.unreported.fetch_add(window, Ordering::SeqCst) == 0 {
            self.list();
        }
    }

    /// The writer put `bytes` of a streamed result on the wire (the core counts its window
    /// instead).
    pub fn streamed(&self, bytes: usize) {
        if bytes > 0 && self.payload.fetch_add(bytes, Ordering::SeqCst) == 0 {
            self.list();
        }
    }

    /// Listed until the driver takes the counts (a second listing only folds zeros).
    fn list(&self) {
        let mut connections = self
            .reports
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        connections.push(self.conn);
    }

    /// What to tell the core, and the payload bytes written, since the last time.
    pub(crate) fn take(&self) -> (usize, usize) {
        (
            self.unreported.swap(0, Ordering::SeqCst),
            self.payload.swap(0, Ordering::SeqCst),
        )
    }
}

/// Counts a streamed result's bytes as they are written: into `duckwire_streamed_bytes` and
/// the connection's payload bytes (`duckwire_bytes_out`).
#[derive(Clone)]
pub struct StreamMeter {
    pub bytes: prometheus_client::metrics::counter::Counter,
    pub sent: Arc<SentCounter>,
}

impl StreamMeter {
    pub fn written(&self, bytes: usize) {
        self.bytes.inc_by(bytes as u64);
        self.sent.streamed(bytes);
    }
}

/// How the driver reaches one connection's writer task.
#[derive(Clone)]
pub struct ConnectionWriter {
    /// Frames (and the reader's own closes), written in order.
    pub queue: async_channel::Sender<Outbound>,
    /// A close the core decided on. It overtakes the queue: the frames still queued are
    /// dropped, so a peer that stopped reading is closed at its cap instead of holding
    /// its connection (and the queued bytes) open forever.
    pub close: async_channel::Sender<(u16, String)>,
    /// Shared with the connection's reader.
    pub gate: Arc<ReadGate>,
    /// What the connection's writer has sent.
    pub sent: Arc<SentCounter>,
}

/// The payload of the peer's latest unanswered ping. A peer that pings faster than it reads
/// gets one pong for its latest ping (RFC 6455 §5.5.3 allows it), so pings cannot pile up
/// pongs in the queue while the writer is stuck.
#[derive(Default)]
pub struct PongSlot(Mutex<Option<bytes::Bytes>>);

impl PongSlot {
    /// Keeps `payload` to answer; `true` if no pong was waiting (queue one then).
    pub fn ping(&self, payload: bytes::Bytes) -> bool {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.replace(payload).is_none()
    }

    /// The payload to answer with, if a ping is unanswered.
    pub fn take(&self) -> Option<bytes::Bytes> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
