//! Restores: one disk of an available backup, written to a target by a
//! compute host. The target today is a file under the host's `[backup]
//! restore_dir` (an operator action by default).

use diesel::Connection;
use serde::Deserialize;

use crate::db::backups::{self, BackupStatus};
use crate::db::jobs::{self, Job};
pub use crate::db::restores::Restore;
use crate::db::restores::{self};
use crate::db::{hosts, instances, keys, segments, DbError};
use crate::status::{ImageFormat, JobKind, RestoreStatus};
use crate::wire::{Relocation, RestoreJob, RESTORE_RUN};
use crate::Ekko;

use super::convert::record_ref;
use super::jobs::{deadline_after, end_for_cancel, job_timeout, send, send_cancel};
use super::reports::PlannedRestore;
use super::{find, marker_error, Caller, Page, ServiceError, ServiceResult};

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
    pub format: ImageFormat,
}

/// `POST /v1/restores`: what a caller may ask for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRestore {
    pub backup_id: String,
    /// The disk (device name) to restore; optional for one-disk backups.
    #[serde(default)]
    pub disk: Option<String>,
    pub target: Target,
    /// `raw` (default) or `qcow2`.
    #[serde(default)]
    pub format: Option<String>,
}

/// Where a restore writes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum Target {
    /// A file under the host's restore directory.
    File {
        path: String,
        #[serde(default)]
        host: Option<String>,
    },
}

/// A caller asks for a restore of one of the backups they may see.
pub async fn create(ekko: &Ekko, caller: &Caller<'_>, r: CreateRestore) -> ServiceResult<Restore> {
    let format = match r.format.as_deref() {
        None => ImageFormat::Raw,
        Some(f) => ImageFormat::parse(f).ok_or_else(|| {
            ServiceError::Invalid(format!("format must be raw or qcow2, not {f:?}"))
        })?,
    };
    let Target::File { path, host } = r.target;
    let plain = !path.is_empty()
        && path.len() <= 255
        && std::path::Path::new(&path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(ServiceError::Invalid(
            "target path must be a relative path (under the host's restore_dir) without '..'"
                .into(),
        ));
    }
    // The backup is named in the body: one the caller cannot see is a bad
    // request, as a missing one.
    let id = r.backup_id;
    let b = super::backups::visible(ekko, caller, &id, "ekko:backup:get")
        .await
        .map_err(|e| e.named_in_body("backup", &id))?;
    caller.authorize("ekko:restore:create", &b.project_id, None)?;
    let new = NewRestore {
        backup_id: b.id.clone(),
        user_id: caller.user_id().to_string(),
        device: r.disk,
        host,
        path,
        format,
    };
    submit(ekko, new).await
}

/// Record a queued restore and its job, and send the job to its host.
pub async fn submit(ekko: &Ekko, new: NewRestore) -> ServiceResult<Restore> {
    let timeout = job_timeout(ekko);
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
                return Err(ServiceError::Invalid(format!(
                    "restore host {host} runs no ekko-backup known to Ekko"
                )));
            }
        }
    }
    let (restore, job, message) = db
        .run(move |c| {
            c.transaction(|c| {
                let b = backups::get(c, &new.backup_id)?;
                if b.status != BackupStatus::Available {
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
                let r = Restore::queued(&b.project_id, &new.user_id, &b.id, &target, new.format);
                restores::insert(c, &r)?;
                let deadline = deadline_after(timeout);
                let mut job = Job::queued(JobKind::Restore, &b.project_id);
                job.restore_id = Some(r.id.clone());
                job.host = Some(host);
                job.deadline_at = Some(deadline.naive_utc());
                let message = RestoreJob {
                    job_id: job.id.clone(),
                    restore_id: r.id.clone(),
                    backup_id: b.id.clone(),
                    project_id: b.project_id.clone(),
                    record: record_ref(record).ok_or_else(|| {
                        DbError::Conflict(format!("backup {} has a corrupt record", b.id))
                    })?,
                    path: new.path.clone(),
                    format: new.format.as_str().to_string(),
                    relocations: Relocation::from_rows(&segments::relocations(c, &b.project_id)?),
                    project_key: keys::get(c, &b.project_id)?
                        .map(|row| row.wrapped_key())
                        .transpose()?,
                    deadline,
                };
                let planned = PlannedRestore {
                    disk_size: message.record.disk_size,
                };
                job.payload = serde_json::to_string(&planned)
                    .map_err(|e| DbError::Conflict(format!("job {}: {e}", job.id)))?;
                jobs::insert(c, &job)?;
                Ok((r, job, message))
            })
        })
        .await?;
    send(ekko, &job, RESTORE_RUN, &message).await?;
    tracing::info!(restore = %restore.id, backup = %restore.backup_id, host = ?job.host, "restore queued");
    Ok(restore)
}

/// The restore, if `action` is allowed on it; one of another project the
/// caller may not act on is not found (no existence leak).
pub async fn visible(
    ekko: &Ekko,
    caller: &Caller<'_>,
    id: &str,
    action: &str,
) -> ServiceResult<Restore> {
    let r = find(ekko, "restore", id, restores::get).await?;
    caller.authorize_owned(
        action,
        &r.project_id,
        Some(&r.user_id),
        Some(("restore", id)),
    )?;
    Ok(r)
}

pub async fn list(
    ekko: &Ekko,
    caller: &Caller<'_>,
    all_projects: bool,
    project_id: Option<String>,
    page: Page,
) -> ServiceResult<Vec<Restore>> {
    let project = caller.list_scope("restore", all_projects, project_id)?;
    ekko.db()?
        .run(move |c| {
            let marker = page.resolve(c, project.as_deref(), restores::get, |r| &r.project_id)?;
            restores::list(
                c,
                project.as_deref(),
                page.limit,
                marker.as_ref(),
                page.ascending,
            )
        })
        .await
        .map_err(marker_error)
}

/// A caller stops a queued or running restore.
pub async fn cancel(ekko: &Ekko, caller: &Caller<'_>, id: &str) -> ServiceResult<Restore> {
    let r = visible(ekko, caller, id, "ekko:restore:cancel").await?;
    let why = format!("cancelled by user {}", caller.user_id());
    cancel_restore(ekko, &r.id, &why).await
}

/// Stop a queued or running restore: it ends in `error` with `why` at
/// once, and its host is told to stop (a host that is down drops the job
/// when it comes back; the partial target file is removed there).
/// `Conflict` when the restore has already ended.
pub async fn cancel_restore(ekko: &Ekko, restore_id: &str, why: &str) -> ServiceResult<Restore> {
    let (rid, w) = (restore_id.to_string(), why.to_string());
    let (restore, job) = ekko
        .db()?
        .run(move |c| {
            c.transaction(|c| {
                let r = restores::get(c, &rid)?;
                if !r.status.is_active() {
                    return Err(DbError::Conflict(format!(
                        "restore {rid} is {}; only a queued or running restore can be cancelled",
                        r.status
                    )));
                }
                let job = jobs::active_for(c, jobs::Subject::Restore(&rid))?;
                match &job {
                    Some(j) => end_for_cancel(c, j, &w)?,
                    None => restores::transition(c, &rid, RestoreStatus::Error, Some(&w), None)?,
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
