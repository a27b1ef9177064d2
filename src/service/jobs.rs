//! A job's life on the controller side, shared by backups, restores, the
//! conductor's reports and housekeeping: send it to its host, end it once,
//! tell its host to stop.
//!
//! Exactly-once in effect over at-least-once delivery: every state change
//! is a conditional UPDATE (a job starts only if queued or running, ends
//! only once), so a redelivered or duplicated message changes nothing the
//! second time.

use std::time::Duration;

use chrono::Utc;
use diesel::Connection;

use crate::db::backups::{self, BackupStatus};
use crate::db::jobs::{self, Job};
use crate::db::{restores, DbConnection, DbError, DbResult};
use crate::queue::Envelope;
use crate::status::{JobStatus, RestoreStatus};
use crate::wire::{self, CancelJob, JobStarted, JOB_CANCEL};
use crate::Ekko;

use super::ServiceResult;

/// How long a job may run, from the configuration.
pub(crate) fn job_timeout(ekko: &Ekko) -> Duration {
    Duration::from_secs(ekko.config.backup.job_timeout.max(60))
}

/// When a job started now must be done by.
pub(crate) fn deadline_after(timeout: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::hours(6))
}

/// Publish a job to its host; if the bus refuses it, the job fails at once
/// (nothing would run it).
pub(crate) async fn send<T: serde::Serialize>(
    ekko: &Ekko,
    job: &Job,
    kind: &str,
    message: &T,
) -> ServiceResult<()> {
    let host = job.host.clone().unwrap_or_default();
    let sent = match Envelope::new(kind, message) {
        Ok(env) => {
            // A job with write keys must not reach a worker that predates
            // them (it would see no key and write plaintext).
            let env = if env.body.get("write_keys").is_some_and(|w| !w.is_null()) {
                env.requiring(crate::queue::WRITE_KEYS_VERSION)
            } else {
                env
            };
            ekko.queue
                .publish(&wire::host_routing_key(&host), &env)
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        let (jid, why) = (
            job.id.clone(),
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

/// End a job and its backup or restore as failed (each only if not ended
/// yet); true when this call ended the job.
pub fn fail_job(c: &mut DbConnection, job_id: &str, why: &str) -> DbResult<bool> {
    c.transaction(|c| {
        let job = jobs::get(c, job_id)?;
        let ended = jobs::finish(c, job_id, JobStatus::Failed, Some(why))?;
        let subject = match (&job.backup_id, &job.restore_id) {
            (_, Some(r)) => restores::transition(c, r, RestoreStatus::Error, Some(why), None),
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
            return restores::transition(c, r, RestoreStatus::Running, None, None);
        }
        let Some(b) = &job.backup_id else {
            return Ok(());
        };
        match backups::transition(c, b, BackupStatus::Running, None) {
            // A restart after a redelivery: it is running already.
            Ok(_) => Ok(()),
            Err(DbError::Conflict(_)) if backups::get(c, b)?.status == BackupStatus::Running => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
}

/// End a job for a cancel; `Conflict` (the caller's transaction rolls back)
/// when its outcome was recorded first.
pub(crate) fn end_for_cancel(c: &mut DbConnection, job: &Job, why: &str) -> DbResult<()> {
    if fail_job(c, &job.id, why)? {
        return Ok(());
    }
    Err(DbError::Conflict(format!(
        "job {} ended before the cancel; nothing to cancel",
        job.id
    )))
}

/// Tell a job's host to stop it. Best effort: the job has already ended
/// in the catalog, so the host's outcome will be refused whatever it is.
pub(crate) async fn send_cancel(ekko: &Ekko, job: &Job) {
    let host = job.host.clone().unwrap_or_default();
    let cancel = CancelJob {
        job_id: job.id.clone(),
    };
    if let Err(e) = send_control(ekko, &host, JOB_CANCEL, &cancel).await {
        tracing::warn!(job = %job.id, %host, error = %e, "cancel not sent to the host");
    }
}

/// Publish a message of `kind` on `host`'s control queue (cancels, export
/// starts and stops: never behind the host's running jobs).
pub(crate) async fn send_control<T: serde::Serialize>(
    ekko: &Ekko,
    host: &str,
    kind: &str,
    body: &T,
) -> Result<(), crate::queue::QueueError> {
    let env = Envelope::new(kind, body)?;
    ekko.queue
        .publish(&wire::control_routing_key(host), &env)
        .await
}
