//! The bus in one place: message kinds, routing keys, queue names, and the
//! messages themselves (versioned inside [`Envelope`]).
//!
//! Wire structs are owned here and mapped to and from catalog rows at the
//! edges (`service::reports` on the controller, `worker` on the hosts), so
//! a schema change is never a protocol change. `tests/fixtures/wire` holds
//! one sample of every message as the previous release wrote it; the
//! golden test below keeps the format.
//!
//! Topology: one durable topic exchange (`[DEFAULT] control_exchange`);
//! each host consumes `<exchange>.backup.<host>` (jobs, key
//! `backup.<host>`) and `<exchange>.control.<host>` (cancels, key
//! `control.<host>`); every report goes to `<exchange>.status` (keys
//! `status.<kind>`, published mandatory: a report no queue takes is not
//! sent), which the conductors share; what they set aside goes to the
//! bounded `<exchange>.status.dead-letters` (key [`DEAD_LETTER_KEY`]).

pub mod jobs;
pub mod reports;

pub use jobs::*;
pub use reports::*;

use std::time::Duration;

use crate::queue::{Envelope, MessageQueue, QueueBounds, QueueError};

/// Message kinds.
pub const BACKUP_RUN: &str = "backup.run";
pub const BACKUP_FINISHED: &str = "backup.finished";
pub const RESTORE_RUN: &str = "restore.run";
pub const RESTORE_FINISHED: &str = "restore.finished";
pub const JOB_STARTED: &str = "job.started";
pub const JOB_PROGRESS: &str = "job.progress";
pub const JOB_FAILED: &str = "job.failed";
pub const JOB_CANCEL: &str = "job.cancel";
pub const EXPORT_START: &str = "export.start";
pub const EXPORT_STOP: &str = "export.stop";
pub const EXPORT_READY: &str = "export.ready";
pub const EXPORT_ENDED: &str = "export.ended";
pub const HOST_INVENTORY: &str = "host.inventory";
/// Instances one inventory message lists at most: a host sends its
/// inventory in pages of at most this many (and at most a quarter of
/// `[backup] max_report_size`), each page recorded on its own.
pub const INVENTORY_PAGE: usize = 500;

/// The least `[backup] max_report_size` can be: a heartbeat or a job's
/// start must always get through.
pub const MIN_REPORT_SIZE: u64 = 16 << 10;

/// The largest status message a conductor reads (`[backup]
/// max_report_size`, at least [`MIN_REPORT_SIZE`]).
pub fn max_report_size(config: &crate::config::EkkoConfig) -> u64 {
    config.backup.max_report_size.bytes().max(MIN_REPORT_SIZE)
}
pub const HEARTBEAT_KIND: &str = "host.heartbeat";

/// Routing key of a status message of `kind` (all go to the conductor).
pub fn status_key(kind: &str) -> String {
    format!("status.{kind}")
}

/// Routing key of host heartbeats.
pub const HEARTBEAT_KEY: &str = "status.host.heartbeat";

/// Routing key of the conductors' dead letters. Not a `status.` key: a
/// host's bus user may publish only those.
pub const DEAD_LETTER_KEY: &str = "dead-letters.status";

/// The dead letters are kept for inspection, not for ever: a stream of
/// refused reports must not fill the broker (its disk or memory alarm
/// would block every publisher on it). Past these the oldest go.
pub const DEAD_LETTER_BOUNDS: QueueBounds = QueueBounds {
    max_length: Some(10_000),
    max_bytes: Some(256 << 20),
    message_ttl: Some(Duration::from_secs(14 * 24 * 3600)),
};

/// Routing key of jobs for one compute host.
pub fn host_routing_key(host: &str) -> String {
    format!("backup.{host}")
}

/// Routing key of control messages for one compute host.
pub fn control_routing_key(host: &str) -> String {
    format!("control.{host}")
}

/// Queue names, which start with the exchange so deployments (and tests)
/// sharing a broker never share queues.
#[derive(Debug, Clone)]
pub struct Topology {
    exchange: String,
}

impl Topology {
    pub fn new(exchange: &str) -> Topology {
        Topology {
            exchange: exchange.to_string(),
        }
    }

    /// The queue the conductors consume; every status message goes there.
    pub fn status_queue(&self) -> String {
        format!("{}.status", self.exchange)
    }

    /// The queue of one compute host's jobs.
    pub fn host_queue(&self, host: &str) -> String {
        format!("{}.backup.{host}", self.exchange)
    }

    /// The queue of one compute host's control messages (cancels).
    pub fn control_queue(&self, host: &str) -> String {
        format!("{}.control.{host}", self.exchange)
    }

