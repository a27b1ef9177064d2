//! `/v1/instances`: the instances known to Ekko, their disks, host, last
//! backup and whether a backup policy protects them.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::paging::{next_link, page_of};
use super::{base_url, timestamp, RequestContext, State};
use crate::service::instances::{self, InstanceDetails};

fn view(d: &InstanceDetails, base: &str) -> serde_json::Value {
    let (i, policy) = (&d.instance, &d.policy);
    json!({
        "id": i.id,
        "name": i.name,
        "project_id": i.project_id,
        "host": i.host,
        "status": i.status,
        // Another live host reports it too: not backed up until resolved.
        "contested_by": i.contested_by,
        "disks": d.disks.iter().filter(|d| d.in_service()).map(|d| json!({
            "device": d.device,
            "size": d.virtual_size,
            "backups": d.head_seq,
            "next_backup_reads_everything": d.needs_full_read || d.head_seq == 0 || d.reappeared(),
        })).collect::<Vec<_>>(),
        "last_backup": d.last.as_ref().map(|b| json!({
            "id": b.id,
            "created_at": timestamp(&b.created_at),
            "kind": b.kind,
            "links": [{"rel": "self", "href": format!("{base}/v1/backups/{}", b.id)}],
        })),
        "policy_id": policy,
        "protected": policy.is_some(),
        "created_at": timestamp(&i.created_at),
        "updated_at": timestamp(&i.updated_at),
        "links": [{"rel": "self", "href": format!("{base}/v1/instances/{}", i.id)}],
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    marker: Option<String>,
    /// `created_at:asc` (the default) or `created_at:desc`.
    sort: Option<String>,
    all_projects: Option<bool>,
}

pub async fn list(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let page = page_of(&state, q.limit, q.marker, q.sort.as_deref(), false)?;
    let all = q.all_projects.unwrap_or(false);
    let found = instances::list(&state.ekko, &ctx.caller(&state), all, page.clone()).await?;
    let base = base_url(&req, &state);
    let body: Vec<_> = found.iter().map(|d| view(d, &base)).collect();
    let mut out = json!({ "instances": body });
    let last = found.last().map(|d| d.instance.id.as_str());
    if let Some(next) = next_link(&page, &req, &base, found.len(), last)? {
        out["instances_links"] = serde_json::to_value(next).map_err(ApiError::internal)?;
    }
    Ok(HttpResponse::Ok().json(out))
}

pub async fn show(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let d = instances::show(&state.ekko, &ctx.caller(&state), &id).await?;
    Ok(HttpResponse::Ok().json(json!({ "instance": view(&d, &base_url(&req, &state)) })))
}
