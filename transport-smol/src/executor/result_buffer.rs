//! The buffer a large result is written into. While small it is a `Vec`; past
//! [`MAPPED_FROM`] bytes (Linux) it moves to an anonymous memory mapping that grows with
//! `mremap`, which moves the pages instead of copying them.
//!
//! Why: a result is streamed from DuckDB, so its size is not known before it is written, and a
//! `Vec` reaches 80 MB (the benchmark's 5M-row Arrow result) by reallocating about 15 times,
//! each time copying everything written so far into fresh pages the kernel must zero first.
//! `perf` on that query: 33 % of the samples zeroing pages and 10 % copying, under
//! `RawVec::finish_grow` (the global allocator, mimalloc, copies on realloc; glibc would
//! mremap, but it keeps freed memory). Here each page is zeroed once and nothing is copied.

use std::io::{self, Write};

use bytes::Bytes;

/// Below this a result stays in a `Vec`: most results are small, and a mapping costs two
/// system calls.
const MAPPED_FROM: usize = 1 << 20;

pub struct ResultBuffer {
    small: Vec<u8>,
    /// Whether it may move to a mapping (not for text, which must end as a `String`: a
    /// mapping's bytes would be copied into one).
    mappable: bool,
    #[cfg(target_os = "linux")]
    mapped: Option<Mapped>,
}

#[cfg(target_os = "linux")]
struct Mapped {
    map: memmap2::MmapMut,
    len: usize,
}

#[cfg(target_os = "linux")]
impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

impl ResultBuffer {
    pub fn new(capacity: usize) -> Self {
        ResultBuffer {
            small: Vec::with_capacity(capacity),
            mappable: true,
            #[cfg(target_os = "linux")]
            mapped: None,
        }
    }

    /// A buffer that stays a `Vec` whatever its size: its bytes become a `String` (a JSON
    /// result held whole) without a copy.
    pub fn owned(capacity: usize) -> Self {
        ResultBuffer {
            small: Vec::with_capacity(capacity),
            mappable: false,
            #[cfg(target_os = "linux")]
            mapped: None,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        #[cfg(target_os = "linux")]
        if let Some(mapped) = &self.mapped {
            return mapped.len;
        }
        self.small.len()
    }

    pub fn into_bytes(self) -> Bytes {
        #[cfg(target_os = "linux")]
        if let Some(mapped) = self.mapped {
            return Bytes::from_owner(mapped);
        }
        Bytes::from(self.small)
    }

    #[cfg(target_os = "linux")]
    fn write_mapped(&mut self, buf: &[u8]) -> io::Result<()> {
        let needed = self.len() + buf.len();
        let mapped = match &mut self.mapped {
            Some(mapped) => mapped,
            None => {
                let mut map = memmap2::MmapMut::map_anon(needed.next_power_of_two())?;
                huge_pages(&map);
                map[..self.small.len()].copy_from_slice(&self.small);
                let len = self.small.len();
                self.small = Vec::new();
                self.mapped.insert(Mapped { map, len })
            }
        };
        if needed > mapped.map.len() {
            // SAFETY: an anonymous mapping has no file to run past the end of, and nothing
            // borrows it while it moves (`&mut self`).
            unsafe {
                mapped.map.remap(
                    needed.next_power_of_two(),
                    memmap2::RemapOptions::new().may_move(true),
                )?;
            }
            huge_pages(&mapped.map);
        }
        mapped.map[mapped.len..needed].copy_from_slice(buf);
        mapped.len = needed;
        Ok(())
    }
}

/// Asks for transparent huge pages (Linux's default is to give them only where asked, as
/// the allocator does for its own large blocks): 2 MB pages are zeroed and mapped in one
/// fault instead of 512. Only advice: where the kernel declines, small pages work as well.
#[cfg(target_os = "linux")]
fn huge_pages(map: &memmap2::MmapMut) {
    let _ = map.advise(memmap2::Advice::HugePage);
}

impl Write for ResultBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if self.mapped.is_some() || (self.mappable && self.small.len() + buf.len() > MAPPED_FROM) {
            self.write_mapped(buf)?;
            return Ok(buf.len());
        }
        self.small.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_writes_come_back_in_order() {
        for total in [
            0,
            10,
            MAPPED_FROM - 1,
            MAPPED_FROM,
            MAPPED_FROM + 1,
            5 * MAPPED_FROM + 3,
        ] {
            let mut buffer = ResultBuffer::new(16);
            let mut expected = Vec::new();
            let mut i = 0u32;
            while expected.len() < total {
                // Writes of varying sizes, as the IPC writer makes them.
                let piece: Vec<u8> = (0..(i % 7919 + 1).min((total - expected.len()) as u32))
                    .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                    .collect();
                buffer.write_all(&piece).unwrap();
                expected.extend_from_slice(&piece);
                i += 1;
            }
            assert_eq!(buffer.len(), expected.len());
            assert_eq!(&buffer.into_bytes()[..], &expected[..], "{total} bytes");
        }
    }

    #[test]
    fn an_owned_buffer_stays_a_vec_past_the_threshold() {
        let mut buffer = ResultBuffer::owned(0);
        let big = vec![b'x'; 3 * MAPPED_FROM];
        buffer.write_all(&big).unwrap();
        #[cfg(target_os = "linux")]
        assert!(buffer.mapped.is_none());
        let start = buffer.small.as_ptr();
        let bytes = buffer.into_bytes();
        // The same allocation all the way to the `Vec` a `String` is made of.
        let vec = Vec::from(bytes);
        assert_eq!(vec.as_ptr(), start);
    }

    #[test]
    fn one_write_larger_than_the_threshold() {
        let mut buffer = ResultBuffer::new(0);
        buffer.write_all(b"header").unwrap();
        let big = vec![7u8; 3 * MAPPED_FROM];
        buffer.write_all(&big).unwrap();
        let bytes = buffer.into_bytes();
        assert_eq!(&bytes[..6], b"header");
        assert!(bytes[6..].iter().all(|b| *b == 7));
        assert_eq!(bytes.len(), 6 + big.len());
    }
}
