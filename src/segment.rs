//! Segments: objects that pack many records (chunks and index pages), so
//! the object store is hit once per tens of MiB, not once per chunk. A
//! segment describes itself, so data can be found and checked without the
//! database:
//!
//! ```text
//! header   32 B   magic "EKKOSEG1", version, segment id, creation time, crc
//! record   64 B header (kind, codec, cipher, lengths, crc32 of the record,
//!                 digest, nonce) + payload            … repeated
//! trailer  48 B per record: digest, offset, length, kind
//! footer   32 B   trailer offset, record count, trailer crc32, magic "EKKOIDX1"
//! ```
//! All integers are little-endian. A reader fetches the footer, then the
//! trailer, then only the records it needs (ranged GETs).

use crate::chunk::{decompress, max_compressed_len, ChunkDigest, ChunkError, Compressor};
use crate::crypto::{identity, ProjectKeys, RecordBinding, EPHEMERAL_LEN, TAG_LEN};
use crate::format::*;

pub const HEADER_LEN: usize = 32;
pub const RECORD_HEADER_LEN: usize = 64;
pub const TRAILER_ENTRY_LEN: usize = 48;
pub const FOOTER_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment {segment:016x}: {message}")]
    Corrupt { segment: u64, message: String },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("{0}")]
    Crypto(String),
}

fn corrupt(segment: u64, message: impl Into<String>) -> SegmentError {
    SegmentError::Corrupt {
        segment,
        message: message.into(),
    }
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}
fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Where one record lives in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailerEntry {
    pub digest: ChunkDigest,
    /// Offset of the record header from the start of the segment.
    pub offset: u64,
    /// Record header plus payload.
    pub length: u32,
    pub kind: u8,
}

/// A record's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u8,
    pub codec: u8,
    pub cipher: u8,
    pub stored_len: u32,
    pub raw_len: u32,
    pub crc: u32,
    pub digest: ChunkDigest,
    pub nonce: [u8; 12],
}

impl RecordHeader {
    fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0] = self.kind;
        h[1] = self.codec;
        h[2] = self.cipher;
        h[4..8].copy_from_slice(&self.stored_len.to_le_bytes());
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.crc.to_le_bytes());
        h[16..48].copy_from_slice(&self.digest.0);
        h[48..60].copy_from_slice(&self.nonce);
        h
    }

    fn decode(h: &[u8]) -> Option<RecordHeader> {
        if h.len() < RECORD_HEADER_LEN {
            return None;
        }
        Some(RecordHeader {
            kind: h[0],
            codec: h[1],
            cipher: h[2],
            stored_len: le_u32(&h[4..]),
            raw_len: le_u32(&h[8..]),
            crc: le_u32(&h[12..]),
            digest: ChunkDigest::from_slice(&h[16..48])?,
            nonce: h[48..60].try_into().ok()?,
        })
    }
}

/// The record checksum covers the whole header (its crc field zeroed) and
/// the payload, so any damaged byte of a record is caught without a key.
fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..12]);
    h.update(&[0u8; 4]);
    h.update(&header[16..RECORD_HEADER_LEN]);
    h.update(payload);
    h.finalize()
}

/// Builds one segment in memory (bounded by the target size).
pub struct SegmentWriter {
    id: u64,
    buf: Vec<u8>,
    trailer: Vec<TrailerEntry>,
    raw_bytes: u64,
}

