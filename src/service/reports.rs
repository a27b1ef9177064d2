//! What the conductor records of the compute hosts' reports (as
//! nova-conductor does for nova-compute): compute hosts hold no database
//! credentials, so everything they learn or do reaches the catalog here.
//!
//! A backup commits only while running and only on the disk heads it was
//! planned on; a job starts only if queued or running and ends only once
//! (see [`super::jobs`]), so a redelivered or duplicated report changes
//! nothing the second time.

use diesel::Connection;

use crate::db::backups::{self, Backup, BackupStatus};
use crate::db::{instances, jobs, restores, DbConnection, DbError, DbResult};
use crate::queue::{Envelope, QueueError};
use crate::status::{JobStatus, RestoreStatus};
use crate::wire::{
    BackupFinished, Heartbeat, HostInventory, JobFailed, JobProgress, JobStarted, RestoreFinished,
    BACKUP_FINISHED, HEARTBEAT_KIND, HOST_INVENTORY, JOB_FAILED, JOB_PROGRESS, JOB_STARTED,
    RESTORE_FINISHED,
};
use crate::Ekko;

use super::convert::{disk_commit, disk_report};
use super::jobs::{fail_job, job_started, resend_cancel};
use super::ServiceResult;

/// Commit a finished backup and end its job. A duplicate (the backup is
/// already available from this very job) is a no-op.
pub fn job_finished(c: &mut DbConnection, f: &BackupFinished) -> DbResult<Backup> {
    c.transaction(|c| {
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
        let b = backups::commit(c, &f.backup_id, &f.kind, &f.consistency, &disks)?;
        jobs::finish(c, &f.job_id, JobStatus::Succeeded, None)?;
        Ok(b)
    })
}

/// Handle one status message. Unknown kinds and unreadable bodies are
/// `BadMessage` (the caller rejects them); a `Conflict` is a verdict (the
/// message is handled); anything else is retried.
pub async fn record(ekko: &Ekko, message: &Envelope) -> ServiceResult<()> {
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
                    let reports: Vec<_> = i.disks.iter().map(disk_report).collect();
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
                    ekko.remove_manifest(&f.project_id, &f.backup_id).await;
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
                        restores::transition(c, r, RestoreStatus::Completed, None, Some(written))?;
                        jobs::finish(c, &f.job_id, JobStatus::Succeeded, None)?;
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
                ekko.remove_manifest(&job.project_id, b).await;
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
