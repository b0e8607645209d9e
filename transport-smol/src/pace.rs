//! How hard to compress, per connection: the level follows the link.
//!
//! Compression and sending overlap (a large reply is compressed in parts while the earlier
//! parts are on the wire), so a reply takes as long as the slower of the two. On a slow link
//! the bytes saved decide and a higher level is free; on a fast one the compressor must keep
//! up. No fixed level is right for both (BENCHMARKS.md, "over a real network": level 2 takes
//! 0.112 s per MB of JSON at 10 Mbit/s where level 9 takes 0.093 s, but level 6 is CPU-bound
//! below ~230 Mbit/s). So the writer watches the two facts that say which side is behind,
//! each time it takes a compressed part:
//!
//! - the kernel still holds unsent bytes of this socket (`TCP_INFO`'s `tcpi_notsent_bytes`):
//!   the link (or the peer's reading) is slower than compression → one level up;
//! - the writer had to wait for the part and the socket had sent everything: the link waits
//!   for the compressor → one level down.
//!
//! The level is kept between replies of the connection, so a reply compressed whole (too
//! small to be paced) is compressed at the level the connection's larger replies found.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The levels of each encoding, from fastest to smallest; a connection's pace is an index
/// into them (clamped to the ladder's length), starting at [`START`]; the first is the floor.
/// Deflate (WebSocket `permessage-deflate` and gzip): level 2 for a fast link (the flights
/// JSON 7.1:1 at 288 MB/s per core), 4 to start (8.0:1, and Arrow results 3.3:1 where level 2
/// gives 3.2:1), up to 9 (8.6:1 at about 12 MB/s, still faster than a 10 Mbit/s link needs);
/// level 8 is left out (as slow as 9, no smaller). BENCHMARKS.md, "Compression follows the
/// link".
const DEFLATE_LEVELS: [u32; 7] = [2, 3, 4, 5, 6, 7, 9];
/// zstd levels 2–4 are as fast as 3 and no smaller; from 5 on, each step trades speed
/// for size (flights JSON: 8.3:1 at 3, 10:1 at 9, 10.4:1 at 12).
const ZSTD_LEVELS: [i32; 7] = [1, 2, 3, 5, 7, 9, 12];
const BROTLI_QUALITIES: [u32; 6] = [2, 3, 4, 5, 6, 7];

/// The rung a connection starts on, before its link is known: deflate 4, zstd 3, brotli 4.
const START: usize = 2;

/// Unsent bytes in the kernel past which the link is behind: a small rest is a part on its
/// way out, not a queue.
const LINK_BEHIND_BYTES: u32 = 16 * 1024;

/// Which side was behind when the writer took a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// The socket still held unsent bytes: the link waits for nothing.
    Link,
    /// The writer waited for the part and the socket had sent everything.
    Compressor,
    /// Neither clearly: keep the level.
    Neither,
}

impl Behind {
    /// What the writer saw: whether it `waited` for the part, and the socket's unsent bytes
    /// (`None` where the kernel does not say).
    pub fn judge(waited: bool, unsent: Option<u32>) -> Behind {
        match unsent {
            Some(unsent) if unsent >= LINK_BEHIND_BYTES => Behind::Link,
            Some(0) if waited => Behind::Compressor,
            _ => Behind::Neither,
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
    /// One step up or down (at most one per part, so a blip moves the level by one).
    pub fn observe(&self, behind: Behind) {
        let step = |rung: usize| match behind {
            Behind::Link => Some((rung + 1).min(DEFLATE_LEVELS.len() - 1)),
            Behind::Compressor => Some(rung.saturating_sub(1)),
            Behind::Neither => None,
        };
        let _ = self
            .rung
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, step);
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
}

impl Pacing {
    pub fn new(probe: Option<LinkProbe>) -> Self {
        Pacing {
            pace: Arc::default(),
            probe,
        }
    }

    /// The pace, for the thread that compresses the parts.
    pub fn pace(&self) -> Arc<CompressionPace> {
        self.pace.clone()
    }

    /// The next compressed part from `parts` (`None` once they ended), judging on the way
    /// which side is behind. Not for an answer's `first` part: the writer always waits for
    /// that one, whatever the link.
    pub async fn next_part<T>(&self, parts: &async_channel::Receiver<T>, first: bool) -> Option<T> {
        let (part, waited) = match parts.try_recv() {
            Ok(part) => (part, false),
            Err(async_channel::TryRecvError::Closed) => return None,
            Err(async_channel::TryRecvError::Empty) => (parts.recv().await.ok()?, true),
        };
        if !first {
            let unsent = self.probe.as_ref().and_then(LinkProbe::unsent_bytes);
            self.pace.observe(Behind::judge(waited, unsent));
        }
        Some(part)
    }
}

/// Reads a socket's unsent bytes from the kernel (the facts [`Behind::judge`] needs).
#[derive(Debug)]
pub struct LinkProbe {
    fd: OwnedFd,
}

impl LinkProbe {
    /// A probe on its own handle to the socket (a `dup`), so it stays valid however the
    /// connection's halves are split and dropped. `None` if the handle cannot be had.
    pub fn new(socket: &impl AsFd) -> Option<LinkProbe> {
        let fd = socket.as_fd().try_clone_to_owned().ok()?;
        Some(LinkProbe { fd })
    }

    /// Bytes written to the socket that the kernel has not sent yet (`tcpi_notsent_bytes`,
    /// Linux 4.6+); `None` where the kernel does not say.
    #[cfg(target_os = "linux")]
    pub fn unsent_bytes(&self) -> Option<u32> {
        use std::os::fd::AsRawFd;
        // SAFETY: `tcp_info` is plain data the kernel fills up to `len` bytes; the fd is
        // ours (a dup) and open for as long as `self`.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let done = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
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
    pub fn unsent_bytes(&self) -> Option<u32> {
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
        assert_eq!(pace.deflate_level(), 9, "the top rung holds");
        assert_eq!(pace.zstd_level(), 12);
        assert_eq!(pace.brotli_quality(), 7, "a shorter ladder is clamped");
        for _ in 0..20 {
            pace.observe(Behind::Compressor);
        }
        assert_eq!(pace.deflate_level(), 2, "the bottom rung holds");
        assert_eq!(pace.zstd_level(), 1);
    }

    #[test]
    fn only_clear_facts_move_it() {
        assert_eq!(Behind::judge(false, Some(200_000)), Behind::Link);
        assert_eq!(Behind::judge(true, Some(200_000)), Behind::Link);
        assert_eq!(Behind::judge(true, Some(0)), Behind::Compressor);
        // Not waited: the part was ready before the writer asked, whatever the socket says.
        assert_eq!(Behind::judge(false, Some(0)), Behind::Neither);
        assert_eq!(Behind::judge(true, Some(100)), Behind::Neither);
        assert_eq!(Behind::judge(true, None), Behind::Neither);
    }

    #[test]
    fn the_kernel_counts_unsent_bytes_of_a_socket_nobody_reads() {
        use std::io::Write;
        use std::net::TcpStream;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_unread, _) = listener.accept().unwrap();
        let probe = LinkProbe::new(&sender).expect("a probe on Linux");
        assert_eq!(probe.unsent_bytes(), Some(0));
        // More than the peer's receive window: the rest stays in our send queue, unsent.
        sender.set_nonblocking(true).unwrap();
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
