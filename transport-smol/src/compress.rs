//! HTTP answer compression (`--http-compression auto|on|off`): `zstd`, `br` or `gzip`, as the
//! request's `Accept-Encoding` prefers, for bodies above a threshold. `auto` compresses only
//! for non-loopback peers: on one machine, bandwidth is free and compressing costs time.

use std::io::Write;
use std::net::SocketAddr;

use duckwire_core::websocket::MessageDeflater;

use crate::pace::CompressionPace;

/// Bodies smaller than this go as they are: headers and a round trip dominate anyway.
pub const COMPRESS_ABOVE: usize = 4 * 1024;

/// Large answers and replies are compressed in parts of this size, each sent (an HTTP chunk,
/// a WebSocket fragment) while the next is compressed.
pub const COMPRESS_PART_BYTES: usize = 256 * 1024;

// Levels come from the connection's pace (`crate::pace`): fast ones until the link shows
// it is slower than the compressor.
const BROTLI_BUFFER_BYTES: usize = 64 * 1024;
const BROTLI_WINDOW_BITS: u32 = 22;

/// Runs `produce` on the blocking pool, off the I/O thread; each part it hands to its `send`
/// reaches the returned receiver as soon as it is ready, at most two ahead of the reader
/// (compression waits for a slow network, not the reverse). `send` answers `false` once the
/// receiver is gone (the connection closed): `produce` should stop then.
pub fn parts_on_blocking_pool<T: Send + 'static>(
    produce: impl FnOnce(&dyn Fn(T) -> bool) + Send + 'static,
) -> async_channel::Receiver<T> {
    let (ready, parts) = async_channel::bounded(2);
    smol::unblock(move || produce(&|part| ready.send_blocking(part).is_ok())).detach();
    parts
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Only for peers that are not on this machine.
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Compression::Auto),
            "on" => Ok(Compression::On),
            "off" => Ok(Compression::Off),
            other => Err(format!("expected auto, on or off, got {other:?}")),
        }
    }
}

impl Compression {
    pub fn applies_to(self, peer: &SocketAddr) -> bool {
        match self {
            Compression::Auto => !peer.ip().is_loopback(),
            Compression::On => true,
            Compression::Off => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

impl Encoding {
    pub fn header_value(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// The encoding `Accept-Encoding` prefers (highest q; on ties zstd, then br, then gzip:
    /// fastest for the ratio first). `None` when it accepts none of them.
    pub fn negotiate(accept_encoding: &str) -> Option<Encoding> {
        let mut best: Option<(f32, u8, Encoding)> = None;
        for item in accept_encoding.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let (rank, encoding) = match name.as_str() {
                "zstd" => (3, Encoding::Zstd),
                "br" => (2, Encoding::Brotli),
                "gzip" | "x-gzip" => (1, Encoding::Gzip),
                _ => continue,
            };
            if q <= 0.0 {
                continue;
            }
            if best.is_none_or(|(bq, br, _)| q > bq || (q == bq && rank > br)) {
                best = Some((q, rank, encoding));
            }
        }
        best.map(|(_, _, encoding)| encoding)
    }

    /// Compresses a whole answer at the level the connection's pace is at.
    pub fn compress(self, body: &[u8], pace: &CompressionPace) -> std::io::Result<Vec<u8>> {
        let mut encoder = PartEncoder::new(self, pace)?;
        let mut out = encoder.part(body)?;
        out.extend(encoder.finish()?);
        Ok(out)
    }
}

/// Compresses one answer part by part: each part comes out flushed, so it can be sent as an
/// HTTP chunk while the next part is compressed. gzip follows the pace from part to part;
/// zstd and brotli keep the level they started the answer with (their encoders take a level
/// only when a frame begins).
pub struct PartEncoder {
    inner: PartInner,
}

enum PartInner {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Gzip(GzipParts),
}

impl PartEncoder {
    pub fn new(encoding: Encoding, pace: &CompressionPace) -> std::io::Result<Self> {
        let inner = match encoding {
            Encoding::Zstd => PartInner::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                pace.zstd_level(),
            )?),
            Encoding::Brotli => PartInner::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER_BYTES,
                pace.brotli_quality(),
                BROTLI_WINDOW_BITS,
            ))),
            Encoding::Gzip => PartInner::Gzip(GzipParts::new(pace.deflate_level())),
        };
        Ok(PartEncoder { inner })
    }

    /// Follows the pace before the next part, where the encoding allows.
    pub fn follow(&mut self, pace: &CompressionPace) {
        if let PartInner::Gzip(gzip) = &mut self.inner {
            gzip.deflater.set_level(pace.deflate_level());
        }
    }

    /// The compressed bytes of `input`, flushed.
    pub fn part(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        match &mut self.inner {
            PartInner::Zstd(encoder) => take_flushed(encoder, input, |e| e.get_mut()),
            PartInner::Brotli(encoder) => take_flushed(encoder.as_mut(), input, |e| e.get_mut()),
            PartInner::Gzip(gzip) => gzip.part(input),
        }
    }

    /// The end of the stream (trailers, checksums).
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self.inner {
            PartInner::Zstd(encoder) => encoder.finish(),
            PartInner::Brotli(encoder) => Ok(encoder.into_inner()),
            PartInner::Gzip(gzip) => gzip.finish(),
        }
    }
}

