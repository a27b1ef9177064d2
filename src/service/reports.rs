//! What the conductor records of the compute hosts' reports (as
//! nova-conductor does for nova-compute): compute hosts hold no database
//! credentials, so everything they learn or do reaches the catalog here.
//!
//! A compute host is not trusted (docs/design.md §8): every report is
//! checked before it changes anything ([`checks`]: ranges, lengths, ids,
//! the host it claims against the bus user that sent it) and compared
//! with the job as planned (the job's host, its backup, its project, its
//! disks and their heads). A report that fails is refused
//! ([`ServiceError::Refused`]): counted, dead-lettered, never retried.
//!
//! A backup commits only while running and only on the disk heads it was
//! planned on; a job starts only if queued or running and ends only once
//! (see [`super::jobs`]), so a redelivered or duplicated report changes
//! nothing the second time.

pub mod checks;

use diesel::Connection;

use crate::db::backups::{self, Backup, BackupStatus};
use crate::db::jobs::{self, Job};
use crate::db::{images, instances, restores, DbConnection, DbError, DbResult};
use crate::queue::{Envelope, QueueError};
use crate::status::{JobKind, JobStatus, RestoreStatus};
use crate::wire::{
    BackupFinished, Heartbeat, HostInventory, JobFailed, JobProgress, JobStarted, RestoreFinished,
    BACKUP_FINISHED, EXPORT_ENDED, EXPORT_READY, HEARTBEAT_KIND, HOST_INVENTORY, JOB_FAILED,
    JOB_PROGRESS, JOB_STARTED, RESTORE_FINISHED,
};
use crate::Ekko;

pub use checks::{PlannedBackup, PlannedDisk, PlannedRestore, Sender};

use super::convert::{disk_commit, disk_report};
use super::jobs::{fail_job, job_started, send_cancel};
use super::{ServiceError, ServiceResult};

/// Inventory entries recorded per catalog call.
const INVENTORY_BATCH: usize = 50;

/// How many heartbeat intervals an instance must go unreported before
/// another host may take it over (a migration, an evacuation).
const MOVE_AFTER_HEARTBEATS: u32 = 3;

fn refused(why: impl Into<String>) -> ServiceError {
    ServiceError::Refused(why.into())
}

/// The job a report names, and the check that it is the job of the host
/// that claims it (and that sent it).
fn job_of(
    c: &mut DbConnection,
    job_id: &str,
    claimed: &str,
    sender: &Sender,
) -> ServiceResult<Job> {
    checks::host_claim(claimed, sender).map_err(refused)?;
    let job = match jobs::get(c, job_id) {
        Ok(j) => j,
        Err(DbError::NotFound(_)) => return Err(refused(format!("no job {job_id}"))),
        Err(e) => return Err(e.into()),
    };
    if job.host.as_deref() != Some(claimed) {
        return Err(refused(format!(
            "host {claimed} reports on job {job_id} of host {}",
            job.host.as_deref().unwrap_or("?")
        )));
    }
    Ok(job)
}

/// Commit a finished backup and end its job. A duplicate (the backup is
/// already available from this very job) is a no-op.
pub fn job_finished(c: &mut DbConnection, f: &BackupFinished) -> DbResult<Backup> {
    c.transaction(|c| {
        // Before any read: see backups::commit.
        backups::lock_instance_of(c, &f.backup_id)?;
        let current = backups::get(c, &f.backup_id)?;
        if current.status == BackupStatus::Available {
            let job = jobs::get(c, &f.job_id)?;
            if job.status == JobStatus::Succeeded {
                return Ok(current);
            }
        }
        // The worker's start report may have been lost (a broker restart):
        // the outcome says it ran.
        if current.status == BackupStatus::Queued {
            backups::transition(c, &f.backup_id, BackupStatus::Running, None)?;
        }
        let disks: Vec<_> = f.disks.iter().map(disk_commit).collect();
        let checkpoint = f
            .checkpoint
            .as_ref()
            .map(|k| (k.name.clone(), k.xml.clone()));
        let b = backups::commit(
            c,
            &f.backup_id,
            &f.kind,
            &f.consistency,
            &disks,
            checkpoint.as_ref(),
        )?;
        jobs::finish(c, &f.job_id, JobStatus::Succeeded, None)?;
        Ok(b)
    })
}

