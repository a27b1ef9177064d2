//! ekko-backup: the worker on each compute host. It runs the backup jobs
//! routed to its host and reports to the conductor over the bus; it never
//! reads the catalog (a job carries what it needs).
//!
//! * [`execute`] turns a [`BackupJob`] into stored segments and a stored
//!   manifest, with the bitmaps still to rotate: the caller rotates them
//!   only once the outcome is handed on (published with a publisher
//!   confirm, or committed), and rolls them back otherwise.
//! * [`run`] is the daemon: heartbeats and inventory, jobs from the host's
//!   durable queue (at most `max_concurrent_backups` at once), cancels from
//!   its control queue, graceful shutdown.
//!
//! Redelivery: a job is acknowledged only once its outcome is published,
//! so a worker killed mid-job gets it again from the broker; its local
//! journal (`$state_path/jobs`) counts attempts (a job that kills the
//! worker three times fails instead of looping) and remembers finished
//! jobs (a redelivery after the outcome was sent is dropped).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::backup::dedup::KnownChunks;
use crate::backup::disk::{back_up_disk, DiskBackupOptions, DiskBackupResult};
use crate::backup::reader::RecordReader;
use crate::backup::restore::{restore, TargetFormat};
use crate::backup::Progress;
use crate::chunk::ChunkRef;
use crate::daemon::DaemonError as ServiceError;
use crate::extract::pull::{DiskRequest, PullBackup, PullOptions};
use crate::extract::DiskSnapshot;
use crate::inventory::{ConfiguredInstances, InstanceSource, LocalInstance};
use crate::manifest::{self, Manifest, ManifestDisk};
use crate::qmp::QmpClient;
use crate::queue::{Delivery, Envelope, QueueError};
use crate::wire::DiskCommit;
use crate::wire::{control_routing_key, Heartbeat, HEARTBEAT_KEY, HEARTBEAT_KIND};
use crate::wire::{
    BackupFinished, BackupJob, BadRecord, CancelJob, HostInventory, InventoryInstance, JobFailed,
    JobProgress, JobStarted, Relocation, RestoreFinished, RestoreJob, BACKUP_FINISHED, BACKUP_RUN,
    HOST_INVENTORY, JOB_CANCEL, JOB_FAILED, JOB_PROGRESS, JOB_STARTED, RESTORE_FINISHED,
    RESTORE_RUN,
};
use crate::Ekko;

/// Largest cross-disk dedup table (entries of 256 KiB chunks: 512 GiB of
/// data, about 150 MiB of memory).
const DEDUP_MAX_ENTRIES: usize = 2 << 20;
/// Attempts of one job on one host before it fails instead of running again.
const MAX_ATTEMPTS: u32 = 3;
/// Seconds between progress reports of a running job.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How long a finished job's outcome is retried on the bus before the job
/// is rolled back and left for redelivery.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(120);

/// A backup whose data and manifest are stored; its bitmaps still wait
/// for [`PullBackup::commit`] (rotate) or [`PullBackup::abort`].
pub struct Executed {
    pub finished: BackupFinished,
    pub results: Vec<(String, DiskBackupResult)>,
    pub pull: PullBackup,
}

pub fn engine_options(ekko: &Ekko, progress: Option<Arc<Progress>>) -> DiskBackupOptions {
    DiskBackupOptions {
        chunk_size: ekko.config.backup.chunk_size.bytes(),
        compression_level: ekko.config.backup.compression_level as i32,
        segment_size: ekko.config.backup.segment_size.bytes() as usize,
        progress,
    }
}

/// A record named by a job, as the engine reads it; `None` if malformed.
fn previous(r: &crate::wire::RecordRef) -> Option<crate::backup::PreviousRecord> {
    Some(crate::backup::PreviousRecord {
        root: ChunkRef {
            digest: crate::chunk::ChunkDigest::from_hex(&r.root_digest)?,
            segment: r.root_segment,
        },
        disk_size: r.disk_size,
        chunk_size: r.chunk_size,
    })
}

