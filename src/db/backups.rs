//! Backups and their per-disk records, with the status state machine.
//!
//! ```text
//!  queued ──► running ──► available ──► deleting ──► deleted
//!    │           │                         ▲
//!    └───────────┴──► error ───────────────┘
//! ```
//! A queued or running backup may also be deleted (cancelled): it goes to
//! `deleting`. `error → queued` is a retry. Every change is one conditional
//! UPDATE, so two processes cannot both make the same transition.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{backup_disks, backups};
use super::{now, DbConnection, DbError, DbResult, OptionalRow};

pub use crate::status::BackupStatus;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = backups)]
pub struct Backup {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub instance_id: String,
    pub policy_id: Option<String>,
    pub name: String,
    pub description: String,
    pub status: BackupStatus,
    pub mode: String,
    pub kind: Option<String>,
    pub consistency: Option<String>,
    pub progress: i32,
    pub logical_bytes: i64,
    pub read_bytes: i64,
    pub new_bytes: i64,
    pub stored_bytes: i64,
    pub error: Option<String>,
    pub protected: bool,
    pub metadata: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub started_at: Option<NaiveDateTime>,
    pub completed_at: Option<NaiveDateTime>,
    pub deleted_at: Option<NaiveDateTime>,
    /// The libvirt checkpoint made at the backup's instant (its name and
    /// XML): the base of the instance's next incremental.
    pub checkpoint_name: Option<String>,
    pub checkpoint_xml: Option<String>,
}

impl Backup {
    /// A new queued backup.
    pub fn queued(
        project_id: &str,
        user_id: &str,
        instance_id: &str,
        name: &str,
        mode: &str,
    ) -> Backup {
        let at = now();
        Backup {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project_id.into(),
            user_id: user_id.into(),
            instance_id: instance_id.into(),
            policy_id: None,
            name: name.into(),
            description: String::new(),
            status: BackupStatus::Queued,
            mode: mode.into(),
            kind: None,
            consistency: None,
            progress: 0,
            logical_bytes: 0,
            read_bytes: 0,
            new_bytes: 0,
            stored_bytes: 0,
            error: None,
            protected: false,
            metadata: "{}".into(),
            created_at: at,
            updated_at: at,
            started_at: None,
            completed_at: None,
            deleted_at: None,
            checkpoint_name: None,
            checkpoint_xml: None,
        }
    }
}

/// One disk's record in a backup: its place in the disk's history and the
/// root of its index tree.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = backup_disks)]
pub struct BackupDisk {
    pub id: i64,
    pub backup_id: String,
    pub disk_id: String,
    pub seq: i64,
    pub virtual_size: i64,
    pub chunk_size: i32,
    pub root_digest: Vec<u8>,
    pub root_segment: i64,
    pub bitmap_name: Option<String>,
    pub full_read: bool,
    pub read_bytes: i64,
    pub new_bytes: i64,
    pub stored_bytes: i64,
    pub created_at: NaiveDateTime,
    /// Why the disk was read in full (`extract::FullReason::as_str`).
    pub full_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = backup_disks)]
pub struct NewBackupDisk {
    pub backup_id: String,
    pub disk_id: String,
    pub seq: i64,
    pub virtual_size: i64,
    pub chunk_size: i32,
    pub root_digest: Vec<u8>,
    pub root_segment: i64,
    pub bitmap_name: Option<String>,
    pub full_read: bool,
    pub read_bytes: i64,
    pub new_bytes: i64,
    pub stored_bytes: i64,
    pub created_at: NaiveDateTime,
    pub full_reason: Option<String>,
}

pub fn insert(conn: &mut DbConnection, backup: &Backup) -> DbResult<()> {
    diesel::insert_into(backups::table)
        .values(backup)
        .execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, id: &str) -> DbResult<Backup> {
    backups::table
        .find(id)
        .select(Backup::as_select())
        .first(conn)
        .found(|| format!("backup {id}"))
}

