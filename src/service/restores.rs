//! Restores: one disk of an available backup, written to a target by a
//! compute host: a file under the host's `[backup] restore_dir` (an
//! operator action by default), or a new Glance image in the backup's
//! project (a tenant's action), which the controller creates, checks when
//! the host reports it filled, and deletes when the restore fails.

use diesel::Connection;
use serde::Deserialize;

use crate::db::backups::{self, BackupStatus};
use crate::db::images::{self, PendingImage};
use crate::db::jobs::{self, Job};
pub use crate::db::restores::Restore;
use crate::db::restores::{self};
use crate::db::{hosts, instances, keys, segments, DbError};
use crate::status::{ImageFormat, JobKind, RestoreStatus};
use crate::wire::{ImageJob, Relocation, RestoreJob, SecondCopy, RESTORE_RUN};

use super::images::{create_image, glance_error, settle_in_background, ImageFacts};
use crate::Ekko;

use super::convert::record_ref;
use super::jobs::{deadline_after, end_for_cancel, fail_job, job_timeout, send, send_cancel};
use super::reports::PlannedRestore;
use super::{find, marker_error, Caller, Page, ServiceError, ServiceResult};

/// A restore someone asks for: one disk of an available backup, written to
/// a file or streamed into a Glance image, by `host` (the instance's host
/// when `None`).
#[derive(Debug, Clone)]
pub struct NewRestore {
    pub backup_id: String,
    pub user_id: String,
    pub device: Option<String>,
    pub host: Option<String>,
    pub target: NewTarget,
    pub format: ImageFormat,
    pub source: ReadFrom,
}

/// Which copy of a backup a restore reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The first store; the second copy (`[replication]`) when scrub found
    /// the first damaged, or when the first store fails a restore into a
    /// file.
    #[default]
    Auto,
    /// The first store only.
    Primary,
    /// The second store's copy only.
    Replica,
}

impl ReadFrom {
    pub(super) fn parse(s: Option<&str>) -> ServiceResult<ReadFrom> {
        match s {
            None | Some("auto") => Ok(ReadFrom::Auto),
            Some("primary") => Ok(ReadFrom::Primary),
            Some("replica") => Ok(ReadFrom::Replica),
            Some(other) => Err(ServiceError::Invalid(format!(
                "source must be auto, primary or replica, not {other:?}"
            ))),
        }
    }
}

/// Where a new restore writes.
#[derive(Clone)]
pub enum NewTarget {
    /// `path` under the host's `[backup] restore_dir`.
    File { path: String },
    /// A new image in the backup's project, created with the tenant's
    /// token (kept to finish or remove the image; see [`crate::glance`]).
    Image {
        name: String,
        visibility: String,
        user_token: String,
    },
}

impl std::fmt::Debug for NewTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NewTarget::File { path } => f.debug_struct("File").field("path", path).finish(),
            NewTarget::Image {
                name, visibility, ..
            } => f
                .debug_struct("Image")
                .field("name", name)
                .field("visibility", visibility)
                .finish_non_exhaustive(),
        }
    }
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
    /// `auto` (default), `primary` or `replica`: which copy is read.
    #[serde(default)]
    pub source: Option<String>,
}

/// Where a restore writes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum Target {
    /// A file under the host's restore directory (an operator action).
    File {
        path: String,
        #[serde(default)]
        host: Option<String>,
    },
    /// A new Glance image in the backup's project (a tenant's action).
    Image {
        name: String,
        /// `raw` (default) or `qcow2`; the top-level `format` may say it
        /// instead.
        #[serde(default)]
        disk_format: Option<String>,
        /// `private` (default) or `shared`.
        #[serde(default)]
        visibility: Option<String>,
    },
}

fn parse_format(f: Option<&str>) -> ServiceResult<ImageFormat> {
    match f {
        None => Ok(ImageFormat::Raw),
        Some(f) => ImageFormat::parse(f).ok_or_else(|| {
            ServiceError::Invalid(format!("format must be raw or qcow2, not {f:?}"))
        }),
    }
}

