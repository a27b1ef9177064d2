//! `/v1/policies`: backup schedules and retention rules, and the instances
//! they protect (`/v1/policies/{id}/instances`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{base_url, timestamp, RequestContext, State};
use crate::db::instances;
use crate::db::policies::{self, Policy};
use crate::schedule::{known_time_zone, CronSchedule};

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

/// Retention rules; absent fields keep their value on update.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    keep_last: Option<i32>,
    keep_hourly: Option<i32>,
    keep_daily: Option<i32>,
    keep_weekly: Option<i32>,
    keep_monthly: Option<i32>,
    keep_yearly: Option<i32>,
    min_age_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFields {
    name: Option<String>,
    description: Option<String>,
    /// A 5-field cron expression, or null for on-demand only.
    #[serde(default, deserialize_with = "nullable")]
    schedule: Option<Option<String>>,
    timezone: Option<String>,
    enabled: Option<bool>,
    retention: Option<Retention>,
}

/// Tells "absent" (None) from "null" (Some(None)).
fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    policy: PolicyFields,
}

/// Apply `f` to `p`, checking every value.
fn apply(p: &mut Policy, f: PolicyFields) -> Result<(), ApiError> {
    if let Some(name) = f.name {
        if name.is_empty() || name.len() > 255 {
            return Err(ApiError::bad_request("name must be 1 to 255 bytes"));
        }
        p.name = name;
    }
    if let Some(d) = f.description {
        if d.len() > 4096 {
            return Err(ApiError::bad_request(
                "description is longer than 4096 bytes",
            ));
        }
        p.description = d;
    }
    if let Some(schedule) = f.schedule {
        if let Some(expr) = &schedule {
            CronSchedule::parse(expr).map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        p.schedule = schedule;
        // The scheduler computes the next run from the new schedule.
        p.next_run_at = None;
    }
    if let Some(tz) = f.timezone {
        if !known_time_zone(&tz) {
            return Err(ApiError::bad_request(format!(
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
                    return Err(ApiError::bad_request(format!("{name} must be 0 to 100000")));
                }
                *slot = (v > 0).then_some(v);
            }
        }
        if let Some(age) = r.min_age_seconds {
            if age < 0 {
                return Err(ApiError::bad_request(
                    "min_age_seconds must not be negative",
                ));
            }
            p.min_age_seconds = age;
        }
    }
    Ok(())
}

async fn load(
    ctx: &RequestContext,
    state: &State,
    id: &str,
    action: &str,
) -> Result<Policy, ApiError> {
    let p = state.find("policy", id, policies::get).await?;
    ctx.authorize(state, action, &p.project_id, Some(("policy", id)))?;
    Ok(p)
}

async fn respond(
    req: &HttpRequest,
    state: &State,
    p: Policy,
    status: actix_web::http::StatusCode,
) -> Result<HttpResponse, ApiError> {
    let id = p.id.clone();
    let members = state
        .db()?
        .run(move |c| policies::instances_of(c, &id))
        .await?;
    let base = base_url(req, state);
    let mut resp = HttpResponse::build(status);
    if status == actix_web::http::StatusCode::CREATED {
        resp.insert_header(("Location", format!("{base}/v1/policies/{}", p.id)));
    }
    Ok(resp.json(json!({ "policy": view(&p, &members, &base) })))
}

pub async fn create(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    body: web::Json<Body>,
) -> Result<HttpResponse, ApiError> {
    let project = ctx.project_id()?.to_string();
    ctx.authorize(&state, "ekko:policy:create", &project, None)?;
    let fields = body.into_inner().policy;
    if fields.name.is_none() {
        return Err(ApiError::bad_request("a policy needs a name"));
    }
    let mut p = Policy::new(&project, "");
    apply(&mut p, fields)?;
    let p2 = p.clone();
    state.db()?.run(move |c| policies::insert(c, &p2)).await?;
    respond(&req, &state, p, actix_web::http::StatusCode::CREATED).await
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
    let project = ctx.project_id()?.to_string();
    ctx.authorize(&state, "ekko:policy:get_all", &project, None)?;
    let page = super::paging::Page::of(&state, q.limit, q.marker, q.sort.as_deref(), false)?;
    let p = page.clone();
    let found = state
        .db()?
        .run(move |c| {
            let marker = p.resolve(c, Some(project.as_str()), policies::get, |x| &x.project_id)?;
            let mut out = Vec::new();
            for x in policies::page(c, &project, p.limit, marker.as_ref(), p.ascending)? {
                let members = policies::instances_of(c, &x.id)?;
                out.push((x, members));
            }
            Ok(out)
        })
        .await
        .map_err(super::paging::marker_error)?;
    let base = base_url(&req, &state);
    let body: Vec<_> = found.iter().map(|(p, m)| view(p, m, &base)).collect();
    let mut out = json!({ "policies": body });
    let last = found.last().map(|(p, _)| p.id.as_str());
    if let Some(next) = page.next(&req, &base, found.len(), last)? {
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
    let p = load(&ctx, &state, &id, "ekko:policy:get").await?;
    respond(&req, &state, p, actix_web::http::StatusCode::OK).await
}

pub async fn update(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
    body: web::Json<Body>,
) -> Result<HttpResponse, ApiError> {
    let mut p = load(&ctx, &state, &id, "ekko:policy:update").await?;
    apply(&mut p, body.into_inner().policy)?;
    let p = state.db()?.run(move |c| policies::update(c, &p)).await?;
    respond(&req, &state, p, actix_web::http::StatusCode::OK).await
}

pub async fn delete(
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = load(&ctx, &state, &id, "ekko:policy:delete").await?;
    state.db()?.run(move |c| policies::delete(c, &p.id)).await?;
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
    let p = load(&ctx, &state, &id, "ekko:policy:update").await?;
    let instance_id = body.into_inner().instance_id;
    // Named in the body: a missing instance (or another project's, which
    // does not exist for this caller) is a bad request.
    let missing = || ApiError::bad_request(format!("instance {instance_id} does not exist"));
    let i = match state.find("instance", &instance_id, instances::get).await {
        Ok(i) if i.project_id == p.project_id => i,
        Ok(_) => return Err(missing()),
        Err(e) if e.status == actix_web::http::StatusCode::NOT_FOUND => return Err(missing()),
        Err(e) => return Err(e),
    };
    state
        .db()?
        .run(move |c| policies::attach(c, &p.id, &i.id))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn remove_instance(
    ctx: RequestContext,
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, instance_id) = path.into_inner();
    let p = load(&ctx, &state, &id, "ekko:policy:update").await?;
    state
        .db()?
        .run(move |c| policies::detach(c, &p.id, &instance_id))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /v1/policies/{id}/retention`: what the policy's rules keep and
/// remove now, and why (a dry run; nothing changes).
pub async fn retention(
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = state.find("policy", &id, policies::get).await?;
    ctx.authorize(
        &state,
        "ekko:policy:get",
        &p.project_id,
        Some(("policy", &p.id)),
    )?;
    let plans = crate::retention::plan_policy(&state.ekko, &p.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(json!({"retention": {"policy_id": p.id, "instances": plans}})))
}