/// Move a backup to `to`, if its current state allows it. The error says
/// which state blocked the change.
pub fn transition(
    conn: &mut DbConnection,
    id: &str,
    to: BackupStatus,
    error: Option<&str>,
) -> DbResult<Backup> {
    let at = now();
    let from: Vec<&str> = to.allowed_from().iter().map(|s| s.as_str()).collect();
    let target = backups::table.find(id).filter(backups::status.eq_any(from));
    let updated = match to {
        BackupStatus::Running => diesel::update(target)
            .set((
                backups::status.eq(to),
                backups::started_at.eq(at),
                backups::updated_at.eq(at),
            ))
            .execute(conn)?,
        BackupStatus::Available | BackupStatus::Error => diesel::update(target)
            .set((
                backups::status.eq(to),
                backups::error.eq(error),
                backups::completed_at.eq(at),
                backups::updated_at.eq(at),
            ))
            .execute(conn)?,
        BackupStatus::Deleted => {
            let n = diesel::update(target)
                .set((
                    backups::status.eq(to),
                    backups::deleted_at.eq(at),
                    backups::updated_at.eq(at),
                ))
                .execute(conn)?;
            if n > 0 {
                super::segments::lost_a_user(conn, id)?;
            }
            n
        }
        BackupStatus::Queued | BackupStatus::Deleting => diesel::update(target)
            .set((backups::status.eq(to), backups::updated_at.eq(at)))
            .execute(conn)?,
    };
    let current = get(conn, id)?;
    if updated == 0 {
        return Err(DbError::Conflict(format!(
            "backup {id} is {}, it cannot become {}",
            current.status,
            to.as_str()
        )));
    }
    Ok(current)
}

/// Mark a backup deleted in one conditional UPDATE: only an available or
/// failed backup that is not protected (so a concurrent protect or retry
/// wins). The error says why when nothing changed.
pub fn delete_if_allowed(conn: &mut DbConnection, id: &str) -> DbResult<Backup> {
    conn.transaction(|conn| delete_if_allowed_in(conn, id))
}

fn delete_if_allowed_in(conn: &mut DbConnection, id: &str) -> DbResult<Backup> {
    // An export serving it would start failing its reads (a VM booted
    // from it would see I/O errors).
    if let Some(e) = super::exports::live_of_backup(conn, id)?.first() {
        return Err(DbError::Conflict(format!(
            "backup {id} is exported (export {}, {}); delete the export first",
            e.id, e.status
        )));
    }
    let at = now();
    let updated = diesel::update(
        backups::table
            .find(id)
            .filter(backups::protected.eq(false))
            .filter(backups::status.eq_any([BackupStatus::Available, BackupStatus::Error])),
    )
    .set((
        backups::status.eq(BackupStatus::Deleted),
        backups::deleted_at.eq(at),
        backups::updated_at.eq(at),
    ))
    .execute(conn)?;
    let b = get(conn, id)?;
    if updated == 0 {
        return Err(DbError::Conflict(if b.protected {
            format!("backup {id} is protected; unprotect it first")
        } else {
            format!(
                "backup {id} is {}; it can be deleted once available or failed",
                b.status
            )
        }));
    }
    super::segments::lost_a_user(conn, id)?;
    Ok(b)
}

/// Whether the catalog has ever recorded a backup of `project_id` (rows
/// stay when backups are deleted).
pub fn project_known(conn: &mut DbConnection, project_id: &str) -> DbResult<bool> {
    Ok(backups::table
        .filter(backups::project_id.eq(project_id))
        .select(backups::id)
        .first::<String>(conn)
        .optional()?
        .is_some())
}

/// Whether the catalog records any backup at all.
pub fn any(conn: &mut DbConnection) -> DbResult<bool> {
    Ok(backups::table
        .select(backups::id)
        .first::<String>(conn)
        .optional()?
        .is_some())
}

