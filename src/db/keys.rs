//! Encrypted projects' keys, wrapped by the master key (see `crypto`).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::project_keys;
use super::{now, DbConnection, DbResult};
use crate::crypto::WrappedKey;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = project_keys)]
pub struct ProjectKeyRow {
    pub project_id: String,
    pub master_key_id: String,
    pub wrapped: String,
    pub created_at: NaiveDateTime,
    pub rotated_at: Option<NaiveDateTime>,
}

impl ProjectKeyRow {
    pub fn wrapped_key(&self) -> DbResult<WrappedKey> {
        serde_json::from_str(&self.wrapped).map_err(|e| {
            super::DbError::Conflict(format!(
                "project key of {} is corrupt: {e}",
                self.project_id
            ))
        })
    }
}

pub fn get(conn: &mut DbConnection, project_id: &str) -> DbResult<Option<ProjectKeyRow>> {
    Ok(project_keys::table
        .find(project_id)
        .select(ProjectKeyRow::as_select())
        .first(conn)
        .optional()?)
}

/// Store a project's first key; if another process stored one first, that
/// one stands. Returns the key the project has.
pub fn insert_or_get(
    conn: &mut DbConnection,
    project_id: &str,
    key: &WrappedKey,
) -> DbResult<ProjectKeyRow> {
    if let Some(row) = get(conn, project_id)? {
        return Ok(row);
    }
    let wrapped = serde_json::to_string(key)
        .map_err(|e| super::DbError::Conflict(format!("project key: {e}")))?;
    let inserted = diesel::insert_into(project_keys::table)
        .values((
            project_keys::project_id.eq(project_id),
            project_keys::master_key_id.eq(&key.master_key_id),
            project_keys::wrapped.eq(&wrapped),
            project_keys::created_at.eq(now()),
        ))
        .execute(conn);
    match inserted {
        Ok(_) => {}
        // Lost a race with another creator: theirs is the key.
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => {}
        Err(e) => return Err(e.into()),
    }
    get(conn, project_id)?
        .ok_or_else(|| super::DbError::Conflict(format!("project key of {project_id} vanished")))
}

pub fn all(conn: &mut DbConnection) -> DbResult<Vec<ProjectKeyRow>> {
    Ok(project_keys::table
        .order(project_keys::project_id.asc())
        .select(ProjectKeyRow::as_select())
        .load(conn)?)
}

/// Replace every project's wrapping (master key rotation), in one
/// transaction.
pub fn rewrap_all(conn: &mut DbConnection, rewrapped: &[(String, WrappedKey)]) -> DbResult<()> {
    use diesel::Connection;
    conn.transaction(|conn| {
        for (project, key) in rewrapped {
            let wrapped = serde_json::to_string(key)
                .map_err(|e| super::DbError::Conflict(format!("project key: {e}")))?;
            diesel::update(project_keys::table.find(project))
                .set((
                    project_keys::master_key_id.eq(&key.master_key_id),
                    project_keys::wrapped.eq(wrapped),
                    project_keys::rotated_at.eq(now()),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// The master key ids that wrap the catalog's project keys.
pub fn master_key_ids(conn: &mut DbConnection) -> DbResult<Vec<String>> {
    Ok(project_keys::table
        .select(project_keys::master_key_id)
        .distinct()
        .load(conn)?)
}
