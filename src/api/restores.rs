//! `/v1/restores`: restore one disk of a backup to a target, tracked as a
//! resource with its own status (`service::restores`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::paging::{next_link, page_of};
use super::{base_url, timestamp, ActionBody, RequestContext, State};
use crate::service::restores::{self, CreateRestore, Restore};

fn view(r: &Restore, base: &str) -> serde_json::Value {
    let target: serde_json::Value = serde_json::from_str(&r.target).unwrap_or(json!({}));
    json!({
        "id": r.id,
        "backup_id": r.backup_id,
        "project_id": r.project_id,
        "user_id": r.user_id,
        "status": r.status,
        "progress": r.progress,
        "bytes_written": r.bytes_written,
        "format": r.format,
        "target": target,
        "error": r.error,
        "created_at": timestamp(&r.created_at),
        "updated_at": timestamp(&r.updated_at),
        "completed_at": r.completed_at.as_ref().map(timestamp),
        "links": [{"rel": "self", "href": format!("{base}/v1/restores/{}", r.id)}],
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    restore: CreateRestore,
}

pub async fn create(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, ApiError> {
    let caller = ctx.caller(&state);
    // The caller's own token: an image is made in their project with it.
    let token = state
        .keystone
        .as_ref()
        .and(req.headers().get("x-auth-token"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let restore = restores::create(
        &state.ekko,
        &caller,
        body.into_inner().restore,
        token.as_deref(),
    )
    .await?;
    let base = base_url(&req, &state);
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("{base}/v1/restores/{}", restore.id)))
        .json(json!({ "restore": view(&restore, &base) })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    marker: Option<String>,
    /// `created_at:asc` or `created_at:desc` (the default).
    sort: Option<String>,
    all_projects: Option<bool>,
    project_id: Option<String>,
}

pub async fn list(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let page = page_of(&state, q.limit, q.marker, q.sort.as_deref(), true)?;
    let all = q.all_projects.unwrap_or(false);
    let caller = ctx.caller(&state);
    let found = restores::list(&state.ekko, &caller, all, q.project_id, page.clone()).await?;
    let base = base_url(&req, &state);
    let body: Vec<_> = found.iter().map(|r| view(r, &base)).collect();
    let mut out = json!({ "restores": body });
    let last = found.last().map(|r| r.id.as_str());
    if let Some(next) = next_link(&page, &req, &base, found.len(), last)? {
        out["restores_links"] = serde_json::to_value(next).map_err(ApiError::internal)?;
    }
    Ok(HttpResponse::Ok().json(out))
}

pub async fn show(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let r = restores::visible(&state.ekko, &ctx.caller(&state), &id, "ekko:restore:get").await?;
    Ok(HttpResponse::Ok().json(json!({ "restore": view(&r, &base_url(&req, &state)) })))
}

/// `POST /v1/restores/{id}/action` with `{"cancel": {}}`: stop a queued or
/// running restore; it ends in `error` at once and its host removes the
/// partial target.
pub async fn action(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
    body: web::Json<ActionBody>,
) -> Result<HttpResponse, ApiError> {
    body.require_cancel()?;
    let cancelled = restores::cancel(&state.ekko, &ctx.caller(&state), &id).await?;
    Ok(HttpResponse::Accepted()
        .json(json!({ "restore": view(&cancelled, &base_url(&req, &state)) })))
}