/// Back up one disk: a full read first loads the chunks it may reuse (its
/// own previous record and the project's other heads).
async fn back_up_one(
    reader: &RecordReader,
    snap: &crate::extract::pull::PulledDisk,
    disk: &crate::wire::JobDisk,
    job: &BackupJob,
    engine: &DiskBackupOptions,
) -> anyhow::Result<DiskBackupResult> {
    // A previous record with another chunk or disk size cannot be merged into.
    let prev = disk
        .head
        .as_ref()
        .and_then(previous)
        .filter(|p| p.chunk_size == engine.chunk_size && p.disk_size == snap.size());
    let known = if snap.full_reason().is_some() {
        let sources: Vec<_> = prev
            .into_iter()
            .chain(job.dedup_sources.iter().filter_map(previous))
            .filter(|r| r.chunk_size == engine.chunk_size)
            .collect();
        let avoid: HashSet<ChunkRef> = job
            .bad_records
            .iter()
            .filter_map(BadRecord::chunk_ref)
            .collect();
        let known = KnownChunks::load(reader, &sources, &avoid, DEDUP_MAX_ENTRIES).await?;
        tracing::info!(disk = %snap.device, sources = sources.len(), chunks = known.len(), "full read: dedup table loaded");
        known
    } else {
        KnownChunks::default()
    };
    Ok(back_up_disk(snap, prev.as_ref(), Arc::new(known), reader, engine).await?)
}

/// Run a backup job against the instance behind `qmp`: snapshot every
/// disk the job names, store chunks and the manifest. On error the bitmaps
/// are already rolled back. `attempt_tag` makes the new bitmaps' names
/// unique per attempt, so a bitmap of an attempt whose outcome was lost
/// never passes for the catalog's.
pub async fn execute(
    ekko: &Ekko,
    qmp: Arc<QmpClient>,
    job: &BackupJob,
    agent_socket: Option<PathBuf>,
    attempt_tag: &str,
    progress: Option<Arc<Progress>>,
) -> anyhow::Result<Executed> {
    let engine = engine_options(ekko, progress);
    let requests: Vec<DiskRequest> = job
        .disks
        .iter()
        .map(|d| DiskRequest {
            device: d.device.clone(),
            node: d.node_name.clone(),
            expected_bitmap: d.expected_bitmap.clone(),
            expected_size: d.head.as_ref().map(|h| h.disk_size),
            force_full: job.full || d.needs_full_read,
        })
        .collect();
    let cfg = &ekko.config.backup;
    let opts = PullOptions {
        backup_id: attempt_tag.to_string(),
        scratch_dir: cfg.scratch_dir.clone().into(),
        scratch_limit: cfg.scratch_limit.bytes(),
        granularity: 65536,
        requests_in_flight: cfg.nbd_requests_in_flight as usize,
        read_rate_limit: cfg.read_rate_limit.bytes(),
        qmp_timeout: Duration::from_secs(60),
        agent_socket,
        agent_timeout: Duration::from_secs(30),
        existing_nbd_socket: None,
    };
    let pull = PullBackup::begin(qmp, &requests, opts).await?;
    let container = ekko.container(&job.project_id);
    let keys = match ekko.keyring.open_job(
        &job.project_id,
        job.project_key.as_ref(),
        job.write_keys.as_ref(),
    ) {
        Ok(k) => k,
        Err(e) => {
            pull.abort().await?;
            return Err(e.into());
        }
    };
    let reader = RecordReader::new(ekko.store.clone(), &container)
        .with_relocations(Relocation::map(&job.relocations))
        .with_keys(keys.clone());
    let mut results = Vec::new();
    let mut commits = Vec::new();
    anyhow::ensure!(
        pull.disks.len() == job.disks.len(),
        "the snapshot has {} disks, the job {}",
        pull.disks.len(),
        job.disks.len()
    );
    // By index: a zip of borrowing iterators held across the awaits makes
    // the future not `Send` for every lifetime (rustc #110338).
    for i in 0..job.disks.len() {
        let (d, snap) = (&job.disks[i], &pull.disks[i]);
        let res = match back_up_one(&reader, snap, d, job, &engine).await {
            Ok(r) => r,
            Err(e) => {
                pull.abort().await?;
                return Err(e);
            }
        };
        commits.push(DiskCommit {
            disk_id: d.disk_id.clone(),
            base_seq: d.base_seq,
            virtual_size: res.size as i64,
            chunk_size: res.chunk_size as i32,
            root_digest: res.root.digest.0.to_vec(),
            root_segment: res.root.segment as i64,
            bitmap_name: Some(snap.new_bitmap.clone()),
            full_read: res.full_read,
            read_bytes: res.read_bytes as i64,
            new_bytes: res.new_bytes as i64,
            stored_bytes: res.stored_bytes as i64,
            new_segments: res
                .segments
                .iter()
                .map(|s| (s.id as i64, s.size as i64, s.records as i32))
                .collect(),
            ref_deltas: res
                .ref_deltas
                .iter()
                .map(|(s, d)| (*s as i64, *d))
                .collect(),
            fresh_map: res.fresh_map,
        });
        results.push((d.device.clone(), res));
    }
    let kind = if results.iter().any(|r| r.1.full_read) {
        "full"
    } else {
        "incremental"
    };
    // The manifest goes to the store first, so the catalog can be rebuilt
    // from the store; the catalog commit makes the backup visible.
    let manifest = Manifest {
        version: crate::format::MANIFEST_VERSION,
        backup_id: job.backup_id.clone(),
        project_id: job.project_id.clone(),
        user_id: job.user_id.clone(),
        instance_id: job.instance_id.clone(),
        instance_name: job.instance_name.clone(),
        host: ekko.config.default.host.clone(),
        name: job.name.clone(),
        description: job.description.clone(),
        kind: kind.to_string(),
        consistency: pull.consistency.as_str().to_string(),
        created_at: job.created_at.naive_utc(),
        disks: commits
            .iter()
            .zip(&results)
            .zip(&job.disks)
            .map(|((c, (dev, r)), d)| ManifestDisk {
                disk_id: c.disk_id.clone(),
                device: dev.clone(),
                node_name: d.node_name.clone(),
                seq: c.base_seq + 1,
                size: r.size,
                chunk_size: r.chunk_size,
                root_digest: r.root.digest.to_hex(),
                root_segment: format!("{:016x}", r.root.segment),
                full_read: r.full_read,
                read_bytes: r.read_bytes,
                new_bytes: r.new_bytes,
                stored_bytes: r.stored_bytes,
            })
            .collect(),
    };
    if let Err(e) = ekko
        .store
        .put(
            &container,
            &manifest::object_name(&job.backup_id),
            manifest.encode_for(keys.as_deref())?.into(),
        )
        .await
    {
        pull.abort().await?;
        return Err(e.into());
    }
    Ok(Executed {
        finished: BackupFinished {
            job_id: job.job_id.clone(),
            backup_id: job.backup_id.clone(),
            project_id: job.project_id.clone(),
            host: ekko.config.default.host.clone(),
            kind: kind.to_string(),
            consistency: pull.consistency.as_str().to_string(),
            disks: commits,
        },
        results,
        pull,
    })
}