/// A finished backup's report, checked against its job as planned.
fn check_finished(c: &mut DbConnection, f: &BackupFinished, sender: &Sender) -> ServiceResult<Job> {
    let job = job_of(c, &f.job_id, &f.host, sender)?;
    if job.kind != JobKind::Backup
        || job.backup_id.as_deref() != Some(f.backup_id.as_str())
        || job.project_id != f.project_id
    {
        return Err(refused(format!(
            "job {} is not the job of backup {} of project {}",
            f.job_id, f.backup_id, f.project_id
        )));
    }
    let mut planned: PlannedBackup = plan_of(&job)?;
    for p in &mut planned.disks {
        p.inventoried_size = instances::disk(c, &p.disk_id)?.map(|d| d.virtual_size);
    }
    checks::finished(&f.kind, &f.consistency, &f.disks, &planned).map_err(refused)?;
    if let Some(k) = &f.checkpoint {
        checks::checkpoint(&k.name, &k.xml, &f.host).map_err(refused)?;
    }
    // Its outcome is here: the job is not stalled, even while the outcome
    // waits for the store (an outage retries it) longer than the stall
    // timeout.
    jobs::heartbeat(c, &job.id)?;
    Ok(job)
}

/// What a job was planned on, as kept with it. A plan that does not read
/// is refused, never taken as empty: an empty plan would let any outcome
/// through.
fn plan_of<T: serde::de::DeserializeOwned>(job: &Job) -> ServiceResult<T> {
    serde_json::from_str(&job.payload)
        .map_err(|e| refused(format!("job {}: its plan does not read: {e}", job.id)))
}

/// The first segment a finished backup says it wrote that the store does
/// not hold (or holds with another size), if any: committing it would
/// leave a backup nobody can restore.
async fn missing_segment(ekko: &Ekko, f: &BackupFinished) -> ServiceResult<Option<String>> {
    use futures::StreamExt;
    let container = ekko.container(&f.project_id);
    let wanted: Vec<(String, i64)> = f
        .disks
        .iter()
        .flat_map(|d| d.new_segments.iter())
        .map(|&(id, size, _)| (crate::backup::segment_object(id as u64), size))
        .collect();
    let mut heads = futures::stream::iter(wanted.into_iter().map(|(name, size)| {
        let (store, container) = (ekko.store.clone(), container.clone());
        async move {
            // A 404 just after the PUT can be the store catching up (a
            // Swift handoff): asked again before the backup is refused.
            let mut found = store.head(&container, &name).await;
            for pause in [1, 3] {
                if !matches!(found, Err(crate::store::StoreError::NotFound { .. })) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(pause)).await;
                found = store.head(&container, &name).await;
            }
            (found, name, size)
        }
    }))
    .buffer_unordered(16);
    while let Some((found, name, size)) = heads.next().await {
        match found {
            Ok(meta) if meta.size as i64 == size => {}
            Ok(meta) => {
                return Ok(Some(format!(
                    "{name} holds {} bytes, the backup says {size}",
                    meta.size
                )))
            }
            Err(crate::store::StoreError::NotFound { .. }) => {
                return Ok(Some(format!("{name} is not in the store")))
            }
            Err(e) => return Err(ServiceError::Unavailable(format!("object store: {e}"))),
        }
    }
    Ok(None)
}

/// A committed backup in this process's metrics.
fn count_committed(b: &crate::db::backups::Backup) {
    let m = crate::metrics::metrics();
    m.add_backup_bytes(b.logical_bytes, b.read_bytes, b.new_bytes, b.stored_bytes);
    if let (Some(start), Some(end)) = (b.started_at, b.completed_at) {
        let took = (end - start).to_std().unwrap_or_default();
        m.backup_seconds
            .get_or_create(&crate::metrics::labels(&[(
                "kind",
                b.kind.as_deref().unwrap_or("unknown"),
            )]))
            .observe(took.as_secs_f64());
    }
}

