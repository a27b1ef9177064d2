//! Backups: plan one from the catalog and send its job to the instance's
//! host; show, list, update, cancel and delete them.

use std::time::Duration;

use diesel::Connection;
use serde::Deserialize;

use crate::db::backups::{self};
pub use crate::db::backups::{Backup, BackupFilter, BackupStatus, DetailsUpdate};
use crate::db::instances::{self, Instance};
use crate::db::jobs::{self, Job};
use crate::db::{quotas, segments, DbConnection, DbError, DbResult};
use crate::keyring::JobKeys;
use crate::status::JobKind;
use crate::wire::{BackupJob, BadRecord, Checkpoint, JobDisk, Relocation, BACKUP_RUN};
use crate::Ekko;

use super::convert::record_ref;
use super::jobs::{deadline_after, end_for_cancel, job_timeout, send, send_cancel};
use super::reports::{PlannedBackup, PlannedDisk};
use super::{find, marker_error, Caller, Page, ServiceError, ServiceResult};

const MAX_NAME: usize = 255;
const MAX_DESCRIPTION: usize = 4096;
const MAX_METADATA: usize = 16 << 10;

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

/// What planning needs from the configuration.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub quota: crate::config::QuotaOptions,
    pub dedup_heads: usize,
    pub job_timeout: Duration,
    /// A disk its host's latest inventory left out by more than this was
    /// detached: it is not planned (it would fail the whole backup), and
    /// is retired later.
    pub detached_after: Duration,
}

impl PlanOptions {
    pub fn of(ekko: &Ekko) -> PlanOptions {
        PlanOptions {
            quota: ekko.config.quota.clone(),
            dedup_heads: ekko.config.backup.dedup_heads as usize,
            job_timeout: job_timeout(ekko),
            detached_after: detached_after(ekko.config.backup.heartbeat_interval),
        }
    }
}

/// Three inventories, and at least a minute (inventories of one host
/// arrive at their own pace).
pub fn detached_after(heartbeat_interval: u64) -> Duration {
    Duration::from_secs(heartbeat_interval.saturating_mul(3).max(60))
}

/// The disks an instance's host still reports: those seen within `slack`
/// of the newest report of any of its disks (a row never seen counts as
/// seen).
fn still_attached(
    disks: Vec<crate::db::instances::Disk>,
    slack: Duration,
) -> Vec<crate::db::instances::Disk> {
    let newest = disks.iter().filter_map(|d| d.last_seen_at).max();
    let slack = chrono::TimeDelta::from_std(slack).unwrap_or(chrono::TimeDelta::MAX);
    disks
        .into_iter()
        .filter(|d| match (newest, d.last_seen_at) {
            (Some(n), Some(s)) => n - s <= slack,
            _ => true,
        })
        .collect()
}

