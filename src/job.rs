//! What travels between the conductor (the catalog side, in ekko-api) and
//! the ekko-backup workers (compute hosts, no database): jobs one way,
//! inventory, progress and outcomes the other.
//!
//! A job carries everything the worker needs from the catalog (each disk's
//! head record, expected bitmap, the project's dedup sources), so a worker
//! never reads the database; an outcome carries everything the catalog
//! commit needs. Both are plain serde structs inside a versioned
//! [`Envelope`](crate::queue::Envelope).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::disk::PreviousRecord;
use crate::chunk::{ChunkDigest, ChunkRef};
use crate::db::backups::{BackupDisk, DiskCommit};
use crate::db::instances::DiskReport;

/// Message kinds.
pub const BACKUP_RUN: &str = "backup.run";
pub const BACKUP_FINISHED: &str = "backup.finished";
pub const RESTORE_RUN: &str = "restore.run";
pub const RESTORE_FINISHED: &str = "restore.finished";
pub const JOB_STARTED: &str = "job.started";
pub const JOB_PROGRESS: &str = "job.progress";
pub const JOB_FAILED: &str = "job.failed";
pub const JOB_CANCEL: &str = "job.cancel";
pub const HOST_INVENTORY: &str = "host.inventory";

/// Routing key of a status message of `kind` (all go to the conductor).
pub fn status_key(kind: &str) -> String {
    format!("status.{kind}")
}

/// A committed record, as a base for an incremental or a dedup source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    /// Hex SHA-256 of the map tree's root page.
    pub root_digest: String,
    pub root_segment: u64,
    pub disk_size: u64,
    pub chunk_size: u64,
}

impl RecordRef {
    pub fn of(rec: &BackupDisk) -> Option<RecordRef> {
        Some(RecordRef {
            root_digest: ChunkDigest::from_slice(&rec.root_digest)?.to_hex(),
            root_segment: u64::try_from(rec.root_segment).ok()?,
            disk_size: u64::try_from(rec.virtual_size).ok()?,
            chunk_size: u64::try_from(rec.chunk_size).ok()?,
        })
    }

    pub fn previous(&self) -> Option<PreviousRecord> {
        Some(PreviousRecord {
            root: ChunkRef {
                digest: ChunkDigest::from_hex(&self.root_digest)?,
                segment: self.root_segment,
            },
            disk_size: self.disk_size,
            chunk_size: self.chunk_size,
        })
    }
}

/// One disk of a backup job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDisk {
    pub disk_id: String,
    pub device: String,
    pub node_name: String,
    /// The catalog head this backup builds on (checked again at commit).
    pub base_seq: i64,
    /// The head record, when the disk has one.
    pub head: Option<RecordRef>,
    /// The bitmap the catalog expects to track writes since the head.
    pub expected_bitmap: Option<String>,
    /// The catalog lost track of the disk (e.g. after a rebuild).
    pub needs_full_read: bool,
}

/// `backup.run`: back up one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupJob {
    pub job_id: String,
    pub backup_id: String,
    pub project_id: String,
    pub user_id: String,
    pub instance_id: String,
    pub instance_name: String,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    /// Read every disk in full.
    pub full: bool,
    pub disks: Vec<JobDisk>,
    /// Other heads of the project a full read may reuse chunks from.
    pub dedup_sources: Vec<RecordRef>,
    /// Where compaction moved the project's segments (see [`Relocation`]).
    #[serde(default)]
    pub relocations: Vec<Relocation>,
    /// Stored records scrub found damaged: never reused, stored afresh.
    #[serde(default)]
    pub bad_records: Vec<BadRecord>,
    /// A symmetric project's key, wrapped by the master key.
    #[serde(default)]
    pub project_key: Option<crate::crypto::WrappedKey>,
    /// A public-key project's write keys, wrapped by the host key (the
    /// host gets no project key then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_keys: Option<crate::crypto::WrappedKey>,
    /// A worker that receives the job later than this fails it instead.
    pub deadline: DateTime<Utc>,
}

/// Segment `from` (as maps name it) now lives in segment `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relocation {
    pub from: u64,
    pub to: u64,
}

impl Relocation {
    /// The catalog's (id, relocated_to) pairs of a project.
    pub fn from_rows(rows: &[(i64, i64)]) -> Vec<Relocation> {
        rows.iter()
            .map(|&(from, to)| Relocation {
                from: from as u64,
                to: to as u64,
            })
            .collect()
    }

    pub fn map(list: &[Relocation]) -> crate::backup::reader::Relocations {
        list.iter().map(|r| (r.from, r.to)).collect()
    }
}

