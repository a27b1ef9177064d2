//! Instances known to Ekko and their disks.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{disks, instances};
use super::{now, DbConnection, DbResult, OptionalRow};
pub use crate::status::InstanceStatus;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = instances)]
pub struct Instance {
    pub id: String,
    pub project_id: String,
    pub host: String,
    pub name: String,
    pub status: InstanceStatus,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// When a host last reported it in its inventory.
    pub last_seen_at: Option<NaiveDateTime>,
    /// Another live host that reports it too (see [`upsert`]), and when it
    /// last did: while contested, the instance is not backed up.
    pub contested_by: Option<String>,
    pub contested_at: Option<NaiveDateTime>,
}

impl Instance {
    /// The other host that reports it while its own host still does.
    pub fn contender(&self) -> Option<&str> {
        self.contested_by.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = disks)]
pub struct Disk {
    pub id: String,
    pub instance_id: String,
    pub project_id: String,
    pub device: String,
    pub node_name: String,
    pub virtual_size: i64,
    pub head_seq: i64,
    pub bitmap_name: Option<String>,
    pub needs_full_read: bool,
    /// Its instance or the disk itself went away (see [`retire_gone`]); a
    /// disk seen again after that is backed up anew (full read, fresh map).
    pub retired_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    /// When a host last reported it in its inventory.
    pub last_seen_at: Option<NaiveDateTime>,
}

impl Disk {
    /// A retired disk its host reports again.
    pub fn reappeared(&self) -> bool {
        matches!((self.retired_at, self.last_seen_at), (Some(r), Some(s)) if s > r)
    }

    /// Backed up by its instance's next backup: not retired, or back.
    pub fn in_service(&self) -> bool {
        self.retired_at.is_none() || self.reappeared()
    }
}

/// What a host reports about one disk of an instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskReport {
    pub device: String,
    pub node_name: String,
    pub virtual_size: i64,
}

/// `moved_before` for callers that may always move an instance (the
/// operator's own command line, a catalog rebuild).
pub const MOVE_ALWAYS: NaiveDateTime = NaiveDateTime::MAX;

/// The most instances one host may hold: a host cannot fill the catalog
/// with instances it makes up.
pub const MAX_PER_HOST: i64 = 10_000;

/// What became of a host's report of an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Upserted {
    /// Registered or refreshed (and moved to the reporter if `from`).
    Recorded {
        instance: Instance,
        moved_from: Option<String>,
    },
    /// Its host still reports it: it stays there, and the reporter's
    /// claim is recorded (the instance is not backed up while both do).
    Contested { holder: String },
}