/// In one transaction: check quota and that the instance has no backup in
/// flight, record a queued backup and its job, and build the job message
/// from the catalog (each disk's head, the project's dedup sources).
pub fn plan(
    c: &mut DbConnection,
    opts: &PlanOptions,
    new: &NewBackup,
    keys: &JobKeys,
) -> DbResult<(Backup, Job, BackupJob)> {
    c.transaction(|c| {
        // Lock the instance row first: concurrent plans for one instance
        // run one after the other, so the "one active backup" check below
        // cannot be raced. The row is read again under the lock: its host
        // may have changed since the caller looked.
        instances::touch(c, &new.instance_id)?;
        let instance = instances::get(c, &new.instance_id)?;
        // An encrypted project's job must carry its keys: a plan made
        // without them would have its host write plaintext.
        if keys == &JobKeys::default() && crate::db::keys::get(c, &instance.project_id)?.is_some() {
            return Err(DbError::Conflict(format!(
                "project {} is encrypted and its job carries no key",
                instance.project_id
            )));
        }
        if let Some(why) = quotas::check_one_more(c, &opts.quota, &instance.project_id)? {
            return Err(DbError::LimitExceeded(why));
        }
        if let Some(other) = instance.contender() {
            return Err(DbError::Conflict(format!(
                "instance {} is reported by two hosts ({} and {other}); it is not backed up until one stops reporting it or an operator moves it",
                instance.id, instance.host
            )));
        }
        if let Some(active) = backups::active_for_instance(c, &instance.id)? {
            return Err(DbError::Conflict(format!(
                "instance {} already has backup {} {}; try again when it finishes",
                instance.id, active.id, active.status
            )));
        }
        // Retired disks are gone; one that came back is in service again.
        // A disk the host stopped reporting (a detached volume) is left
        // out: the instance's other disks are still backed up.
        let disks = still_attached(
            instances::disks_of(c, &instance.id)?
                .into_iter()
                .filter(|d| d.in_service())
                .collect(),
            opts.detached_after,
        );
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
        // The records this job builds on or reuses: pinned while it runs,
        // so retention keeps every chunk it may reference at commit.
        let mut pins: Vec<(String, i64)> = Vec::new();
        // The backups the disks' heads belong to: one backup for every
        // disk makes its checkpoint the base of an incremental.
        let mut head_backups: Vec<Option<String>> = Vec::new();
        for d in &disks {
            // A disk that came back after retirement starts afresh: its old
            // head's data may be reclaimed already.
            let head_row = if d.reappeared() {
                None
            } else {
                backups::head_record(c, &d.id)?
            };
            if let Some(h) = &head_row {
                pins.push((h.disk_id.clone(), h.seq));
            }
            head_backups.push(head_row.as_ref().map(|h| h.backup_id.clone()));
            let head = head_row.as_ref().and_then(record_ref);
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
                needs_full_read: d.needs_full_read || d.reappeared(),
            });
        }
        let own: Vec<String> = disks.iter().map(|d| d.id.clone()).collect();
        for h in backups::project_heads(c, &instance.project_id, &own, opts.dedup_heads)? {
            if let Some(r) = record_ref(&h) {
                pins.push((h.disk_id.clone(), h.seq));
                dedup_sources.push(r);
            }
        }
        let checkpoint = shared_checkpoint(c, &head_backups)?;
        let deadline = deadline_after(opts.job_timeout);
        let mut job = Job::queued(JobKind::Backup, &instance.project_id);
        job.backup_id = Some(backup.id.clone());
        job.host = Some(instance.host.clone());
        job.deadline_at = Some(deadline.naive_utc());
        let (project_key, write_keys) = keys.for_backup();
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
            project_key,
            write_keys,
            deadline,
            checkpoint,
        };
        // The job keeps what its outcome is checked against, not the whole
        // message (a long-lived project's relocations would not fit).
        let planned = PlannedBackup {
            disks: disks
                .iter()
                .map(|d| PlannedDisk {
                    disk_id: d.id.clone(),
                    base_seq: d.head_seq,
                    virtual_size: d.virtual_size,
                    inventoried_size: None,
                })
                .collect(),
        };
        job.payload = serde_json::to_string(&planned)
            .map_err(|e| DbError::Conflict(format!("job {}: {e}", job.id)))?;
        jobs::insert(c, &job)?;
        pins.sort();
        pins.dedup();
        jobs::pin(c, &job.id, &pins)?;
        Ok((backup, job, message))
    })
}

/// The checkpoint of the backup that is the head of every disk (libvirt's
/// base for an incremental); `None` when a disk has no head, the heads
/// belong to different backups, or that backup has no checkpoint (the
/// host then reads every disk in full).
fn shared_checkpoint(
    c: &mut DbConnection,
    head_backups: &[Option<String>],
) -> DbResult<Option<Checkpoint>> {
    let Some(Some(first)) = head_backups.first() else {
        return Ok(None);
    };
    if head_backups.iter().any(|b| b.as_ref() != Some(first)) {
        return Ok(None);
    }
    let b = backups::get(c, first)?;
    Ok(match (b.checkpoint_name, b.checkpoint_xml) {
        (Some(name), Some(xml)) => Some(Checkpoint { name, xml }),
        _ => None,
    })
}

/// Plan a backup of `instance` and send its job to the instance's host.
/// If the bus refuses the job, the backup fails at once (nothing would
/// run it).
pub async fn submit(ekko: &Ekko, instance: &Instance, new: NewBackup) -> ServiceResult<Backup> {
    let opts = PlanOptions::of(ekko);
    // An encrypted project's key exists (and is in the store) before any
    // job can seal data with it; the plan puts it (or, in public-key mode,
    // the write keys) in the job.
    let keys = ekko
        .keyring
        .job_keys(&instance.project_id, &instance.host)
        .await?;
    let (backup, job, message) = ekko.db()?.run(move |c| plan(c, &opts, &new, &keys)).await?;
    send(ekko, &job, BACKUP_RUN, &message).await?;
    tracing::info!(backup = %backup.id, instance = %backup.instance_id, host = ?job.host, "backup queued");
    Ok(backup)
}

/// `POST /v1/backups`: what a caller may ask for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBackup {
    pub instance_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `auto` (incremental when possible) or `full`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A backup's metadata as stored: its JSON, at most 16 KiB.
