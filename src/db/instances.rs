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

/// Register or refresh an instance and its disks as `host` reports them.
/// Disks keep their ids (and backup history) across reports. An instance
/// another host reported after `moved_before` stays with that host (a host
/// cannot take over another's instance while it still reports it); one
/// nobody reported since then moves to the reporter (a migration, an
/// evacuation).
pub fn upsert(
    conn: &mut DbConnection,
    id: &str,
    project_id: &str,
    host: &str,
    name: &str,
    reported: &[DiskReport],
    moved_before: NaiveDateTime,
) -> DbResult<Instance> {
    conn.transaction(|conn| {
        let at = now();
        let existing: Option<Instance> = instances::table
            .find(id)
            .select(Instance::as_select())
            .first(conn)
            .optional()?;
        match existing {
            Some(inst) if inst.project_id != project_id => {
                return Err(super::DbError::Conflict(format!(
                    "instance {id} is registered to another project"
                )))
            }
            Some(inst)
                if inst.host != host && inst.last_seen_at.is_some_and(|s| s >= moved_before) =>
            {
                return Err(super::DbError::Conflict(format!(
                    "instance {id} is reported by host {} too; it stays there until that host stops reporting it",
                    inst.host
                )));
            }
            Some(inst) => {
                if inst.host != host {
                    tracing::info!(instance = id, from = %inst.host, to = host, "instance moved");
                }
                diesel::update(instances::table.find(id))
                    .set((
                        instances::host.eq(host),
                        instances::name.eq(name),
                        instances::status.eq(InstanceStatus::Active),
                        instances::updated_at.eq(at),
                        instances::last_seen_at.eq(at),
                    ))
                    .execute(conn)?;
            }
            None => {
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
        get(conn, id)
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
/// reporting altogether is left alone (the host may be down). An instance
/// whose disks are all retired is marked gone. Returns the disks retired.
pub fn retire_gone(
    conn: &mut DbConnection,
    host_alive_after: NaiveDateTime,
    gone_before: NaiveDateTime,
) -> DbResult<Vec<Disk>> {
    use super::schema::hosts;
    conn.transaction(|conn| {
        let alive: Vec<String> = hosts::table
            .filter(hosts::heartbeat_at.ge(host_alive_after))
            .select(hosts::name)
            .load(conn)?;
        let candidates: Vec<(Disk, String)> = disks::table
            .inner_join(instances::table)
            .filter(disks::retired_at.is_null())
            .filter(instances::host.eq_any(&alive))
            .select((Disk::as_select(), instances::host))
            .load(conn)?;
        let at = now();
        let mut retired = Vec::new();
        for (d, _) in candidates {
            if d.last_seen_at.unwrap_or(d.created_at) >= gone_before {
                continue;
            }
            let n = diesel::update(disks::table.find(&d.id).filter(disks::retired_at.is_null()))
                .set((
                    disks::retired_at.eq(at),
                    disks::bitmap_name.eq(None::<String>),
                    disks::needs_full_read.eq(true),
                ))
                .execute(conn)?;
            if n == 0 {
                continue;
            }
            if d.head_seq > 0 {
                super::segments::end_open_refs(conn, &d.id, d.head_seq + 1)?;
                if let Some(head) = super::backups::head_record(conn, &d.id)? {
                    super::segments::lost_a_user(conn, &head.backup_id)?;
                }
            }
            let left: i64 = disks::table
                .filter(disks::instance_id.eq(&d.instance_id))
                .filter(disks::retired_at.is_null())
                .count()
                .get_result(conn)?;
            if left == 0 {
                diesel::update(instances::table.find(&d.instance_id))
                    .set(instances::status.eq(InstanceStatus::Gone))
                    .execute(conn)?;
            }
            retired.push(d);
        }
        Ok(retired)
    })
}