/// Register or refresh an instance and its disks as `host` reports them.
/// Disks keep their ids (and backup history) across reports.
///
/// An instance moves to another host only once its own host has not
/// reported it since `moved_before` (a migration, an evacuation). Until
/// then a second host's report changes nothing but the claim it records:
/// a host cannot take over another's instance, and a capture made while
/// the real host was briefly silent (a restart, a failed probe) turns
/// into a contest the moment that host reports the instance again, never
/// into a silent, lasting one. The contest ends when one of the two stops
/// reporting it for `moved_before`, or when an operator moves it.
pub fn upsert(
    conn: &mut DbConnection,
    id: &str,
    project_id: &str,
    host: &str,
    name: &str,
    reported: &[DiskReport],
    moved_before: NaiveDateTime,
) -> DbResult<Upserted> {
    conn.transaction(|conn| {
        let at = now();
        let existing: Option<Instance> = instances::table
            .find(id)
            .select(Instance::as_select())
            .first(conn)
            .optional()?;
        let mut moved_from = None;
        match existing {
            Some(inst) if inst.project_id != project_id => {
                return Err(super::DbError::Conflict(format!(
                    "instance {id} is registered to another project"
                )))
            }
            // Never seen (a row from before the column): seen now.
            Some(inst) if inst.host != host && inst.last_seen_at.unwrap_or(at) >= moved_before => {
                diesel::update(instances::table.find(id))
                    .set((
                        instances::contested_by.eq(host),
                        instances::contested_at.eq(at),
                    ))
                    .execute(conn)?;
                return Ok(Upserted::Contested { holder: inst.host });
            }
            Some(inst) => {
                if inst.host != host {
                    moved_from = Some(inst.host.clone());
                }
                // The holder reports it again: a claim nobody renewed
                // since `moved_before` has lapsed (a move clears it).
                let lapsed =
                    moved_from.is_some() || inst.contested_at.is_some_and(|c| c < moved_before);
                diesel::update(instances::table.find(id))
                    .set((
                        instances::host.eq(host),
                        instances::name.eq(name),
                        instances::status.eq(InstanceStatus::Active),
                        instances::updated_at.eq(at),
                        instances::last_seen_at.eq(at),
                    ))
                    .execute(conn)?;
                if lapsed {
                    diesel::update(instances::table.find(id))
                        .set((
                            instances::contested_by.eq(None::<String>),
                            instances::contested_at.eq(None::<NaiveDateTime>),
                        ))
                        .execute(conn)?;
                }
            }
            None => {
                let held: i64 = instances::table
                    .filter(instances::host.eq(host))
                    .filter(instances::status.eq(InstanceStatus::Active))
                    .count()
                    .get_result(conn)?;
                if held >= MAX_PER_HOST {
                    return Err(super::DbError::Conflict(format!(
                        "host {host} already holds {held} instances (at most {MAX_PER_HOST})"
                    )));
                }
                diesel::insert_into(instances::table)
                    .values(&Instance {
                        id: id.to_string(),
                        project_id: project_id.to_string(),
                        host: host.to_string(),
                        name: name.to_string(),
                        status: InstanceStatus::Active,
                        created_at: at,
                        updated_at: at,
                        last_seen_at: Some(at),
                        contested_by: None,
                        contested_at: None,
                    })
                    .execute(conn)?;
            }
        }
        for d in reported {
            let updated = diesel::update(
                disks::table
                    .filter(disks::instance_id.eq(id))
                    .filter(disks::device.eq(&d.device)),
            )
            .set((
                disks::node_name.eq(&d.node_name),
                disks::virtual_size.eq(d.virtual_size),
                disks::last_seen_at.eq(at),
            ))
            .execute(conn)?;
            if updated == 0 {
                diesel::insert_into(disks::table)
                    .values(&Disk {
                        id: uuid::Uuid::new_v4().to_string(),
                        instance_id: id.to_string(),
                        project_id: project_id.to_string(),
                        device: d.device.clone(),
                        node_name: d.node_name.clone(),
                        virtual_size: d.virtual_size,
                        head_seq: 0,
                        bitmap_name: None,
                        needs_full_read: false,
                        retired_at: None,
                        created_at: at,
                        last_seen_at: Some(at),
                    })
                    .execute(conn)?;
            }
        }
        if let Some(from) = &moved_from {
            tracing::info!(instance = id, %from, to = host, "instance moved");
        }
        Ok(Upserted::Recorded {
            instance: get(conn, id)?,
            moved_from,
        })
    })
}

pub fn get(conn: &mut DbConnection, id: &str) -> DbResult<Instance> {
    instances::table
        .find(id)
        .select(Instance::as_select())
        .first(conn)
        .found(|| format!("instance {id}"))
}

/// Instances of one project (or all, for `None`), oldest first.
/// A page of instances after `marker` (keyset over `(created_at, id)`).
pub fn list(
    conn: &mut DbConnection,
    project_id: Option<&str>,
    limit: i64,
    marker: Option<&Instance>,
    ascending: bool,
) -> DbResult<Vec<Instance>> {
    let mut q = instances::table.into_boxed();
    if let Some(p) = project_id {
        q = q.filter(instances::project_id.eq(p.to_string()));
    }
    let marker = marker.map(|m| (m.created_at, m.id.clone()));
    Ok(keyset_page!(q, instances, marker, ascending, limit)
        .select(Instance::as_select())
        .load(conn)?)
}

pub fn disk(conn: &mut DbConnection, id: &str) -> DbResult<Option<Disk>> {
    Ok(disks::table
        .find(id)
        .select(Disk::as_select())
        .first(conn)
        .optional()?)
}

pub fn disks_of(conn: &mut DbConnection, instance_id: &str) -> DbResult<Vec<Disk>> {
    Ok(disks::table
        .filter(disks::instance_id.eq(instance_id))
        .order(disks::device.asc())
        .select(Disk::as_select())
        .load(conn)?)
}