fn encode_metadata(m: serde_json::Map<String, serde_json::Value>) -> ServiceResult<String> {
    let json = serde_json::Value::Object(m).to_string();
    if json.len() > MAX_METADATA {
        return Err(ServiceError::Invalid(
            "metadata is larger than 16 KiB".into(),
        ));
    }
    Ok(json)
}

/// A caller asks for a backup of one of their instances.
pub async fn create(ekko: &Ekko, caller: &Caller<'_>, b: CreateBackup) -> ServiceResult<Backup> {
    let mode = b.mode.unwrap_or_else(|| "auto".into());
    if mode != "auto" && mode != "full" {
        return Err(ServiceError::Invalid(format!(
            "mode must be auto or full, not {mode:?}"
        )));
    }
    let name = b.name.unwrap_or_default();
    let description = b.description.unwrap_or_default();
    if name.len() > MAX_NAME || description.len() > MAX_DESCRIPTION {
        return Err(ServiceError::Invalid(format!(
            "name (at most {MAX_NAME} bytes) or description (at most {MAX_DESCRIPTION}) too long"
        )));
    }
    let metadata = encode_metadata(b.metadata.unwrap_or_default())?;
    // The instance is named in the body: a missing one (or one of another
    // project) is a bad request, not a missing URL.
    let id = b.instance_id;
    let instance = find(ekko, "instance", &id, instances::get)
        .await
        .map_err(|e| e.named_in_body("instance", &id))?;
    caller
        .authorize(
            "ekko:backup:create",
            &instance.project_id,
            Some(("instance", &instance.id)),
        )
        .map_err(|e| ServiceError::from(e).named_in_body("instance", &id))?;
    let new = NewBackup {
        instance_id: instance.id.clone(),
        user_id: caller.user_id().to_string(),
        name,
        description,
        mode,
        metadata,
        policy_id: None,
    };
    submit(ekko, &instance, new).await
}

/// A backup the caller may see under `action`; not found otherwise (and
/// a deleted one is gone).
pub async fn visible(
    ekko: &Ekko,
    caller: &Caller<'_>,
    id: &str,
    action: &str,
) -> ServiceResult<Backup> {
    let b = find(ekko, "backup", id, backups::get).await?;
    if b.status == BackupStatus::Deleted {
        return Err(ServiceError::not_found("backup", id));
    }
    caller.authorize_owned(
        action,
        &b.project_id,
        Some(&b.user_id),
        Some(("backup", id)),
    )?;
    Ok(b)
}

/// Where a backup's second copy stands (`[replication]`); `None` when
/// this cloud keeps none.
pub async fn replication(
    ekko: &Ekko,
    b: &Backup,
) -> ServiceResult<Option<crate::replication::BackupReplication>> {
    let (replica, b) = (ekko.replica.clone(), b.clone());
    Ok(ekko
        .db()?
        .run(move |c| crate::replication::backup_status(c, replica.as_ref(), &b))
        .await?)
}

/// Which backups a list shows.
#[derive(Debug, Clone, Default)]
pub struct BackupQuery {
    pub all_projects: bool,
    pub project_id: Option<String>,
    pub status: Option<String>,
    pub instance_id: Option<String>,
    pub name: Option<String>,
}

pub async fn list(
    ekko: &Ekko,
    caller: &Caller<'_>,
    q: BackupQuery,
    page: Page,
) -> ServiceResult<Vec<Backup>> {
    let project = caller.list_scope("backup", q.all_projects, q.project_id)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            BackupStatus::parse(s)
                .ok_or_else(|| ServiceError::Invalid(format!("unknown status {s:?}")))?,
        ),
    };
    let filter = BackupFilter {
        project_id: project.clone(),
        instance_id: q.instance_id,
        status,
        include_deleted: false,
        name: q.name,
        ascending: page.ascending,
    };
    ekko.db()?
        .run(move |c| {
            // An unknown marker (or one of another project) is a 400.
            page.resolve(c, project.as_deref(), backups::get, |b| &b.project_id)?;
            backups::list(c, &filter, page.limit, page.marker.as_deref())
        })
        .await
        .map_err(marker_error)
}

/// `PUT /v1/backups/{id}`: what a caller may change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBackup {
    pub name: Option<String>,
    pub description: Option<String>,
    pub protected: Option<bool>,
    /// Replaces the whole metadata object (`{}` clears it).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

