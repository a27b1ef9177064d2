//! Backup policies: a schedule and retention rules, and the instances
//! they protect.

use serde::Deserialize;

use crate::db::instances;
pub use crate::db::policies::Policy;
use crate::db::policies::{self};
use crate::schedule::{known_time_zone, CronSchedule};
use crate::Ekko;

use super::{find, marker_error, Caller, Page, ServiceError, ServiceResult};

/// Retention rules; absent fields keep their value on update.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<i32>,
    pub keep_hourly: Option<i32>,
    pub keep_daily: Option<i32>,
    pub keep_weekly: Option<i32>,
    pub keep_monthly: Option<i32>,
    pub keep_yearly: Option<i32>,
    pub min_age_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    /// A 5-field cron expression, or null for on-demand only.
    #[serde(default, deserialize_with = "nullable")]
    pub schedule: Option<Option<String>>,
    pub timezone: Option<String>,
    pub enabled: Option<bool>,
    pub retention: Option<Retention>,
}

/// Tells "absent" (None) from "null" (Some(None)).
fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// Apply `f` to `p`, checking every value.
pub fn apply(p: &mut Policy, f: PolicyChanges) -> ServiceResult<()> {
    if let Some(name) = f.name {
        if name.is_empty() || name.len() > 255 {
            return Err(ServiceError::Invalid("name must be 1 to 255 bytes".into()));
        }
        p.name = name;
    }
    if let Some(d) = f.description {
        if d.len() > 4096 {
            return Err(ServiceError::Invalid(
                "description is longer than 4096 bytes".into(),
            ));
        }
        p.description = d;
    }
    if let Some(schedule) = f.schedule {
        if let Some(expr) = &schedule {
            CronSchedule::parse(expr).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        }
        p.schedule = schedule;
        // The scheduler computes the next run from the new schedule.
        p.next_run_at = None;
    }
    if let Some(tz) = f.timezone {
        if !known_time_zone(&tz) {
            return Err(ServiceError::Invalid(format!(
                "unknown time zone {tz:?}: use an IANA name such as UTC or Europe/Paris"
            )));
        }
        p.timezone = tz;
        p.next_run_at = None;
    }
    if let Some(e) = f.enabled {
        p.enabled = e;
        p.next_run_at = None;
    }
    if let Some(r) = f.retention {
        for (slot, value, name) in [
            (&mut p.keep_last, r.keep_last, "keep_last"),
            (&mut p.keep_hourly, r.keep_hourly, "keep_hourly"),
            (&mut p.keep_daily, r.keep_daily, "keep_daily"),
            (&mut p.keep_weekly, r.keep_weekly, "keep_weekly"),
            (&mut p.keep_monthly, r.keep_monthly, "keep_monthly"),
            (&mut p.keep_yearly, r.keep_yearly, "keep_yearly"),
        ] {
            if let Some(v) = value {
                if !(0..=100_000).contains(&v) {
                    return Err(ServiceError::Invalid(format!("{name} must be 0 to 100000")));
                }
                *slot = (v > 0).then_some(v);
            }
        }
        if let Some(age) = r.min_age_seconds {
            if age < 0 {
                return Err(ServiceError::Invalid(
                    "min_age_seconds must not be negative".into(),
                ));
            }
            p.min_age_seconds = age;
        }
    }
    Ok(())
}

/// A policy and the instances it protects.
pub type PolicyWithMembers = (Policy, Vec<String>);

/// The policy, if `action` is allowed on it.
async fn load(ekko: &Ekko, caller: &Caller<'_>, id: &str, action: &str) -> ServiceResult<Policy> {
    let p = find(ekko, "policy", id, policies::get).await?;
    caller.authorize(action, &p.project_id, Some(("policy", id)))?;
    Ok(p)
}

async fn with_members(ekko: &Ekko, p: Policy) -> ServiceResult<PolicyWithMembers> {
    let id = p.id.clone();
    let members = ekko
        .db()?
        .run(move |c| policies::instances_of(c, &id))
        .await?;
    Ok((p, members))
}

