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

/// The job's host started (or restarted, after a redelivery) it. Returns
/// `Conflict` when the job already ended, so a redelivered message is
/// acknowledged and dropped instead of running twice. The job stays with
/// the host it was sent to: a report from another host changes nothing.
pub fn start(conn: &mut DbConnection, id: &str, host: &str) -> DbResult<Job> {
    let at = now();
    let updated = diesel::update(
        jobs::table
            .find(id)
            .filter(jobs::status.eq_any(ACTIVE))
            .filter(jobs::host.is_null().or(jobs::host.eq(host))),
    )
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
        return Err(DbError::Conflict(match job.host.as_deref() {
            Some(h) if h != host && job.status.is_active() => {
                format!("job {id} is the job of host {h}")
            }
            _ => format!("job {id} is already {}", job.status),
        }));
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
    if updated == 1 {
        release_pins(conn, id)?;
    }
    Ok(updated == 1)
}

/// Pin the records a backup job is planned on (its disks' heads, its
/// dedup sources): while the job is queued or running they count as heads
/// do, so retention keeps every chunk the job may reference at commit.
pub fn pin(conn: &mut DbConnection, job_id: &str, records: &[(String, i64)]) -> DbResult<()> {
    use super::schema::job_pins;
    for (disk_id, seq) in records {
        diesel::insert_into(job_pins::table)
            .values((
                job_pins::job_id.eq(job_id),
                job_pins::disk_id.eq(disk_id),
                job_pins::seq.eq(seq),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// The job ended: its pins go, and the segments of pinned records whose
/// backups no longer count are measured again by the next compaction.
fn release_pins(conn: &mut DbConnection, job_id: &str) -> DbResult<()> {
    use super::schema::{backup_disks, job_pins};
    let pinned: Vec<String> = job_pins::table
        .inner_join(
            backup_disks::table.on(backup_disks::disk_id
                .eq(job_pins::disk_id)
                .and(backup_disks::seq.eq(job_pins::seq))),
        )
        .filter(job_pins::job_id.eq(job_id))
        .select(backup_disks::backup_id)
        .load(conn)?;
    diesel::delete(job_pins::table.filter(job_pins::job_id.eq(job_id))).execute(conn)?;
    for backup_id in pinned {
        super::segments::lost_a_user(conn, &backup_id)?;
    }
    Ok(())
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
    let job: Option<NaiveDateTime> = jobs::table
        .filter(jobs::status.eq_any(ACTIVE))
        .select(diesel::dsl::min(jobs::created_at))
        .first(conn)?;
    // A live export reads with the map and relocations of its start, as a
    // job does.
    let export = super::exports::oldest_live_start(conn)?;
    Ok(match (job, export) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}
