//! `/v1/quotas/{project_id}`: a project's limits and usage; admins set them.
//! Creating a backup over a limit answers 403 `quota_exceeded` (API-SIG).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{RequestContext, State};
use crate::db::quotas::{self, limits, BACKUPS, BACKUP_GIGABYTES, GIB};

/// Keystone project ids are at most 64 characters of `[A-Za-z0-9_-]`.
fn check_project_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{id:?} is not a project id")))
    }
}

async fn view(state: &State, project_id: String) -> Result<serde_json::Value, ApiError> {
    let config = state.ekko.config.quota.clone();
    let p = project_id.clone();
    let ((max_backups, max_gib), (kept, bytes)) = state
        .db()?
        .run(move |c| Ok((limits(c, &config, &p)?, quotas::usage(c, &p)?)))
        .await?;
    Ok(json!({"quota": {
        "project_id": project_id,
        BACKUPS: {"limit": max_backups, "in_use": kept},
        BACKUP_GIGABYTES: {"limit": max_gib, "in_use": (bytes as f64 / GIB as f64 * 100.0).round() / 100.0},
    }}))
}

pub async fn show(
    ctx: RequestContext,
    state: State,
    project_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    check_project_id(&project_id)?;
    ctx.authorize(
        &state,
        "ekko:quota:get",
        &project_id,
        Some(("quota of project", &project_id)),
    )?;
    Ok(HttpResponse::Ok().json(view(&state, project_id.into_inner()).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    quota: UpdateQuota,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateQuota {
    backups: Option<i64>,
    backup_gigabytes: Option<i64>,
}

pub async fn update(
    ctx: RequestContext,
    state: State,
    project_id: web::Path<String>,
    body: web::Json<UpdateBody>,
) -> Result<HttpResponse, ApiError> {
    check_project_id(&project_id)?;
    ctx.authorize(&state, "ekko:quota:update", &project_id, None)?;
    let q = body.into_inner().quota;
    let changes: Vec<(&'static str, i64)> =
        [(BACKUPS, q.backups), (BACKUP_GIGABYTES, q.backup_gigabytes)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
    if let Some((k, v)) = changes.iter().find(|(_, v)| *v < -1 || *v > 1 << 40) {
        return Err(ApiError::bad_request(format!(
            "{k} must be -1 (unlimited) or a limit from 0 to 2^40, not {v}"
        )));
    }
    let p = project_id.clone();
    state
        .db()?
        .run(move |c| {
            for (k, v) in &changes {
                quotas::set(c, &p, k, *v)?;
            }
            Ok(())
        })
        .await?;
    Ok(HttpResponse::Ok().json(view(&state, project_id.into_inner()).await?))
}