/// A damaged stored record: hex digest and the segment holding the copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    pub digest: String,
    pub segment: u64,
}

impl BadRecord {
    pub fn from_rows(rows: &[(Vec<u8>, i64)]) -> Vec<BadRecord> {
        rows.iter()
            .filter_map(|(d, s)| {
                Some(BadRecord {
                    digest: ChunkDigest::from_slice(d)?.to_hex(),
                    segment: *s as u64,
                })
            })
            .collect()
    }

    pub fn chunk_ref(&self) -> Option<ChunkRef> {
        Some(ChunkRef {
            digest: ChunkDigest::from_hex(&self.digest)?,
            segment: self.segment,
        })
    }
}

/// `restore.run`: write one disk of a backup to a file on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJob {
    pub job_id: String,
    pub restore_id: String,
    pub backup_id: String,
    pub project_id: String,
    /// The disk's record in the backup.
    pub record: RecordRef,
    /// File name under the host's `[backup] restore_dir`.
    pub path: String,
    /// `raw` or `qcow2`.
    pub format: String,
    #[serde(default)]
    pub relocations: Vec<Relocation>,
    #[serde(default)]
    pub project_key: Option<crate::crypto::WrappedKey>,
    pub deadline: DateTime<Utc>,
}

/// Sent by a worker as it starts (or restarts) a job. Status messages name
/// the job only: the conductor finds its backup or restore in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStarted {
    pub job_id: String,
    pub host: String,
    /// Attempts on this host so far, this one included.
    pub attempt: u32,
}

/// Sent every few seconds while a job runs; also the job's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub job_id: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// A backup's data and manifest are stored: what the catalog commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupFinished {
    pub job_id: String,
    pub backup_id: String,
    pub project_id: String,
    pub host: String,
    /// `full` or `incremental`.
    pub kind: String,
    /// `crash` or `application`.
    pub consistency: String,
    pub disks: Vec<DiskCommit>,
}

/// A job ended without a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailed {
    pub job_id: String,
    pub host: String,
    pub error: String,
    /// The backup's manifest may have been stored and must be removed.
    pub manifest_written: bool,
}

/// A restore is written and synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreFinished {
    pub job_id: String,
    pub host: String,
    pub bytes_written: u64,
}

/// `job.cancel`: stop a queued or running job on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelJob {
    pub job_id: String,
}

/// One instance a host can back up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryInstance {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub disks: Vec<InventoryDisk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryDisk {
    pub device: String,
    pub node_name: String,
    pub virtual_size: u64,
}

impl InventoryDisk {
    pub fn report(&self) -> DiskReport {
        DiskReport {
            device: self.device.clone(),
            node_name: self.node_name.clone(),
            virtual_size: i64::try_from(self.virtual_size).unwrap_or(i64::MAX),
        }
    }
}

/// `host.inventory`: the instances a host serves now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInventory {
    pub host: String,
    pub instances: Vec<InventoryInstance>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_refs_round_trip() {
        let rec = RecordRef {
            root_digest: "ab".repeat(32),
            root_segment: 42,
            disk_size: 1 << 30,
            chunk_size: 1 << 18,
        };
        let p = rec.previous().unwrap();
        assert_eq!(p.root.segment, 42);
        assert_eq!(p.root.digest.to_hex(), rec.root_digest);
        let bad = RecordRef {
            root_digest: "zz".into(),
            ..rec
        };
        assert!(bad.previous().is_none());
    }
}