impl SegmentWriter {
    pub fn new(id: u64, created_unix: u64, capacity: usize) -> SegmentWriter {
        let mut buf = Vec::with_capacity(capacity + 4096);
        buf.extend_from_slice(&SEGMENT_MAGIC);
        buf.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
        buf.extend_from_slice(&[0u8; 6]);
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&created_unix.to_le_bytes());
        debug_assert_eq!(buf.len(), HEADER_LEN);
        SegmentWriter {
            id,
            buf,
            trailer: Vec::new(),
            raw_bytes: 0,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes so far (what the segment would weigh if finished now).
    pub fn len(&self) -> usize {
        self.buf.len() + self.trailer.len() * TRAILER_ENTRY_LEN + FOOTER_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.trailer.is_empty()
    }

    pub fn records(&self) -> usize {
        self.trailer.len()
    }

    /// Plaintext bytes of the records so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    /// Append an encoded record (see [`encode_record`]).
    pub fn push_encoded(&mut self, r: &EncodedRecord) -> TrailerEntry {
        let mut header = RecordHeader {
            kind: r.kind,
            codec: r.codec,
            cipher: r.cipher,
            stored_len: r.payload.len() as u32,
            raw_len: r.raw_len,
            crc: 0,
            digest: r.digest,
            nonce: r.nonce,
        };
        header.crc = record_crc(&header.encode(), &r.payload);
        let entry = TrailerEntry {
            digest: r.digest,
            offset: self.buf.len() as u64,
            length: (RECORD_HEADER_LEN + r.payload.len()) as u32,
            kind: r.kind,
        };
        self.buf.extend_from_slice(&header.encode());
        self.buf.extend_from_slice(&r.payload);
        self.trailer.push(entry);
        self.raw_bytes += r.raw_len as u64;
        entry
    }

    /// Append a record copied verbatim from another segment (compaction):
    /// header and payload as they are, so its checksum and any encryption
    /// stay valid. The record must be whole (checked with [`decode_record`]).
    pub fn push_record(
        &mut self,
        segment: u64,
        record: &[u8],
    ) -> Result<TrailerEntry, SegmentError> {
        let h = RecordHeader::decode(record).ok_or_else(|| corrupt(segment, "short record"))?;
        let len = RECORD_HEADER_LEN + h.stored_len as usize;
        let record = record
            .get(..len)
            .ok_or_else(|| corrupt(segment, "truncated record"))?;
        let entry = TrailerEntry {
            digest: h.digest,
            offset: self.buf.len() as u64,
            length: len as u32,
            kind: h.kind,
        };
        self.buf.extend_from_slice(record);
        self.trailer.push(entry);
        self.raw_bytes += h.raw_len as u64;
        Ok(entry)
    }

    /// Finish: append trailer and footer; the segment's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let trailer_offset = self.buf.len() as u64;
        let start = self.buf.len();
        for e in &self.trailer {
            self.buf.extend_from_slice(&e.digest.0);
            self.buf.extend_from_slice(&e.offset.to_le_bytes());
            self.buf.extend_from_slice(&e.length.to_le_bytes());
            self.buf.push(e.kind);
            self.buf.extend_from_slice(&[0u8; 3]);
        }
        let crc = crc32fast::hash(&self.buf[start..]);
        self.buf.extend_from_slice(&trailer_offset.to_le_bytes());
        self.buf
            .extend_from_slice(&(self.trailer.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf.extend_from_slice(&self.id.to_le_bytes());
        self.buf.extend_from_slice(&SEGMENT_FOOTER_MAGIC);
        self.buf
    }
}

/// A record ready to be appended: compressed and, for an encrypted
/// project, sealed.
#[derive(Debug, Clone)]
pub struct EncodedRecord {
    pub kind: u8,
    pub digest: ChunkDigest,
    pub raw_len: u32,
    pub codec: u8,
    pub cipher: u8,
    pub nonce: [u8; 12],
    pub payload: Vec<u8>,
}

fn binding(kind: u8, codec: u8, raw_len: u32, digest: ChunkDigest) -> RecordBinding {
    RecordBinding {
        version: SEGMENT_VERSION,
        kind,
        codec,
        raw_len,
        digest,
    }
}

/// Compress a plaintext whose identity is `digest` (see
/// [`crate::crypto::identity`]); with `keys`, seal it too.
pub fn encode_record(
    compressor: &mut Compressor,
    keys: Option<&ProjectKeys>,
    kind: u8,
    digest: ChunkDigest,
    plain: &[u8],
) -> Result<EncodedRecord, SegmentError> {
    let (codec, mut payload) = match compressor.compress(plain)? {
        Some(z) => (CODEC_ZSTD, z),
        None => (CODEC_NONE, plain.to_vec()),
    };
    let raw_len = plain.len() as u32;
    let (cipher, nonce) = match keys {
        Some(k) => k
            .seal(&binding(kind, codec, raw_len, digest), &mut payload)
            .map_err(|e| SegmentError::Crypto(e.to_string()))?,
        None => (CIPHER_NONE, [0; 12]),
    };
    Ok(EncodedRecord {
        kind,
        digest,
        raw_len,
        codec,
        cipher,
        nonce,
        payload,
    })
}

/// The footer: where the trailer is and how many records it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub trailer_offset: u64,
    pub count: u32,
    pub crc: u32,
    pub segment: u64,
}

pub fn parse_footer(segment: u64, b: &[u8]) -> Result<Footer, SegmentError> {
    if b.len() != FOOTER_LEN || b[24..32] != SEGMENT_FOOTER_MAGIC {
        return Err(corrupt(
            segment,
            "bad footer (not an Ekko segment, or truncated)",
        ));
    }
    let f = Footer {
        trailer_offset: le_u64(b),
        count: le_u32(&b[8..]),
        crc: le_u32(&b[12..]),
        segment: le_u64(&b[16..]),
    };
    if f.segment != segment {
        return Err(corrupt(
            segment,
            format!("footer names segment {:016x} (swapped object?)", f.segment),
        ));
    }
    Ok(f)
}

pub fn parse_trailer(
    segment: u64,
    footer: &Footer,
    b: &[u8],
) -> Result<Vec<TrailerEntry>, SegmentError> {
    if b.len() != footer.count as usize * TRAILER_ENTRY_LEN {
        return Err(corrupt(segment, "trailer length does not match the footer"));
    }
    if crc32fast::hash(b) != footer.crc {
        return Err(corrupt(segment, "trailer checksum mismatch"));
    }
    Ok(b.chunks_exact(TRAILER_ENTRY_LEN)
        .map(|e| TrailerEntry {
            digest: ChunkDigest::from_slice(&e[..32]).unwrap_or_default(),
            offset: le_u64(&e[32..]),
            length: le_u32(&e[40..]),
            kind: e[44],
        })
        .collect())
}

/// Check the header of a whole segment and return its trailer.
pub fn read_whole(segment: u64, bytes: &[u8]) -> Result<Vec<TrailerEntry>, SegmentError> {
    if bytes.len() < HEADER_LEN + FOOTER_LEN || bytes[..8] != SEGMENT_MAGIC {
        return Err(corrupt(segment, "bad header (not an Ekko segment)"));
    }
    let version = le_u16(&bytes[8..]);
    if version != SEGMENT_VERSION {
        return Err(corrupt(
            segment,
            format!("unsupported segment version {version}"),
        ));
    }
    if le_u64(&bytes[16..]) != segment {
        return Err(corrupt(
            segment,
            "header names another segment (swapped object?)",
        ));
    }
    let footer = parse_footer(segment, &bytes[bytes.len() - FOOTER_LEN..])?;
    let start = footer.trailer_offset as usize;
    let end = bytes.len() - FOOTER_LEN;
    let trailer = bytes
        .get(start..end)
        .ok_or_else(|| corrupt(segment, "trailer offset out of range"))?;
    parse_trailer(segment, &footer, trailer)
}

/// What a reader expects of a record, checked against its header before
/// anything is fetched, opened, decompressed or allocated: the lengths in
/// a segment come from the store, and a compute host can write any
/// segment its project's container accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordExpect {
    pub kind: u8,
    /// Largest plaintext the record may claim.
    pub max_raw: u32,
}