    /// The conductors' dead letters: status messages set aside, with why
    /// ([`DEAD_LETTER_BOUNDS`]). Releases before the bound wrote to an
    /// unbounded `<exchange>.status.dead` (key `dead.status`), which is no
    /// longer written; RabbitMQ cannot bound an existing queue, hence the
    /// new name. Drain and delete the old one once every conductor runs
    /// this release.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.status.dead-letters", self.exchange)
    }

    /// Declare (idempotently) the queues the conductors rely on: the status
    /// queue and its dead letters.
    pub async fn declare_status(&self, queue: &dyn MessageQueue) -> Result<(), QueueError> {
        queue
            .declare_queue(&self.status_queue(), &["status.#".to_string()])
            .await?;
        queue
            .declare_bounded_queue(
                &self.dead_letter_queue(),
                &[DEAD_LETTER_KEY.to_string()],
                DEAD_LETTER_BOUNDS,
            )
            .await
    }

    /// Declare a compute host's job and control queues.
    pub async fn declare_host(
        &self,
        queue: &dyn MessageQueue,
        host: &str,
    ) -> Result<(), QueueError> {
        queue
            .declare_queue(&self.host_queue(host), &[host_routing_key(host)])
            .await?;
        queue
            .declare_queue(&self.control_queue(host), &[control_routing_key(host)])
            .await
    }
}

/// The routing key a report of `kind` is published with.
pub fn report_routing_key(kind: &str) -> String {
    if kind == HEARTBEAT_KIND {
        HEARTBEAT_KEY.to_string()
    } else {
        status_key(kind)
    }
}

/// Publish a report of `kind` to the conductors. Mandatory: if no status
/// queue takes it (deleted, or lost with its node) the broker returns it
/// and this fails, so a host never counts a report as sent that nobody
/// will read (a finished job stays the host's to hand on again).
pub async fn publish_report<T: serde::Serialize>(
    queue: &dyn MessageQueue,
    kind: &str,
    body: &T,
) -> Result<(), QueueError> {
    let env = Envelope::new(kind, body)?;
    queue
        .publish_mandatory(&report_routing_key(kind), &env)
        .await
}

#[cfg(test)]
/// The wire format is a contract between releases: a worker of one
/// release and a conductor of the next read each other's messages. Each
/// message kind is serialized from a fixed sample and compared with
/// `tests/fixtures/wire/<kind>.json` (captured from the release before);
/// `EKKO_BLESS_WIRE=1` rewrites the files.
mod golden {
    use super::*;
    use chrono::{DateTime, Utc};

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
            checkpoint: None,
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
            image: None,
            second_copy: None,
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
                full_reason: None,
            }],
            checkpoint: None,
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
        let heartbeat = Heartbeat {
            host: "h-1".into(),
            version: "0.1.0".into(),
            capacity: 2,
            exports: None,
        };
        let export = ExportJob {
            export_id: "e-1".into(),
            nbd_name: "0123456789abcdef0123456789abcdef".into(),
            backup_id: "b-1".into(),
            project_id: "p-1".into(),
            record: restore.record.clone(),
            relocations: vec![],
            project_key: None,
            expires_at: restore.deadline,
            second_copy: None,
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
            (HEARTBEAT_KIND, v(serde_json::to_value(&heartbeat))),
            (EXPORT_START, v(serde_json::to_value(&export))),
            (
                EXPORT_STOP,
                v(serde_json::to_value(StopExport {
                    export_id: "e-1".into(),
                })),
            ),
            (
                EXPORT_READY,
                v(serde_json::to_value(ExportReady {
                    export_id: "e-1".into(),
                    host: "h-1".into(),
                    address: "192.0.2.1:10809".into(),
                    tls: true,
                })),
            ),
            (
                EXPORT_ENDED,
                v(serde_json::to_value(ExportEnded {
                    export_id: "e-1".into(),
                    host: "h-1".into(),
                    error: None,
                })),
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

    /// A restore job of the previous release (no second copy) reads; one
    /// naming the second copy round-trips.
    #[test]
    fn restore_jobs_name_the_second_copy_optionally() {
        let samples: std::collections::HashMap<_, _> = samples().into_iter().collect();
        let mut job: RestoreJob = serde_json::from_value(samples[RESTORE_RUN].clone()).unwrap();
        assert_eq!(job.second_copy, None);
        job.second_copy = Some(SecondCopy {
            store: "offsite@0a1b2c3d4e5f".into(),
            first: true,
            only: false,
        });
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"second_copy\""), "{text}");
        let back: RestoreJob = serde_json::from_str(&text).unwrap();
        assert_eq!(back, job);
    }

    /// The libvirt fields are optional both ways: a job or an outcome
    /// without them reads (the fixtures above), and with them they round-trip.
    #[test]
    fn checkpoints_travel_with_jobs_and_outcomes() {
        let samples: std::collections::HashMap<_, _> = samples().into_iter().collect();
        let mut job: BackupJob = serde_json::from_value(samples[BACKUP_RUN].clone()).unwrap();
        assert_eq!(job.checkpoint, None);
        job.checkpoint = Some(Checkpoint {
            name: "ekko-b-1-1".into(),
            xml: "<domaincheckpoint><name>ekko-b-1-1</name></domaincheckpoint>".into(),
        });
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<BackupJob>(&text).unwrap(), job);
        let mut done: BackupFinished =
            serde_json::from_value(samples[BACKUP_FINISHED].clone()).unwrap();
        assert_eq!(
            (&done.checkpoint, &done.disks[0].full_reason),
            (&None, &None)
        );
        done.checkpoint = job.checkpoint.clone();
        done.disks[0].full_reason = Some("not_qcow2".into());
        let text = serde_json::to_string(&done).unwrap();
        assert_eq!(serde_json::from_str::<BackupFinished>(&text).unwrap(), done);
    }
}
