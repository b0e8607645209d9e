//! How hard to compress, per connection: the level follows the link.
//!
//! Compression and sending overlap (a large reply is compressed in parts while the earlier
//! parts are on the wire), so a reply takes as long as the slower of the two. On a slow link
//! the bytes saved decide and a higher level is free; on a fast one the compressor must keep
//! up. No fixed level is right for both (BENCHMARKS.md, "over a real network": level 2 takes
//! 0.112 s per MB of JSON at 10 Mbit/s where level 9 takes 0.093 s, but level 6 is CPU-bound
//! below ~230 Mbit/s). So the writer watches which side is behind each time it takes a
//! compressed part, from the socket's unsent bytes (`TCP_INFO`'s `tcpi_notsent_bytes`):
//!
//! - the backlog of unsent bytes grew since the last part by a tenth of that part or more
//!   (compression outruns the link), or the part was ready before the writer asked while the
//!   socket is backed up (the writer itself waited on the socket): one level up;
//! - the writer waited for the part and the backlog shrank meanwhile (the link drains faster
//!   than compression fills it): one level down.
//!
//! The change of the backlog, not its size, decides: a socket buffer of megabytes drains for
//! a long while after compression became the slower side, and a level judged by the size
//! alone keeps climbing through it.
//!
//! The level is kept between replies of the connection, so a reply compressed whole (too
//! small to be paced) is compressed at the level the connection's larger replies found.

use smol::net::TcpStream;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

/// The levels of each encoding, from fastest to smallest; a connection's pace is an index
/// into them (clamped to the ladder's length), starting at [`START`]; the first is the floor.
/// Deflate (WebSocket `permessage-deflate` and gzip): level 2 for a fast link (the flights
/// JSON 7.1:1 at 288 MB/s per core), 4 to start (8.0:1, and Arrow results 3.3:1 where level 2
/// gives 3.2:1), up to 6 (8.5:1 at 36 MB/s; zlib's default, and Mosaic's). Not 7–9: 1 % smaller
/// JSON at half the speed, and Arrow results no smaller at all (5.3:1 at every level) at a
/// fifth of it, so on a slow link they only made Arrow replies CPU-bound (WAN benchmark:
/// 1M-row Arrow at 10 Mbit/s 2.69 s against 2.57 s at a fixed level). BENCHMARKS.md,
/// "Compression follows the link".
const DEFLATE_LEVELS: [u32; 5] = [2, 3, 4, 5, 6];
/// zstd 1–3 are about as fast and as small on result JSON (8.3–8.5:1 on flights in 256 KiB
/// flushed parts); 5 and 7 trade speed for size (8.8:1, 9.6:1 at a fifth of the speed).
const ZSTD_LEVELS: [i32; 5] = [1, 2, 3, 5, 7];
const BROTLI_QUALITIES: [u32; 5] = [2, 3, 4, 5, 6];

// One rung means the same step for every encoding.
const _: () = assert!(
    DEFLATE_LEVELS.len() == ZSTD_LEVELS.len() && DEFLATE_LEVELS.len() == BROTLI_QUALITIES.len()
);

/// The rung a connection starts on, before its link is known: deflate 4, zstd 3, brotli 4.
const START: usize = 2;

/// Unsent bytes in the kernel past which the link is behind: a small rest is a part on its
/// way out, not a queue.
const LINK_BEHIND_BYTES: u32 = 16 * 1024;

/// Which side was behind when the writer took a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// Compression outruns the link: the socket's backlog grew, or the writer itself waited
    /// on the backed-up socket.
    Link,
    /// The writer waited for the part while the socket's backlog drained (or was empty).
    Compressor,
    /// Neither clearly: keep the level.
    Neither,
}

impl Behind {
    /// What the writer saw when it took a part: whether it `waited` for it, the socket's
    /// unsent bytes when it took the previous part (`before`) and now (`None` where the
    /// kernel does not say), and the size of the previous part (what it `added`).
    pub fn judge(waited: bool, before: u32, now: Option<u32>, added: usize) -> Behind {
        let Some(now) = now else {
            return Behind::Neither;
        };
        let grew = i64::from(now) - i64::from(before);
        let backed_up = now >= LINK_BEHIND_BYTES;
        if backed_up && (!waited || (grew > 0 && grew * 10 >= added as i64)) {
            Behind::Link
        } else if waited && (grew < 0 || now == 0) {
            Behind::Compressor
        } else {
            Behind::Neither
        }
    }
}

