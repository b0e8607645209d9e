//! A result sent as it is produced (PROTOCOL §3b). The worker encodes into a
//! [`ResultWriter`]: held whole while it is small, so a failure still arrives as an error;
//! once it passes the policy's `above`, the worker reports the stream to the driver and
//! from then on hands over pieces of [`PIECE_BYTES`] as the IPC writer fills them. The
//! pieces wait in a channel bounded by the policy's `window` (the worker blocks when its
//! reader is slow: TCP backpressure reaches DuckDB), and the connection's writer sends each
//! as it comes, from the buffer the worker filled (never copied into a frame buffer).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use duckwire_core::StreamPolicy;

use super::result_buffer::ResultBuffer;

/// Pieces a stream is handed over in: one WebSocket fragment or HTTP chunk each, the size
/// the writers compress in (`COMPRESS_PART_BYTES`).
pub const PIECE_BYTES: usize = crate::compress::COMPRESS_PART_BYTES;

/// One piece of a streamed result.
#[derive(Debug)]
pub enum StreamPiece {
    More(Bytes),
    /// The last piece: the result is whole once it is sent. A stream whose channel closes
    /// without it failed (the driver's core closes its connection).
    Last(Bytes),
}

impl StreamPiece {
    /// The bytes, and whether they are the last.
    pub fn into_parts(self) -> (Bytes, bool) {
        match self {
            StreamPiece::More(bytes) => (bytes, false),
            StreamPiece::Last(bytes) => (bytes, true),
        }
    }
}

/// The receiving end of a streamed result, for a connection's writer.
#[derive(Debug)]
pub struct ResultStream {
    pieces: async_channel::Receiver<StreamPiece>,
    /// JSON text (a WebSocket text message, an `application/json` body), not Arrow IPC.
    text: bool,
}

impl ResultStream {
    /// A stream that ended before its last piece: what a writer gets for a stream the
    /// driver no longer holds (its query was interrupted or its connection went).
    pub fn broken() -> Self {
        let (_, pieces) = async_channel::bounded(1);
        ResultStream {
            pieces,
            text: false,
        }
    }

    /// A stream of these pieces, already produced (a writer's tests).
    #[cfg(test)]
    pub(crate) fn of(pieces: Vec<StreamPiece>) -> Self {
        let (sender, receiver) = async_channel::unbounded();
        for piece in pieces {
            sender.try_send(piece).expect("unbounded");
        }
        ResultStream {
            pieces: receiver,
            text: false,
        }
    }

    /// Whether the result is JSON text (sent as a text message, or an `application/json`
    /// body) rather than Arrow IPC.
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// What ends this stream from outside.
    pub fn closer(&self) -> StreamCloser {
        StreamCloser(self.pieces.downgrade())
    }

    /// The next piece; `None` once the stream ended (after `Last`, or cut short).
    pub async fn next(&self) -> Option<StreamPiece> {
        self.pieces.recv().await.ok()
    }

    /// The same, for a blocking thread (compression on the blocking pool).
    pub fn next_blocking(&self) -> Option<StreamPiece> {
        self.pieces.recv_blocking().ok()
    }
}

impl ResultStream {
    /// The same pieces for several readers (identical persisted reads, PROTOCOL §3b): the
    /// stream for the source's own reply, and one for each of `headers`, whose reply
    /// starts with that header in place of the source's first `cut` bytes. A task hands
    /// every piece to every reader (the bytes are shared, not copied, except a reader's
    /// first piece, which carries its header). Each reader may fall a window behind the
    /// fastest (its channel holds as many pieces as the source's), so readers of
    /// different speeds do not wait for each other at every piece; past that the executor
    /// goes at the pace of the slowest, and the pieces held stay within two windows
    /// whatever the number of readers. A reader that is gone stops receiving, and once none
    /// is left the source is dropped and its worker stops at its next piece.
    pub fn share(self, cut: usize, headers: Vec<Bytes>) -> (ResultStream, Vec<ResultStream>) {
        let text = self.text;
        let window_pieces = self.pieces.capacity().unwrap_or(1);
        let mut readers = Vec::with_capacity(headers.len() + 1);
        let mut streams = Vec::with_capacity(headers.len() + 1);
        for header in std::iter::once(None).chain(headers.into_iter().map(Some)) {
            let (sender, pieces) = async_channel::bounded(window_pieces);
            streams.push(ResultStream { pieces, text });
            readers.push(SharedReader {
                sender,
                header: header.map(|header| (header, cut)),
            });
        }
        crate::spawn(hand_out(self, readers)).detach();
        let own = streams.remove(0);
        (own, streams)
    }
}

