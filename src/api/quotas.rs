//! `/v1/quotas/{project_id}`: a project's limits and usage; admins set them.
//! Creating a backup over a limit answers 403 `quota_exceeded` (API-SIG).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{RequestContext, State};
use crate::service::quotas::{self, QuotaChanges, QuotaUsage, BACKUPS, BACKUP_GIGABYTES, GIB};

fn view(q: &QuotaUsage) -> serde_json::Value {
    json!({"quota": {
        "project_id": q.project_id,
        BACKUPS: {"limit": q.max_backups, "in_use": q.backups},
        BACKUP_GIGABYTES: {"limit": q.max_gigabytes, "in_use": (q.bytes as f64 / GIB as f64 * 100.0).round() / 100.0},
    }})
}

pub async fn show(
    ctx: RequestContext,
    state: State,
    project_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let q = quotas::show(&state.ekko, &ctx.caller(&state), &project_id).await?;
    Ok(HttpResponse::Ok().json(view(&q)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    quota: QuotaChanges,
}

pub async fn update(
    ctx: RequestContext,
    state: State,
    project_id: web::Path<String>,
    body: web::Json<UpdateBody>,
) -> Result<HttpResponse, ApiError> {
    let caller = ctx.caller(&state);
    let q = quotas::update(&state.ekko, &caller, &project_id, body.into_inner().quota).await?;
    Ok(HttpResponse::Ok().json(view(&q)))
}
