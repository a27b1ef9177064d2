//! Restores: one disk of a backup written to a target, with its own status
//! (`queued`, `running`, `completed`, `error`).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::restores;
use super::{now, DbConnection, DbError, DbResult, OptionalRow};
pub use crate::status::{ImageFormat, RestoreStatus};

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = restores)]
pub struct Restore {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub backup_id: String,
    /// JSON: `{"type": "file", "host": …, "path": …, "device": …}`.
    pub target: String,
    pub format: ImageFormat,
    pub status: RestoreStatus,
    pub progress: i32,
    pub bytes_written: i64,
    pub error: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub completed_at: Option<NaiveDateTime>,
}

impl Restore {
    pub fn queued(
        project_id: &str,
        user_id: &str,
        backup_id: &str,
        target: &str,
        format: ImageFormat,
    ) -> Restore {
        let at = now();
        Restore {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project_id.into(),
            user_id: user_id.into(),
            backup_id: backup_id.into(),
            target: target.into(),
            format,
            status: RestoreStatus::Queued,
            progress: 0,
            bytes_written: 0,
            error: None,
            created_at: at,
            updated_at: at,
            completed_at: None,
        }
    }
}

pub fn insert(conn: &mut DbConnection, r: &Restore) -> DbResult<()> {
    diesel::insert_into(restores::table)
        .values(r)
        .execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, id: &str) -> DbResult<Restore> {
    restores::table
        .find(id)
        .select(Restore::as_select())
        .first(conn)
        .found(|| format!("restore {id}"))
}

/// A project's restores (or everyone's), newest first.
/// A page of restores after `marker` (keyset over `(created_at, id)`).
pub fn list(
    conn: &mut DbConnection,
    project_id: Option<&str>,
    limit: i64,
    marker: Option<&Restore>,
    ascending: bool,
) -> DbResult<Vec<Restore>> {
    let mut q = restores::table.into_boxed();
    if let Some(p) = project_id {
        q = q.filter(restores::project_id.eq(p.to_string()));
    }
    let marker = marker.map(|m| (m.created_at, m.id.clone()));
    Ok(keyset_page!(q, restores, marker, ascending, limit)
        .select(Restore::as_select())
        .load(conn)?)
}

/// Move a restore along `queued → running → completed | error`; a restore
/// that ended stays ended.
pub fn transition(
    conn: &mut DbConnection,
    id: &str,
    to: RestoreStatus,
    error: Option<&str>,
    bytes_written: Option<i64>,
) -> DbResult<()> {
    // Only a queued or running restore moves; an ended one stays ended.
    let from = [RestoreStatus::Queued, RestoreStatus::Running];
    if to == RestoreStatus::Queued {
        return Err(DbError::Conflict(format!(
            "restore {id} cannot go back to queued"
        )));
    }
    let at = now();
    let ended = !to.is_active();
    let updated = diesel::update(
        restores::table
            .find(id)
            .filter(restores::status.eq_any(from)),
    )
    .set((
        restores::status.eq(to),
        restores::error.eq(error),
        restores::progress.eq(if to == RestoreStatus::Completed {
            100
        } else {
            0
        }),
        restores::bytes_written.eq(bytes_written.unwrap_or(0)),
        restores::completed_at.eq(ended.then_some(at)),
        restores::updated_at.eq(at),
    ))
    .execute(conn)?;
    if updated == 0 {
        let r = get(conn, id)?;
        return Err(DbError::Conflict(format!(
            "restore {id} is {}, it cannot become {to}",
            r.status
        )));
    }
    Ok(())
}

pub fn set_progress(conn: &mut DbConnection, id: &str, percent: i32, bytes: i64) -> DbResult<()> {
    diesel::update(
        restores::table
            .find(id)
            .filter(restores::status.eq(RestoreStatus::Running)),
    )
    .set((
        restores::progress.eq(percent.clamp(0, 99)),
        restores::bytes_written.eq(bytes),
        restores::updated_at.eq(now()),
    ))
    .execute(conn)?;
    Ok(())
}

/// How many restores the catalog holds in each status (metrics).
pub fn count_by_status(conn: &mut DbConnection) -> DbResult<Vec<(RestoreStatus, i64)>> {
    Ok(restores::table
        .group_by(restores::status)
        .select((restores::status, diesel::dsl::count_star()))
        .load(conn)?)
}