/// Bytes sealing adds to a payload at most: the tag, and the writer's
/// ephemeral public key in public-key mode.
const SEAL_OVERHEAD: usize = TAG_LEN + EPHEMERAL_LEN;

impl RecordExpect {
    /// An index page.
    pub const PAGE: RecordExpect = RecordExpect {
        kind: RECORD_INDEX_PAGE,
        max_raw: INDEX_PAGE_MAX_LEN as u32,
    };

    /// A chunk of a map cut into `chunk_size`-byte chunks (the format's
    /// largest if `chunk_size` is out of range).
    pub fn chunk(chunk_size: u64) -> RecordExpect {
        let size = if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            chunk_size
        } else {
            MAX_CHUNK_SIZE
        };
        RecordExpect {
            kind: RECORD_CHUNK,
            max_raw: size as u32,
        }
    }

    /// A record of `kind` whose map is not known (compaction, scrub): the
    /// format's bound for that kind. An unknown kind allows nothing.
    pub fn of_kind(kind: u8) -> RecordExpect {
        match kind {
            RECORD_INDEX_PAGE => RecordExpect::PAGE,
            RECORD_CHUNK => RecordExpect::chunk(MAX_CHUNK_SIZE),
            other => RecordExpect {
                kind: other,
                max_raw: 0,
            },
        }
    }

    /// The most bytes a record with at most `max_raw` bytes of plaintext
    /// takes in a segment (header, compressed and sealed payload).
    pub fn max_record_len(&self) -> u64 {
        (RECORD_HEADER_LEN + max_stored(self.max_raw)) as u64
    }
}

