//! Wire messages ↔ catalog rows, on the controller side: the bus and the
//! schema change independently, and this file is where they meet.

use crate::chunk::ChunkDigest;
use crate::db::backups::{BackupDisk, DiskCommit};
use crate::db::instances::DiskReport;
use crate::wire;

/// A catalog time as the API and the CLIs print it (RFC 3339, UTC).
pub fn timestamp(t: &chrono::NaiveDateTime) -> String {
    t.and_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A committed record as a job names it (the base of an incremental, a
/// dedup source, what a restore reads). `None` for a corrupt row.
pub fn record_ref(rec: &BackupDisk) -> Option<wire::RecordRef> {
    Some(wire::RecordRef {
        root_digest: ChunkDigest::from_slice(&rec.root_digest)?.to_hex(),
        root_segment: u64::try_from(rec.root_segment).ok()?,
        disk_size: u64::try_from(rec.virtual_size).ok()?,
        chunk_size: u64::try_from(rec.chunk_size).ok()?,
    })
}

/// A disk as a host's inventory reports it.
pub fn disk_report(d: &wire::InventoryDisk) -> DiskReport {
    DiskReport {
        device: d.device.clone(),
        node_name: d.node_name.clone(),
        virtual_size: i64::try_from(d.virtual_size).unwrap_or(i64::MAX),
    }
}

/// What one disk of a finished backup adds to the catalog.
pub fn disk_commit(d: &wire::DiskCommit) -> DiskCommit {
    DiskCommit {
        disk_id: d.disk_id.clone(),
        base_seq: d.base_seq,
        virtual_size: d.virtual_size,
        chunk_size: d.chunk_size,
        root_digest: d.root_digest.clone(),
        root_segment: d.root_segment,
        bitmap_name: d.bitmap_name.clone(),
        full_read: d.full_read,
        read_bytes: d.read_bytes,
        new_bytes: d.new_bytes,
        stored_bytes: d.stored_bytes,
        new_segments: d.new_segments.clone(),
        ref_deltas: d.ref_deltas.clone(),
        fresh_map: d.fresh_map,
        full_reason: d.full_reason.clone(),
    }
}

/// A committed record as the engine reads it (restore, verify).
pub fn previous_record(rec: &BackupDisk) -> Option<crate::backup::PreviousRecord> {
    Some(crate::backup::PreviousRecord {
        root: crate::chunk::ChunkRef {
            digest: ChunkDigest::from_slice(&rec.root_digest)?,
            segment: u64::try_from(rec.root_segment).ok()?,
        },
        disk_size: u64::try_from(rec.virtual_size).ok()?,
        chunk_size: u64::try_from(rec.chunk_size).ok()?,
    })
}