/// Mark the `running` backups of an instance as failed with `why` (their
/// process is known to be gone); returns their ids.
pub fn interrupt_running(
    conn: &mut DbConnection,
    instance_id: &str,
    why: &str,
) -> DbResult<Vec<String>> {
    conn.transaction(|conn| {
        let ids: Vec<String> = backups::table
            .filter(backups::instance_id.eq(instance_id))
            .filter(backups::status.eq(BackupStatus::Running))
            .select(backups::id)
            .load(conn)?;
        for id in &ids {
            transition(conn, id, BackupStatus::Error, Some(why))?;
            // Its job too: a job left `running` would hold back garbage
            // collection (the oldest-writer cutoff) and keep its pins.
            if let Some(job) = super::jobs::active_for(conn, super::jobs::Subject::Backup(id))? {
                super::jobs::finish(conn, &job.id, crate::status::JobStatus::Failed, Some(why))?;
            }
        }
        Ok(ids)
    })
}

/// Listing filters; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct BackupFilter {
    pub project_id: Option<String>,
    pub instance_id: Option<String>,
    pub status: Option<BackupStatus>,
    /// Hide `deleted` backups unless asked for by status.
    pub include_deleted: bool,
    pub name: Option<String>,
    /// Oldest first (default: newest first).
    pub ascending: bool,
}

/// Backups matching `filter`, newest first, at most `limit`, after the
/// backup `marker` (exclusive) in that order.
pub fn list(
    conn: &mut DbConnection,
    filter: &BackupFilter,
    limit: i64,
    marker: Option<&str>,
) -> DbResult<Vec<Backup>> {
    let mut q = backups::table.into_boxed();
    if let Some(p) = &filter.project_id {
        q = q.filter(backups::project_id.eq(p.clone()));
    }
    if let Some(i) = &filter.instance_id {
        q = q.filter(backups::instance_id.eq(i.clone()));
    }
    match filter.status {
        Some(s) => q = q.filter(backups::status.eq(s)),
        None if !filter.include_deleted => q = q.filter(backups::status.ne(BackupStatus::Deleted)),
        None => {}
    }
    if let Some(n) = &filter.name {
        q = q.filter(backups::name.eq(n.clone()));
    }
    let marker = match marker {
        Some(m) => {
            let m = get(conn, m)?;
            Some((m.created_at, m.id))
        }
        None => None,
    };
    Ok(keyset_page!(q, backups, marker, filter.ascending, limit)
        .select(Backup::as_select())
        .load(conn)?)
}

/// A queued or running backup of the instance, if any.
pub fn active_for_instance(conn: &mut DbConnection, instance_id: &str) -> DbResult<Option<Backup>> {
    Ok(backups::table
        .filter(backups::instance_id.eq(instance_id))
        .filter(backups::status.eq_any([BackupStatus::Queued, BackupStatus::Running]))
        .select(Backup::as_select())
        .first(conn)
        .optional()?)
}

/// Record a running backup's progress (percent of the bytes to read).
pub fn set_progress(conn: &mut DbConnection, id: &str, percent: i32) -> DbResult<()> {
    diesel::update(
        backups::table
            .find(id)
            .filter(backups::status.eq(BackupStatus::Running)),
    )
    .set((
        backups::progress.eq(percent.clamp(0, 99)),
        backups::updated_at.eq(now()),
    ))
    .execute(conn)?;
    Ok(())
}

/// The newest available backup of the instance, if any.
pub fn last_available(conn: &mut DbConnection, instance_id: &str) -> DbResult<Option<Backup>> {
    Ok(backups::table
        .filter(backups::instance_id.eq(instance_id))
        .filter(backups::status.eq(BackupStatus::Available))
        .order((backups::created_at.desc(), backups::id.desc()))
        .select(Backup::as_select())
        .first(conn)
        .optional()?)
}