/// A gzip member (RFC 1952) written around the WebSocket code's raw deflater, so its level
/// can change from one flushed part to the next (flate2's `GzEncoder` keeps its level).
struct GzipParts {
    deflater: MessageDeflater,
    crc: flate2::Crc,
    header_sent: bool,
}

/// ID1 ID2, CM = deflate, no flags, no mtime, XFL 0, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

impl GzipParts {
    fn new(level: u32) -> Self {
        GzipParts {
            deflater: MessageDeflater::new(level),
            crc: flate2::Crc::new(),
            header_sent: false,
        }
    }

    fn part(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        self.crc.update(input);
        let deflated = self
            .deflater
            .part(input, false)
            .map_err(std::io::Error::other)?;
        if self.header_sent {
            return Ok(deflated);
        }
        self.header_sent = true;
        let mut out = Vec::with_capacity(GZIP_HEADER.len() + deflated.len());
        out.extend_from_slice(&GZIP_HEADER);
        out.extend(deflated);
        Ok(out)
    }

    /// An empty final block, then CRC-32 and length of the input, little-endian.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        let mut out = if self.header_sent {
            Vec::new()
        } else {
            GZIP_HEADER.to_vec()
        };
        // A fixed-Huffman block with BFINAL set and only its end-of-block code: 0x03 0x00.
        out.extend_from_slice(&[0x03, 0x00]);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        Ok(out)
    }
}

fn take_flushed<E: Write>(
    encoder: &mut E,
    input: &[u8],
    output: impl Fn(&mut E) -> &mut Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    encoder.write_all(input)?;
    encoder.flush()?;
    Ok(std::mem::take(output(encoder)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pace::Behind;

    #[test]
    fn the_preferred_encoding_wins() {
        assert_eq!(
            Encoding::negotiate("gzip, deflate, br, zstd"),
            Some(Encoding::Zstd)
        );
        assert_eq!(Encoding::negotiate("gzip, br"), Some(Encoding::Brotli));
        assert_eq!(
            Encoding::negotiate("gzip;q=1, br;q=0.5"),
            Some(Encoding::Gzip)
        );
        assert_eq!(Encoding::negotiate("zstd;q=0, gzip"), Some(Encoding::Gzip));
        assert_eq!(Encoding::negotiate("identity, deflate"), None);
        assert_eq!(Encoding::negotiate(""), None);
    }

    #[test]
    fn auto_compresses_only_for_other_machines() {
        let loopback: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let lan: SocketAddr = "192.168.1.2:1".parse().unwrap();
        assert!(!Compression::Auto.applies_to(&loopback));
        assert!(Compression::Auto.applies_to(&lan));
        assert!(Compression::On.applies_to(&loopback));
        assert!(!Compression::Off.applies_to(&lan));
    }

    #[test]
    fn every_encoding_round_trips() {
        let body = b"[{\"a\":1},{\"a\":2}]".repeat(1000);
        let pace = CompressionPace::default();
        let zstd = Encoding::Zstd.compress(&body, &pace).unwrap();
        assert_eq!(zstd::stream::decode_all(&zstd[..]).unwrap(), body);
        let br = Encoding::Brotli.compress(&body, &pace).unwrap();
        let mut decoded = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut decoded).unwrap();
        assert_eq!(decoded, body);
        let gz = Encoding::Gzip.compress(&body, &pace).unwrap();
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut decoded)
            .unwrap();
        assert_eq!(decoded, body);
        assert!(zstd.len() < body.len() / 10);
    }

    #[test]
    fn an_answer_compressed_in_parts_decodes_to_the_whole() {
        let body = b"[{\"a\":1},{\"a\":2}]".repeat(20_000);
        for encoding in [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip] {
            // The pace moves between parts (gzip follows it; the others keep their start).
            let pace = CompressionPace::default();
            let mut encoder = PartEncoder::new(encoding, &pace).unwrap();
            let mut wire = Vec::new();
            for (i, part) in body.chunks(70_000).enumerate() {
                let behind = if i % 3 == 2 {
                    Behind::Compressor
                } else {
                    Behind::Link
                };
                pace.observe(behind);
                encoder.follow(&pace);
                wire.extend(encoder.part(part).unwrap());
            }
            wire.extend(encoder.finish().unwrap());
            let mut decoded = Vec::new();
            match encoding {
                Encoding::Zstd => decoded = zstd::stream::decode_all(&wire[..]).unwrap(),
                Encoding::Brotli => brotli::BrotliDecompress(&mut &wire[..], &mut decoded).unwrap(),
                Encoding::Gzip => {
                    std::io::Read::read_to_end(
                        &mut flate2::read::GzDecoder::new(&wire[..]),
                        &mut decoded,
                    )
                    .unwrap();
                }
            }
            assert_eq!(decoded, body, "{encoding:?}");
            assert!(wire.len() < body.len() / 5, "{encoding:?}");
        }
    }
}
