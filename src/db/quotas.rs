//! Per-project limits and what each project uses of them.

use diesel::prelude::*;

use super::backups::BackupStatus;
use super::schema::{backups, quotas};
use super::{DbConnection, DbResult};

/// Quota resources, named as Cinder names its backup quotas.
pub const BACKUPS: &str = "backups";
pub const BACKUP_GIGABYTES: &str = "backup_gigabytes";
pub const RESOURCES: [&str; 2] = [BACKUPS, BACKUP_GIGABYTES];

/// A project's own limit for `resource`, if one was set.
pub fn get(conn: &mut DbConnection, project_id: &str, resource: &str) -> DbResult<Option<i64>> {
    Ok(quotas::table
        .find((project_id, resource))
        .select(quotas::hard_limit)
        .first(conn)
        .optional()?)
}

/// Set a project's limit (-1: unlimited).
pub fn set(conn: &mut DbConnection, project_id: &str, resource: &str, limit: i64) -> DbResult<()> {
    conn.transaction(|conn| {
        let updated = diesel::update(quotas::table.find((project_id, resource)))
            .set(quotas::hard_limit.eq(limit))
            .execute(conn)?;
        if updated == 0 {
            diesel::insert_into(quotas::table)
                .values((
                    quotas::project_id.eq(project_id),
                    quotas::resource.eq(resource),
                    quotas::hard_limit.eq(limit),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// What a project uses: (backups kept, bytes stored by them).
pub fn usage(conn: &mut DbConnection, project_id: &str) -> DbResult<(i64, i64)> {
    let kept = backups::table
        .filter(backups::project_id.eq(project_id))
        .filter(backups::status.ne(BackupStatus::Deleted.as_str()));
    // Summed here: MySQL's SUM(BIGINT) is a DECIMAL, SQLite's an integer,
    // and a project keeps thousands of backups, not millions.
    let stored: Vec<i64> = kept.select(backups::stored_bytes).load(conn)?;
    let (count, bytes) = (stored.len() as i64, stored.iter().sum::<i64>());
    Ok((count, bytes))
}

pub const GIB: i64 = 1 << 30;

/// A project's limits: its own where set, else the configured defaults.
pub fn limits(
    conn: &mut DbConnection,
    config: &crate::config::QuotaOptions,
    project_id: &str,
) -> DbResult<(i64, i64)> {
    Ok((
        get(conn, project_id, BACKUPS)?.unwrap_or(config.backups),
        get(conn, project_id, BACKUP_GIGABYTES)?.unwrap_or(config.backup_gigabytes),
    ))
}

/// Refuse one more backup for `project_id` if it would pass a limit.
pub fn check_one_more(
    conn: &mut DbConnection,
    config: &crate::config::QuotaOptions,
    project_id: &str,
) -> DbResult<Option<String>> {
    let (max_backups, max_gib) = limits(conn, config, project_id)?;
    let (kept, bytes) = usage(conn, project_id)?;
    if max_backups >= 0 && kept + 1 > max_backups {
        return Ok(Some(format!(
            "quota exceeded: the project keeps {kept} of {max_backups} backups; delete some or ask for more"
        )));
    }
    if max_gib >= 0 && bytes >= max_gib.saturating_mul(GIB) {
        return Ok(Some(format!(
            "quota exceeded: the project stores {:.1} GiB of {max_gib} GiB of backups; delete some or ask for more",
            bytes as f64 / GIB as f64
        )));
    }
    Ok(None)
}