/// Change what a tenant may change: name, description, protection.
/// Mark a backup whose stored data scrub found damaged: it stays listed
/// with its status, and `error` says what is damaged.
pub fn mark_damaged(conn: &mut DbConnection, id: &str, message: &str) -> DbResult<()> {
    diesel::update(backups::table.find(id))
        .set((backups::error.eq(message), backups::updated_at.eq(now())))
        .execute(conn)?;
    Ok(())
}

/// What a tenant may change on a backup; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct DetailsUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub protected: Option<bool>,
    /// The whole metadata object, as JSON (it replaces the current one).
    pub metadata: Option<String>,
}

pub fn update_details(conn: &mut DbConnection, id: &str, u: &DetailsUpdate) -> DbResult<Backup> {
    conn.transaction(|conn| {
        let b = get(conn, id)?;
        diesel::update(backups::table.find(id))
            .set((
                backups::name.eq(u.name.as_ref().unwrap_or(&b.name)),
                backups::description.eq(u.description.as_ref().unwrap_or(&b.description)),
                backups::protected.eq(u.protected.unwrap_or(b.protected)),
                backups::metadata.eq(u.metadata.as_ref().unwrap_or(&b.metadata)),
                backups::updated_at.eq(now()),
            ))
            .execute(conn)?;
        get(conn, id)
    })
}

pub fn disks_of(conn: &mut DbConnection, backup_id: &str) -> DbResult<Vec<BackupDisk>> {
    Ok(backup_disks::table
        .filter(backup_disks::backup_id.eq(backup_id))
        .order(backup_disks::id.asc())
        .select(BackupDisk::as_select())
        .load(conn)?)
}

pub fn insert_disk_record(conn: &mut DbConnection, rec: &NewBackupDisk) -> DbResult<()> {
    diesel::insert_into(backup_disks::table)
        .values(rec)
        .execute(conn)?;
    Ok(())
}

/// What one disk of a finished backup adds to the catalog.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DiskCommit {
    pub disk_id: String,
    /// The disk head the worker built its map and deltas on.
    pub base_seq: i64,
    pub virtual_size: i64,
    pub chunk_size: i32,
    pub root_digest: Vec<u8>,
    pub root_segment: i64,
    /// The bitmap that tracks writes since this backup.
    pub bitmap_name: Option<String>,
    pub full_read: bool,
    pub read_bytes: i64,
    pub new_bytes: i64,
    pub stored_bytes: i64,
    /// Segments written: (id, size, records).
    pub new_segments: Vec<(i64, i64, i32)>,
    /// Per segment: references this disk's map gained or lost.
    pub ref_deltas: Vec<(i64, i64)>,
    /// The map was built from scratch, not on the head's map (a resized
    /// disk, or one whose stored data was found damaged): the deltas are
    /// the new map's whole counts and every reference of the head ends.
    #[serde(default)]
    pub fresh_map: bool,
    #[serde(default)]
    pub full_reason: Option<String>,
}

/// A libvirt checkpoint a backup keeps: (name, XML).
pub type CheckpointRow = (String, String);