/// A caller asks for a restore of one of the backups they may see.
/// `user_token` is the caller's own Keystone token: an image is created and
/// filled with it (none in `noauth` mode, where images cannot be made).
pub async fn create(
    ekko: &Ekko,
    caller: &Caller<'_>,
    r: CreateRestore,
    user_token: Option<&str>,
) -> ServiceResult<Restore> {
    let source = ReadFrom::parse(r.source.as_deref())?;
    check_source(ekko, source)?;
    let (target, host, format, action) = match r.target {
        Target::File { path, host } => {
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
            let format = parse_format(r.format.as_deref())?;
            (
                NewTarget::File { path },
                host,
                format,
                "ekko:restore:create",
            )
        }
        Target::Image {
            name,
            disk_format,
            visibility,
        } => {
            let format = match (disk_format.as_deref(), r.format.as_deref()) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ServiceError::Invalid(format!(
                        "disk_format {a:?} and format {b:?} disagree"
                    )))
                }
                (a, b) => parse_format(a.or(b))?,
            };
            if name.trim().is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
                return Err(ServiceError::Invalid(
                    "image name must be 1 to 255 bytes without control characters".into(),
                ));
            }
            let visibility = visibility.unwrap_or_else(|| "private".into());
            if !matches!(visibility.as_str(), "private" | "shared") {
                return Err(ServiceError::Invalid(format!(
                    "visibility must be private or shared, not {visibility:?}"
                )));
            }
            let Some(token) = user_token else {
                return Err(ServiceError::Invalid(
                    "a restore into an image acts with the caller's Keystone token; this API \
                     runs without Keystone (auth_strategy = noauth)"
                        .into(),
                ));
            };
            let target = NewTarget::Image {
                name,
                visibility,
                user_token: token.to_string(),
            };
            (target, None, format, "ekko:restore:create_image")
        }
    };
    // The backup is named in the body: one the caller cannot see is a bad
    // request, as a missing one.
    let id = r.backup_id;
    let b = super::backups::visible(ekko, caller, &id, "ekko:backup:get")
        .await
        .map_err(|e| e.named_in_body("backup", &id))?;
    caller.authorize(action, &b.project_id, None)?;
    // Glance makes the token's project the image's owner: another
    // project's backup (an admin's, say) would land in the wrong project.
    if matches!(target, NewTarget::Image { .. }) && caller.project_id()? != b.project_id {
        return Err(ServiceError::Invalid(format!(
            "an image is created in the project of your token; restore backup {} with a token \
             scoped to its project {}",
            b.id, b.project_id
        )));
    }
    let new = NewRestore {
        backup_id: b.id.clone(),
        user_id: caller.user_id().to_string(),
        device: r.disk,
        host,
        target,
        format,
        source,
    };
    submit(ekko, new).await
}

