//! Backup policies (schedule + retention rules) and the instances they
//! protect. An instance follows at most one policy.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{policies, policy_instances, schedule_runs};
use super::{now, DbConnection, DbError, DbResult, OptionalRow};

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = policies)]
#[diesel(treat_none_as_null = true)]
pub struct Policy {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    /// 5-field cron expression; `None`: on demand only.
    pub schedule: Option<String>,
    pub timezone: String,
    pub keep_last: Option<i32>,
    pub keep_hourly: Option<i32>,
    pub keep_daily: Option<i32>,
    pub keep_weekly: Option<i32>,
    pub keep_monthly: Option<i32>,
    pub keep_yearly: Option<i32>,
    pub min_age_seconds: i64,
    pub enabled: bool,
    pub next_run_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl Policy {
    pub fn new(project_id: &str, name: &str) -> Policy {
        let at = now();
        Policy {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project_id.into(),
            name: name.into(),
            description: String::new(),
            schedule: None,
            timezone: "UTC".into(),
            keep_last: None,
            keep_hourly: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            keep_yearly: None,
            min_age_seconds: 0,
            enabled: true,
            next_run_at: None,
            created_at: at,
            updated_at: at,
        }
    }
}

pub fn insert(conn: &mut DbConnection, p: &Policy) -> DbResult<()> {
    diesel::insert_into(policies::table)
        .values(p)
        .execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, id: &str) -> DbResult<Policy> {
    policies::table
        .find(id)
        .select(Policy::as_select())
        .first(conn)
        .found(|| format!("policy {id}"))
}

/// Policies of a project (all for `None`), oldest first.
pub fn list(conn: &mut DbConnection, project_id: Option<&str>) -> DbResult<Vec<Policy>> {
    let mut q = policies::table.into_boxed();
    if let Some(p) = project_id {
        q = q.filter(policies::project_id.eq(p));
    }
    Ok(q.order((policies::created_at.asc(), policies::id.asc()))
        .select(Policy::as_select())
        .load(conn)?)
}

/// A page of a project's policies after `marker` (keyset over
/// `(created_at, id)`).
pub fn page(
    conn: &mut DbConnection,
    project_id: &str,
    limit: i64,
    marker: Option<&Policy>,
    ascending: bool,
) -> DbResult<Vec<Policy>> {
    let q = policies::table
        .filter(policies::project_id.eq(project_id.to_string()))
        .into_boxed();
    let marker = marker.map(|m| (m.created_at, m.id.clone()));
    Ok(keyset_page!(q, policies, marker, ascending, limit)
        .select(Policy::as_select())
        .load(conn)?)
}

/// Store every field of `p` (the caller read, changed and validated it).
pub fn update(conn: &mut DbConnection, p: &Policy) -> DbResult<Policy> {
    let mut p = p.clone();
    p.updated_at = now();
    diesel::update(policies::table.find(&p.id))
        .set(&p)
        .execute(conn)?;
    get(conn, &p.id)
}

/// Delete a policy; its instances are detached (their backups stay).
pub fn delete(conn: &mut DbConnection, id: &str) -> DbResult<()> {
    conn.transaction(|conn| {
        diesel::delete(policy_instances::table.filter(policy_instances::policy_id.eq(id)))
            .execute(conn)?;
        diesel::delete(policies::table.find(id)).execute(conn)?;
        Ok(())
    })
}

/// The instances a policy protects.
pub fn instances_of(conn: &mut DbConnection, policy_id: &str) -> DbResult<Vec<String>> {
    Ok(policy_instances::table
        .filter(policy_instances::policy_id.eq(policy_id))
        .order(policy_instances::instance_id.asc())
        .select(policy_instances::instance_id)
        .load(conn)?)
}

/// Attach an instance; refused if another policy protects it.
pub fn attach(conn: &mut DbConnection, policy_id: &str, instance_id: &str) -> DbResult<()> {
    conn.transaction(|conn| {
        let current: Option<String> = policy_instances::table
            .find(instance_id)
            .select(policy_instances::policy_id)
            .first(conn)
            .optional()?;
        match current {
            Some(p) if p == policy_id => Ok(()),
            Some(p) => Err(DbError::Conflict(format!(
                "instance {instance_id} follows policy {p}; remove it from that policy first"
            ))),
            None => {
                diesel::insert_into(policy_instances::table)
                    .values((
                        policy_instances::instance_id.eq(instance_id),
                        policy_instances::policy_id.eq(policy_id),
                        policy_instances::created_at.eq(now()),
                    ))
                    .execute(conn)?;
                Ok(())
            }
        }
    })
}

/// Detach an instance; `NotFound` if the policy did not protect it.
pub fn detach(conn: &mut DbConnection, policy_id: &str, instance_id: &str) -> DbResult<()> {
    let n = diesel::delete(
        policy_instances::table
            .filter(policy_instances::policy_id.eq(policy_id))
            .filter(policy_instances::instance_id.eq(instance_id)),
    )
    .execute(conn)?;
    if n == 0 {
        return Err(DbError::NotFound(format!(
            "instance {instance_id} in policy {policy_id}"
        )));
    }
    Ok(())
}

/// Enabled, scheduled policies whose next run is due by `at` (or not yet
/// computed).
pub fn due(conn: &mut DbConnection, at: NaiveDateTime) -> DbResult<Vec<Policy>> {
    Ok(policies::table
        .filter(policies::enabled.eq(true))
        .filter(policies::schedule.is_not_null())
        .filter(
            policies::next_run_at
                .is_null()
                .or(policies::next_run_at.le(at)),
        )
        .select(Policy::as_select())
        .load(conn)?)
}

/// Move a policy's next run from `expected` to `next`; false when another
/// scheduler (or an update) changed it first.
pub fn set_next_run(
    conn: &mut DbConnection,
    id: &str,
    expected: Option<NaiveDateTime>,
    next: Option<NaiveDateTime>,
) -> DbResult<bool> {
    let target = policies::table.find(id);
    let updated = match expected {
        Some(e) => diesel::update(target.filter(policies::next_run_at.eq(e)))
            .set(policies::next_run_at.eq(next))
            .execute(conn)?,
        None => diesel::update(target.filter(policies::next_run_at.is_null()))
            .set(policies::next_run_at.eq(next))
            .execute(conn)?,
    };
    Ok(updated == 1)
}

/// Claim the run of `policy_id` scheduled for `at`: the primary key lets
/// exactly one scheduler win, however many run.
pub fn claim_run(conn: &mut DbConnection, policy_id: &str, at: NaiveDateTime) -> DbResult<bool> {
    let inserted = diesel::insert_into(schedule_runs::table)
        .values((
            schedule_runs::policy_id.eq(policy_id),
            schedule_runs::scheduled_for.eq(at),
            schedule_runs::created_at.eq(now()),
        ))
        .execute(conn);
    match inserted {
        Ok(_) => Ok(true),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