/// Make a backup visible, in one transaction, once all its data is
/// durably stored: segments, per-disk records, reference intervals, disk
/// heads, the status and its checkpoint. Fails (changing nothing) when
/// another backup of a disk committed meanwhile or a reused segment is
/// being deleted.
pub fn commit(
    conn: &mut DbConnection,
    backup_id: &str,
    kind: &str,
    consistency: &str,
    disks: &[DiskCommit],
    checkpoint: Option<&CheckpointRow>,
) -> DbResult<Backup> {
    use super::schema::disks as d;
    use super::segments;
    conn.transaction(|conn| {
        // The instance's row lock first, before anything is read: retiring
        // one of its disks takes it too, so the heads and retirements read
        // below are current (InnoDB's snapshot starts at the first read).
        lock_instance_of(conn, backup_id)?;
        let backup = get(conn, backup_id)?;
        let at = now();
        for dc in disks {
            // Only a disk of the backup's own instance (a report naming
            // another disk is refused before it changes anything).
            let (head, instance, retired): (i64, String, Option<NaiveDateTime>) = d::table
                .find(&dc.disk_id)
                .select((d::head_seq, d::instance_id, d::retired_at))
                .first(conn)
                .optional()?
                .ok_or_else(|| DbError::Conflict(format!("disk {} is not in the catalog", dc.disk_id)))?;
            if instance != backup.instance_id {
                return Err(DbError::Conflict(format!(
                    "disk {} is not a disk of instance {}",
                    dc.disk_id, backup.instance_id
                )));
            }
            // Retired while the backup ran: the head's intervals ended, so
            // deltas built on them would leave the new record uncounted.
            if retired.is_some() && !dc.fresh_map {
                return Err(DbError::Conflict(format!(
                    "disk {} was retired while the backup ran; its next backup reads it whole",
                    dc.disk_id
                )));
            }
            if head != dc.base_seq {
                return Err(DbError::Conflict(format!(
                    "disk {} moved on (head {head}, backup built on {}): another backup committed meanwhile",
                    dc.disk_id, dc.base_seq
                )));
            }
            let seq = head + 1;
            // A deleted head counted only as the head: it stops now.
            let deleted_head: Option<String> = backup_disks::table
                .inner_join(backups::table)
                .filter(backup_disks::disk_id.eq(&dc.disk_id))
                .filter(backup_disks::seq.eq(head))
                .filter(backups::status.eq(BackupStatus::Deleted))
                .select(backups::id)
                .first(conn)
                .optional()?;
            if let Some(old) = deleted_head {
                segments::lost_a_user(conn, &old)?;
            }
            for &(id, size, records) in &dc.new_segments {
                // An id the catalog already has (a duplicate, or a forged
                // report naming another segment) is refused, not retried.
                match segments::insert(conn, &segments::Segment::live(id, &backup.project_id, size, records)) {
                    Err(e) if e.is_unique_violation() => {
                        return Err(DbError::Conflict(format!(
                            "segment {id:016x} is already in the catalog"
                        )))
                    }
                    other => other?,
                }
            }
            if dc.fresh_map {
                segments::end_open_refs(conn, &dc.disk_id, seq)?;
            }
            for &(segment, delta) in &dc.ref_deltas {
                if delta > 0 {
                    segments::reuse(conn, segment, &backup.project_id)?;
                }
                let current = segments::open_count(conn, &dc.disk_id, segment)?;
                let next = current + delta;
                if next < 0 {
                    return Err(DbError::Conflict(format!(
                        "disk {}: segment {segment:016x} would have {next} references (catalog out of step)",
                        dc.disk_id
                    )));
                }
                segments::set_ref_count(conn, &dc.disk_id, seq, segment, next)?;
            }
            insert_disk_record(
                conn,
                &NewBackupDisk {
                    backup_id: backup_id.to_string(),
                    disk_id: dc.disk_id.clone(),
                    seq,
                    virtual_size: dc.virtual_size,
                    chunk_size: dc.chunk_size,
                    root_digest: dc.root_digest.clone(),
                    root_segment: dc.root_segment,
                    bitmap_name: dc.bitmap_name.clone(),
                    full_read: dc.full_read,
                    read_bytes: dc.read_bytes,
                    new_bytes: dc.new_bytes,
                    stored_bytes: dc.stored_bytes,
                    created_at: at,
                    full_reason: dc.full_reason.clone(),
                },
            )?;
            diesel::update(d::table.find(&dc.disk_id))
                .set((
                    d::head_seq.eq(seq),
                    d::bitmap_name.eq(&dc.bitmap_name),
                    d::needs_full_read.eq(false),
                    d::virtual_size.eq(dc.virtual_size),
                    // Backed up again: in service (a reappeared disk).
                    d::retired_at.eq(None::<NaiveDateTime>),
                ))
                .execute(conn)?;
        }
        let sum = |f: fn(&DiskCommit) -> i64| disks.iter().map(f).sum::<i64>();
        let updated = diesel::update(backups::table.find(backup_id).filter(backups::status.eq(BackupStatus::Running)))
            .set((
                backups::status.eq(BackupStatus::Available),
                backups::kind.eq(kind),
                backups::consistency.eq(consistency),
                backups::progress.eq(100),
                backups::logical_bytes.eq(sum(|d| d.virtual_size)),
                backups::read_bytes.eq(sum(|d| d.read_bytes)),
                backups::new_bytes.eq(sum(|d| d.new_bytes)),
                backups::stored_bytes.eq(sum(|d| d.stored_bytes)),
                backups::completed_at.eq(at),
                backups::updated_at.eq(at),
                backups::checkpoint_name.eq(checkpoint.map(|c| c.0.as_str())),
                backups::checkpoint_xml.eq(checkpoint.map(|c| c.1.as_str())),
            ))
            .execute(conn)?;
        if updated == 0 {
            return Err(DbError::Conflict(format!("backup {backup_id} is {}, not running", backup.status)));
        }
        get(conn, backup_id)
    })
}