fn max_stored(raw_len: u32) -> usize {
    max_compressed_len(raw_len as usize) + SEAL_OVERHEAD
}

/// Decode one record (header + payload): checks the header against
/// `expect` (kind, lengths: before anything is allocated), then the crc,
/// opens it if it is sealed (with `keys`, the project's), decompresses and
/// checks the identity. `expected` is the identity the caller looked for.
pub fn decode_record(
    segment: u64,
    record: &[u8],
    expected: &ChunkDigest,
    expect: RecordExpect,
    keys: Option<&ProjectKeys>,
) -> Result<Vec<u8>, SegmentError> {
    let h = RecordHeader::decode(record).ok_or_else(|| corrupt(segment, "short record"))?;
    let what = format!("record {:?} in segment {segment:016x}", expected);
    if h.digest != *expected {
        return Err(corrupt(
            segment,
            format!("{what}: header names another digest"),
        ));
    }
    if h.kind != expect.kind {
        return Err(corrupt(
            segment,
            format!("{what}: kind {}, expected {}", h.kind, expect.kind),
        ));
    }
    if h.raw_len > expect.max_raw {
        return Err(corrupt(
            segment,
            format!(
                "{what}: raw length {} exceeds the {} bytes its kind allows",
                h.raw_len, expect.max_raw
            ),
        ));
    }
    if h.stored_len as usize > max_stored(h.raw_len) {
        return Err(corrupt(
            segment,
            format!(
                "{what}: stored length {} exceeds what {} bytes can take",
                h.stored_len, h.raw_len
            ),
        ));
    }
    let payload = record
        .get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + h.stored_len as usize)
        .ok_or_else(|| corrupt(segment, format!("{what}: truncated")))?;
    if record_crc(&record[..RECORD_HEADER_LEN], payload) != h.crc {
        return Err(corrupt(segment, format!("{what}: checksum mismatch")));
    }
    let mut opened;
    let payload: &[u8] = match (h.cipher, keys) {
        (CIPHER_NONE, _) => payload,
        (CIPHER_AES256_GCM | CIPHER_X25519_AES256_GCM, Some(k)) => {
            opened = payload.to_vec();
            k.open(
                &binding(h.kind, h.codec, h.raw_len, h.digest),
                h.cipher,
                h.nonce,
                &mut opened,
                &what,
            )
            .map_err(|e| match e {
                // Not damage: the data is fine, this process may not read it.
                crate::crypto::CryptoError::WriteOnly(_) => SegmentError::Crypto(e.to_string()),
                e => corrupt(segment, e.to_string()),
            })?
        }
        (CIPHER_AES256_GCM | CIPHER_X25519_AES256_GCM, None) => {
            return Err(corrupt(
                segment,
                format!("{what}: encrypted, and this process has no key for its project"),
            ))
        }
        (other, _) => return Err(corrupt(segment, format!("{what}: unknown cipher {other}"))),
    };
    let plain = match h.codec {
        CODEC_NONE if payload.len() != h.raw_len as usize => {
            return Err(corrupt(
                segment,
                format!(
                    "{what}: {} stored bytes for {} raw bytes",
                    payload.len(),
                    h.raw_len
                ),
            ))
        }
        CODEC_NONE => payload.to_vec(),
        CODEC_ZSTD => decompress(payload, h.raw_len as usize, &what)?,
        other => return Err(corrupt(segment, format!("{what}: unknown codec {other}"))),
    };
    // A sealed record is named by its project's keyed identity.
    let keys = if h.cipher == CIPHER_NONE { None } else { keys };
    if identity(keys, &plain) != *expected {
        return Err(ChunkError::DigestMismatch { what }.into());
    }
    Ok(plain)
}

#[cfg(test)]
mod tests;
