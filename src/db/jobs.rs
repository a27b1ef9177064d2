//! Work handed to workers over the queue, tracked so that nothing stays
//! `running` for ever: a job carries a deadline and a heartbeat.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::jobs;
use super::{now, DbConnection, DbError, DbResult, OptionalRow};
pub use crate::status::{JobKind, JobStatus};

/// Jobs a host may still run or report on.
const ACTIVE: [JobStatus; 2] = [JobStatus::Queued, JobStatus::Running];

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = jobs)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub project_id: String,
    pub backup_id: Option<String>,
    pub restore_id: Option<String>,
    pub host: Option<String>,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub payload: String,
    pub error: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub started_at: Option<NaiveDateTime>,
    pub heartbeat_at: Option<NaiveDateTime>,
    pub deadline_at: Option<NaiveDateTime>,
}

impl Job {
    /// A new queued job of `kind` for `project_id` (three attempts).
    pub fn queued(kind: JobKind, project_id: &str) -> Job {
        let at = now();
        Job {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            project_id: project_id.to_string(),
            backup_id: None,
            restore_id: None,
            host: None,
            status: JobStatus::Queued,
            attempts: 0,
            max_attempts: 3,
            payload: "{}".into(),
            error: None,
            created_at: at,
            updated_at: at,
            started_at: None,
            heartbeat_at: None,
            deadline_at: None,
        }
    }
}

pub fn insert(conn: &mut DbConnection, job: &Job) -> DbResult<()> {
    diesel::insert_into(jobs::table).values(job).execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, id: &str) -> DbResult<Job> {
    jobs::table
        .find(id)
        .select(Job::as_select())
        .first(conn)
        .found(|| format!("job {id}"))
}

/// A worker started (or restarted, after a redelivery) the job. Returns
/// `Conflict` when the job already ended, so a redelivered message is
/// acknowledged and dropped instead of running twice.
pub fn start(conn: &mut DbConnection, id: &str, host: &str) -> DbResult<Job> {
    let at = now();
    let updated = diesel::update(jobs::table.find(id).filter(jobs::status.eq_any(ACTIVE)))
        .set((
            jobs::status.eq(JobStatus::Running),
            jobs::host.eq(host),
            jobs::attempts.eq(jobs::attempts + 1),
            jobs::started_at.eq(at),
            jobs::heartbeat_at.eq(at),
            jobs::updated_at.eq(at),
        ))
        .execute(conn)?;
    let job = get(conn, id)?;
    if updated == 0 {
        return Err(DbError::Conflict(format!(
            "job {id} is already {}",
            job.status
        )));
    }
    Ok(job)
}

/// What a job works on.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Backup(&'a str),
    Restore(&'a str),
}

/// The queued or running job of a backup or restore, if any.
pub fn active_for(conn: &mut DbConnection, subject: Subject<'_>) -> DbResult<Option<Job>> {
    let q = jobs::table.filter(jobs::status.eq_any(ACTIVE)).into_boxed();
    let q = match subject {
        Subject::Backup(id) => q.filter(jobs::backup_id.eq(id)),
        Subject::Restore(id) => q.filter(jobs::restore_id.eq(id)),
    };
    Ok(q.select(Job::as_select()).first(conn).optional()?)
}

pub fn heartbeat(conn: &mut DbConnection, id: &str) -> DbResult<()> {
    let at = now();
    diesel::update(
        jobs::table
            .find(id)
            .filter(jobs::status.eq(JobStatus::Running)),
    )
    .set((jobs::heartbeat_at.eq(at), jobs::updated_at.eq(at)))
    .execute(conn)?;
    Ok(())
}

/// End a job; only a queued or running job can end, and only once.
pub fn finish(
    conn: &mut DbConnection,
    id: &str,
    status: JobStatus,
    error: Option<&str>,
) -> DbResult<bool> {
    debug_assert!(!status.is_active());
    let updated = diesel::update(jobs::table.find(id).filter(jobs::status.eq_any(ACTIVE)))
        .set((
            jobs::status.eq(status),
            jobs::error.eq(error),
            jobs::updated_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(updated == 1)
}

/// Jobs to fail: running ones whose worker stopped heart-beating before
/// `stale_before`, and queued or running ones past their deadline.
pub fn stalled(conn: &mut DbConnection, stale_before: NaiveDateTime) -> DbResult<Vec<Job>> {
    let at = now();
    Ok(jobs::table
        .filter(jobs::status.eq_any(ACTIVE))
        .filter(
            jobs::status
                .eq(JobStatus::Running)
                .and(jobs::heartbeat_at.lt(stale_before))
                .or(jobs::deadline_at.lt(at)),
        )
        .select(Job::as_select())
        .load(conn)?)
}

/// Start of the oldest job still queued or running: garbage collection
/// must not delete anything such a writer may still reference.
pub fn oldest_active_start(conn: &mut DbConnection) -> DbResult<Option<NaiveDateTime>> {
    Ok(jobs::table
        .filter(jobs::status.eq_any(ACTIVE))
        .select(diesel::dsl::min(jobs::created_at))
        .first(conn)?)
}