/// Lock the row of a backup's instance until the transaction ends.
pub fn lock_instance_of(conn: &mut DbConnection, backup_id: &str) -> DbResult<()> {
    use super::schema::instances as i;
    let of_backup = backups::table
        .filter(backups::id.eq(backup_id))
        .select(backups::instance_id);
    diesel::update(i::table.filter(i::id.eq_any(of_backup)))
        .set(i::updated_at.eq(now()))
        .execute(conn)?;
    Ok(())
}

/// The head records of a project's live disks other than `exclude`, newest
/// first, at most `limit`: what cross-disk dedup may reuse.
pub fn project_heads(
    conn: &mut DbConnection,
    project_id: &str,
    exclude: &[String],
    limit: usize,
) -> DbResult<Vec<BackupDisk>> {
    use super::schema::disks as d;
    let ids: Vec<String> = d::table
        .filter(d::project_id.eq(project_id))
        .filter(d::head_seq.gt(0))
        .filter(d::retired_at.is_null())
        .filter(d::id.ne_all(exclude))
        .select(d::id)
        .load(conn)?;
    let mut heads = Vec::new();
    for id in ids {
        heads.extend(head_record(conn, &id)?);
    }
    heads.sort_by_key(|h| std::cmp::Reverse(h.created_at));
    heads.truncate(limit);
    Ok(heads)
}

/// The newest committed record of a disk (its head), if any.
pub fn head_record(conn: &mut DbConnection, disk_id: &str) -> DbResult<Option<BackupDisk>> {
    use super::schema::disks as d;
    let head: i64 = d::table
        .find(disk_id)
        .select(d::head_seq)
        .first(conn)
        .found(|| format!("disk {disk_id}"))?;
    Ok(backup_disks::table
        .filter(backup_disks::disk_id.eq(disk_id))
        .filter(backup_disks::seq.eq(head))
        .select(BackupDisk::as_select())
        .first(conn)
        .optional()?)
}

/// The ids of a project's backups that are, or may still become,
/// available (their manifests are not orphans).
pub fn ids_that_may_count(conn: &mut DbConnection, project_id: &str) -> DbResult<Vec<String>> {
    Ok(backups::table
        .filter(backups::project_id.eq(project_id))
        .filter(backups::status.eq_any([
            BackupStatus::Queued,
            BackupStatus::Running,
            BackupStatus::Available,
        ]))
        .select(backups::id)
        .load(conn)?)
}

/// How many backups the catalog holds in each status (metrics).
pub fn count_by_status(conn: &mut DbConnection) -> DbResult<Vec<(BackupStatus, i64)>> {
    Ok(backups::table
        .group_by(backups::status)
        .select((backups::status, diesel::dsl::count_star()))
        .load(conn)?)
}
