//! Every magic number and format version of Ekko's objects. These values
//! are on disk and in object stores: never change them; add new versions.

/// Segment header magic: ASCII "EKKOSEG" + format generation 1.
pub const SEGMENT_MAGIC: [u8; 8] = *b"EKKOSEG1";
/// Segment footer magic, read first when locating records: "EKKOIDX1".
pub const SEGMENT_FOOTER_MAGIC: [u8; 8] = *b"EKKOIDX1";
/// Version of the segment layout (header, records, trailer, footer).
pub const SEGMENT_VERSION: u16 = 1;

/// Record kinds inside a segment.
pub const RECORD_CHUNK: u8 = 1;
pub const RECORD_INDEX_PAGE: u8 = 2;
/// Not a segment record: the kind a sealed manifest binds.
pub const RECORD_MANIFEST: u8 = 3;

/// Payload codecs.
pub const CODEC_NONE: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;

/// Payload ciphers (AES-256-GCM arrives with per-project encryption; the
/// field and the nonce are in every record header from version 1 on).
pub const CIPHER_NONE: u8 = 0;
pub const CIPHER_AES256_GCM: u8 = 1;
/// A chunk sealed to its project's X25519 public key (public-key mode):
/// the payload starts with the writer's ephemeral public key.
pub const CIPHER_X25519_AES256_GCM: u8 = 2;

/// Version of the index page layout.
pub const INDEX_PAGE_VERSION: u8 = 1;
/// Entries per index page (leaves and inner nodes alike): 64 × 40 bytes
/// ≈ 2.5 KiB, so a scattered change rewrites little metadata.
pub const INDEX_FANOUT: usize = 64;

/// Version of the JSON backup manifest copied to the store.
pub const MANIFEST_VERSION: u32 = 1;
