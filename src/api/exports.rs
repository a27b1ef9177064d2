//! `/v1/backups/{id}/exports` and `/v1/exports`: one disk of a backup
//! served read-only over NBD by a host for a lifetime
//! (`service::exports`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::paging::{next_link, page_of};
use super::{base_url, timestamp, RequestContext, State};
use crate::service::exports::{self, CreateExport, Export};

fn view(e: &Export, base: &str) -> serde_json::Value {
    json!({
        "id": e.id,
        "backup_id": e.backup_id,
        "project_id": e.project_id,
        "user_id": e.user_id,
        "disk": e.device,
        "host": e.host,
        "status": e.status,
        "url": e.url,
        "tls": e.tls,
        "lifetime": e.lifetime,
        "expires_at": timestamp(&e.expires_at),
        "error": e.error,
        "created_at": timestamp(&e.created_at),
        "updated_at": timestamp(&e.updated_at),
        "links": [{"rel": "self", "href": format!("{base}/v1/exports/{}", e.id)}],
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(default)]
    export: CreateExport,
}

pub async fn create(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    backup_id: web::Path<String>,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, ApiError> {
    let caller = ctx.caller(&state);
    let e = exports::create(&state.ekko, &caller, &backup_id, body.into_inner().export).await?;
    let base = base_url(&req, &state);
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("{base}/v1/exports/{}", e.id)))
        .json(json!({ "export": view(&e, &base) })))
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
    backup_id: Option<String>,
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
    let found = exports::list(
        &state.ekko,
        &caller,
        q.backup_id,
        all,
        q.project_id,
        page.clone(),
    )
    .await?;
    let base = base_url(&req, &state);
    let body: Vec<_> = found.iter().map(|e| view(e, &base)).collect();
    let mut out = json!({ "exports": body });
    let last = found.last().map(|e| e.id.as_str());
    if let Some(next) = next_link(&page, &req, &base, found.len(), last)? {
        out["exports_links"] = serde_json::to_value(next).map_err(ApiError::internal)?;
    }
    Ok(HttpResponse::Ok().json(out))
}

pub async fn show(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let e = exports::visible(&state.ekko, &ctx.caller(&state), &id, "ekko:export:get").await?;
    Ok(HttpResponse::Ok().json(json!({ "export": view(&e, &base_url(&req, &state)) })))
}

/// `DELETE /v1/exports/{id}`: its host stops serving it (`ending`, then
/// `ended`); an export that has ended already is left as it is.
pub async fn delete(
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    exports::delete(&state.ekko, &ctx.caller(&state), &id).await?;
    Ok(HttpResponse::Accepted().finish())
}
