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