pub async fn create(
    ekko: &Ekko,
    caller: &Caller<'_>,
    fields: PolicyChanges,
) -> ServiceResult<PolicyWithMembers> {
    let project = caller.project_id()?.to_string();
    caller.authorize("ekko:policy:create", &project, None)?;
    if fields.name.is_none() {
        return Err(ServiceError::Invalid("a policy needs a name".into()));
    }
    let mut p = Policy::new(&project, "");
    apply(&mut p, fields)?;
    let p2 = p.clone();
    ekko.db()?.run(move |c| policies::insert(c, &p2)).await?;
    Ok((p, Vec::new()))
}

pub async fn list(
    ekko: &Ekko,
    caller: &Caller<'_>,
    page: Page,
) -> ServiceResult<Vec<PolicyWithMembers>> {
    let project = caller.project_id()?.to_string();
    caller.authorize("ekko:policy:get_all", &project, None)?;
    ekko.db()?
        .run(move |c| {
            let marker =
                page.resolve(c, Some(project.as_str()), policies::get, |x| &x.project_id)?;
            let mut out = Vec::new();
            for x in policies::page(c, &project, page.limit, marker.as_ref(), page.ascending)? {
                let members = policies::instances_of(c, &x.id)?;
                out.push((x, members));
            }
            Ok(out)
        })
        .await
        .map_err(marker_error)
}

pub async fn show(ekko: &Ekko, caller: &Caller<'_>, id: &str) -> ServiceResult<PolicyWithMembers> {
    let p = load(ekko, caller, id, "ekko:policy:get").await?;
    with_members(ekko, p).await
}

pub async fn update(
    ekko: &Ekko,
    caller: &Caller<'_>,
    id: &str,
    fields: PolicyChanges,
) -> ServiceResult<PolicyWithMembers> {
    let mut p = load(ekko, caller, id, "ekko:policy:update").await?;
    apply(&mut p, fields)?;
    let p = ekko.db()?.run(move |c| policies::update(c, &p)).await?;
    with_members(ekko, p).await
}

pub async fn delete(ekko: &Ekko, caller: &Caller<'_>, id: &str) -> ServiceResult<()> {
    let p = load(ekko, caller, id, "ekko:policy:delete").await?;
    ekko.db()?.run(move |c| policies::delete(c, &p.id)).await?;
    Ok(())
}

/// Protect an instance of the policy's project with it.
pub async fn add_instance(
    ekko: &Ekko,
    caller: &Caller<'_>,
    id: &str,
    instance_id: &str,
) -> ServiceResult<()> {
    let p = load(ekko, caller, id, "ekko:policy:update").await?;
    // Named in the body: a missing instance (or another project's, which
    // does not exist for this caller) is a bad request.
    let missing = || ServiceError::Invalid(format!("instance {instance_id} does not exist"));
    let i = match find(ekko, "instance", instance_id, instances::get).await {
        Ok(i) if i.project_id == p.project_id => i,
        Ok(_) => return Err(missing()),
        Err(e) => return Err(e.named_in_body("instance", instance_id)),
    };
    ekko.db()?
        .run(move |c| policies::attach(c, &p.id, &i.id))
        .await?;
    Ok(())
}

pub async fn remove_instance(
    ekko: &Ekko,
    caller: &Caller<'_>,
    id: &str,
    instance_id: &str,
) -> ServiceResult<()> {
    let p = load(ekko, caller, id, "ekko:policy:update").await?;
    let instance_id = instance_id.to_string();
    ekko.db()?
        .run(move |c| policies::detach(c, &p.id, &instance_id))
        .await?;
    Ok(())
}

/// What the policy's rules keep and remove now, and why (a dry run;
/// nothing changes).
pub async fn retention(
    ekko: &Ekko,
    caller: &Caller<'_>,
    id: &str,
) -> ServiceResult<(Policy, Vec<crate::retention::InstancePlan>)> {
    let p = load(ekko, caller, id, "ekko:policy:get").await?;
    let plans = crate::retention::plan_policy(ekko, &p.id).await?;
    Ok((p, plans))
}

/// Every policy (`ekko retention --dry-run`).
pub async fn list_all(ekko: &Ekko) -> ServiceResult<Vec<Policy>> {
    Ok(ekko.db()?.run(|c| policies::list(c, None)).await?)
}
