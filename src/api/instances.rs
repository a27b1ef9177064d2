//! `/v1/instances`: the instances known to Ekko, their disks, host, last
//! backup and whether a backup policy protects them.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{base_url, timestamp, RequestContext, State};
use crate::db::backups;
use crate::db::instances::{self, Instance};

async fn view(state: &State, i: Instance, base: &str) -> Result<serde_json::Value, ApiError> {
    let db = state.db()?;
    let id = i.id.clone();
    let (disks, last, policy) = db
        .run(move |c| {
            Ok((
                instances::disks_of(c, &id)?,
                backups::last_available(c, &id)?,
                instances::policy_of(c, &id)?,
            ))
        })
        .await?;
    Ok(json!({
        "id": i.id,
        "name": i.name,
        "project_id": i.project_id,
        "host": i.host,
        "status": i.status,
        "disks": disks.iter().filter(|d| d.retired_at.is_none()).map(|d| json!({
            "device": d.device,
            "size": d.virtual_size,
            "backups": d.head_seq,
            "next_backup_reads_everything": d.needs_full_read || d.head_seq == 0,
        })).collect::<Vec<_>>(),
        "last_backup": last.map(|b| json!({
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
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    all_projects: Option<bool>,
}

pub async fn list(
    req: HttpRequest,
    ctx: RequestContext,
    state: State,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let project = ctx.list_scope(&state, "instance", q.all_projects.unwrap_or(false), None)?;
    let db = state.db()?;
    let found = db
        .run(move |c| instances::list(c, project.as_deref()))
        .await?;
    let base = base_url(&req, &state);
    let mut out = Vec::with_capacity(found.len());
    for i in found {
        out.push(view(&state, i, &base).await?);
    }
    Ok(HttpResponse::Ok().json(json!({ "instances": out })))
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
    Ok(HttpResponse::Ok().json(json!({ "instance": view(&state, i, &base).await? })))
}
