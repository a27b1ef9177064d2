//! A daemon's metrics listener (`[metrics] <daemon>_listen`): `GET
//! /metrics` in Prometheus' text format and `GET /healthcheck`, the
//! process's own checks of the catalog, bus and store (ekko-backup and
//! ekko-retention serve no API, so this is their health check).

use actix_web::{web, HttpResponse};

use crate::service::health;
use crate::Ekko;

/// Bind `listen` (empty: no listener) and serve on it in the background
/// until the returned handle is stopped.
pub fn start(ekko: &Ekko, listen: &str) -> anyhow::Result<Option<actix_web::dev::ServerHandle>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let data = web::Data::new(ekko.clone());
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .route("/metrics", web::get().to(metrics))
            .route("/healthcheck", web::get().to(healthcheck))
    })
    .disable_signals()
    .workers(1)
    .bind(listen)
    .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {listen}: {e}"))?
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    tracing::info!(%listen, "metrics and health check listening");
    Ok(Some(handle))
}

/// Stop a listener [`start`] returned.
pub async fn stop(handle: Option<actix_web::dev::ServerHandle>) {
    if let Some(h) = handle {
        h.stop(true).await;
    }
}

async fn metrics(ekko: web::Data<Ekko>) -> HttpResponse {
    if let Err(e) = health::refresh_catalog_metrics(&ekko).await {
        // The process's own counters are still worth a scrape.
        tracing::warn!(error = %e, "catalog gauges not refreshed");
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(crate::metrics::metrics().render())
}

async fn healthcheck(ekko: web::Data<Ekko>) -> HttpResponse {
    let checks = health::check_all(&ekko).await;
    let ok = checks.iter().all(|c| c.ok);
    let mut answer = match ok {
        true => HttpResponse::Ok(),
        false => HttpResponse::ServiceUnavailable(),
    };
    answer.json(serde_json::json!({
        "status": if ok { "OK" } else { "FAILED" },
        "checks": checks,
    }))
}