/// Handle one status message from `sender`. Unreadable bodies are
/// `BadMessage`, reports that contradict the catalog `Refused` (the caller
/// dead-letters both); a `Conflict` is a verdict (the message is handled);
/// anything else may be retried.
pub async fn record(ekko: &Ekko, message: &Envelope, sender: &Sender) -> ServiceResult<()> {
    let db = ekko.db()?.clone();
    let sender = sender.clone();
    match message.kind.as_str() {
        HEARTBEAT_KIND => {
            let hb: Heartbeat = message.body_as(HEARTBEAT_KIND)?;
            checks::heartbeat(&hb, &sender).map_err(refused)?;
            let capacity = i32::try_from(hb.capacity).unwrap_or(i32::MAX);
            let (host, served) = (hb.host.clone(), hb.exports.clone());
            db.run(move |c| crate::db::hosts::heartbeat(c, &hb.host, &hb.version, capacity))
                .await?;
            if let Some(served) = served {
                super::exports::reconcile_host(ekko, &host, served).await?;
            }
        }
        HOST_INVENTORY => {
            let inv: HostInventory = message.body_as(HOST_INVENTORY)?;
            checks::inventory(&inv, &sender).map_err(refused)?;
            let interval =
                ekko.config.backup.heartbeat_interval.max(1) * MOVE_AFTER_HEARTBEATS as u64;
            let moved_before = crate::db::now()
                - chrono::Duration::seconds(i64::try_from(interval).unwrap_or(i64::MAX / 2));
            // In short batches, each on a connection of its own for a
            // moment: a large inventory never holds one for long.
            let host = std::sync::Arc::new(inv.host);
            let mut entries = inv.instances.into_iter().peekable();
            while entries.peek().is_some() {
                let batch: Vec<_> = entries.by_ref().take(INVENTORY_BATCH).collect();
                let host = host.clone();
                db.run(move |c| {
                    for i in &batch {
                        if let Err(why) = checks::inventory_entry(i) {
                            tracing::warn!(host = %host, %why, "inventory entry refused");
                            continue;
                        }
                        let reports: Vec<_> = i.disks.iter().map(disk_report).collect();
                        let upserted = instances::upsert(
                            c,
                            &i.id,
                            &i.project_id,
                            &host,
                            &i.name,
                            &reports,
                            moved_before,
                        );
                        match upserted {
                            Ok(instances::Upserted::Recorded { .. }) => {}
                            Ok(instances::Upserted::Contested { holder }) => {
                                tracing::error!(host = %host, instance = %i.id, %holder, "two live hosts report this instance: it stays with its host and is not backed up until one stops (a migration in progress, or a host claiming what is not its own)");
                            }
                            Err(DbError::Conflict(why)) => {
                                tracing::warn!(host = %host, instance = %i.id, %why, "inventory entry refused");
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
                .await?;
            }
        }
        JOB_STARTED => {
            let s: JobStarted = message.body_as(JOB_STARTED)?;
            if !(1..=64).contains(&s.attempt) {
                return Err(refused(format!(
                    "job {}: attempt {} out of range",
                    s.job_id, s.attempt
                )));
            }
            let started = db
                .run_as::<_, ServiceError, _>(move |c| {
                    job_of(c, &s.job_id, &s.host, &sender)?;
                    match job_started(c, &s) {
                        Ok(()) => Ok(None),
                        // Ended already (cancelled, timed out, or done by an
                        // earlier attempt): the host is told to stop. Not a
                        // restore that succeeded: that is a start report
                        // overtaken by its own outcome, and a cancel would
                        // delete the restored file.
                        Err(DbError::Conflict(_)) => {
                            let now = jobs::get(c, &s.job_id)?;
                            let stop =
                                now.status != JobStatus::Succeeded || now.kind == JobKind::Backup;
                            Ok(stop.then_some(now))
                        }
                        Err(e) => Err(e.into()),
                    }
                })
                .await?;
            if let Some(job) = started {
                tracing::info!(job = %job.id, status = %job.status, "work reported on an ended job: cancelling it again");
                send_cancel(ekko, &job).await;
            }
        }
        JOB_PROGRESS => {
            let p: JobProgress = message.body_as(JOB_PROGRESS)?;
            if p.done_bytes > p.total_bytes.max(1).saturating_mul(2) || p.total_bytes > 1 << 60 {
                return Err(refused(format!("job {}: progress out of range", p.job_id)));
            }
            let percent = p
                .done_bytes
                .saturating_mul(100)
                .checked_div(p.total_bytes)
                .map_or(0, |v| v.min(99) as i32);
            let done = i64::try_from(p.done_bytes).unwrap_or(i64::MAX);
            db.run_as::<_, ServiceError, _>(move |c| {
                let job = match jobs::get(c, &p.job_id) {
                    Ok(j) => j,
                    Err(DbError::NotFound(_)) => {
                        return Err(refused(format!("no job {}", p.job_id)))
                    }
                    Err(e) => return Err(e.into()),
                };
                if let Sender::Host(h) = &sender {
                    if job.host.as_deref() != Some(h.as_str()) {
                        return Err(refused(format!(
                            "host {h} reports progress of job {} of another host",
                            p.job_id
                        )));
                    }
                }
                jobs::heartbeat(c, &p.job_id)?;
                match (&job.backup_id, &job.restore_id) {
                    (_, Some(r)) => restores::set_progress(c, r, percent, done)?,
                    (Some(b), None) => backups::set_progress(c, b, percent)?,
                    _ => {}
                }
                Ok(())
            })
            .await?;
        }
        BACKUP_FINISHED => {
            let f: BackupFinished = message.body_as(BACKUP_FINISHED)?;
            let f2 = f.clone();
            let job = db
                .run_as::<_, ServiceError, _>(move |c| check_finished(c, &f2, &sender))
                .await?;
            // The data must be in the store before the catalog says so.
            let committed = match missing_segment(ekko, &f).await? {
                Some(why) => Err(DbError::Conflict(why)),
                None => {
                    let f2 = f.clone();
                    db.run(move |c| job_finished(c, &f2)).await
                }
            };
            match committed {
                Ok(b) => {
                    tracing::info!(backup = %b.id, host = %f.host, kind = %f.kind, "backup committed");
                    count_committed(&b);
                }
                Err(DbError::Conflict(why)) => {
                    // The backup cannot be committed (cancelled, timed out,
                    // or another backup of a disk committed first): it
                    // fails, and its manifest must not outlive it. Which
                    // backup is the catalog's word (the job's), and only if
                    // this call ended it: a backup that committed before
                    // keeps its manifest whatever a report says.
                    tracing::warn!(backup = %f.backup_id, %why, "finished backup refused");
                    let jid = job.id.clone();
                    let ended = db.run(move |c| fail_job(c, &jid, &why)).await?;
                    if let (true, Some(b)) = (ended, &job.backup_id) {
                        ekko.remove_manifest(&job.project_id, b).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        RESTORE_FINISHED => {
            let f: RestoreFinished = message.body_as(RESTORE_FINISHED)?;
            let written = i64::try_from(f.bytes_written).unwrap_or(i64::MAX);
            let ended = db
                .run_as::<_, ServiceError, _>(move |c| {
                    let job = job_of(c, &f.job_id, &f.host, &sender)?;
                    let Some(r) = job.restore_id.clone() else {
                        return Err(refused(format!("job {} is no restore", f.job_id)));
                    };
                    let planned: PlannedRestore = plan_of(&job)?;
                    if planned.disk_size > 0 && f.bytes_written > planned.disk_size {
                        return Err(refused(format!(
                            "restore {r}: {} bytes written to a disk of {}",
                            f.bytes_written, planned.disk_size
                        )));
                    }
                    // An image is handed to its tenant only once Glance
                    // shows it complete: the host's word is recorded, and
                    // the check (off this queue) completes the restore.
                    if let Some(p) = images::of_restore(c, &r)? {
                        if job.status.is_active() {
                            c.transaction(|c| {
                                images::mark_finished(c, &p.image_id, written)?;
                                jobs::heartbeat(c, &job.id)
                            })?;
                            return Ok(Finished::CheckImage(r));
                        }
                    }
                    let done = c.transaction(|c| {
                        restores::transition(c, &r, RestoreStatus::Completed, None, Some(written))?;
                        jobs::finish(c, &f.job_id, JobStatus::Succeeded, None)
                    });
                    match done {
                        Ok(_) => Ok(Finished::Done),
                        Err(DbError::Conflict(_)) => match jobs::get(c, &f.job_id)?.status {
                            // Already recorded (a redelivery): nothing to do.
                            JobStatus::Succeeded => Ok(Finished::Done),
                            // Cancelled or timed out as it finished: the
                            // host removes the file when told (again) to stop.
                            _ => Ok(Finished::Ended(Box::new(job))),
                        },
                        Err(e) => Err(e.into()),
                    }
                })
                .await?;
            match ended {
                Finished::Done => {}
                Finished::Ended(job) => send_cancel(ekko, &job).await,
                Finished::CheckImage(r) => super::images::settle_in_background(ekko, Some(r)),
            }
        }
        JOB_FAILED => {
            let f: JobFailed = message.body_as(JOB_FAILED)?;
            let error = checks::error_text(&f.error);
            tracing::warn!(job = %f.job_id, host = %f.host, %error, "job failed");
            let (job, ended) = db
                .run_as::<_, ServiceError, _>(move |c| {
                    let job = job_of(c, &f.job_id, &f.host, &sender)?;
                    let ended = fail_job(c, &job.id, &error)?;
                    Ok::<_, ServiceError>((job, ended))
                })
                .await?;
            // A backup that never committed leaves no manifest behind. A
            // job that had already ended (a late or forged report) ends
            // nothing and removes nothing.
            if let (true, Some(b)) = (ended, &job.backup_id) {
                ekko.remove_manifest(&job.project_id, b).await;
            }
            // A failed restore's image goes.
            if let (true, Some(r)) = (ended, &job.restore_id) {
                super::images::settle_in_background(ekko, Some(r.clone()));
            }
        }
        EXPORT_READY => {
            super::exports::ready(ekko, message.body_as(EXPORT_READY)?, &sender).await?
        }
        EXPORT_ENDED => {
            super::exports::ended(ekko, message.body_as(EXPORT_ENDED)?, &sender).await?
        }
        other => {
            return Err(
                QueueError::BadMessage(format!("unknown status message kind {other:?}")).into(),
            )
        }
    }
    Ok(())
}

/// What a restore's finished report leads to.
enum Finished {
    Done,
    /// The restore had ended (cancelled, timed out): its host stops.
    Ended(Box<Job>),
    /// An image to check before the restore completes.
    CheckImage(String),
}