/// Record a queued restore and its job (and, for an image, the image
/// Ekko is about to create), create the image, and send the job to its
/// host.
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
    if let (Ok((project, _)), NewTarget::Image { .. }) = (&found, &new.target) {
        let upload_host = &ekko.config.glance.upload_host;
        if new.host.is_none() && !upload_host.is_empty() {
            new.host = Some(upload_host.clone());
        }
        let limit = i64::from(ekko.config.glance.max_image_restores_per_project);
        let p = project.clone();
        let held = db.run(move |c| images::count_of_project(c, &p)).await?;
        if held >= limit {
            return Err(ServiceError::LimitExceeded(format!(
                "project {project} has {held} restores into images in flight (at most {limit}): \
                 wait for one to end"
            )));
        }
    }
    if let Ok((project, instance_host)) = found {
        // A public-key project's backups are read where the master key is.
        if new.host.is_none() {
            new.host = ekko.keyring.default_restore_host(&project).await?;
        }
        // Any live host can stream an image (its job carries the project's
        // wrapped key): an instance lost with its host is still restored.
        if let (None, NewTarget::Image { .. }, Some(h)) = (&new.host, &new.target, &instance_host) {
            let stall = chrono::Duration::seconds(ekko.config.backup.job_stall_timeout as i64);
            let since = (chrono::Utc::now() - stall).naive_utc();
            let alive = db.run(move |c| hosts::alive_since(c, since)).await?;
            if !alive.is_empty() && !alive.iter().any(|a| &a.name == h) {
                let pick = (uuid::Uuid::new_v4().as_u128() % alive.len() as u128) as usize;
                tracing::info!(instance_host = %h, host = %alive[pick].name, "the instance's host is silent: another host restores into the image");
                new.host = Some(alive[pick].name.clone());
            }
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
    // An image's id is chosen here, so the catalog knows it before Glance
    // does: a crash between the two leaves a row that housekeeping settles,
    // never an image nobody knows of.
    let image = match &new.target {
        NewTarget::Image { user_token, .. } => {
            let glance = ekko.glance().await.map_err(glance_error)?;
            let url = glance.url().await.map_err(glance_error)?;
            Some(ImageJob {
                glance_url: url,
                image_id: uuid::Uuid::new_v4().to_string(),
                user_token: user_token.clone(),
            })
        }
        NewTarget::File { .. } => None,
    };
    let image2 = image.clone();
    let replica = ekko.replica.clone();
    let (restore, job, message, facts) = db
        .run(move |c| {
            c.transaction(|c| {
                let b = backups::get(c, &new.backup_id)?;
                if b.status != BackupStatus::Available {
                    return Err(DbError::Conflict(format!(
                        "backup {} is {}; only an available backup can be restored",
                        b.id, b.status
                    )));
                }
                let (record, device) = disk_record(c, &b, new.device.as_deref())?;
                let record = &record;
                let host = match &new.host {
                    Some(h) => h.clone(),
                    None => instances::get(c, &b.instance_id)?.host,
                };
                let (target, path) = match (&new.target, &image2) {
                    (
                        NewTarget::Image {
                            name, visibility, ..
                        },
                        Some(i),
                    ) => (
                        serde_json::json!({
                            "type": "image", "host": host, "device": device,
                            "image_id": i.image_id, "name": name,
                            "disk_format": new.format.as_str(), "visibility": visibility,
                        }),
                        String::new(),
                    ),
                    (NewTarget::File { path }, _) => (
                        serde_json::json!({
                            "type": "file", "host": host, "path": path, "device": device,
                        }),
                        path.clone(),
                    ),
                    (NewTarget::Image { .. }, None) => {
                        return Err(DbError::Conflict(
                            "an image restore without an image".into(),
                        ))
                    }
                };
                let r = Restore::queued(
                    &b.project_id,
                    &new.user_id,
                    &b.id,
                    &target.to_string(),
                    new.format,
                );
                restores::insert(c, &r)?;
                if let Some(i) = &image2 {
                    images::insert(
                        c,
                        &PendingImage::new(
                            &i.image_id,
                            &r.id,
                            &b.project_id,
                            &i.glance_url,
                            &i.user_token,
                        ),
                    )?;
                }
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
                    path,
                    format: new.format.as_str().to_string(),
                    relocations: Relocation::from_rows(&segments::relocations(c, &b.project_id)?),
                    project_key: keys::get(c, &b.project_id)?
                        .map(|row| row.wrapped_key())
                        .transpose()?,
                    deadline,
                    image: image2.clone(),
                    second_copy: second_copy(c, replica.as_ref(), &b, record, new.source)?,
                };
                let planned = PlannedRestore {
                    disk_size: message.record.disk_size,
                };
                job.payload = serde_json::to_string(&planned)
                    .map_err(|e| DbError::Conflict(format!("job {}: {e}", job.id)))?;
                jobs::insert(c, &job)?;
                let facts = ImageFacts {
                    disk_size: message.record.disk_size,
                    device,
                    instance_id: b.instance_id.clone(),
                    backup_id: b.id.clone(),
                    backup_created_at: b.created_at,
                };
                Ok((r, job, message, facts))
            })
        })
        .await?;
    if let (
        Some(i),
        NewTarget::Image {
            name, visibility, ..
        },
    ) = (&image, &new_target_of(&restore))
    {
        if let Err(e) = create_image(
            ekko,
            &restore.project_id,
            i,
            name,
            visibility,
            restore.format,
            &facts,
        )
        .await
        {
            // Nothing to upload into: the restore ends here. An image
            // Glance refused was never made (its row goes now); after a
            // timeout or a 5xx it may still appear, and the row stays
            // until a pass deletes it.
            let (jid, why) = (job.id.clone(), format!("image not created: {e}"));
            let (refused, image_id) = (e.status().is_some_and(|s| s != 409), i.image_id.clone());
            db.run(move |c| {
                fail_job(c, &jid, &why)?;
                if refused {
                    images::remove(c, &image_id)?;
                }
                Ok(())
            })
            .await?;
            settle_in_background(ekko, Some(restore.id.clone()));
            return Err(glance_error(e));
        }
    }
    send(ekko, &job, RESTORE_RUN, &message).await?;
    tracing::info!(restore = %restore.id, backup = %restore.backup_id, host = ?job.host, "restore queued");
    Ok(restore)
}