/// The worker's local record of jobs: attempts and finished ones.
struct Journal {
    dir: PathBuf,
}

impl Journal {
    fn open(dir: PathBuf) -> std::io::Result<Journal> {
        std::fs::create_dir_all(&dir)?;
        // Forget jobs older than a week (their messages are long gone).
        let week = std::time::SystemTime::now() - Duration::from_secs(7 * 86400);
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < week)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Journal { dir })
    }

    fn path(&self, job_id: &str, what: &str) -> Option<PathBuf> {
        uuid::Uuid::parse_str(job_id)
            .ok()
            .map(|u| self.dir.join(format!("{u}.{what}")))
    }

    fn is_done(&self, job_id: &str) -> bool {
        self.path(job_id, "done").is_some_and(|p| p.exists())
    }

    /// Count one more attempt (durably, before the work starts).
    fn begin(&self, job_id: &str) -> std::io::Result<u32> {
        let path = self.path(job_id, "attempts").ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "job id is not a UUID")
        })?;
        let n = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        write_durably(&path, n.to_string().as_bytes())?;
        Ok(n)
    }

    /// An attempt that was rolled back on purpose (shutdown) does not count.
    fn undo(&self, job_id: &str, attempt: u32) {
        if let Some(path) = self.path(job_id, "attempts") {
            let _ = write_durably(&path, attempt.saturating_sub(1).to_string().as_bytes());
        }
    }

    fn done(&self, job_id: &str) {
        if let Some(path) = self.path(job_id, "done") {
            if let Err(e) = write_durably(&path, b"") {
                tracing::warn!(job = job_id, error = %e, "cannot record the job as done");
            }
        }
    }
}

fn write_durably(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Why a running job stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Run,
    /// The worker shuts down: roll back, leave the job for redelivery.
    Shutdown,
    /// A tenant or operator cancelled the backup.
    Cancelled,
}