/// One connection's compression level, shared between its writer (which judges) and the
/// thread compressing its reply's parts (which reads the level before each part).
#[derive(Debug)]
pub struct CompressionPace {
    rung: AtomicUsize,
}

impl Default for CompressionPace {
    fn default() -> Self {
        CompressionPace {
            rung: AtomicUsize::new(START),
        }
    }
}

impl CompressionPace {
    /// One step up or down (at most one per part, so a blip moves the level by one). The
    /// ladders have the same length, so one rung means the same for every encoding.
    pub fn observe(&self, behind: Behind) {
        let step = |rung: usize| match behind {
            Behind::Link => Some((rung + 1).min(DEFLATE_LEVELS.len() - 1)),
            Behind::Compressor => Some(rung.saturating_sub(1)),
            Behind::Neither => None,
        };
        if let Ok(was) = self
            .rung
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, step)
        {
            // `RUST_LOG=duckwire::pace=trace` shows how a connection's level moves.
            tracing::trace!(target: "duckwire::pace", ?behind, from = was, to = self.rung(), "pace");
        }
    }

    fn rung(&self) -> usize {
        self.rung.load(Ordering::Relaxed)
    }

    pub fn deflate_level(&self) -> u32 {
        DEFLATE_LEVELS[self.rung().min(DEFLATE_LEVELS.len() - 1)]
    }

    pub fn zstd_level(&self) -> i32 {
        ZSTD_LEVELS[self.rung().min(ZSTD_LEVELS.len() - 1)]
    }

    pub fn brotli_quality(&self) -> u32 {
        BROTLI_QUALITIES[self.rung().min(BROTLI_QUALITIES.len() - 1)]
    }
}

/// A connection's pace and the probe that judges it: the writer side of pacing.
#[derive(Debug, Default)]
pub struct Pacing {
    pace: Arc<CompressionPace>,
    probe: Option<LinkProbe>,
    /// The socket's unsent bytes when the previous part was taken.
    unsent_before: AtomicU32,
    /// The compressed size of the previous part.
    previous_part: AtomicUsize,
}

impl Pacing {
    /// The pacing of a connection on `socket`; only one whose replies are `compressed`
    /// reads the socket's facts.
    pub fn for_socket(socket: &TcpStream, compressed: bool) -> Self {
        Pacing {
            probe: compressed.then(|| LinkProbe {
                socket: socket.clone(),
            }),
            ..Pacing::default()
        }
    }

    /// The pace, for the thread that compresses the parts.
    pub fn pace(&self) -> Arc<CompressionPace> {
        self.pace.clone()
    }

    /// The next compressed part from `parts` (`None` once they ended; `size` tells a part's
    /// compressed bytes), judging on the way which side is behind. An answer's `first` part
    /// is not judged (the writer always waits for it), only noted.
    pub async fn next_part<T>(
        &self,
        parts: &async_channel::Receiver<T>,
        first: bool,
        size: impl Fn(&T) -> usize,
    ) -> Option<T> {
        let (part, waited) = match parts.try_recv() {
            Ok(part) => (part, false),
            Err(async_channel::TryRecvError::Closed) => return None,
            Err(async_channel::TryRecvError::Empty) => (parts.recv().await.ok()?, true),
        };
        let unsent = self.probe.as_ref().and_then(LinkProbe::unsent_bytes);
        if !first {
            let before = self.unsent_before.load(Ordering::Relaxed);
            let added = self.previous_part.load(Ordering::Relaxed);
            self.pace
                .observe(Behind::judge(waited, before, unsent, added));
        }
        self.unsent_before
            .store(unsent.unwrap_or(0), Ordering::Relaxed);
        self.previous_part.store(size(&part), Ordering::Relaxed);
        Some(part)
    }
}

