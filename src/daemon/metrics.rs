//! A daemon's metrics listener (`[metrics] <daemon>_listen`): `GET
//! /metrics` in Prometheus' text format and `GET /healthcheck`, the
//! process's own checks of the catalog, bus and store (ekko-backup and
//! ekko-retention serve no API, so this is their health check). No token
//! is asked, so answers are cached for [`FRESH`], one refresh at a time:
//! however often the listener is asked, the catalog, broker and store are
//! asked at most once per period.

use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use tokio::sync::Mutex;

use crate::service::health::{self, Check};
use crate::Ekko;

/// How long a check or a refresh of the catalog's gauges is reused.
const FRESH: Duration = Duration::from_secs(10);

/// Which gauges a listener refreshes from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogGauges {
    /// The API's listener: backups, restores, heartbeat ages.
    Refresh,
    /// The others: their own counters only (no series counted twice).
    None,
}

struct Listener {
    ekko: Ekko,
    gauges: CatalogGauges,
    checks: Mutex<Option<(Instant, Vec<Check>)>>,
    refreshed: Mutex<Option<Instant>>,
}

/// Bind `listen` (empty: no listener) and serve on it in the background
/// until the returned handle is stopped.
pub fn start(
    ekko: &Ekko,
    listen: &str,
    gauges: CatalogGauges,
) -> anyhow::Result<Option<actix_web::dev::ServerHandle>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let data = web::Data::new(Listener {
        ekko: ekko.clone(),
        gauges,
        checks: Mutex::new(None),
        refreshed: Mutex::new(None),
    });
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

async fn metrics(l: web::Data<Listener>) -> HttpResponse {
    if l.gauges == CatalogGauges::Refresh {
        let mut refreshed = l.refreshed.lock().await;
        if refreshed.is_none_or(|at| at.elapsed() > FRESH) {
            if let Err(e) = health::refresh_catalog_metrics(&l.ekko).await {
                // The process's own counters are still worth a scrape.
                tracing::warn!(error = %e, "catalog gauges not refreshed");
            }
            *refreshed = Some(Instant::now());
        }
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(crate::metrics::metrics().render())
}

async fn healthcheck(l: web::Data<Listener>) -> HttpResponse {
    let checks = {
        let mut cached = l.checks.lock().await;
        match &*cached {
            Some((at, checks)) if at.elapsed() <= FRESH => checks.clone(),
            _ => {
                let checks = health::check_all(&l.ekko).await;
                *cached = Some((Instant::now(), checks.clone()));
                checks
            }
        }
    };
    let ok = checks.iter().all(|c| c.ok);
    let mut answer = match ok {
        true => HttpResponse::Ok(),
        false => HttpResponse::ServiceUnavailable(),
    };
    if !l.ekko.config.metrics.health_details {
        return answer
            .content_type("text/plain; charset=utf-8")
            .body(if ok { "OK" } else { "FAILED" });
    }
    answer.json(serde_json::json!({
        "status": if ok { "OK" } else { "FAILED" },
        "checks": checks,
    }))
}
