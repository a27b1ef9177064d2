//! The catalog side of distributed operation (as nova-conductor is for
//! nova-compute): compute hosts hold no database credentials, so the
//! conductor plans their jobs from the catalog and records what they
//! report. It runs inside ekko-api (every ekko-api process consumes the
//! shared `ekko.status` queue; the broker spreads messages over them).
//!
//! Exactly-once in effect over at-least-once delivery: every state change
//! is a conditional UPDATE (a job starts only if queued or running, ends
//! only once; a backup commits only while running and only on the disk
//! heads it was planned on), so a redelivered or duplicated message
//! changes nothing the second time.

use std::time::Duration;

use chrono::Utc;
use diesel::Connection;

use crate::db::backups::{self, Backup, BackupStatus};
use crate::db::jobs::{self, Job};
use crate::db::restores::{self, Restore};
use crate::db::{hosts, instances, quotas, segments, DbConnection, DbError, DbResult};
use crate::queue::{Envelope, QueueError};
use crate::wire::{
    BackupFinished, BackupJob, BadRecord, CancelJob, HostInventory, JobDisk, JobFailed,
    JobProgress, JobStarted, Relocation, RestoreFinished, RestoreJob, BACKUP_FINISHED, BACKUP_RUN,
    HOST_INVENTORY, JOB_CANCEL, JOB_FAILED, JOB_PROGRESS, JOB_STARTED, RESTORE_FINISHED,
    RESTORE_RUN,
};
use crate::wire::{Heartbeat, HEARTBEAT_KIND};
use crate::Ekko;

/// A backup someone (a tenant, a policy, an operator) asks for.
#[derive(Debug, Clone)]
pub struct NewBackup {
    pub instance_id: String,
    pub user_id: String,
    pub name: String,
    pub description: String,
    /// `auto` or `full`.
    pub mode: String,
    /// A JSON object.
    pub metadata: String,
    pub policy_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConductorError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Keys(#[from] crate::keyring::KeyringError),
    /// The request names something that cannot work (a bad request).
    #[error("{0}")]
    Invalid(String),
}

/// What planning needs from the configuration.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub quota: crate::config::QuotaOptions,
    pub dedup_heads: usize,
    pub job_timeout: Duration,
}

impl PlanOptions {
    pub fn of(ekko: &Ekko) -> PlanOptions {
        PlanOptions {
            quota: ekko.config.quota.clone(),
            dedup_heads: ekko.config.backup.dedup_heads as usize,
            job_timeout: Duration::from_secs(ekko.config.backup.job_timeout.max(60)),
        }
    }
}

/// When a job started now must be done by.
fn deadline_after(timeout: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::hours(6))
}