/// Distrust a disk's dirty bitmap: its next backup reads the whole disk
/// (after a catalog rebuild, which cannot know the bitmaps QEMU holds).
pub fn require_full_read(conn: &mut DbConnection, disk_id: &str) -> DbResult<()> {
    diesel::update(disks::table.find(disk_id))
        .set((
            disks::needs_full_read.eq(true),
            disks::bitmap_name.eq(None::<String>),
        ))
        .execute(conn)?;
    Ok(())
}

/// The backup policy an instance is attached to, if any.
pub fn policy_of(conn: &mut DbConnection, instance_id: &str) -> DbResult<Option<String>> {
    use super::schema::policy_instances as pi;
    Ok(pi::table
        .find(instance_id)
        .select(pi::policy_id)
        .first(conn)
        .optional()?)
}

/// Update an instance's `updated_at`; inside a transaction this locks its
/// row until the transaction ends (serialising work on one instance).
pub fn touch(conn: &mut DbConnection, id: &str) -> DbResult<()> {
    diesel::update(instances::table.find(id))
        .set(instances::updated_at.eq(now()))
        .execute(conn)?;
    Ok(())
}

/// Retire the disks that went away: on a host that still reports (a
/// heartbeat after `host_alive_after`), not reported since
/// `gone_before` (their instance was deleted, or the disk detached). The
/// head's open reference intervals end at the head, so the head counts
/// only while its backup is not deleted and retention treats it as any
/// other backup; the bitmap is forgotten. A disk of a host that stopped
/// reporting altogether is left alone (the host may be down), and so is a
/// disk never seen (a row from before the column) and one whose instance
/// has a backup queued or running (its commit builds on the head). An
/// instance whose disks are all retired is marked gone. Returns the disks
/// retired.
pub fn retire_gone(
    conn: &mut DbConnection,
    host_alive_after: NaiveDateTime,
    gone_before: NaiveDateTime,
) -> DbResult<Vec<Disk>> {
    use super::schema::hosts;
    let alive: Vec<String> = hosts::table
        .filter(hosts::heartbeat_at.ge(host_alive_after))
        .select(hosts::name)
        .load(conn)?;
    let candidates: Vec<Disk> = disks::table
        .inner_join(instances::table)
        .filter(disks::retired_at.is_null())
        .filter(disks::last_seen_at.lt(gone_before))
        .filter(instances::host.eq_any(&alive))
        .select(Disk::as_select())
        .load(conn)?;
    let mut retired = Vec::new();
    for d in candidates {
        if let Some(d) = retire_one(conn, &d.id, &d.instance_id, gone_before)? {
            retired.push(d);
        }
    }
    Ok(retired)
}

/// Retire one disk if it still qualifies, judged under its instance's row
/// lock: a backup plan or commit of the instance takes the same lock
/// first, so the head and the backups read here are current.
fn retire_one(
    conn: &mut DbConnection,
    disk_id: &str,
    instance_id: &str,
    gone_before: NaiveDateTime,
) -> DbResult<Option<Disk>> {
    conn.transaction(|conn| {
        touch(conn, instance_id)?;
        let Some(d) = disks::table
            .find(disk_id)
            .select(Disk::as_select())
            .first(conn)
            .optional()?
        else {
            return Ok(None);
        };
        let seen_lately = d.last_seen_at.is_none_or(|s| s >= gone_before);
        if d.retired_at.is_some() || seen_lately {
            return Ok(None);
        }
        if let Some(active) = super::backups::active_for_instance(conn, instance_id)? {
            tracing::info!(disk = disk_id, backup = %active.id, "disk not reported, but its instance's backup is running: retired later");
            return Ok(None);
        }
        diesel::update(disks::table.find(disk_id))
            .set((
                disks::retired_at.eq(now()),
                disks::bitmap_name.eq(None::<String>),
                disks::needs_full_read.eq(true),
            ))
            .execute(conn)?;
        if d.head_seq > 0 {
            super::segments::end_open_refs(conn, disk_id, d.head_seq + 1)?;
            if let Some(head) = super::backups::head_record(conn, disk_id)? {
                super::segments::lost_a_user(conn, &head.backup_id)?;
            }
        }
        let left: i64 = disks::table
            .filter(disks::instance_id.eq(instance_id))
            .filter(disks::retired_at.is_null())
            .count()
            .get_result(conn)?;
        if left == 0 {
            diesel::update(instances::table.find(instance_id))
                .set(instances::status.eq(InstanceStatus::Gone))
                .execute(conn)?;
        }
        Ok(Some(d))
    })
}