/// Reads a socket's unsent bytes from the kernel (the facts [`Behind::judge`] needs). It
/// holds a clone of the connection's `TcpStream` (the same descriptor, shared), so it stays
/// valid however the connection's halves are split, at no descriptor of its own.
#[derive(Debug)]
struct LinkProbe {
    socket: TcpStream,
}

impl LinkProbe {
    /// Bytes written to the socket that the kernel has not sent yet (`tcpi_notsent_bytes`,
    /// Linux 4.6+); `None` where the kernel does not say.
    #[cfg(target_os = "linux")]
    fn unsent_bytes(&self) -> Option<u32> {
        use std::os::fd::AsRawFd;
        // SAFETY: `tcp_info` is plain data the kernel fills up to `len` bytes; the
        // descriptor is open for as long as `self` holds the stream.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let done = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        let reaches =
            std::mem::offset_of!(libc::tcp_info, tcpi_notsent_bytes) + std::mem::size_of::<u32>();
        (done == 0 && len as usize >= reaches).then_some(info.tcpi_notsent_bytes)
    }

    #[cfg(not(target_os = "linux"))]
    fn unsent_bytes(&self) -> Option<u32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_climbs_while_the_link_is_behind_and_falls_while_the_compressor_is() {
        let pace = CompressionPace::default();
        assert_eq!(pace.deflate_level(), 4);
        assert_eq!(pace.zstd_level(), 3);
        assert_eq!(pace.brotli_quality(), 4);
        pace.observe(Behind::Compressor);
        assert_eq!(pace.deflate_level(), 3);
        for _ in 0..3 {
            pace.observe(Behind::Link);
        }
        assert_eq!(pace.deflate_level(), 6);
        pace.observe(Behind::Neither);
        assert_eq!(pace.deflate_level(), 6);
        for _ in 0..20 {
            pace.observe(Behind::Link);
        }
        assert_eq!(pace.deflate_level(), 6, "the top rung holds");
        assert_eq!(pace.zstd_level(), 7);
        assert_eq!(pace.brotli_quality(), 6);
        for _ in 0..20 {
            pace.observe(Behind::Compressor);
        }
        assert_eq!(pace.deflate_level(), 2, "the bottom rung holds");
        assert_eq!(pace.zstd_level(), 1);
    }

    #[test]
    fn only_clear_facts_move_it() {
        let part = 64 * 1024;
        // The backlog grew by more than a tenth of the part: compression outruns the link.
        assert_eq!(
            Behind::judge(true, 100_000, Some(120_000), part),
            Behind::Link
        );
        // Grew, but by less: about even, keep the level.
        assert_eq!(
            Behind::judge(true, 100_000, Some(103_000), part),
            Behind::Neither
        );
        // The part was ready and the socket is backed up: the writer waited on the socket.
        assert_eq!(
            Behind::judge(false, 200_000, Some(200_000), part),
            Behind::Link
        );
        // A backlog left from before that drains while the writer waits: the link is faster
        // than compression now, however large the backlog still is.
        assert_eq!(
            Behind::judge(true, 900_000, Some(800_000), part),
            Behind::Compressor
        );
        assert_eq!(Behind::judge(true, 0, Some(0), part), Behind::Compressor);
        // Not waited and nothing backed up: the part was ready early, nothing to say.
        assert_eq!(Behind::judge(false, 0, Some(0), part), Behind::Neither);
        assert_eq!(Behind::judge(true, 0, Some(100), part), Behind::Neither);
        assert_eq!(Behind::judge(true, 50_000, None, part), Behind::Neither);
    }

    #[test]
    fn the_kernel_counts_unsent_bytes_of_a_socket_nobody_reads() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_unread, _) = listener.accept().unwrap();
        let socket = TcpStream::try_from(sender.try_clone().unwrap()).unwrap();
        let probe = LinkProbe { socket };
        assert_eq!(probe.unsent_bytes(), Some(0));
        // More than the peer's receive window: the rest stays in our send queue, unsent
        // (`try_from` made the socket non-blocking, so the loop ends when it is full).
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        while written < 64 * 1024 * 1024 {
            match sender.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        let unsent = probe.unsent_bytes().unwrap();
        assert!(unsent >= LINK_BEHIND_BYTES, "unsent {unsent} of {written}");
    }
}