pub async fn update(
    ekko: &Ekko,
    caller: &Caller<'_>,
    id: &str,
    u: UpdateBackup,
) -> ServiceResult<Backup> {
    if u.name.as_ref().is_some_and(|n| n.len() > MAX_NAME)
        || u.description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION)
    {
        return Err(ServiceError::Invalid("name or description too long".into()));
    }
    let changes = DetailsUpdate {
        name: u.name,
        description: u.description,
        protected: u.protected,
        metadata: u.metadata.map(encode_metadata).transpose()?,
    };
    let b = visible(ekko, caller, id, "ekko:backup:update").await?;
    Ok(ekko
        .db()?
        .run(move |c| backups::update_details(c, &b.id, &changes))
        .await?)
}

/// A caller deletes one of their backups (202: ekko-retention reclaims
/// the space).
pub async fn delete(ekko: &Ekko, caller: &Caller<'_>, id: &str) -> ServiceResult<Backup> {
    let b = visible(ekko, caller, id, "ekko:backup:delete").await?;
    delete_backup(ekko, &b.id).await
}

/// Delete a backup: it disappears from the catalog at once (ekko-retention
/// reclaims its space), then its manifest leaves the store so a catalog
/// rebuild does not bring it back. Protection and status are checked by
/// the conditional UPDATE itself.
pub async fn delete_backup(ekko: &Ekko, backup_id: &str) -> ServiceResult<Backup> {
    let id = backup_id.to_string();
    let backup = ekko
        .db()?
        .run(move |c| backups::delete_if_allowed(c, &id))
        .await?;
    ekko.remove_manifest(&backup.project_id, backup_id).await;
    Ok(backup)
}

/// A caller cancels one of their queued or running backups.
pub async fn cancel(ekko: &Ekko, caller: &Caller<'_>, id: &str) -> ServiceResult<Backup> {
    let b = visible(ekko, caller, id, "ekko:backup:cancel").await?;
    let why = format!("cancelled by user {}", caller.user_id());
    cancel_backup(ekko, &b.id, &why).await
}

/// Cancel a queued or running backup: it fails at once with `why`, and its
/// host is told to stop (or not to start) the job. A backup whose outcome
/// arrives later is refused, so the cancel holds whatever the host does.
pub async fn cancel_backup(ekko: &Ekko, backup_id: &str, why: &str) -> ServiceResult<Backup> {
    let (bid, w) = (backup_id.to_string(), why.to_string());
    let (backup, job) = ekko
        .db()?
        .run(move |c| {
            c.transaction(|c| {
                let b = backups::get(c, &bid)?;
                if !b.status.is_active() {
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

/// An instance's available backups, oldest first (`ekko timeline`).
pub async fn history(ekko: &Ekko, instance_id: &str, limit: i64) -> ServiceResult<Vec<Backup>> {
    let filter = BackupFilter {
        instance_id: Some(instance_id.to_string()),
        status: Some(BackupStatus::Available),
        ascending: true,
        ..Default::default()
    };
    Ok(ekko
        .db()?
        .run(move |c| backups::list(c, &filter, limit, None))
        .await?)
}

/// Backups for the operator's list (`ekko list`), newest first.
pub async fn list_all(
    ekko: &Ekko,
    instance_id: Option<String>,
    limit: i64,
    marker: Option<String>,
) -> ServiceResult<Vec<Backup>> {
    let filter = BackupFilter {
        instance_id,
        ..Default::default()
    };
    Ok(ekko
        .db()?
        .run(move |c| backups::list(c, &filter, limit, marker.as_deref()))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDateTime, TimeDelta};

    fn disk(device: &str, seen: Option<NaiveDateTime>) -> crate::db::instances::Disk {
        let at = NaiveDateTime::default();
        crate::db::instances::Disk {
            id: device.into(),
            instance_id: "i".into(),
            project_id: "p".into(),
            device: device.into(),
            node_name: device.into(),
            virtual_size: 1 << 30,
            head_seq: 0,
            bitmap_name: None,
            needs_full_read: false,
            retired_at: None,
            created_at: at,
            last_seen_at: seen,
        }
    }

    #[test]
    fn a_detached_disk_is_not_planned() {
        let now = NaiveDateTime::default() + TimeDelta::days(400);
        let slack = detached_after(10);
        assert_eq!(slack, Duration::from_secs(60));
        let kept: Vec<String> = still_attached(
            vec![
                disk("vda", Some(now)),
                disk("vdb", Some(now - TimeDelta::seconds(59))),
                disk("vdc", Some(now - TimeDelta::seconds(61))),
                disk("vdd", None),
            ],
            slack,
        )
        .into_iter()
        .map(|d| d.device)
        .collect();
        assert_eq!(kept, ["vda", "vdb", "vdd"]);
        assert_eq!(detached_after(30), Duration::from_secs(90));
    }
}