/// The record of one disk of backup `b` (the named device, or its only
/// disk) and the disk's device name.
pub(super) fn disk_record(
    c: &mut crate::db::DbConnection,
    b: &backups::Backup,
    device: Option<&str>,
) -> Result<(backups::BackupDisk, String), DbError> {
    let records = backups::disks_of(c, &b.id)?;
    let disks = instances::disks_of(c, &b.instance_id)?;
    let record = match device {
        Some(dev) => {
            let disk = disks
                .iter()
                .find(|d| d.device == dev)
                .ok_or_else(|| DbError::Conflict(format!("backup {} has no disk {dev}", b.id)))?;
            records.into_iter().find(|r| r.disk_id == disk.id)
        }
        None if records.len() == 1 => records.into_iter().next(),
        None => {
            return Err(DbError::Conflict(format!(
                "backup {} has {} disks: name one with \"disk\"",
                b.id,
                records.len()
            )))
        }
    }
    .ok_or_else(|| DbError::Conflict(format!("backup {} has no such disk record", b.id)))?;
    let device = disks
        .iter()
        .find(|d| d.id == record.disk_id)
        .map(|d| d.device.clone())
        .unwrap_or_default();
    Ok((record, device))
}

/// The image part of a restore's target, as recorded.
fn new_target_of(r: &Restore) -> NewTarget {
    let t: serde_json::Value = serde_json::from_str(&r.target).unwrap_or_default();
    let field = |k: &str| {
        t.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    if field("type") == "image" {
        NewTarget::Image {
            name: field("name"),
            visibility: field("visibility"),
            user_token: String::new(),
        }
    } else {
        NewTarget::File {
            path: field("path"),
        }
    }
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

/// A caller stops a queued or running restore (an image restore is the
/// tenant's to stop, a file restore the operator's).
pub async fn cancel(ekko: &Ekko, caller: &Caller<'_>, id: &str) -> ServiceResult<Restore> {
    let r = visible(ekko, caller, id, "ekko:restore:get").await?;
    let action = match new_target_of(&r) {
        NewTarget::Image { .. } => "ekko:restore:cancel_image",
        NewTarget::File { .. } => "ekko:restore:cancel",
    };
    caller.authorize_owned(
        action,
        &r.project_id,
        Some(&r.user_id),
        Some(("restore", id)),
    )?;
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
    // A partial image goes now (or at a later pass if Glance is down).
    settle_in_background(ekko, Some(restore.id.clone()));
    tracing::info!(restore = %restore.id, "restore cancelled");
    Ok(restore)
}

/// `replica` asks for what this cloud may not keep.
pub(super) fn check_source(ekko: &Ekko, source: ReadFrom) -> ServiceResult<()> {
    if source == ReadFrom::Replica && ekko.replica.is_none() {
        return Err(ServiceError::Invalid(
            "source replica: this cloud keeps no second copies ([replication] backend = none)"
                .into(),
        ));
    }
    Ok(())
}

/// The backup's second copy for a restore's job: where it is, whether it
/// is read first (asked for, or scrub found damage where the first store
/// keeps the disk) and whether only it may be read.
pub(super) fn second_copy(
    c: &mut crate::db::DbConnection,
    replica: Option<&crate::store::Replica>,
    b: &backups::Backup,
    record: &backups::BackupDisk,
    source: ReadFrom,
) -> Result<Option<SecondCopy>, DbError> {
    let replica = match (source, replica) {
        (ReadFrom::Primary, _) | (_, None) => return Ok(None),
        (_, Some(r)) => r,
    };
    if !crate::db::replicas::holds_backup(c, &replica.key, &b.id)? {
        if source == ReadFrom::Replica {
            return Err(DbError::Conflict(format!(
                "backup {} has no copy in the second store {} yet",
                b.id, replica.name
            )));
        }
        return Ok(None);
    }
    let only = source == ReadFrom::Replica;
    let first = only || crate::db::replicas::first_copy_damaged(c, &record.disk_id, record.seq)?;
    Ok(Some(SecondCopy {
        store: replica.key.clone(),
        first,
        only,
    }))
}
