//! The conductor's periodic work: fail jobs whose host went quiet or
//! missed their deadline, and start the backups of due policies.

use std::time::Duration;

use chrono::Utc;
use diesel::Connection;

use crate::db::{instances, jobs};
use crate::status::JobStatus;
use crate::Ekko;

use super::backups::{submit, NewBackup};
use super::jobs::fail_job;
use super::{ServiceError, ServiceResult};

/// Fail the jobs whose worker stopped reporting for `stall_timeout`, and
/// those not even started by their deadline (their host is gone). Several
/// conductors may run this at once: each job ends once.
pub async fn reap_stalled(ekko: &Ekko, stall_timeout: Duration) -> ServiceResult<usize> {
    let stale_before = (Utc::now()
        - chrono::Duration::from_std(stall_timeout).unwrap_or(chrono::Duration::minutes(5)))
    .naive_utc();
    let failed = ekko
        .db()?
        .run(move |c| {
            let mut n = 0;
            for job in jobs::stalled(c, stale_before)? {
                let why = match job.status {
                    JobStatus::Queued => format!(
                        "host {} did not start the job before its deadline",
                        job.host.as_deref().unwrap_or("?")
                    ),
                    _ => format!(
                        "host {} stopped reporting progress (worker or host down)",
                        job.host.as_deref().unwrap_or("?")
                    ),
                };
                if fail_job(c, &job.id, &why)? {
                    tracing::warn!(job = %job.id, %why, "job failed by the conductor");
                    n += 1;
                }
            }
            Ok(n)
        })
        .await?;
    Ok(failed)
}

/// Start the backups of every policy whose run is due: each run is claimed
/// in the catalog first (one row per policy and instant), so several
/// conductors never start it twice. An instance whose previous backup is
/// still queued or running is skipped for this run. Missed runs (all
/// conductors down) are caught up once, not once per missed instant.
pub async fn run_due_policies(ekko: &Ekko) -> ServiceResult<usize> {
    use crate::db::policies;
    let db = ekko.db()?.clone();
    let now = Utc::now();
    let due = db.run(move |c| policies::due(c, now.naive_utc())).await?;
    let mut started = 0;
    for p in due {
        let schedule = p
            .schedule
            .as_deref()
            .map(|s| crate::schedule::Schedule::new(s, &p.timezone));
        let schedule = match schedule {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::error!(policy = %p.id, error = %e, "policy schedule unusable; disabled until edited");
                let id = p.id.clone();
                db.run(move |c| policies::set_next_run(c, &id, p.next_run_at, None))
                    .await?;
                continue;
            }
            None => continue,
        };
        let Some(at) = p.next_run_at.map(|n| n.and_utc()) else {
            // New or edited: compute the first run.
            let next = schedule.next_after(now).map(|t| t.naive_utc());
            let id = p.id.clone();
            db.run(move |c| policies::set_next_run(c, &id, None, next))
                .await?;
            continue;
        };
        let next = schedule.next_after(now.max(at)).map(|t| t.naive_utc());
        let (id, at_naive) = (p.id.clone(), at.naive_utc());
        let claimed = db
            .run(move |c| {
                c.transaction(|c| {
                    if !policies::claim_run(c, &id, at_naive)? {
                        return Ok(None);
                    }
                    policies::set_next_run(c, &id, Some(at_naive), next)?;
                    Ok(Some(policies::instances_of(c, &id)?))
                })
            })
            .await?;
        let Some(instances) = claimed else { continue };
        tracing::info!(policy = %p.id, scheduled_for = %at, instances = instances.len(), "policy run");
        for instance_id in instances {
            let new = NewBackup {
                instance_id: instance_id.clone(),
                user_id: "scheduler".into(),
                name: format!("{} {}", p.name, at.format("%Y-%m-%dT%H:%MZ")),
                description: format!("scheduled by policy {}", p.id),
                mode: "auto".into(),
                metadata: "{}".into(),
                policy_id: Some(p.id.clone()),
            };
            let id = instance_id.clone();
            let submitted = match db.run(move |c| instances::get(c, &id)).await {
                Ok(instance) => submit(ekko, &instance, new).await,
                Err(e) => Err(e.into()),
            };
            match submitted {
                Ok(_) => started += 1,
                Err(ServiceError::Conflict(why)) => {
                    tracing::info!(policy = %p.id, instance = %instance_id, %why, "scheduled backup skipped")
                }
                Err(e) => {
                    tracing::warn!(policy = %p.id, instance = %instance_id, error = %e, "scheduled backup not started")
                }
            }
        }
    }
    Ok(started)
}