/// In one transaction: check quota and that the instance has no backup in
/// flight, record a queued backup and its job, and build the job message
/// from the catalog (each disk's head, the project's dedup sources).
pub fn plan_backup(
    c: &mut DbConnection,
    opts: &PlanOptions,
    new: &NewBackup,
    keys: &crate::keyring::JobKeys,
) -> DbResult<(Backup, Job, BackupJob)> {
    c.transaction(|c| {
        // Lock the instance row first: concurrent plans for one instance
        // run one after the other, so the "one active backup" check below
        // cannot be raced.
        instances::touch(c, &new.instance_id)?;
        let instance = instances::get(c, &new.instance_id)?;
        // An encrypted project's job must carry its keys: a plan made
        // without them would have its host write plaintext.
        if keys == &crate::keyring::JobKeys::default()
            && crate::db::keys::get(c, &instance.project_id)?.is_some()
        {
            return Err(DbError::Conflict(format!(
                "project {} is encrypted and its job carries no key",
                instance.project_id
            )));
        }
        if let Some(why) = quotas::check_one_more(c, &opts.quota, &instance.project_id)? {
            return Err(DbError::LimitExceeded(why));
        }
        if let Some(active) = backups::active_for_instance(c, &instance.id)? {
            return Err(DbError::Conflict(format!(
                "instance {} already has backup {} {}; try again when it finishes",
                instance.id, active.id, active.status
            )));
        }
        let disks = instances::disks_of(c, &instance.id)?;
        if disks.is_empty() {
            return Err(DbError::Conflict(format!(
                "instance {} has no disk its host reported",
                instance.id
            )));
        }
        let mut backup = Backup::queued(
            &instance.project_id,
            &new.user_id,
            &instance.id,
            &new.name,
            &new.mode,
        );
        backup.description = new.description.clone();
        backup.metadata = new.metadata.clone();
        backup.policy_id = new.policy_id.clone();
        backups::insert(c, &backup)?;

        // Scrub found damage in the project: a disk it flagged gets a map
        // built from scratch (its head's pages may be the damaged copies);
        // the head still serves dedup, minus the damaged records.
        let bad_records = BadRecord::from_rows(&segments::bad_records(c, &instance.project_id)?);
        let mut job_disks = Vec::new();
        let mut dedup_sources = Vec::new();
        for d in &disks {
            let head = backups::head_record(c, &d.id)?
                .as_ref()
                .and_then(crate::service::convert::record_ref);
            let rebuild_map = d.needs_full_read && !bad_records.is_empty();
            if rebuild_map {
                dedup_sources.extend(head.clone());
            }
            job_disks.push(JobDisk {
                disk_id: d.id.clone(),
                device: d.device.clone(),
                node_name: d.node_name.clone(),
                base_seq: d.head_seq,
                expected_bitmap: head.as_ref().and(d.bitmap_name.clone()),
                head: if rebuild_map { None } else { head },
                needs_full_read: d.needs_full_read,
            });
        }
        let own: Vec<String> = disks.iter().map(|d| d.id.clone()).collect();
        dedup_sources.extend(
            backups::project_heads(c, &instance.project_id, &own, opts.dedup_heads)?
                .iter()
                .filter_map(crate::service::convert::record_ref),
        );
        let deadline = deadline_after(opts.job_timeout);
        let mut job = Job::queued(BACKUP_RUN, &instance.project_id);
        job.backup_id = Some(backup.id.clone());
        job.host = Some(instance.host.clone());
        job.deadline_at = Some(deadline.naive_utc());
        let message = BackupJob {
            job_id: job.id.clone(),
            backup_id: backup.id.clone(),
            project_id: instance.project_id.clone(),
            user_id: new.user_id.clone(),
            instance_id: instance.id.clone(),
            instance_name: instance.name.clone(),
            name: backup.name.clone(),
            description: backup.description.clone(),
            created_at: backup.created_at.and_utc(),
            full: new.mode == "full",
            disks: job_disks,
            dedup_sources,
            relocations: Relocation::from_rows(&segments::relocations(c, &instance.project_id)?),
            bad_records,
            project_key: keys.for_backup().0,
            write_keys: keys.for_backup().1,
            deadline,
        };
        job.payload = serde_json::to_string(&message)
            .map_err(|e| DbError::Conflict(format!("job {}: {e}", job.id)))?;
        jobs::insert(c, &job)?;
        Ok((backup, job, message))
    })
}

/// The wrapped key a job of an encrypted project carries.
fn project_key(
    c: &mut DbConnection,
    project_id: &str,
) -> DbResult<Option<crate::crypto::WrappedKey>> {
    crate::db::keys::get(c, project_id)?
        .map(|row| row.wrapped_key())
        .transpose()
}

/// Plan a backup and send its job to the instance's host. If the bus
/// refuses the job, the backup fails at once (nothing would run it).
pub async fn submit_backup(ekko: &Ekko, new: NewBackup) -> Result<Backup, ConductorError> {
    let opts = PlanOptions::of(ekko);
    let db = ekko.db()?.clone();
    // An encrypted project's key exists (and is in the store) before any
    // job can seal data with it; the plan puts it (or, in public-key mode,
    // the write keys) in the job.
    let id = new.instance_id.clone();
    let keys = match db.run(move |c| instances::get(c, &id)).await {
        Ok(instance) => {
            ekko.keyring
                .job_keys(&instance.project_id, &instance.host)
                .await?
        }
        // An unknown instance: the plan says so. Any other error stops
        // here: a plan without keys would write an encrypted project's
        // data in the clear.
        Err(DbError::NotFound(_)) => Default::default(),
        Err(e) => return Err(e.into()),
    };
    let (backup, job, message) = db.run(move |c| plan_backup(c, &opts, &new, &keys)).await?;
    let host = job.host.clone().unwrap_or_default();
    publish_or_fail(
        ekko,
        &job.id,
        BACKUP_RUN,
        &crate::wire::host_routing_key(&host),
        &message,
    )
    .await?;
    tracing::info!(backup = %backup.id, instance = %backup.instance_id, %host, "backup queued");
    Ok(backup)
}

