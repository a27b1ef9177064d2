//! Chunks: fixed-size, aligned pieces of a disk, named by the SHA-256 of
//! their plaintext, stored as zstd-compressed records. All-zero chunks are
//! never stored (their map entry is [`ChunkRef::ZERO`]).

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The identity of a chunk or index page: SHA-256 of the plaintext (keyed
/// per project once encryption is on).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    pub fn of(data: &[u8]) -> ChunkDigest {
        let mut out = [0u8; 32];
        out.copy_from_slice(&Sha256::digest(data));
        ChunkDigest(out)
    }

    pub fn from_slice(b: &[u8]) -> Option<ChunkDigest> {
        let arr: [u8; 32] = b.try_into().ok()?;
        Some(ChunkDigest(arr))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<ChunkDigest> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ChunkDigest(out))
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Where a chunk or page is: its identity and the segment holding it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ChunkRef {
    pub digest: ChunkDigest,
    /// Segment id; 0 only for [`ChunkRef::ZERO`].
    pub segment: u64,
}

impl ChunkRef {
    /// An all-zero chunk: not stored anywhere.
    pub const ZERO: ChunkRef = ChunkRef {
        digest: ChunkDigest([0; 32]),
        segment: 0,
    };

    pub fn is_zero(&self) -> bool {
        self.segment == 0
    }
}

/// Whether every byte is zero (compares 16 bytes at a time).
pub fn is_zero(data: &[u8]) -> bool {
    let words = data.chunks_exact(16);
    let rest = words.remainder();
    rest.iter().all(|&b| b == 0)
        && words
            .map(|w| <[u8; 16]>::try_from(w).map_or(1, u128::from_ne_bytes))
            .all(|w| w == 0)
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("compressing chunk: {0}")]
    Compress(std::io::Error),
    #[error("decompressing {what}: {source}")]
    Decompress {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: digest mismatch (stored data is corrupt)")]
    DigestMismatch { what: String },
    #[error("{what}: length {got}, expected {expected}")]
    Length {
        what: String,
        got: usize,
        expected: usize,
    },
}

/// zstd at one level, reusing its context across chunks.
pub struct Compressor {
    inner: zstd::bulk::Compressor<'static>,
}

impl Compressor {
    pub fn new(level: i32) -> Result<Compressor, ChunkError> {
        Ok(Compressor {
            inner: zstd::bulk::Compressor::new(level).map_err(ChunkError::Compress)?,
        })
    }

    /// Compressed bytes, or `None` when compression does not pay (the
    /// record is then stored as is).
    pub fn compress(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, ChunkError> {
        let out = self.inner.compress(data).map_err(ChunkError::Compress)?;
        Ok(if out.len() < data.len() {
            Some(out)
        } else {
            None
        })
    }
}

/// The most bytes zstd can turn `raw_len` plaintext bytes into (or the
/// plaintext itself, stored as is when compression does not pay).
pub fn max_compressed_len(raw_len: usize) -> usize {
    zstd::compress_bound(raw_len).max(raw_len)
}

/// Decompress a record payload of known plaintext length. `raw_len` comes
/// from a record header, so the caller has bounded it by the format first
/// (it sizes the allocation); the frame's own content size, when it states
/// one, must be that length too, checked before anything is allocated.
pub fn decompress(payload: &[u8], raw_len: usize, what: &str) -> Result<Vec<u8>, ChunkError> {
    let declared =
        zstd::zstd_safe::get_frame_content_size(payload).map_err(|_| ChunkError::Decompress {
            what: what.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a zstd frame"),
        })?;
    if let Some(declared) = declared.filter(|&d| d != raw_len as u64) {
        return Err(ChunkError::Length {
            what: what.to_string(),
            got: usize::try_from(declared).unwrap_or(usize::MAX),
            expected: raw_len,
        });
    }
    let out =
        zstd::bulk::decompress(payload, raw_len).map_err(|source| ChunkError::Decompress {
            what: what.to_string(),
            source,
        })?;
    if out.len() != raw_len {
        return Err(ChunkError::Length {
            what: what.to_string(),
            got: out.len(),
            expected: raw_len,
        });
    }
    Ok(out)
}

/// Test-only: the largest single allocation a closure makes on this thread,
/// so a test can show that a hostile length is refused before it sizes a
/// buffer (a bounded check, not a flaky RSS reading).
#[cfg(test)]
pub(crate) mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Probe;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: every call is forwarded to the system allocator unchanged;
    // the probe only records sizes in a const thread-local (no allocation).
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    #[global_allocator]
    static PROBE: Probe = Probe;

    /// Run `f`; its result and the largest allocation it made (bytes).
    pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|l| l.set(0));
        let out = f();
        (out, LARGEST.with(|l| l.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_through_hex() {
        let d = ChunkDigest::of(b"ekko");
        assert_eq!(ChunkDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(d.to_hex().len(), 64);
        assert!(ChunkDigest::from_hex("zz").is_none());
        // Known SHA-256 test vector.
        assert_eq!(
            ChunkDigest::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4096]));
        assert!(is_zero(&[0u8; 13]));
        assert!(is_zero(&[]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[17] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn compression_round_trip_and_incompressible_data() {
        let mut c = Compressor::new(1).unwrap();
        let text = b"ekko ekko ekko ekko ekko ekko ekko ekko".repeat(100);
        let z = c.compress(&text).unwrap().expect("text compresses");
        assert_eq!(decompress(&z, text.len(), "t").unwrap(), text);
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = c.compress(&noise).unwrap(); // may or may not pay; must not fail
        assert!(decompress(&z, text.len() + 1, "t").is_err());
    }

    /// A frame that says it holds more than its record claims is refused
    /// before the output buffer is allocated; so is a frame without a
    /// content size that would overflow it.
    #[test]
    fn frames_larger_than_their_record_are_refused_before_allocating() {
        // 64 MiB of zeros compress to a few KiB.
        let zeros = vec![0u8; 64 << 20];
        let bomb = zstd::bulk::compress(&zeros, 1).unwrap();
        drop(zeros);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let (res, largest) =
            alloc_probe::largest_allocation(|| decompress(&bomb, 256 << 10, "bomb"));
        assert!(res.is_err(), "a 64 MiB frame in a 256 KiB record");
        assert!(largest < 1 << 20, "allocated {largest} bytes");
        // Without a content size in the frame: bounded by raw_len.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &vec![0u8; 4 << 20]).unwrap();
        let unsized_bomb = enc.finish().unwrap();
        let (res, largest) =
            alloc_probe::largest_allocation(|| decompress(&unsized_bomb, 256 << 10, "bomb"));
        assert!(res.is_err());
        assert!(largest <= 2 << 20, "allocated {largest} bytes");
    }
}
