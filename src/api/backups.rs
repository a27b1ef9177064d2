//! `/v1/backups`: create (202, queued), list, show, update, delete.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use super::{base_url, timestamp, ActionBody, RequestContext, State};
use crate::db::backups::{self, Backup, BackupFilter, BackupStatus};
use crate::db::instances;

/// A link in a resource (`self`, `next`).
#[derive(Debug, Serialize)]
pub struct Link {
    pub rel: &'static str,
    pub href: String,
}

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
        status: &b.status,
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
    let project = ctx.list_scope(
        &state,
        "backup",
        q.all_projects.unwrap_or(false),
        q.project_id.clone(),
    )?;
    let page = super::paging::Page::of(&state, q.limit, q.marker.clone(), q.sort.as_deref(), true)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            BackupStatus::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("unknown status {s:?}")))?,
        ),
    };
    let filter = BackupFilter {
        project_id: project.clone(),
        instance_id: q.instance_id.clone(),
        status,
        include_deleted: false,
        name: q.name.clone(),
        ascending: page.ascending,
    };
    let p = page.clone();
    let db = state.db()?;
    let found = db
        .run(move |c| {
            // An unknown marker (or one of another project) is a 400.
            p.resolve(c, project.as_deref(), backups::get, |b| &b.project_id)?;
            backups::list(c, &filter, p.limit, p.marker.as_deref())
        })
        .await
        .map_err(super::paging::marker_error)?;
    let base = base_url(&req, &state);
    let body = BackupList {
        backups: found.iter().map(|b| view(b, &base)).collect(),
        backups_links: page.next(
            &req,
            &base,
            found.len(),
            found.last().map(|b| b.id.as_str()),
        )?,
    };
    Ok(HttpResponse::Ok().json(body))
}

/// Load a backup the caller may see under `action`; 404 otherwise.
async fn visible(
    ctx: &RequestContext,
    state: &State,
    id: &str,
    action: &str,
) -> Result<Backup, ApiError> {
    let b = state.find("backup", id, backups::get).await?;
    if b.status() == Some(BackupStatus::Deleted) {
        return Err(ApiError::not_found("backup", id));
    }
    ctx.authorize_owned(
        state,
        action,
        &b.project_id,
        Some(&b.user_id),
        Some(("backup", id)),
    )?;
    Ok(b)
}

pub async fn show(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let b = visible(&ctx, &state, &id, "ekko:backup:get").await?;
    Ok(HttpResponse::Ok().json(json!({ "backup": view(&b, &base_url(&req, &state)) })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    backup: CreateBackup,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBackup {
    instance_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// `auto` (incremental when possible) or `full`.
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

const MAX_NAME: usize = 255;
const MAX_DESCRIPTION: usize = 4096;
const MAX_METADATA: usize = 16 << 10;

/// A backup's metadata as stored: its JSON, at most 16 KiB.
fn encode_metadata(m: serde_json::Map<String, serde_json::Value>) -> Result<String, ApiError> {
    let json = serde_json::Value::Object(m).to_string();
    if json.len() > MAX_METADATA {
        return Err(ApiError::bad_request("metadata is larger than 16 KiB"));
    }
    Ok(json)
}

pub async fn create(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner().backup;
    let mode = b.mode.unwrap_or_else(|| "auto".into());
    if mode != "auto" && mode != "full" {
        return Err(ApiError::bad_request(format!(
            "mode must be auto or full, not {mode:?}"
        )));
    }
    let name = b.name.unwrap_or_default();
    let description = b.description.unwrap_or_default();
    if name.len() > MAX_NAME || description.len() > MAX_DESCRIPTION {
        return Err(ApiError::bad_request(format!(
            "name (at most {MAX_NAME} bytes) or description (at most {MAX_DESCRIPTION}) too long"
        )));
    }
    let metadata = encode_metadata(b.metadata.unwrap_or_default())?;
    // The instance is named in the body: a missing one (or one of another
    // project) is a bad request, not a missing URL.
    let missing = |e: ApiError| match e.status {
        actix_web::http::StatusCode::NOT_FOUND => {
            ApiError::bad_request(format!("instance {} does not exist", b.instance_id))
        }
        _ => e,
    };
    let instance = state
        .find("instance", &b.instance_id, instances::get)
        .await
        .map_err(missing)?;
    ctx.authorize(
        &state,
        "ekko:backup:create",
        &instance.project_id,
        Some(("instance", &instance.id)),
    )
    .map_err(missing)?;

    let new = crate::conductor::NewBackup {
        instance_id: instance.id.clone(),
        user_id: ctx.creds.user_id.clone(),
        name,
        description,
        mode,
        metadata,
        policy_id: None,
    };
    let backup = crate::conductor::submit_backup(&state.ekko, new).await?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBackup {
    name: Option<String>,
    description: Option<String>,
    protected: Option<bool>,
    /// Replaces the whole metadata object (`{}` clears it).
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

pub async fn update(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
    body: web::Json<UpdateBody>,
) -> Result<HttpResponse, ApiError> {
    let u = body.into_inner().backup;
    if u.name.as_ref().is_some_and(|n| n.len() > MAX_NAME)
        || u.description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION)
    {
        return Err(ApiError::bad_request("name or description too long"));
    }
    let changes = backups::DetailsUpdate {
        name: u.name,
        description: u.description,
        protected: u.protected,
        metadata: u.metadata.map(encode_metadata).transpose()?,
    };
    let b = visible(&ctx, &state, &id, "ekko:backup:update").await?;
    let db = state.db()?;
    let updated = db
        .run(move |c| backups::update_details(c, &b.id, &changes))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "backup": view(&updated, &base_url(&req, &state)) })))
}

pub async fn delete(
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let b = visible(&ctx, &state, &id, "ekko:backup:delete").await?;
    // Protection and status are checked by the conditional UPDATE itself.
    crate::operator::delete_backup(&state.ekko, &b.id)
        .await
        .map_err(|e| match e.downcast::<crate::db::DbError>() {
            Ok(db) => ApiError::from(db),
            Err(other) => ApiError::internal(other),
        })?;
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
    let b = visible(&ctx, &state, &id, "ekko:backup:cancel").await?;
    let why = format!("cancelled by user {}", ctx.creds.user_id);
    let cancelled = crate::conductor::cancel_backup(&state.ekko, &b.id, &why).await?;
    Ok(HttpResponse::Accepted()
        .json(json!({ "backup": view(&cancelled, &base_url(&req, &state)) })))
}