/// One reader of a shared stream, as [`hand_out`] feeds it.
struct SharedReader {
    sender: async_channel::Sender<StreamPiece>,
    /// Its own header and how many of the source's bytes it replaces (still to skip), until
    /// its first piece went.
    header: Option<(Bytes, usize)>,
}

impl SharedReader {
    /// `piece` as this reader gets it: the source's header swapped for its own in the first
    /// bytes; `None` when the whole piece was header.
    fn reheaded(&mut self, piece: &Bytes) -> Option<Bytes> {
        let Some((header, skip)) = self.header.take() else {
            return Some(piece.clone());
        };
        if piece.len() < skip {
            // A source header split across pieces (not how the executor writes one, but
            // nothing here depends on it): skip the rest in the next.
            self.header = Some((header, skip - piece.len()));
            return None;
        }
        let mut first = Vec::with_capacity(header.len() + piece.len() - skip);
        first.extend_from_slice(&header);
        first.extend_from_slice(&piece[skip..]);
        Some(Bytes::from(first))
    }
}

/// The task behind [`ResultStream::share`]: each piece of `source` to every reader still
/// there, in order.
async fn hand_out(source: ResultStream, mut readers: Vec<SharedReader>) {
    while let Some(piece) = source.next().await {
        let (bytes, last) = piece.into_parts();
        let mut kept = Vec::with_capacity(readers.len());
        for mut reader in readers.drain(..) {
            let piece = match reader.reheaded(&bytes) {
                Some(bytes) if last => StreamPiece::Last(bytes),
                Some(bytes) => StreamPiece::More(bytes),
                None if last => StreamPiece::Last(Bytes::new()),
                None => {
                    kept.push(reader);
                    continue;
                }
            };
            // The slowest reader decides the pace; one whose writer is gone is let go.
            if reader.sender.send(piece).await.is_ok() {
                kept.push(reader);
            }
        }
        readers = kept;
        if last || readers.is_empty() {
            return;
        }
    }
    // The source ended without its last piece: the readers' channels close with `readers`,
    // and each writer sees its stream cut short.
}

/// Ends a stream from outside (an interrupt): its worker's wait for room in the window ends
/// with an error, its reader gets what was produced and then the end without the last piece.
/// Weak: it keeps the stream alive for neither side.
pub struct StreamCloser(async_channel::WeakReceiver<StreamPiece>);

impl StreamCloser {
    pub fn close(&self) {
        if let Some(pieces) = self.0.upgrade() {
            pieces.close();
        }
    }
}

/// Whether the result of a [`ResultWriter`] stayed whole or went out as a stream.
pub enum Finished {
    Whole(Bytes),
    Streamed,
}

/// Where a streamed result is announced: the worker's report to the driver.
pub type Begin<'a> = &'a dyn Fn(ResultStream);

/// What a worker encodes a result into.
pub struct ResultWriter<'a> {
    held: ResultBuffer,
    policy: Option<(StreamPolicy, Begin<'a>)>,
    streaming: Option<Streaming>,
    text: bool,
}

struct Streaming {
    piece: Vec<u8>,
    pieces: async_channel::Sender<StreamPiece>,
    buffers: Arc<PieceBuffers>,
}

