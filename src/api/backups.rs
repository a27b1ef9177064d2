//! `/v1/backups`: create (202, queued), list, show, update, delete.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use super::paging::{next_link, page_of};
use super::{base_url, timestamp, ActionBody, Link, RequestContext, State};
use crate::service::backups::{self, Backup, BackupQuery, CreateBackup, UpdateBackup};

/// A backup as the API shows it (serialized straight from the row: the
/// list is the hottest path, and a `serde_json::Value` tree costs more
/// than the database query).
#[derive(Debug, Serialize)]
pub struct BackupView<'a> {
    id: &'a str,
    name: &'a str,
    description: &'a str,
    status: &'a str,
    instance_id: &'a str,
    project_id: &'a str,
    user_id: &'a str,
    policy_id: Option<&'a str>,
    mode: &'a str,
    kind: Option<&'a str>,
    consistency: Option<&'a str>,
    progress: i32,
    size: i64,
    read_bytes: i64,
    new_bytes: i64,
    stored_bytes: i64,
    dedup_ratio: Option<f64>,
    compression_ratio: Option<f64>,
    error: Option<&'a str>,
    protected: bool,
    metadata: serde_json::Value,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    links: [Link; 1],
    /// Shown by `GET /v1/backups/{id}` (lists leave it out: one more query
    /// per row).
    #[serde(skip_serializing_if = "Option::is_none")]
    replication: Option<ReplicationView>,
}

/// Where a backup's second copy stands.
#[derive(Debug, Serialize)]
struct ReplicationView {
    store: String,
    status: &'static str,
    copied_at: Option<String>,
    lag_seconds: Option<i64>,
}

pub fn view<'a>(b: &'a Backup, base: &str) -> BackupView<'a> {
    let ratio = |a: i64, b: i64| (b > 0).then(|| ((a as f64 / b as f64) * 100.0).round() / 100.0);
    let metadata = if b.metadata == "{}" {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_str(&b.metadata).unwrap_or_else(|_| json!({}))
    };
    BackupView {
        id: &b.id,
        name: &b.name,
        description: &b.description,
        status: b.status.as_str(),
        instance_id: &b.instance_id,
        project_id: &b.project_id,
        user_id: &b.user_id,
        policy_id: b.policy_id.as_deref(),
        mode: &b.mode,
        kind: b.kind.as_deref(),
        consistency: b.consistency.as_deref(),
        progress: b.progress,
        size: b.logical_bytes,
        read_bytes: b.read_bytes,
        new_bytes: b.new_bytes,
        stored_bytes: b.stored_bytes,
        dedup_ratio: ratio(b.read_bytes, b.new_bytes),
        compression_ratio: ratio(b.new_bytes, b.stored_bytes),
        error: b.error.as_deref(),
        protected: b.protected,
        metadata,
        created_at: timestamp(&b.created_at),
        updated_at: timestamp(&b.updated_at),
        started_at: b.started_at.as_ref().map(timestamp),
        completed_at: b.completed_at.as_ref().map(timestamp),
        links: [Link {
            rel: "self",
            href: format!("{base}/v1/backups/{}", b.id),
        }],
        replication: None,
    }
}

#[derive(Serialize)]
struct BackupList<'a> {
    backups: Vec<BackupView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backups_links: Option<[Link; 1]>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    marker: Option<String>,
    /// `created_at:asc` or `created_at:desc` (the default).
    sort: Option<String>,
    status: Option<String>,
    instance_id: Option<String>,
    name: Option<String>,
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
    let query = BackupQuery {
        all_projects: q.all_projects.unwrap_or(false),
        project_id: q.project_id,
        status: q.status,
        instance_id: q.instance_id,
        name: q.name,
    };
    let found = backups::list(&state.ekko, &ctx.caller(&state), query, page.clone()).await?;
    let base = base_url(&req, &state);
    let last = found.last().map(|b| b.id.as_str());
    let body = BackupList {
        backups: found.iter().map(|b| view(b, &base)).collect(),
        backups_links: next_link(&page, &req, &base, found.len(), last)?,
    };
    Ok(HttpResponse::Ok().json(body))
}

pub async fn show(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let b = backups::visible(&state.ekko, &ctx.caller(&state), &id, "ekko:backup:get").await?;
    let mut shown = view(&b, &base_url(&req, &state));
    shown.replication = backups::replication(&state.ekko, &b)
        .await?
        .map(|r| ReplicationView {
            store: r.store,
            status: r.status,
            copied_at: r.copied_at.as_ref().map(timestamp),
            lag_seconds: r.lag_seconds,
        });
    Ok(HttpResponse::Ok().json(json!({ "backup": shown })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    backup: CreateBackup,
}

pub async fn create(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, ApiError> {
    let backup =
        backups::create(&state.ekko, &ctx.caller(&state), body.into_inner().backup).await?;
    let base = base_url(&req, &state);
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("{base}/v1/backups/{}", backup.id)))
        .json(json!({ "backup": view(&backup, &base) })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    backup: UpdateBackup,
}

pub async fn update(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
    body: web::Json<UpdateBody>,
) -> Result<HttpResponse, ApiError> {
    let caller = ctx.caller(&state);
    let updated = backups::update(&state.ekko, &caller, &id, body.into_inner().backup).await?;
    Ok(HttpResponse::Ok().json(json!({ "backup": view(&updated, &base_url(&req, &state)) })))
}

pub async fn delete(
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    backups::delete(&state.ekko, &ctx.caller(&state), &id).await?;
    Ok(HttpResponse::Accepted().finish())
}

/// `POST /v1/backups/{id}/action`: actions on a backup (OpenStack style).
pub async fn action(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
    body: web::Json<ActionBody>,
) -> Result<HttpResponse, ApiError> {
    body.require_cancel()?;
    let cancelled = backups::cancel(&state.ekko, &ctx.caller(&state), &id).await?;
    Ok(HttpResponse::Accepted()
        .json(json!({ "backup": view(&cancelled, &base_url(&req, &state)) })))
}
