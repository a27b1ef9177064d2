//! Segment round trips, damage and hostile lengths.

use super::*;
use crate::chunk::alloc_probe::largest_allocation;

/// A chunk record of any chunk size.
const ANY: RecordExpect = RecordExpect {
    kind: RECORD_CHUNK,
    max_raw: MAX_CHUNK_SIZE as u32,
};

/// A record with a valid crc whose header says what the caller wants:
/// what a hostile writer can put in a segment without any key.
fn forged_record(
    kind: u8,
    codec: u8,
    raw_len: u32,
    digest: ChunkDigest,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = RecordHeader {
        kind,
        codec,
        cipher: CIPHER_NONE,
        stored_len: payload.len() as u32,
        raw_len,
        crc: 0,
        digest,
        nonce: [0; 12],
    };
    h.crc = record_crc(&h.encode(), payload);
    let mut out = h.encode().to_vec();
    out.extend_from_slice(payload);
    out
}

/// A decompression bomb: 1 GiB of zeros in a ~40 KiB zstd frame, crc
/// and digest valid (so it would even decode). Refused by its length
/// before anything is allocated for it.
#[test]
fn a_record_claiming_more_than_its_kind_allows_is_refused_before_allocating() {
    const GIB: usize = 1 << 30;
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..GIB / block.len() {
        std::io::Write::write_all(&mut enc, &block).unwrap();
    }
    let frame = enc.finish().unwrap();
    assert!(frame.len() < 1 << 20, "{} bytes", frame.len());
    let digest = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for _ in 0..GIB / block.len() {
            h.update(&block);
        }
        ChunkDigest::from_slice(&h.finalize()).unwrap()
    };
    let record = forged_record(RECORD_CHUNK, CODEC_ZSTD, GIB as u32, digest, &frame);
    let (res, largest) = largest_allocation(|| {
        decode_record(1, &record, &digest, RecordExpect::chunk(256 << 10), None)
    });
    let err = res.unwrap_err().to_string();
    assert!(
        err.contains("raw length") && err.contains("exceeds"),
        "{err}"
    );
    assert!(largest < 1 << 20, "allocated {largest} bytes");
    // Unknown chunk size (compaction, scrub): the format's 16 MiB bound.
    let (res, largest) = largest_allocation(|| {
        decode_record(
            1,
            &record,
            &digest,
            RecordExpect::of_kind(RECORD_CHUNK),
            None,
        )
    });
    assert!(res.is_err());
    assert!(largest < 1 << 20, "allocated {largest} bytes");
}

