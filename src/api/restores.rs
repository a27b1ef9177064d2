//! `/v1/restores`: restore one disk of a backup to a target, tracked as a
//! resource with its own status. The target today is a file on a compute
//! host (under its `[backup] restore_dir`): an operator action, admin only
//! by default; image and volume targets for tenants come later.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{base_url, timestamp, ActionBody, RequestContext, State};
use crate::conductor::{self, NewRestore};
use crate::db::backups::{self, BackupStatus};
use crate::db::restores::{self, Restore};

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRestore {
    backup_id: String,
    /// The disk (device name) to restore; optional for one-disk backups.
    #[serde(default)]
    disk: Option<String>,
    target: Target,
    /// `raw` (default) or `qcow2`.
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum Target {
    /// A file under the host's restore directory.
    File {
        path: String,
        #[serde(default)]
        host: Option<String>,
    },
}

pub async fn create(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, ApiError> {
    let r = body.into_inner().restore;
    let format = r.format.unwrap_or_else(|| "raw".into());
    if format != "raw" && format != "qcow2" {
        return Err(ApiError::bad_request(format!(
            "format must be raw or qcow2, not {format:?}"
        )));
    }
    let Target::File { path, host } = r.target;
    let plain = !path.is_empty()
        && path.len() <= 255
        && std::path::Path::new(&path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(ApiError::bad_request(
            "target path must be a relative path (under the host's restore_dir) without '..'",
        ));
    }
    // The backup is named in the body: one the caller cannot see is a bad
    // request, as a missing one.
    let missing = |e: ApiError| match e.status {
        actix_web::http::StatusCode::NOT_FOUND => {
            ApiError::bad_request(format!("backup {} does not exist", r.backup_id))
        }
        _ => e,
    };
    let b = state
        .find("backup", &r.backup_id, backups::get)
        .await
        .map_err(missing)?;
    if b.status() == Some(BackupStatus::Deleted) {
        return Err(missing(ApiError::not_found("backup", &b.id)));
    }
    ctx.authorize_owned(
        &state,
        "ekko:backup:get",
        &b.project_id,
        Some(&b.user_id),
        Some(("backup", &b.id)),
    )
    .map_err(missing)?;
    ctx.authorize(&state, "ekko:restore:create", &b.project_id, None)?;
    let new = NewRestore {
        backup_id: b.id.clone(),
        user_id: ctx.creds.user_id.clone(),
        device: r.disk,
        host,
        path,
        format,
    };
    let restore = conductor::submit_restore(&state.ekko, new).await?;
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
    let project = ctx.list_scope(
        &state,
        "restore",
        q.all_projects.unwrap_or(false),
        q.project_id,
    )?;
    let page = super::paging::Page::of(&state, q.limit, q.marker, q.sort.as_deref(), true)?;
    let p = page.clone();
    let found = state
        .db()?
        .run(move |c| {
            let marker = p.resolve(c, project.as_deref(), restores::get, |r| &r.project_id)?;
            restores::list(c, project.as_deref(), p.limit, marker.as_ref(), p.ascending)
        })
        .await
        .map_err(super::paging::marker_error)?;
    let base = base_url(&req, &state);
    let body: Vec<_> = found.iter().map(|r| view(r, &base)).collect();
    let mut out = json!({ "restores": body });
    if let Some(next) = page.next(
        &req,
        &base,
        found.len(),
        found.last().map(|r| r.id.as_str()),
    )? {
        out["restores_links"] = serde_json::to_value(next).map_err(ApiError::internal)?;
    }
    Ok(HttpResponse::Ok().json(out))
}

/// The restore, if `action` is allowed on it; one of another project the
/// caller may not act on is a 404 (no existence leak).
async fn visible(
    ctx: &RequestContext,
    state: &State,
    id: &str,
    action: &str,
) -> Result<Restore, ApiError> {
    let r = state.find("restore", id, restores::get).await?;
    ctx.authorize_owned(
        state,
        action,
        &r.project_id,
        Some(&r.user_id),
        Some(("restore", id)),
    )?;
    Ok(r)
}

pub async fn show(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let r = visible(&ctx, &state, &id, "ekko:restore:get").await?;
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
    let r = visible(&ctx, &state, &id, "ekko:restore:cancel").await?;
    let why = format!("cancelled by user {}", ctx.creds.user_id);
    let cancelled = conductor::cancel_restore(&state.ekko, &r.id, &why).await?;
    Ok(HttpResponse::Accepted()
        .json(json!({ "restore": view(&cancelled, &base_url(&req, &state)) })))
}