/// End a job and its backup or restore as failed (each only if not ended
/// yet); true when this call ended the job.
pub fn fail_job(c: &mut DbConnection, job_id: &str, why: &str) -> DbResult<bool> {
    c.transaction(|c| {
        let job = jobs::get(c, job_id)?;
        let ended = jobs::finish(c, job_id, "failed", Some(why))?;
        let subject = match (&job.backup_id, &job.restore_id) {
            (_, Some(r)) => restores::transition(c, r, "error", Some(why), None),
            (Some(b), None) => {
                backups::transition(c, b, BackupStatus::Error, Some(why)).map(|_| ())
            }
            (None, None) => Ok(()),
        };
        match subject {
            Ok(()) | Err(DbError::Conflict(_)) => Ok(ended),
            Err(e) => Err(e),
        }
    })
}

/// A worker started (or restarted) a job: job and subject become running.
/// `Conflict` when the job already ended (cancelled, timed out).
pub fn job_started(c: &mut DbConnection, s: &JobStarted) -> DbResult<()> {
    c.transaction(|c| {
        let job = jobs::start(c, &s.job_id, &s.host)?;
        if let Some(r) = &job.restore_id {
            return restores::transition(c, r, "running", None, None);
        }
        let Some(b) = &job.backup_id else {
            return Ok(());
        };
        match backups::transition(c, b, BackupStatus::Running, None) {
            // A restart after a redelivery: it is running already.
            Ok(_) => Ok(()),
            Err(DbError::Conflict(_))
                if backups::get(c, b)?.status() == Some(BackupStatus::Running) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
}

/// Commit a finished backup and end its job. A duplicate (the backup is
/// already available from this very job) is a no-op.
pub fn job_finished(c: &mut DbConnection, f: &BackupFinished) -> DbResult<Backup> {
    c.transaction(|c| {
        let current = backups::get(c, &f.backup_id)?;
        if current.status() == Some(BackupStatus::Available) {
            let job = jobs::get(c, &f.job_id)?;
            if job.status == "succeeded" {
                return Ok(current);
            }
        }
        // The worker's start report may have been lost (a broker restart):
        // the outcome says it ran.
        if current.status() == Some(BackupStatus::Queued) {
            backups::transition(c, &f.backup_id, BackupStatus::Running, None)?;
        }
        let disks: Vec<_> = f
            .disks
            .iter()
            .map(crate::service::convert::disk_commit)
            .collect();
        let b = backups::commit(c, &f.backup_id, &f.kind, &f.consistency, &disks)?;
        jobs::finish(c, &f.job_id, "succeeded", None)?;
        Ok(b)
    })
}

/// Handle one status message. Unknown kinds and unreadable bodies are
/// `BadMessage` (the caller rejects them); a `Conflict` is a verdict (the
/// message is handled); anything else is retried.
pub async fn record(ekko: &Ekko, message: &Envelope) -> Result<(), ConductorError> {
    let db = ekko.db()?.clone();
    match message.kind.as_str() {
        HEARTBEAT_KIND => {
            let hb: Heartbeat = message.body_as(HEARTBEAT_KIND)?;
            let capacity = i32::try_from(hb.capacity).unwrap_or(i32::MAX);
            db.run(move |c| crate::db::hosts::heartbeat(c, &hb.host, &hb.version, capacity))
                .await?;
        }
        HOST_INVENTORY => {
            let inv: HostInventory = message.body_as(HOST_INVENTORY)?;
            db.run(move |c| {
                for i in &inv.instances {
                    let reports: Vec<_> = i.disks.iter().map(crate::service::convert::disk_report).collect();
                    match instances::upsert(c, &i.id, &i.project_id, &inv.host, &i.name, &reports) {
                        Ok(_) => {}
                        Err(DbError::Conflict(why)) => {
                            tracing::error!(host = %inv.host, instance = %i.id, %why, "inventory entry refused");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
            .await?;
        }
        JOB_STARTED => {
            let s: JobStarted = message.body_as(JOB_STARTED)?;
            let (job_id, host) = (s.job_id.clone(), s.host.clone());
            match db.run(move |c| job_started(c, &s)).await {
                Ok(()) | Err(DbError::NotFound(_)) => {}
                Err(DbError::Conflict(_)) => resend_cancel(ekko, &job_id, &host).await,
                Err(e) => return Err(e.into()),
            }
        }
        JOB_PROGRESS => {
            let p: JobProgress = message.body_as(JOB_PROGRESS)?;
            let percent = p
                .done_bytes
                .saturating_mul(100)
                .checked_div(p.total_bytes)
                .map_or(0, |v| v.min(99) as i32);
            let done = i64::try_from(p.done_bytes).unwrap_or(i64::MAX);
            match db
                .run(move |c| {
                    jobs::heartbeat(c, &p.job_id)?;
                    let job = jobs::get(c, &p.job_id)?;
                    match (&job.backup_id, &job.restore_id) {
                        (_, Some(r)) => restores::set_progress(c, r, percent, done),
                        (Some(b), None) => backups::set_progress(c, b, percent),
                        _ => Ok(()),
                    }
                })
                .await
            {
                Ok(()) | Err(DbError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        BACKUP_FINISHED => {
            let f: BackupFinished = message.body_as(BACKUP_FINISHED)?;
            let f2 = f.clone();
            match db.run(move |c| job_finished(c, &f2)).await {
                Ok(b) => {
                    tracing::info!(backup = %b.id, host = %f.host, kind = %f.kind, "backup committed")
                }
                Err(DbError::Conflict(why)) => {
                    // The backup cannot be committed (cancelled, timed out,
                    // or another backup of a disk committed first): it
                    // fails, and its manifest must not outlive it.
                    tracing::warn!(backup = %f.backup_id, %why, "finished backup refused");
                    let (jid, w) = (f.job_id.clone(), why.clone());
                    db.run(move |c| fail_job(c, &jid, &w)).await?;
                    crate::operator::remove_manifest(ekko, &f.project_id, &f.backup_id).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        RESTORE_FINISHED => {
            let f: RestoreFinished = message.body_as(RESTORE_FINISHED)?;
            let (job_id, host) = (f.job_id.clone(), f.host.clone());
            let written = i64::try_from(f.bytes_written).unwrap_or(i64::MAX);
            let outcome = db
                .run(move |c| {
                    c.transaction(|c| {
                        let job = jobs::get(c, &f.job_id)?;
                        let Some(r) = &job.restore_id else {
                            return Err(DbError::Conflict(format!(
                                "job {} is no restore",
                                f.job_id
                            )));
                        };
                        restores::transition(c, r, "completed", None, Some(written))?;
                        jobs::finish(c, &f.job_id, "succeeded", None)?;
                        Ok(())
                    })
                })
                .await;
            match outcome {
                Ok(()) | Err(DbError::NotFound(_)) => {}
                // Cancelled or timed out as it finished: the host removes
                // the file when told (again) to stop.
                Err(DbError::Conflict(_)) => resend_cancel(ekko, &job_id, &host).await,
                Err(e) => return Err(e.into()),
            }
        }
        JOB_FAILED => {
            let f: JobFailed = message.body_as(JOB_FAILED)?;
            tracing::warn!(job = %f.job_id, host = %f.host, error = %f.error, "job failed");
            let (jid, w) = (f.job_id.clone(), f.error.clone());
            let job = match db
                .run(move |c| {
                    fail_job(c, &jid, &w)?;
                    jobs::get(c, &jid)
                })
                .await
            {
                Ok(job) => job,
                Err(DbError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if let (true, Some(b)) = (f.manifest_written, &job.backup_id) {
                crate::operator::remove_manifest(ekko, &job.project_id, b).await;
            }
        }
        other => {
            return Err(
                QueueError::BadMessage(format!("unknown status message kind {other:?}")).into(),
            )
        }
    }
    Ok(())
}

/// A restore someone asks for: one disk of an available backup, written to
/// `path` under `[backup] restore_dir` on `host` (the instance's host when
/// `None`).
#[derive(Debug, Clone)]
pub struct NewRestore {
    pub backup_id: String,
    pub user_id: String,
    pub device: Option<String>,
    pub host: Option<String>,
    pub path: String,
    pub format: String,
}

/// Record a queued restore and its job, and send the job to its host.
pub async fn submit_restore(ekko: &Ekko, new: NewRestore) -> Result<Restore, ConductorError> {
    let timeout = PlanOptions::of(ekko).job_timeout;
    let db = ekko.db()?.clone();
    let mut new = new;
    let id = new.backup_id.clone();
    // The backup's project and its instance's host (a missing backup is
    // reported by the transaction below).
    let found = db
        .run(move |c| {
            let b = backups::get(c, &id)?;
            let host = instances::get(c, &b.instance_id).map(|i| i.host).ok();
            Ok((b.project_id, host))
        })
        .await;
    if let Ok((project, instance_host)) = found {
        // A public-key project's backups are read where the master key is.
        if new.host.is_none() {
            new.host = ekko.keyring.default_restore_host(&project).await?;
        }
        // A host no ekko-backup ever reported from would leave the
        // restore queued until its deadline.
        if let Some(host) = new.host.clone().or(instance_host) {
            let name = host.clone();
            if !db.run(move |c| hosts::exists(c, &name)).await? {
                return Err(ConductorError::Invalid(format!(
                    "restore host {host} runs no ekko-backup known to Ekko"
                )));
            }
        }
    }
    let (restore, job, message) = db
        .run(move |c| {
            c.transaction(|c| {
                let b = backups::get(c, &new.backup_id)?;
                if b.status() != Some(BackupStatus::Available) {
                    return Err(DbError::Conflict(format!(
                        "backup {} is {}; only an available backup can be restored",
                        b.id, b.status
                    )));
                }
                let records = backups::disks_of(c, &b.id)?;
                let disks = instances::disks_of(c, &b.instance_id)?;
                let record = match &new.device {
                    Some(dev) => {
                        let disk = disks.iter().find(|d| &d.device == dev).ok_or_else(|| {
                            DbError::Conflict(format!("backup {} has no disk {dev}", b.id))
                        })?;
                        records.iter().find(|r| r.disk_id == disk.id)
                    }
                    None if records.len() == 1 => records.first(),
                    None => {
                        return Err(DbError::Conflict(format!(
                            "backup {} has {} disks: name one with \"disk\"",
                            b.id,
                            records.len()
                        )))
                    }
                }
                .ok_or_else(|| {
                    DbError::Conflict(format!("backup {} has no such disk record", b.id))
                })?;
                let device = disks
                    .iter()
                    .find(|d| d.id == record.disk_id)
                    .map(|d| d.device.clone())
                    .unwrap_or_default();
                let host = match &new.host {
                    Some(h) => h.clone(),
                    None => instances::get(c, &b.instance_id)?.host,
                };
                let target = serde_json::json!({
                    "type": "file", "host": host, "path": new.path, "device": device,
                })
                .to_string();
                let r = Restore::queued(&b.project_id, &new.user_id, &b.id, &target, &new.format);
                restores::insert(c, &r)?;
                let deadline = deadline_after(timeout);
                let mut job = Job::queued(RESTORE_RUN, &b.project_id);
                job.restore_id = Some(r.id.clone());
                job.host = Some(host);
                job.deadline_at = Some(deadline.naive_utc());
                let message = RestoreJob {
                    job_id: job.id.clone(),
                    restore_id: r.id.clone(),
                    backup_id: b.id.clone(),
                    project_id: b.project_id.clone(),
                    record: crate::service::convert::record_ref(record).ok_or_else(|| {
                        DbError::Conflict(format!("backup {} has a corrupt record", b.id))
                    })?,
                    path: new.path.clone(),
                    format: new.format.clone(),
                    relocations: Relocation::from_rows(&segments::relocations(c, &b.project_id)?),
                    project_key: project_key(c, &b.project_id)?,
                    deadline,
                };
                job.payload = serde_json::to_string(&message)
                    .map_err(|e| DbError::Conflict(format!("job {}: {e}", job.id)))?;
                jobs::insert(c, &job)?;
                Ok((r, job, message))
            })
        })
        .await?;
    let host = job.host.clone().unwrap_or_default();
    publish_or_fail(
        ekko,
        &job.id,
        RESTORE_RUN,
        &crate::wire::host_routing_key(&host),
        &message,
    )
    .await?;
    tracing::info!(restore = %restore.id, backup = %restore.backup_id, %host, "restore queued");
    Ok(restore)
}

/// Publish a job; if the bus refuses it, the job fails at once (nothing
/// would run it).
async fn publish_or_fail<T: serde::Serialize>(
    ekko: &Ekko,
    job_id: &str,
    kind: &str,
    key: &str,
    message: &T,
) -> Result<(), ConductorError> {
    let sent = match Envelope::new(kind, message) {
        Ok(env) => {
            // A job with write keys must not reach a worker that predates
            // them (it would see no key and write plaintext).
            let env = if env.body.get("write_keys").is_some_and(|w| !w.is_null()) {
                env.requiring(crate::queue::WRITE_KEYS_VERSION)
            } else {
                env
            };
            ekko.queue.publish(key, &env).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        let (jid, why) = (
            job_id.to_string(),
            format!("the message bus refused the job: {e}"),
        );
        let _ = ekko
            .db()?
            .run(move |c| fail_job(c, &jid, &why).map(|_| ()))
            .await;
        return Err(e.into());
    }
    Ok(())
}

/// Cancel a queued or running backup: it fails at once with `why`, and its
/// host is told to stop (or not to start) the job. A backup whose outcome
/// arrives later is refused, so the cancel holds whatever the host does.
pub async fn cancel_backup(
    ekko: &Ekko,
    backup_id: &str,
    why: &str,
) -> Result<Backup, ConductorError> {
    let (bid, w) = (backup_id.to_string(), why.to_string());
    let (backup, job) = ekko
        .db()?
        .run(move |c| {
            c.transaction(|c| {
                let b = backups::get(c, &bid)?;
                if !matches!(
                    b.status(),
                    Some(BackupStatus::Queued | BackupStatus::Running)
                ) {
                    return Err(DbError::Conflict(format!(
                        "backup {bid} is {}; only a queued or running backup can be cancelled",
                        b.status
                    )));
                }
                let job = jobs::active_for(c, jobs::Subject::Backup(&bid))?;
                match &job {
                    Some(j) => end_for_cancel(c, j, &w)?,
                    None => {
                        backups::transition(c, &bid, BackupStatus::Error, Some(&w))?;
                    }
                }
                Ok((backups::get(c, &bid)?, job))
            })
        })
        .await?;
    if let Some(job) = job {
        send_cancel(ekko, &job).await;
    }
    tracing::info!(backup = %backup.id, "backup cancelled");
    Ok(backup)
}

/// Stop a queued or running restore: it ends in `error` with `why` at
/// once, and its host is told to stop (a host that is down drops the job
/// when it comes back; the partial target file is removed there).
/// `Conflict` when the restore has already ended.
pub async fn cancel_restore(
    ekko: &Ekko,
    restore_id: &str,
    why: &str,
) -> Result<Restore, ConductorError> {
    let (rid, w) = (restore_id.to_string(), why.to_string());
    let (restore, job) = ekko
        .db()?
        .run(move |c| {
            c.transaction(|c| {
                let r = restores::get(c, &rid)?;
                if r.status != "queued" && r.status != "running" {
                    return Err(DbError::Conflict(format!(
                        "restore {rid} is {}; only a queued or running restore can be cancelled",
                        r.status
                    )));
                }
                let job = jobs::active_for(c, jobs::Subject::Restore(&rid))?;
                match &job {
                    Some(j) => end_for_cancel(c, j, &w)?,
                    None => restores::transition(c, &rid, "error", Some(&w), None)?,
                }
                Ok((restores::get(c, &rid)?, job))
            })
        })
        .await?;
    if let Some(job) = job {
        send_cancel(ekko, &job).await;
    }
    tracing::info!(restore = %restore.id, "restore cancelled");
    Ok(restore)
}

/// End a job for a cancel; `Conflict` (the caller's transaction rolls back)
/// when its outcome was recorded first.
fn end_for_cancel(c: &mut DbConnection, job: &Job, why: &str) -> DbResult<()> {
    if fail_job(c, &job.id, why)? {
        return Ok(());
    }
    Err(DbError::Conflict(format!(
        "job {} ended before the cancel; nothing to cancel",
        job.id
    )))
}

/// A host reports work on a job the catalog has already failed (cancelled
/// or timed out, the cancel lost or crossed): tell it again to stop, so it
/// stops the work and removes a restore's file. A job that succeeded is
/// left alone (a duplicate report).
async fn resend_cancel(ekko: &Ekko, job_id: &str, host: &str) {
    let Ok(db) = ekko.db() else {
        return;
    };
    let id = job_id.to_string();
    if let Ok(mut job) = db.run(move |c| jobs::get(c, &id)).await {
        if job.status == "failed" {
            tracing::info!(
                job = job_id,
                host,
                "work reported on a failed job: cancelling it again"
            );
            job.host = Some(host.to_string());
            send_cancel(ekko, &job).await;
        }
    }
}

/// Tell a job's host to stop it. Best effort: the job has already ended
/// in the catalog, so the host's outcome will be refused whatever it is.
async fn send_cancel(ekko: &Ekko, job: &Job) {
    let host = job.host.clone().unwrap_or_default();
    let cancel = CancelJob {
        job_id: job.id.clone(),
    };
    let sent = match Envelope::new(JOB_CANCEL, &cancel) {
        Ok(env) => {
            ekko.queue
                .publish(&crate::wire::control_routing_key(&host), &env)
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::warn!(job = %job.id, %host, error = %e, "cancel not sent to the host");
    }
}

/// Fail the jobs whose worker stopped reporting for `stall_timeout`, and
/// those not even started by their deadline (their host is gone). Several
/// conductors may run this at once: each job ends once.
pub async fn reap_stalled(ekko: &Ekko, stall_timeout: Duration) -> Result<usize, ConductorError> {
    let stale_before = (Utc::now()
        - chrono::Duration::from_std(stall_timeout).unwrap_or(chrono::Duration::minutes(5)))
    .naive_utc();
    let failed = ekko
        .db()?
        .run(move |c| {
            let mut n = 0;
            for job in jobs::stalled(c, stale_before)? {
                let why = match job.status.as_str() {
                    "queued" => format!(
                        "host {} did not start the job before its deadline",
                        job.host.as_deref().unwrap_or("?")
                    ),
                    _ => format!(
                        "host {} stopped reporting progress (worker or host down)",
                        job.host.as_deref().unwrap_or("?")
                    ),
                };
                if fail_job(c, &job.id, &why)? {
                    tracing::warn!(job = %job.id, %why, "job failed by the conductor");
                    n += 1;
                }
            }
            Ok(n)
        })
        .await?;
    Ok(failed)
}

/// Start the backups of every policy whose run is due: each run is claimed
/// in the catalog first (one row per policy and instant), so several
/// conductors never start it twice. An instance whose previous backup is
/// still queued or running is skipped for this run. Missed runs (all
/// conductors down) are caught up once, not once per missed instant.
pub async fn run_due_policies(ekko: &Ekko) -> Result<usize, ConductorError> {
    use crate::db::policies;
    let db = ekko.db()?.clone();
    let now = Utc::now();
    let due = db.run(move |c| policies::due(c, now.naive_utc())).await?;
    let mut started = 0;
    for p in due {
        let schedule = p
            .schedule
            .as_deref()
            .map(|s| crate::schedule::Schedule::new(s, &p.timezone));
        let schedule = match schedule {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::error!(policy = %p.id, error = %e, "policy schedule unusable; disabled until edited");
                let id = p.id.clone();
                db.run(move |c| policies::set_next_run(c, &id, p.next_run_at, None))
                    .await?;
                continue;
            }
            None => continue,
        };
        let Some(at) = p.next_run_at.map(|n| n.and_utc()) else {
            // New or edited: compute the first run.
            let next = schedule.next_after(now).map(|t| t.naive_utc());
            let id = p.id.clone();
            db.run(move |c| policies::set_next_run(c, &id, None, next))
                .await?;
            continue;
        };
        let next = schedule.next_after(now.max(at)).map(|t| t.naive_utc());
        let (id, at_naive) = (p.id.clone(), at.naive_utc());
        let claimed = db
            .run(move |c| {
                c.transaction(|c| {
                    if !policies::claim_run(c, &id, at_naive)? {
                        return Ok(None);
                    }
                    policies::set_next_run(c, &id, Some(at_naive), next)?;
                    Ok(Some(policies::instances_of(c, &id)?))
                })
            })
            .await?;
        let Some(instances) = claimed else { continue };
        tracing::info!(policy = %p.id, scheduled_for = %at, instances = instances.len(), "policy run");
        for instance_id in instances {
            let new = NewBackup {
                instance_id: instance_id.clone(),
                user_id: "scheduler".into(),
                name: format!("{} {}", p.name, at.format("%Y-%m-%dT%H:%MZ")),
                description: format!("scheduled by policy {}", p.id),
                mode: "auto".into(),
                metadata: "{}".into(),
                policy_id: Some(p.id.clone()),
            };
            match submit_backup(ekko, new).await {
                Ok(_) => started += 1,
                Err(ConductorError::Db(DbError::Conflict(why))) => {
                    tracing::info!(policy = %p.id, instance = %instance_id, %why, "scheduled backup skipped")
                }
                Err(e) => {
                    tracing::warn!(policy = %p.id, instance = %instance_id, error = %e, "scheduled backup not started")
                }
            }
        }
    }
    Ok(started)
}