/// The wire format is a contract between releases: a worker of one
/// release and a conductor of the next read each other's messages. Each
/// message kind is serialized from a fixed sample and compared with
/// `tests/fixtures/wire/<kind>.json` (captured from the release before);
/// `EKKO_BLESS_WIRE=1` rewrites the files.
#[cfg(test)]
pub(crate) mod golden {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .expect("fixed time")
            .with_timezone(&Utc)
    }

    fn record() -> RecordRef {
        RecordRef {
            root_digest: "ab".repeat(32),
            root_segment: 42,
            disk_size: 1 << 30,
            chunk_size: 1 << 18,
        }
    }

    fn key() -> crate::crypto::WrappedKey {
        crate::crypto::WrappedKey {
            master_key_id: "k1".into(),
            nonce: "00".repeat(12),
            sealed: "11".repeat(48),
        }
    }

    /// One sample per message kind, as JSON values.
    pub fn samples() -> Vec<(&'static str, serde_json::Value)> {
        let v = |x: serde_json::Result<serde_json::Value>| x.expect("serializable");
        let backup = BackupJob {
            job_id: "j-1".into(),
            backup_id: "b-1".into(),
            project_id: "p-1".into(),
            user_id: "u-1".into(),
            instance_id: "i-1".into(),
            instance_name: "web".into(),
            name: "nightly".into(),
            description: "d".into(),
            created_at: at(),
            full: false,
            disks: vec![JobDisk {
                disk_id: "d-1".into(),
                device: "vda".into(),
                node_name: "drive0".into(),
                base_seq: 3,
                head: Some(record()),
                expected_bitmap: Some("ekko-b-0-1".into()),
                needs_full_read: false,
            }],
            dedup_sources: vec![record()],
            relocations: vec![Relocation { from: 1, to: 2 }],
            bad_records: vec![BadRecord {
                digest: "cd".repeat(32),
                segment: 7,
            }],
            project_key: Some(key()),
            write_keys: None,
            deadline: at(),
        };
        let restore = RestoreJob {
            job_id: "j-2".into(),
            restore_id: "r-1".into(),
            backup_id: "b-1".into(),
            project_id: "p-1".into(),
            record: record(),
            path: "vm.qcow2".into(),
            format: "qcow2".into(),
            relocations: vec![],
            project_key: None,
            deadline: at(),
        };
        let finished = BackupFinished {
            job_id: "j-1".into(),
            backup_id: "b-1".into(),
            project_id: "p-1".into(),
            host: "h-1".into(),
            kind: "incremental".into(),
            consistency: "crash".into(),
            disks: vec![DiskCommit {
                disk_id: "d-1".into(),
                base_seq: 3,
                virtual_size: 1 << 30,
                chunk_size: 1 << 18,
                root_digest: vec![0xab; 32],
                root_segment: 43,
                bitmap_name: Some("ekko-b-1-1".into()),
                full_read: false,
                read_bytes: 10,
                new_bytes: 9,
                stored_bytes: 5,
                new_segments: vec![(43, 1000, 4)],
                ref_deltas: vec![(42, -1), (43, 4)],
                fresh_map: false,
            }],
        };
        let inventory = HostInventory {
            host: "h-1".into(),
            instances: vec![InventoryInstance {
                id: "i-1".into(),
                project_id: "p-1".into(),
                name: "web".into(),
                disks: vec![InventoryDisk {
                    device: "vda".into(),
                    node_name: "drive0".into(),
                    virtual_size: 1 << 30,
                }],
            }],
        };
        let heartbeat = crate::service::Heartbeat {
            host: "h-1".into(),
            version: "0.1.0".into(),
            capacity: 2,
        };
        vec![
            (BACKUP_RUN, v(serde_json::to_value(&backup))),
            (RESTORE_RUN, v(serde_json::to_value(&restore))),
            (
                JOB_STARTED,
                v(serde_json::to_value(JobStarted {
                    job_id: "j-1".into(),
                    host: "h-1".into(),
                    attempt: 1,
                })),
            ),
            (
                JOB_PROGRESS,
                v(serde_json::to_value(JobProgress {
                    job_id: "j-1".into(),
                    done_bytes: 5,
                    total_bytes: 10,
                })),
            ),
            (BACKUP_FINISHED, v(serde_json::to_value(&finished))),
            (
                JOB_FAILED,
                v(serde_json::to_value(JobFailed {
                    job_id: "j-1".into(),
                    host: "h-1".into(),
                    error: "boom".into(),
                    manifest_written: false,
                })),
            ),
            (
                RESTORE_FINISHED,
                v(serde_json::to_value(RestoreFinished {
                    job_id: "j-2".into(),
                    host: "h-1".into(),
                    bytes_written: 1 << 30,
                })),
            ),
            (
                JOB_CANCEL,
                v(serde_json::to_value(CancelJob {
                    job_id: "j-1".into(),
                })),
            ),
            (HOST_INVENTORY, v(serde_json::to_value(&inventory))),
            (
                crate::service::HEARTBEAT_KIND,
                v(serde_json::to_value(&heartbeat)),
            ),
        ]
    }

    #[test]
    fn messages_match_the_previous_release() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire");
        for (kind, value) in samples() {
            let path = dir.join(format!("{kind}.json"));
            if std::env::var_os("EKKO_BLESS_WIRE").is_some() {
                let text = serde_json::to_string_pretty(&value).expect("json") + "\n";
                std::fs::write(&path, text).expect("write fixture");
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stored: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
            assert_eq!(stored, value, "{kind}: wire format changed");
        }
    }
}
