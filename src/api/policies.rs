//! `/v1/policies`: backup schedules and retention rules, and the instances
//! they protect (`/v1/policies/{id}/instances`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::paging::{next_link, page_of};
use super::{base_url, timestamp, RequestContext, State};
use crate::service::policies::{self, Policy, PolicyChanges};

fn view(p: &Policy, instances: &[String], base: &str) -> serde_json::Value {
    json!({
        "id": p.id,
        "project_id": p.project_id,
        "name": p.name,
        "description": p.description,
        "schedule": p.schedule,
        "timezone": p.timezone,
        "enabled": p.enabled,
        "next_run_at": p.next_run_at.as_ref().map(timestamp),
        "retention": {
            "keep_last": p.keep_last,
            "keep_hourly": p.keep_hourly,
            "keep_daily": p.keep_daily,
            "keep_weekly": p.keep_weekly,
            "keep_monthly": p.keep_monthly,
            "keep_yearly": p.keep_yearly,
            "min_age_seconds": p.min_age_seconds,
        },
        "instances": instances,
        "created_at": timestamp(&p.created_at),
        "updated_at": timestamp(&p.updated_at),
        "links": [{"rel": "self", "href": format!("{base}/v1/policies/{}", p.id)}],
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    policy: PolicyChanges,
}

fn respond(
    req: &HttpRequest,
    state: &State,
    (p, members): (Policy, Vec<String>),
    status: actix_web::http::StatusCode,
) -> HttpResponse {
    let base = base_url(req, state);
    let mut resp = HttpResponse::build(status);
    if status == actix_web::http::StatusCode::CREATED {
        resp.insert_header(("Location", format!("{base}/v1/policies/{}", p.id)));
    }
    resp.json(json!({ "policy": view(&p, &members, &base) }))
}

pub async fn create(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    body: web::Json<Body>,
) -> Result<HttpResponse, ApiError> {
    let p = policies::create(&state.ekko, &ctx.caller(&state), body.into_inner().policy).await?;
    Ok(respond(
        &req,
        &state,
        p,
        actix_web::http::StatusCode::CREATED,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    marker: Option<String>,
    /// `created_at:asc` (the default) or `created_at:desc`.
    sort: Option<String>,
}

pub async fn list(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let page = page_of(&state, q.limit, q.marker, q.sort.as_deref(), false)?;
    let found = policies::list(&state.ekko, &ctx.caller(&state), page.clone()).await?;
    let base = base_url(&req, &state);
    let body: Vec<_> = found.iter().map(|(p, m)| view(p, m, &base)).collect();
    let mut out = json!({ "policies": body });
    let last = found.last().map(|(p, _)| p.id.as_str());
    if let Some(next) = next_link(&page, &req, &base, found.len(), last)? {
        out["policies_links"] = serde_json::to_value(next).map_err(ApiError::internal)?;
    }
    Ok(HttpResponse::Ok().json(out))
}

pub async fn show(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = policies::show(&state.ekko, &ctx.caller(&state), &id).await?;
    Ok(respond(&req, &state, p, actix_web::http::StatusCode::OK))
}

pub async fn update(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
    body: web::Json<Body>,
) -> Result<HttpResponse, ApiError> {
    let caller = ctx.caller(&state);
    let p = policies::update(&state.ekko, &caller, &id, body.into_inner().policy).await?;
    Ok(respond(&req, &state, p, actix_web::http::StatusCode::OK))
}

pub async fn delete(
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    policies::delete(&state.ekko, &ctx.caller(&state), &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddInstance {
    instance_id: String,
}

pub async fn add_instance(
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
    body: web::Json<AddInstance>,
) -> Result<HttpResponse, ApiError> {
    let instance_id = body.into_inner().instance_id;
    policies::add_instance(&state.ekko, &ctx.caller(&state), &id, &instance_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn remove_instance(
    ctx: RequestContext,
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, instance_id) = path.into_inner();
    policies::remove_instance(&state.ekko, &ctx.caller(&state), &id, &instance_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /v1/policies/{id}/retention`: what the policy's rules keep and
/// remove now, and why (a dry run; nothing changes).
pub async fn retention(
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (p, plans) = policies::retention(&state.ekko, &ctx.caller(&state), &id).await?;
    Ok(HttpResponse::Ok().json(json!({"retention": {"policy_id": p.id, "instances": plans}})))
}