struct Worker {
    ekko: Ekko,
    host: String,
    source: Box<dyn InstanceSource>,
    journal: Journal,
    /// Running jobs by job id: their instance and their stop signal.
    running: Mutex<HashMap<String, (String, watch::Sender<Stop>)>>,
    /// Jobs cancelled before they reached this worker.
    cancelled: Mutex<std::collections::HashSet<String>>,
    /// Restores written and reported lately, by job id: a cancel that
    /// crossed the report (the restore ended in `error`) removes the file.
    finished_restores: Mutex<std::collections::VecDeque<(String, PathBuf, TargetFormat)>>,
    /// Disks last seen per instance (a busy instance's QMP is not probed).
    known_disks: Mutex<HashMap<String, Vec<crate::wire::InventoryDisk>>>,
}

impl Worker {
    async fn publish<T: serde::Serialize>(&self, kind: &str, body: &T) -> Result<(), QueueError> {
        let env = Envelope::new(kind, body)?;
        self.ekko
            .queue
            .publish(&crate::wire::status_key(kind), &env)
            .await
    }

    /// Publish an outcome, retrying while the bus is down (the work it
    /// reports is done and stored).
    async fn publish_patiently<T: serde::Serialize>(
        &self,
        kind: &str,
        body: &T,
    ) -> Result<(), QueueError> {
        let start = std::time::Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            match self.publish(kind, body).await {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() > PUBLISH_PATIENCE => return Err(e),
                Err(e) => {
                    tracing::warn!(kind, error = %e, "cannot report yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn busy_instances(&self) -> Vec<String> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(instance, _)| instance.clone())
            .collect()
    }

    /// Heartbeat and inventory.
    async fn report(&self) {
        let beat = Heartbeat {
            host: self.host.clone(),
            version: crate::VERSION.to_string(),
            capacity: self.ekko.config.backup.max_concurrent_backups,
        };
        if let Err(e) = self
            .ekko
            .queue
            .publish(
                HEARTBEAT_KEY,
                &match Envelope::new(HEARTBEAT_KIND, &beat) {
                    Ok(env) => env,
                    Err(_) => return,
                },
            )
            .await
        {
            tracing::warn!(error = %e, "heartbeat not sent");
            return;
        }
        let instances = match self.source.instances().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this host's instances");
                return;
            }
        };
        let busy = self.busy_instances();
        let mut report = HostInventory {
            host: self.host.clone(),
            instances: Vec::new(),
        };
        for inst in instances {
            let disks = if busy.contains(&inst.id) {
                self.known_disks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&inst.id)
                    .cloned()
            } else {
                match crate::inventory::probe(&inst).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(instance = %inst.id, error = %e, "instance not reachable over QMP");
                        None
                    }
                }
            };
            let Some(disks) = disks else { continue };
            self.known_disks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(inst.id.clone(), disks.clone());
            report.instances.push(InventoryInstance {
                id: inst.id,
                project_id: inst.project_id,
                name: inst.name,
                disks,
            });
        }
        if let Err(e) = self.publish(HOST_INVENTORY, &report).await {
            tracing::warn!(error = %e, "inventory not sent");
        }
    }

    fn stop_all(&self, why: Stop) {
        for (_, (_, tx)) in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = tx.send(why);
        }
    }

    /// Stop a running job, or remember not to start it; a restore that
    /// finished here before the cancel came loses its file (the catalog
    /// ended it as cancelled). The `running` lock is held throughout, so
    /// a job being admitted sees either the stop or the mark.
    fn cancel(&self, job_id: &str) -> bool {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, tx)) = running.get(job_id) {
            return tx.send(Stop::Cancelled).is_ok();
        }
        let finished = {
            let mut done = self
                .finished_restores
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let at = done.iter().position(|(id, _, _)| id == job_id);
            at.and_then(|i| done.remove(i))
        };
        if let Some((_, target, format)) = finished {
            tracing::warn!(job = job_id, target = %target.display(), "restore cancelled after it finished here: removing its file");
            discard_restore(&target, format);
            return true;
        }
        let mut cancelled = self.cancelled.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: cancels of jobs that never come are forgotten.
        if cancelled.len() > 10_000 {
            cancelled.clear();
        }
        cancelled.insert(job_id.to_string());
        false
    }

    /// Remember a reported restore for a cancel that may have crossed it.
    fn restore_reported(&self, job_id: &str, target: &Path, format: TargetFormat) {
        let mut done = self
            .finished_restores
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if done.len() >= 256 {
            done.pop_front();
        }
        done.push_back((job_id.to_string(), target.to_path_buf(), format));
    }

    /// Tell the conductor a job failed, then drop its message.
    async fn fail(&self, delivery: Delivery, job_id: &str, error: String, manifest: bool) {
        tracing::error!(job = job_id, %error, "job failed");
        let failed = JobFailed {
            job_id: job_id.to_string(),
            host: self.host.clone(),
            error,
            manifest_written: manifest,
        };
        match self.publish_patiently(JOB_FAILED, &failed).await {
            Ok(()) => {
                self.journal.done(job_id);
                let _ = delivery.ack().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot report the failure; leaving the job for redelivery");
                let _ = delivery.nack(true).await;
            }
        }
    }

    /// The checks and bookkeeping before a job runs: not done already, not
    /// past its deadline, not cancelled, attempts counted, start reported,
    /// registered for cancels, progress reported. `None` when the delivery
    /// was settled here.
    async fn admit(
        self: &Arc<Self>,
        delivery: Delivery,
        job_id: &str,
        instance_id: Option<&str>,
        deadline: DateTime<Utc>,
    ) -> Option<(Delivery, Admitted)> {
        if self.journal.is_done(job_id) {
            tracing::info!(job = job_id, "job already handled; dropping the redelivery");
            let _ = delivery.ack().await;
            return None;
        }
        if Utc::now() > deadline {
            let why = format!("the job reached host {} after its deadline", self.host);
            self.fail(delivery, job_id, why, false).await;
            return None;
        }
        let cancelled = self
            .cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job_id);
        if cancelled {
            let why = format!("cancelled before it started on host {}", self.host);
            self.fail(delivery, job_id, why, false).await;
            return None;
        }
        let attempt = match self.journal.begin(job_id) {
            Ok(n) => n,
            Err(e) => {
                self.fail(delivery, job_id, format!("job journal: {e}"), false)
                    .await;
                return None;
            }
        };
        if attempt > MAX_ATTEMPTS {
            let why = format!(
                "the worker on host {} stopped {} times while running this job",
                self.host,
                attempt - 1
            );
            self.fail(delivery, job_id, why, false).await;
            return None;
        }
        let started = JobStarted {
            job_id: job_id.to_string(),
            host: self.host.clone(),
            attempt,
        };
        if let Err(e) = self.publish(JOB_STARTED, &started).await {
            tracing::warn!(error = %e, "cannot report the start; leaving the job for later");
            self.journal.undo(job_id, attempt);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery.nack(true).await;
            return None;
        }
        let (stop_tx, stop) = watch::channel(Stop::Run);
        let cancelled_meanwhile = {
            // cancel() marks under this lock: a cancel that came while the
            // start was being reported is seen here, a later one is sent
            // to the stop channel.
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let marked = self
                .cancelled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(job_id);
            if !marked {
                running.insert(
                    job_id.to_string(),
                    (instance_id.unwrap_or_default().to_string(), stop_tx),
                );
            }
            marked
        };
        if cancelled_meanwhile {
            let why = format!("cancelled before it started on host {}", self.host);
            self.fail(delivery, job_id, why, false).await;
            return None;
        }
        let progress = Arc::new(Progress::default());
        let reporter = {
            let this = self.clone();
            let (progress, job_id) = (progress.clone(), job_id.to_string());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                loop {
                    tick.tick().await;
                    let (done, total) = progress.get();
                    let p = JobProgress {
                        job_id: job_id.clone(),
                        done_bytes: done,
                        total_bytes: total,
                    };
                    if let Err(e) = this.publish(JOB_PROGRESS, &p).await {
                        tracing::debug!(error = %e, "progress not sent");
                    }
                }
            })
        };
        Some((
            delivery,
            Admitted {
                attempt,
                progress,
                stop,
                reporter,
            },
        ))
    }

    /// The job stopped running here (whatever its outcome).
    fn release(&self, job_id: &str, admitted: &Admitted) {
        admitted.reporter.abort();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job_id);
    }

    async fn handle(self: Arc<Self>, delivery: Delivery) {
        match delivery.envelope.kind.as_str() {
            BACKUP_RUN => self.handle_backup(delivery).await,
            RESTORE_RUN => self.handle_restore(delivery).await,
            other => {
                tracing::error!(id = %delivery.envelope.id, kind = other, "rejecting a job of unknown kind");
                let _ = delivery.nack(false).await;
            }
        }
    }

    async fn handle_backup(self: Arc<Self>, delivery: Delivery) {
        let job: BackupJob = match delivery.envelope.body_as(BACKUP_RUN) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(id = %delivery.envelope.id, error = %e, "rejecting a job this worker cannot read");
                let _ = delivery.nack(false).await;
                return;
            }
        };
        let instance = match self.source.find(&job.instance_id).await {
            Ok(Some(i)) if i.project_id == job.project_id => i,
            Ok(Some(_)) => {
                let why = format!(
                    "instance {} on host {} belongs to another project",
                    job.instance_id, self.host
                );
                return self.fail(delivery, &job.job_id, why, false).await;
            }
            Ok(None) => {
                let why = format!(
                    "instance {} is not served by host {}",
                    job.instance_id, self.host
                );
                return self.fail(delivery, &job.job_id, why, false).await;
            }
            Err(e) => {
                let why = format!("instance lookup: {e:#}");
                return self.fail(delivery, &job.job_id, why, false).await;
            }
        };
        let Some((delivery, mut admitted)) = self
            .admit(delivery, &job.job_id, Some(&job.instance_id), job.deadline)
            .await
        else {
            return;
        };
        tracing::info!(backup = %job.backup_id, instance = %job.instance_id, attempt = admitted.attempt, "backup started");
        let outcome = self.run_job(&job, &instance, &mut admitted).await;
        self.release(&job.job_id, &admitted);
        match outcome {
            Ok(executed) => self.hand_on(delivery, &job, executed).await,
            Err(Stop::Shutdown) => {
                tracing::warn!(backup = %job.backup_id, "rolled back for shutdown; the job runs again after restart");
                self.journal.undo(&job.job_id, admitted.attempt);
                let _ = delivery.nack(true).await;
            }
            Err(_) => {
                let why = format!("cancelled on host {}", self.host);
                self.fail(delivery, &job.job_id, why, false).await
            }
        }
    }

    /// Execute until done, failed, stopped or past the deadline. A failure
    /// is reported here; `Err` says why the job was stopped.
    async fn run_job(
        &self,
        job: &BackupJob,
        instance: &LocalInstance,
        admitted: &mut Admitted,
    ) -> Result<Result<Executed, String>, Stop> {
        let qmp = match QmpClient::connect(&instance.qmp_socket, Duration::from_secs(30)).await {
            Ok(q) => Arc::new(q),
            Err(e) => return Ok(Err(format!("QMP {}: {e}", instance.qmp_socket.display()))),
        };
        let tag = format!("{}-{}", job.backup_id, admitted.attempt);
        let left = (job.deadline - Utc::now()).to_std().unwrap_or_default();
        let work = execute(
            &self.ekko,
            qmp.clone(),
            job,
            instance.agent_socket.clone(),
            &tag,
            Some(admitted.progress.clone()),
        );
        let why = tokio::select! {
            r = work => return Ok(r.map_err(|e| format!("{e:#}"))),
            s = stopped(&mut admitted.stop) => s,
            _ = tokio::time::sleep(left) => {
                recover(&qmp).await;
                return Ok(Err(format!("timed out after [backup] job_timeout on host {}", self.host)));
            }
        };
        // The work future is dropped mid-way: put QEMU back as it was.
        recover(&qmp).await;
        Err(why)
    }

    /// Report the outcome; rotate the bitmaps only once it is on the bus.
    async fn hand_on(
        &self,
        delivery: Delivery,
        job: &BackupJob,
        executed: Result<Executed, String>,
    ) {
        let executed = match executed {
            Ok(e) => e,
            Err(why) => return self.fail(delivery, &job.job_id, why, false).await,
        };
        crate::failpoint::hit("worker.before-report");
        match self
            .publish_patiently(BACKUP_FINISHED, &executed.finished)
            .await
        {
            Ok(()) => {
                if let Err(e) = executed.pull.commit().await {
                    tracing::error!(error = %e, "outcome sent, but the bitmap rotation did not finish; the next backup re-reads the disk");
                }
                self.journal.done(&job.job_id);
                let _ = delivery.ack().await;
                tracing::info!(backup = %job.backup_id, "backup stored and reported");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot report the backup; rolling back for a later retry");
                if let Err(e) = executed.pull.abort().await {
                    tracing::error!(error = %e, "bitmap rollback failed; the next backup re-reads the disk");
                }
                let _ = delivery.nack(true).await;
            }
        }
    }

    /// Where a restore job may write: a plain file name (or relative path
    /// without `..`) under `[backup] restore_dir`, not existing yet.
    fn restore_target(&self, path: &str) -> Result<PathBuf, String> {
        let rel = std::path::Path::new(path);
        let plain = !path.is_empty()
            && rel.is_relative()
            && rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(format!(
                "restore path {path:?} must be relative to [backup] restore_dir, without '..'"
            ));
        }
        let full = PathBuf::from(&self.ekko.config.backup.restore_dir).join(rel);
        // Errors name the path as the tenant gave it: the host's layout is
        // the operator's business (details go to the log).
        if full.exists() {
            return Err(format!(
                "{path} exists in the restore directory of host {}: a restore never overwrites",
                self.host
            ));
        }
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                tracing::error!(dir = %parent.display(), error = %e, "restore directory not created");
                format!("cannot create the directory of {path} on host {}: {}", self.host, e.kind())
            })?;
        }
        Ok(full)
    }

    async fn handle_restore(self: Arc<Self>, delivery: Delivery) {
        let job: RestoreJob = match delivery.envelope.body_as(RESTORE_RUN) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(id = %delivery.envelope.id, error = %e, "rejecting a job this worker cannot read");
                let _ = delivery.nack(false).await;
                return;
            }
        };
        let (target, root, format) = match (
            self.restore_target(&job.path),
            previous(&job.record),
            TargetFormat::parse(&job.format),
        ) {
            (Ok(t), Some(r), Some(f)) => (t, r, f),
            (Err(why), _, _) => return self.fail(delivery, &job.job_id, why, false).await,
            (_, None, _) => {
                let why = "the backup's record is corrupt".to_string();
                return self.fail(delivery, &job.job_id, why, false).await;
            }
            (_, _, None) => {
                let why = format!("unknown restore format {:?}", job.format);
                return self.fail(delivery, &job.job_id, why, false).await;
            }
        };
        // Only the restore side (the master key) opens a public-key
        // project's chunks: a host with write keys fails here, before the
        // target is touched.
        let keys = match self
            .ekko
            .keyring
            .open_job(&job.project_id, job.project_key.as_ref(), None)
        {
            Ok(k) => k,
            Err(e) => return self.fail(delivery, &job.job_id, e.to_string(), false).await,
        };
        let Some((delivery, mut admitted)) =
            self.admit(delivery, &job.job_id, None, job.deadline).await
        else {
            return;
        };
        tracing::info!(restore = %job.restore_id, backup = %job.backup_id, target = %target.display(), "restore started");
        let container = self.ekko.container(&job.project_id);
        let reader = RecordReader::new(self.ekko.store.clone(), &container)
            .with_relocations(Relocation::map(&job.relocations))
            .with_keys(keys);
        let left = (job.deadline - Utc::now()).to_std().unwrap_or_default();
        let progress = admitted.progress.clone();
        let work = restore(
            &reader,
            root.root,
            root.disk_size,
            root.chunk_size,
            &target,
            format,
            Some(&progress),
        );
        let outcome = tokio::select! {
            r = work => Ok(r),
            s = stopped(&mut admitted.stop) => Err(Some(s)),
            _ = tokio::time::sleep(left) => Err(None),
        };
        self.release(&job.job_id, &admitted);
        let result = match outcome {
            Ok(Ok(stats)) if stats.bad.is_empty() => Ok(stats),
            Ok(Ok(stats)) => Err(format!(
                "{} range(s) of the backup are missing or corrupt, first at byte {}: {}",
                stats.bad.len(),
                stats.bad[0].0,
                stats.bad[0].2
            )),
            Ok(Err(e)) => Err(format!("{e}")),
            Err(Some(Stop::Shutdown)) => {
                discard_restore(&target, format);
                self.journal.undo(&job.job_id, admitted.attempt);
                let _ = delivery.nack(true).await;
                return;
            }
            Err(Some(_)) => Err(format!("cancelled on host {}", self.host)),
            Err(None) => Err(format!("timed out on host {}", self.host)),
        };
        match result {
            Ok(stats) => {
                let done = RestoreFinished {
                    job_id: job.job_id.clone(),
                    host: self.host.clone(),
                    bytes_written: stats.bytes_written,
                };
                match self.publish_patiently(RESTORE_FINISHED, &done).await {
                    Ok(()) => {
                        self.journal.done(&job.job_id);
                        self.restore_reported(&job.job_id, &target, format);
                        let _ = delivery.ack().await;
                        tracing::info!(restore = %job.restore_id, "restore written and reported");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot report the restore; it runs again");
                        discard_restore(&target, format);
                        let _ = delivery.nack(true).await;
                    }
                }
            }
            Err(why) => {
                // A partial restore is no restore.
                discard_restore(&target, format);
                self.fail(delivery, &job.job_id, why, false).await
            }
        }
    }
}