/// The buffers of one stream's pieces, reused once written. A result streams through the
/// same few buffers instead of fresh memory for each piece: fresh pages cost the kernel's
/// zeroing on first touch (`perf` on a 5M-row result: `clear_page_erms` 14 % of the server's
/// CPU with a new buffer per piece, 10 % with these; the rest is the IPC encoder's own
/// per-batch buffers).
struct PieceBuffers {
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers allocated (not reused) for this stream.
    allocated: std::sync::atomic::AtomicUsize,
    /// More than the window holds: the ones written come back while others wait.
    keep: usize,
}

impl PieceBuffers {
    fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| {
            self.allocated
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Vec::with_capacity(PIECE_BYTES)
        })
    }

    fn give_back(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep && buffer.capacity() <= 2 * PIECE_BYTES {
            free.push(buffer);
        }
    }
}

/// A piece's bytes, whose buffer goes back to its stream's [`PieceBuffers`] once the writer
/// dropped it.
struct PooledPiece {
    buffer: Vec<u8>,
    buffers: Arc<PieceBuffers>,
}

impl AsRef<[u8]> for PooledPiece {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for PooledPiece {
    fn drop(&mut self) {
        self.buffers.give_back(std::mem::take(&mut self.buffer));
    }
}

impl Streaming {
    /// Hands the piece filled so far to the reader, waiting while the window is full.
    fn ship(&mut self) -> io::Result<()> {
        let full = self.take_piece();
        self.pieces
            .send_blocking(StreamPiece::More(full))
            .map_err(|_| reader_gone())
    }

    /// The piece filled so far, as bytes that return their buffer when dropped; a fresh
    /// (or reused) buffer takes its place.
    fn take_piece(&mut self) -> Bytes {
        let next = self.buffers.take();
        let buffer = std::mem::replace(&mut self.piece, next);
        Bytes::from_owner(PooledPiece {
            buffer,
            buffers: self.buffers.clone(),
        })
    }
}

impl<'a> ResultWriter<'a> {
    /// `text`: what is written is JSON text (its stream says so to the writers).
    pub fn new(capacity: usize, policy: Option<(StreamPolicy, Begin<'a>)>, text: bool) -> Self {
        // Text held whole ends as a `String`: kept in a `Vec`, it becomes one without a copy.
        let held = match text {
            true => ResultBuffer::owned(capacity),
            false => ResultBuffer::new(capacity),
        };
        ResultWriter {
            held,
            policy,
            streaming: None,
            text,
        }
    }

    /// Whether the result began to leave (a failure now cannot be retried or reported as
    /// an error reply).
    pub fn began(&self) -> bool {
        self.streaming.is_some()
    }

    /// The held result, or the stream's last piece handed over.
    pub fn finish(mut self) -> io::Result<Finished> {
        match self.streaming.take() {
            None => Ok(Finished::Whole(self.held.into_bytes())),
            Some(mut streaming) => {
                let last = streaming.take_piece();
                streaming
                    .pieces
                    .send_blocking(StreamPiece::Last(last))
                    .map_err(|_| reader_gone())?;
                Ok(Finished::Streamed)
            }
        }
    }

    /// The held part goes out first, in pieces (slices of the one buffer), once the driver
    /// has the stream.
    fn begin(&mut self, policy: StreamPolicy, announce: Begin<'_>) -> io::Result<()> {
        let capacity = (policy.window / PIECE_BYTES).max(1);
        let (sender, pieces) = async_channel::bounded(capacity);
        announce(ResultStream {
            pieces,
            text: self.text,
        });
        let held = std::mem::replace(&mut self.held, ResultBuffer::new(0)).into_bytes();
        let mut start = 0;
        while start < held.len() {
            let end = (start + PIECE_BYTES).min(held.len());
            sender
                .send_blocking(StreamPiece::More(held.slice(start..end)))
                .map_err(|_| reader_gone())?;
            start = end;
        }
        let buffers = Arc::new(PieceBuffers {
            free: Mutex::new(Vec::new()),
            allocated: Default::default(),
            // A shared stream's readers hold up to two windows of pieces (`share`).
            keep: 2 * capacity + 4,
        });
        self.streaming = Some(Streaming {
            piece: buffers.take(),
            pieces: sender,
            buffers,
        });
        Ok(())
    }
}

fn reader_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the streamed result's reader is gone",
    )
}

