//! A project's limits and usage; admins set them. Creating a backup over
//! a limit is refused with `LimitExceeded` (the API's 403
//! `quota_exceeded`, as API-SIG says).

use crate::db::quotas::{self, limits};
pub use crate::db::quotas::{BACKUPS, BACKUP_GIGABYTES, GIB};
use crate::Ekko;

use super::{Caller, ServiceError, ServiceResult};

/// A project's limits (-1: unlimited) and what it uses.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaUsage {
    pub project_id: String,
    pub max_backups: i64,
    pub max_gigabytes: i64,
    pub backups: i64,
    pub bytes: i64,
}

/// Keystone project ids are at most 64 characters of `[A-Za-z0-9_-]`.
fn check_project_id(id: &str) -> ServiceResult<()> {
    crate::ids::ProjectId::parse(id)
        .map(|_| ())
        .map_err(|_| ServiceError::Invalid(format!("{id:?} is not a project id")))
}

async fn usage(ekko: &Ekko, project_id: &str) -> ServiceResult<QuotaUsage> {
    let config = ekko.config.quota.clone();
    let p = project_id.to_string();
    let ((max_backups, max_gigabytes), (backups, bytes)) = ekko
        .db()?
        .run(move |c| Ok((limits(c, &config, &p)?, quotas::usage(c, &p)?)))
        .await?;
    Ok(QuotaUsage {
        project_id: project_id.to_string(),
        max_backups,
        max_gigabytes,
        backups,
        bytes,
    })
}

pub async fn show(ekko: &Ekko, caller: &Caller<'_>, project_id: &str) -> ServiceResult<QuotaUsage> {
    check_project_id(project_id)?;
    caller.authorize(
        "ekko:quota:get",
        project_id,
        Some(("quota of project", project_id)),
    )?;
    usage(ekko, project_id).await
}

/// New limits; absent ones stay.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaChanges {
    pub backups: Option<i64>,
    pub backup_gigabytes: Option<i64>,
}

pub async fn update(
    ekko: &Ekko,
    caller: &Caller<'_>,
    project_id: &str,
    q: QuotaChanges,
) -> ServiceResult<QuotaUsage> {
    check_project_id(project_id)?;
    caller.authorize("ekko:quota:update", project_id, None)?;
    let changes: Vec<(&'static str, i64)> =
        [(BACKUPS, q.backups), (BACKUP_GIGABYTES, q.backup_gigabytes)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
    if let Some((k, v)) = changes.iter().find(|(_, v)| *v < -1 || *v > 1 << 40) {
        return Err(ServiceError::Invalid(format!(
            "{k} must be -1 (unlimited) or a limit from 0 to 2^40, not {v}"
        )));
    }
    let p = project_id.to_string();
    ekko.db()?
        .run(move |c| {
            for (k, v) in &changes {
                quotas::set(c, &p, k, *v)?;
            }
            Ok(())
        })
        .await?;
    usage(ekko, project_id).await
}