#[test]
fn page_records_are_bounded_by_the_page_size_and_kinds_are_checked() {
    let plain = vec![7u8; 3000];
    let digest = ChunkDigest::of(&plain);
    let page = forged_record(RECORD_INDEX_PAGE, CODEC_NONE, 3000, digest, &plain);
    let err = decode_record(2, &page, &digest, RecordExpect::PAGE, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("raw length 3000"), "{err}");
    // A chunk read where a page is expected, and the reverse.
    let small = forged_record(
        RECORD_CHUNK,
        CODEC_NONE,
        10,
        ChunkDigest::of(&[1; 10]),
        &[1; 10],
    );
    let err = decode_record(
        2,
        &small,
        &ChunkDigest::of(&[1; 10]),
        RecordExpect::PAGE,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("kind 1, expected 2"), "{err}");
    assert!(decode_record(2, &small, &ChunkDigest::of(&[1; 10]), ANY, None).is_ok());
    // Stored length beyond what the raw length can compress to.
    let junk = vec![1u8; 5000];
    let d = ChunkDigest::of(&[0; 100]);
    let big = forged_record(RECORD_CHUNK, CODEC_ZSTD, 100, d, &junk);
    let err = decode_record(2, &big, &d, ANY, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stored length"), "{err}");
    // Uncompressed, but shorter than it claims.
    let d = ChunkDigest::of(&[1; 10]);
    let short = forged_record(RECORD_CHUNK, CODEC_NONE, 20, d, &[1; 10]);
    let err = decode_record(2, &short, &d, ANY, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("10 stored bytes for 20"), "{err}");
    // A frame whose content size differs from the header's raw length.
    let z = zstd::bulk::compress(&[0u8; 4096], 1).unwrap();
    let d = ChunkDigest::of(&[0; 4096]);
    let lying = forged_record(RECORD_CHUNK, CODEC_ZSTD, 8192, d, &z);
    assert!(decode_record(2, &lying, &d, ANY, None).is_err());
    let max = RecordExpect::chunk(256 << 10).max_record_len();
    assert!(max > 256 << 10 && max < 258 << 10, "{max}");
    assert!(RecordExpect::PAGE.max_record_len() < 4096);
}

fn build(id: u64, items: &[Vec<u8>]) -> (Vec<u8>, Vec<TrailerEntry>) {
    let mut c = Compressor::new(1).unwrap();
    let mut w = SegmentWriter::new(id, 1_700_000_000, 1 << 20);
    let mut entries = Vec::new();
    for it in items {
        let r = encode_record(&mut c, None, RECORD_CHUNK, ChunkDigest::of(it), it).unwrap();
        entries.push(w.push_encoded(&r));
    }
    (w.finish(), entries)
}

#[test]
fn round_trip_finds_every_record_without_a_database() {
    let items: Vec<Vec<u8>> = vec![
        b"a".repeat(5000),
        (0..3000u32).map(|i| i as u8).collect(),
        b"zzz".to_vec(),
    ];
    let (bytes, written) = build(42, &items);
    let trailer = read_whole(42, &bytes).unwrap();
    assert_eq!(trailer, written);
    for (it, e) in items.iter().zip(&trailer) {
        let rec = &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
        assert_eq!(&decode_record(42, rec, &e.digest, ANY, None).unwrap(), it);
    }
    // Footer alone, then trailer alone: what a ranged reader does.
    let footer = parse_footer(42, &bytes[bytes.len() - FOOTER_LEN..]).unwrap();
    assert_eq!(footer.count, 3);
}

#[test]
fn corruption_swaps_and_truncation_are_detected() {
    let items = vec![b"hello".repeat(100)];
    let (mut bytes, entries) = build(7, &items);
    assert!(
        read_whole(8, &bytes).is_err(),
        "a segment under another name is refused"
    );
    let e = entries[0];
    let at = (e.offset as usize) + RECORD_HEADER_LEN + 3;
    bytes[at] ^= 0xFF;
    let rec = &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
    let err = decode_record(7, rec, &e.digest, ANY, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum"), "{err}");
    assert!(
        read_whole(7, &bytes[..bytes.len() - 5]).is_err(),
        "truncated"
    );
    let other = ChunkDigest::of(b"other");
    assert!(decode_record(7, rec, &other, ANY, None).is_err());
}

#[test]
fn every_damaged_byte_of_a_record_is_caught() {
    let items = vec![b"x".repeat(10)];
    let (bytes, entries) = build(9, &items);
    let e = entries[0];
    let (s, end) = (e.offset as usize, (e.offset + e.length as u64) as usize);
    for i in s..end {
        let mut copy = bytes[s..end].to_vec();
        copy[i - s] ^= 0x01;
        assert!(
            decode_record(9, &copy, &e.digest, ANY, None).is_err(),
            "flip at byte {} not caught",
            i - s
        );
    }
}

#[test]
fn sealed_records_open_only_with_their_project_key() {
    use crate::crypto::{KeyMode, ProjectSecret};
    let keys = ProjectSecret::generate(KeyMode::Symmetric).unwrap().keys();
    let plain = b"secret data ".repeat(50);
    let digest = identity(Some(&keys), &plain);
    let mut c = Compressor::new(1).unwrap();
    let mut w = SegmentWriter::new(5, 1_700_000_000, 1 << 20);
    let r = encode_record(&mut c, Some(&keys), RECORD_CHUNK, digest, &plain).unwrap();
    let e = w.push_encoded(&r);
    let bytes = w.finish();
    assert!(
        !bytes.windows(12).any(|x| x == b"secret data "),
        "no plaintext in the segment"
    );
    let rec = &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
    assert_eq!(
        decode_record(5, rec, &digest, ANY, Some(&keys)).unwrap(),
        plain
    );
    let err = decode_record(5, rec, &digest, ANY, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no key"), "{err}");
    let other = ProjectSecret::generate(KeyMode::Symmetric).unwrap().keys();
    let err = decode_record(5, rec, &digest, ANY, Some(&other))
        .unwrap_err()
        .to_string();
    assert!(err.contains("authentication failed"), "{err}");
    // Tampered ciphertext with a recomputed crc: the seal catches it.
    let mut forged = rec.to_vec();
    forged[RECORD_HEADER_LEN + 2] ^= 1;
    let crc = record_crc(&forged[..RECORD_HEADER_LEN], &forged[RECORD_HEADER_LEN..]);
    forged[12..16].copy_from_slice(&crc.to_le_bytes());
    let err = decode_record(5, &forged, &digest, ANY, Some(&keys))
        .unwrap_err()
        .to_string();
    assert!(err.contains("authentication failed"), "{err}");
}

/// Public-key mode: what a host writes with the write keys opens only
/// with the project's secret; pages open with both; a downgraded
/// cipher is refused even with a recomputed crc.
#[test]
fn chunks_sealed_to_the_public_key_open_only_on_the_restore_side() {
    use crate::crypto::{KeyMode, ProjectSecret};
    let secret = ProjectSecret::generate(KeyMode::PublicKey).unwrap();
    let full = secret.keys();
    let host = secret.write_keys().unwrap().keys();
    assert!(full.can_open_chunks() && !host.can_open_chunks());
    let plain = b"tenant data ".repeat(60);
    let page = b"an index page ".repeat(20);
    let digest = identity(Some(&host), &plain);
    assert_eq!(digest, identity(Some(&full), &plain), "one identity key");
    let page_digest = identity(Some(&host), &page);
    let mut c = Compressor::new(1).unwrap();
    let mut w = SegmentWriter::new(6, 1_700_000_000, 1 << 20);
    let chunk = encode_record(&mut c, Some(&host), RECORD_CHUNK, digest, &plain).unwrap();
    assert_eq!(chunk.cipher, CIPHER_X25519_AES256_GCM);
    let idx = encode_record(&mut c, Some(&host), RECORD_INDEX_PAGE, page_digest, &page).unwrap();
    assert_eq!(idx.cipher, CIPHER_AES256_GCM);
    let (ce, pe) = (w.push_encoded(&chunk), w.push_encoded(&idx));
    let bytes = w.finish();
    let rec = |e: &TrailerEntry| &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
    assert_eq!(
        decode_record(6, rec(&ce), &digest, ANY, Some(&full)).unwrap(),
        plain
    );
    let err = decode_record(6, rec(&ce), &digest, ANY, Some(&host)).unwrap_err();
    assert!(
        matches!(err, SegmentError::Crypto(_)) && err.to_string().contains("restore side"),
        "{err}"
    );
    // The host reads maps (pages) to build incrementals.
    assert_eq!(
        decode_record(6, rec(&pe), &page_digest, RecordExpect::PAGE, Some(&host)).unwrap(),
        page
    );
    assert_eq!(
        decode_record(6, rec(&pe), &page_digest, RecordExpect::PAGE, Some(&full)).unwrap(),
        page
    );
    // Another project's secret opens nothing.
    let stranger = ProjectSecret::generate(KeyMode::PublicKey).unwrap().keys();
    assert!(decode_record(6, rec(&ce), &digest, ANY, Some(&stranger)).is_err());
    // Downgrades: cipher 2 → 1 or 0 with the crc recomputed.
    for cipher in [CIPHER_AES256_GCM, CIPHER_NONE] {
        let mut forged = rec(&ce).to_vec();
        forged[2] = cipher;
        let crc = record_crc(&forged[..RECORD_HEADER_LEN], &forged[RECORD_HEADER_LEN..]);
        forged[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(
            decode_record(6, &forged, &digest, ANY, Some(&full)).is_err(),
            "cipher {cipher} accepted"
        );
    }
    // A chunk sealed with the index key (what a host could forge) is
    // refused in a public-key project.
    let sym = crate::crypto::RecordBinding {
        version: SEGMENT_VERSION,
        kind: RECORD_INDEX_PAGE,
        codec: chunk.codec,
        raw_len: chunk.raw_len,
        digest,
    };
    let mut payload = plain.clone();
    let (cipher, nonce) = host.seal(&sym, &mut payload).unwrap();
    assert_eq!(cipher, CIPHER_AES256_GCM);
    let forged = EncodedRecord {
        kind: RECORD_CHUNK,
        digest,
        raw_len: plain.len() as u32,
        codec: CODEC_NONE,
        cipher,
        nonce,
        payload,
    };
    let mut w = SegmentWriter::new(8, 1_700_000_000, 1 << 20);
    let e = w.push_encoded(&forged);
    let bytes = w.finish();
    let rec = &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
    assert!(decode_record(8, rec, &digest, ANY, Some(&full)).is_err());
}