/// Remove what an abandoned restore wrote: its target and, for qcow2, the
/// raw image it converts from.
fn discard_restore(target: &Path, format: TargetFormat) {
    let scratch = crate::backup::restore::scratch_path(target, format);
    for path in std::iter::once(target).chain(scratch.as_deref()) {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed an abandoned restore's file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an abandoned restore's file")
            }
        }
    }
}

/// A job admitted to run on this worker.
struct Admitted {
    attempt: u32,
    progress: Arc<Progress>,
    stop: watch::Receiver<Stop>,
    reporter: tokio::task::JoinHandle<()>,
}

/// Resolves when the job is told to stop, with why.
async fn stopped(stop: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        if stop.changed().await.is_err() {
            return Stop::Shutdown;
        }
        let s = *stop.borrow();
        if s != Stop::Run {
            return s;
        }
    }
}

/// Undo what an interrupted pull left on QEMU (bitmaps back as before).
async fn recover(qmp: &QmpClient) {
    if let Err(e) = PullBackup::recover(qmp, Duration::from_secs(60)).await {
        tracing::error!(error = %e, "cleaning up after a stopped backup failed; the next backup cleans up");
    }
}

/// The ekko-backup daemon (see the module documentation).
pub async fn run(
    ekko: Ekko,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceError> {
    let host = ekko.config.default.host.clone();
    ekko.topology().declare_status(ekko.queue.as_ref()).await?;
    let queue = ekko.topology().host_queue(&host);
    ekko.queue
        .declare_queue(&queue, &[crate::wire::host_routing_key(&host)])
        .await?;
    ekko.queue
        .declare_queue(
            &ekko.topology().control_queue(&host),
            &[control_routing_key(&host)],
        )
        .await?;
    let capacity = ekko.config.backup.max_concurrent_backups.clamp(1, 64);
    let source = ConfiguredInstances::from_config(&ekko.config)
        .map_err(|e| ServiceError::Config(format!("{e:#}")))?;
    let journal = Journal::open(PathBuf::from(&ekko.config.default.state_path).join("jobs"))
        .map_err(|e| ServiceError::Config(format!("job journal: {e}")))?;
    let worker = Arc::new(Worker {
        host: host.clone(),
        source: Box::new(source),
        journal,
        running: Mutex::new(HashMap::new()),
        cancelled: Mutex::new(Default::default()),
        finished_restores: Mutex::new(Default::default()),
        known_disks: Mutex::new(HashMap::new()),
        ekko: ekko.clone(),
    });
    let mut jobs = ekko.queue.consume(&queue, capacity as u16).await?;
    let mut control = ekko
        .queue
        .consume(&ekko.topology().control_queue(&host), 16)
        .await?;
    let mut ticker = tokio::time::interval(Duration::from_secs(
        ekko.config.backup.heartbeat_interval.max(1),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    tracing::info!(%host, %queue, capacity, "ekko-backup ready");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => worker.report().await,
            d = jobs.next() => {
                tasks.spawn(worker.clone().handle(d?));
            }
            c = control.next() => {
                let c = c?;
                match c.envelope.body_as::<CancelJob>(JOB_CANCEL) {
                    Ok(cancel) => {
                        let found = worker.cancel(&cancel.job_id);
                        tracing::info!(job = %cancel.job_id, running_here = found, "cancel received");
                        c.ack().await?;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rejecting a control message");
                        c.nack(false).await?;
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Graceful shutdown: no new jobs; give running ones the grace period
    // to finish, then roll them back (they are redelivered after restart).
    let grace = Duration::from_secs(ekko.config.backup.shutdown_timeout);
    tracing::info!(
        running = tasks.len(),
        grace_s = grace.as_secs(),
        "shutting down"
    );
    let finished =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        worker.stop_all(Stop::Shutdown);
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}
