//! Every magic number and format version of Ekko's objects. These values
//! are on disk and in object stores: never change them; add new versions.

/// Segment header magic: ASCII "EKKOSEG" + format generation 1.
pub const SEGMENT_MAGIC: [u8; 8] = *b"EKKOSEG1";
/// Segment footer magic, read first when locating records: "EKKOIDX1".
pub const SEGMENT_FOOTER_MAGIC: [u8; 8] = *b"EKKOIDX1";
/// Version of the segment layout (header, records, trailer, footer).
pub const SEGMENT_VERSION: u16 = 1;

/// Most records in one segment (a writer seals a segment at this count):
/// bounds the trailer a reader fetches and caches to 12 MiB, whatever the
/// object's size. 32 MiB segments of 256 KiB chunks hold a few hundred.
pub const MAX_SEGMENT_RECORDS: u32 = 1 << 18;

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
/// An index page's header: version, level, 2 reserved, count u32, first u64.
pub const INDEX_PAGE_HEADER_LEN: usize = 16;
/// One index page entry: digest (32) and segment id (u64).
pub const INDEX_ENTRY_LEN: usize = 40;
/// Plaintext bytes of the largest index page (2,576): a reader refuses a
/// page record that claims more before it allocates anything.
pub const INDEX_PAGE_MAX_LEN: usize = INDEX_PAGE_HEADER_LEN + INDEX_FANOUT * INDEX_ENTRY_LEN;

/// Largest chunk size any Ekko writes (`[backup] chunk_size` is a power of
/// two from 4 KiB to this): the bound on a chunk record's plaintext when the
/// reader does not know the map's chunk size.
pub const MAX_CHUNK_SIZE: u64 = 16 << 20;
/// Smallest chunk size (4 KiB, a guest block).
pub const MIN_CHUNK_SIZE: u64 = 4 << 10;

/// Version of the JSON backup manifest copied to the store.
pub const MANIFEST_VERSION: u32 = 1;