impl Write for ResultWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(streaming) = &mut self.streaming {
            // A piece stays within its buffer (no reallocation) unless one write is larger.
            if !streaming.piece.is_empty() && streaming.piece.len() + buf.len() > PIECE_BYTES {
                streaming.ship()?;
            }
            streaming.piece.extend_from_slice(buf);
            if streaming.piece.len() >= PIECE_BYTES {
                streaming.ship()?;
            }
            return Ok(buf.len());
        }
        self.held.write_all(buf)?;
        if let Some((policy, announce)) = self.policy {
            if self.held.len() > policy.above {
                self.begin(policy, announce)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn policy(above: usize) -> StreamPolicy {
        StreamPolicy {
            above,
            window: 64 * PIECE_BYTES,
        }
    }

    fn bytes_of(pieces: &ResultStream) -> (Vec<u8>, bool) {
        let mut all = Vec::new();
        while let Some(piece) = pieces.next_blocking() {
            match piece {
                StreamPiece::More(bytes) => all.extend_from_slice(&bytes),
                StreamPiece::Last(bytes) => {
                    all.extend_from_slice(&bytes);
                    return (all, true);
                }
            }
        }
        (all, false)
    }

    #[test]
    fn a_result_under_the_threshold_stays_whole() {
        let announced = RefCell::new(None);
        let begin = |stream| *announced.borrow_mut() = Some(stream);
        let mut writer = ResultWriter::new(0, Some((policy(1000), &begin)), false);
        writer.write_all(&[1; 1000]).unwrap();
        assert!(!writer.began());
        let Finished::Whole(bytes) = writer.finish().unwrap() else {
            panic!("streamed under the threshold");
        };
        assert_eq!(bytes.len(), 1000);
        assert!(announced.borrow().is_none());
    }

    #[test]
    fn past_the_threshold_every_byte_arrives_in_order_and_the_end_is_marked() {
        let announced = RefCell::new(None);
        let begin = |stream| *announced.borrow_mut() = Some(stream);
        let mut writer = ResultWriter::new(0, Some((policy(3 * PIECE_BYTES / 2), &begin)), false);
        let expected: Vec<u8> = (0..5 * PIECE_BYTES + 17).map(|i| (i % 251) as u8).collect();
        for chunk in expected.chunks(7919) {
            writer.write_all(chunk).unwrap();
        }
        assert!(writer.began());
        assert!(matches!(writer.finish().unwrap(), Finished::Streamed));
        let stream = announced.borrow_mut().take().expect("announced");
        let (bytes, whole) = bytes_of(&stream);
        assert!(whole);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn a_long_stream_goes_through_a_few_reused_buffers() {
        let announced = RefCell::new(None);
        let begin = |stream| *announced.borrow_mut() = Some(stream);
        let policy = StreamPolicy {
            above: 10,
            window: 4 * PIECE_BYTES,
        };
        let mut writer = ResultWriter::new(0, Some((policy, &begin)), false);
        writer.write_all(&[1; 100]).unwrap();
        let stream = announced.borrow_mut().take().expect("announced");
        // The reader takes each piece as it comes and lets it go, as a writer task does.
        let reader = std::thread::spawn(move || {
            let (mut pieces, mut total) = (0, 0);
            while let Some(piece) = stream.next_blocking() {
                let (bytes, last) = piece.into_parts();
                pieces += 1;
                total += bytes.len();
                if last {
                    break;
                }
            }
            (pieces, total)
        });
        for _ in 0..200 {
            writer.write_all(&[2; PIECE_BYTES / 2]).unwrap();
        }
        let buffers = writer
            .streaming
            .as_ref()
            .expect("streaming")
            .buffers
            .clone();
        assert!(matches!(writer.finish().unwrap(), Finished::Streamed));
        let (pieces, total) = reader.join().unwrap();
        assert_eq!(total, 100 + 200 * PIECE_BYTES / 2);
        assert!(pieces > 90, "{pieces} pieces");
        // About 100 pieces through the window's worth of buffers and a few more.
        let allocated = buffers.allocated.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            allocated <= 4 + 6,
            "{allocated} buffers allocated for {pieces} pieces"
        );
    }

    /// A source of these pieces, fed from outside (the worker's side).
    fn fed_stream() -> (async_channel::Sender<StreamPiece>, ResultStream) {
        let (sender, pieces) = async_channel::bounded(4);
        (
            sender,
            ResultStream {
                pieces,
                text: false,
            },
        )
    }

    async fn read_all(stream: ResultStream) -> (Vec<u8>, bool) {
        let mut all = Vec::new();
        while let Some(piece) = stream.next().await {
            let (bytes, last) = piece.into_parts();
            all.extend_from_slice(&bytes);
            if last {
                return (all, true);
            }
        }
        (all, false)
    }

    #[test]
    fn a_shared_stream_gives_every_reader_every_byte_under_its_own_header() {
        smol::block_on(crate::EXECUTOR.run(async {
            let (source, stream) = fed_stream();
            let (own, theirs) = stream.share(4, vec![Bytes::from("b:"), Bytes::from("ccc:")]);
            let readers: Vec<_> = std::iter::once(own)
                .chain(theirs)
                .map(|s| crate::spawn(read_all(s)))
                .collect();
            let mut rest = Vec::new();
            for i in 0..50u32 {
                let piece = vec![(i % 251) as u8; 1000 + i as usize];
                rest.extend_from_slice(&piece);
                source.send(StreamPiece::More(piece.into())).await.unwrap();
            }
            source
                .send(StreamPiece::Last(Bytes::from("end")))
                .await
                .unwrap();
            rest.extend_from_slice(b"end");
            let mut got = Vec::new();
            for reader in readers {
                got.push(reader.await);
            }
            let with = |header: &[u8]| ([header, &rest[4..]].concat(), true);
            assert_eq!(got, vec![with(&rest[..4]), with(b"b:"), with(b"ccc:")]);
        }));
    }

    #[test]
    fn a_gone_reader_leaves_the_others_and_with_none_left_the_worker_stops() {
        smol::block_on(crate::EXECUTOR.run(async {
            let (source, stream) = fed_stream();
            let (own, mut theirs) = stream.share(0, vec![Bytes::new()]);
            let other = theirs.pop().unwrap();
            drop(own);
            source
                .send(StreamPiece::More(Bytes::from("x")))
                .await
                .unwrap();
            source
                .send(StreamPiece::More(Bytes::from("y")))
                .await
                .unwrap();
            assert_eq!(other.next().await.unwrap().into_parts().0, "x");
            assert_eq!(other.next().await.unwrap().into_parts().0, "y");
            drop(other);
            // The source is dropped once nobody reads: the worker's sends fail.
            let mut failed = false;
            for _ in 0..100 {
                if source
                    .send(StreamPiece::More(Bytes::from("z")))
                    .await
                    .is_err()
                {
                    failed = true;
                    break;
                }
            }
            assert!(failed, "the worker would write on for nobody");
        }));
    }

    #[test]
    fn a_stream_dropped_before_its_end_is_not_whole_and_a_gone_reader_stops_the_writer() {
        let announced = RefCell::new(None);
        let begin = |stream| *announced.borrow_mut() = Some(stream);
        let mut writer = ResultWriter::new(0, Some((policy(10), &begin)), false);
        writer.write_all(&[3; 100]).unwrap();
        let stream = announced.borrow_mut().take().expect("announced");
        drop(writer); // the worker failed midway: no `Last`
        assert_eq!(bytes_of(&stream), (vec![3; 100], false));

        let mut writer = ResultWriter::new(0, Some((policy(10), &begin)), false);
        writer.write_all(&[3; 100]).unwrap();
        drop(announced.borrow_mut().take());
        let error = (0..100)
            .find_map(|_| writer.write_all(&[0; PIECE_BYTES]).err())
            .expect("writes fail once the reader is gone");
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
