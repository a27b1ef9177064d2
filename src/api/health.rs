//! `GET|HEAD /healthcheck`, as oslo.middleware's healthcheck: no token
//! needed; `200 OK`, or `503 DISABLED BY FILE` while `[healthcheck]
//! disable_by_file_path` exists (an operator drains the node). A caller
//! whose token passes `ekko:healthcheck:detailed` (admin by default) gets
//! each check as JSON, and `503` when one fails; a token that is missing,
//! invalid or not allowed gets the plain answer, never a 401.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use super::State;
use crate::policy::Caller;
use crate::service::health;

pub async fn healthcheck(req: HttpRequest, state: State) -> HttpResponse {
    let opts = &state.ekko.config.healthcheck;
    if let Some(path) = opts.disable_by_file_path.as_deref() {
        if std::path::Path::new(path).exists() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "DISABLED BY FILE");
        }
    }
    if !(opts.detailed && detail_allowed(&req, &state).await) {
        return text(StatusCode::OK, "OK");
    }
    let checks = health::check_all(&state.ekko).await;
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(serde_json::json!({
        "status": if ok { "OK" } else { "FAILED" },
        "checks": checks,
    }))
}

/// Whether the request carries credentials allowed the detailed answer.
async fn detail_allowed(req: &HttpRequest, state: &State) -> bool {
    let headers = req.headers();
    let asks = ["X-Auth-Token", "X-Storage-Token", "X-Roles"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if !asks {
        return false;
    }
    match super::authenticate(state, headers).await {
        Ok(creds) => Caller::new(&creds, &state.policy).allowed("ekko:healthcheck:detailed"),
        Err(_) => false,
    }
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body)
}
