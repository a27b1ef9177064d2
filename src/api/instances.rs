//! `/v1/instances`: the instances known to Ekko, their disks, host, last
//! backup and whether a backup policy protects them.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{base_url, timestamp, RequestContext, State};
use crate::db::backups;
use crate::db::instances::{self, Instance};

/// An instance with what its view shows: disks, last backup, policy.
struct Details {
    instance: Instance,
    disks: Vec<instances::Disk>,
    last: Option<backups::Backup>,
    policy: Option<String>,
}

/// Read the details of `found` (one connection for a whole page).
fn details(
    c: &mut crate::db::DbConnection,
    found: Vec<Instance>,
) -> crate::db::DbResult<Vec<Details>> {
    found
        .into_iter()
        .map(|instance| {
            Ok(Details {
                disks: instances::disks_of(c, &instance.id)?,
                last: backups::last_available(c, &instance.id)?,
                policy: instances::policy_of(c, &instance.id)?,
                instance,
            })
        })
        .collect()
}

fn view(d: &Details, base: &str) -> serde_json::Value {
    let (i, policy) = (&d.instance, &d.policy);
    json!({
        "id": i.id,
        "name": i.name,
        "project_id": i.project_id,
        "host": i.host,
        "status": i.status,
        "disks": d.disks.iter().filter(|d| d.retired_at.is_none()).map(|d| json!({
            "device": d.device,
            "size": d.virtual_size,
            "backups": d.head_seq,
            "next_backup_reads_everything": d.needs_full_read || d.head_seq == 0,
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
    let project = ctx.list_scope(&state, "instance", q.all_projects.unwrap_or(false), None)?;
    let page = super::paging::Page::of(&state, q.limit, q.marker, q.sort.as_deref(), false)?;
    let p = page.clone();
    let found = state
        .db()?
        .run(move |c| {
            let marker = p.resolve(c, project.as_deref(), instances::get, |i| &i.project_id)?;
            let found =
                instances::list(c, project.as_deref(), p.limit, marker.as_ref(), p.ascending)?;
            details(c, found)
        })
        .await
        .map_err(super::paging::marker_error)?;
    let base = base_url(&req, &state);
    let body: Vec<_> = found.iter().map(|d| view(d, &base)).collect();
    let mut out = json!({ "instances": body });
    let last = found.last().map(|d| d.instance.id.as_str());
    if let Some(next) = page.next(&req, &base, found.len(), last)? {
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
    let i = state.find("instance", &id, instances::get).await?;
    ctx.authorize(
        &state,
        "ekko:instance:get",
        &i.project_id,
        Some(("instance", &id)),
    )?;
    let base = base_url(&req, &state);
    let mut found = state.db()?.run(move |c| details(c, vec![i])).await?;
    let d = found
        .pop()
        .ok_or_else(|| ApiError::internal("instance details missing"))?;
    Ok(HttpResponse::Ok().json(json!({ "instance": view(&d, &base) })))
}
