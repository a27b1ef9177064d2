//! Whether this process can reach what it depends on: the catalog, the
//! message bus and the object store, each asked once with a deadline (the
//! detailed `/healthcheck` of ekko-api, and the one of each daemon's
//! metrics listener); and the catalog's gauges a metrics scrape shows.

use std::time::{Duration, Instant};

use crate::Ekko;

/// The most hosts the heartbeat-age gauge has a series for.
const MAX_HOST_SERIES: usize = 2000;

/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of one check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// `catalog`, `message_bus` or `object_store`.
    pub name: &'static str,
    pub ok: bool,
    /// What failed, or what was reached.
    pub detail: String,
    pub elapsed_ms: u64,
}

/// Every check this process can run, side by side (a compute host has no
/// catalog, so it has no catalog check).
pub async fn check_all(ekko: &Ekko) -> Vec<Check> {
    let catalog = async {
        match ekko.db() {
            Ok(db) => Some(
                timed("catalog", async {
                    db.ping().await.map_err(|e| e.to_string())?;
                    Ok(format!("{} answers", db.url.redacted()))
                })
                .await,
            ),
            Err(_) => None,
        }
    };
    let bus = timed("message_bus", async {
        ekko.queue.ping().await.map_err(|e| e.to_string())?;
        Ok(format!(
            "{} answers",
            crate::config::redact_url(&ekko.config.default.transport_url)
        ))
    });
    let store = timed("object_store", async {
        // A listing of containers under a prefix no project has: one
        // authenticated round trip, whatever the store holds.
        let prefix = format!("{}healthcheck-", ekko.config.swift.container_prefix);
        ekko.store
            .containers(&prefix)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("{:?} store answers", ekko.config.storage.backend).to_lowercase())
    });
    let (catalog, bus, store) = tokio::join!(catalog, bus, store);
    catalog.into_iter().chain([bus, store]).collect()
}

async fn timed(
    name: &'static str,
    check: impl std::future::Future<Output = Result<String, String>>,
) -> Check {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())));
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
            elapsed_ms,
        },
        Err(detail) => {
            tracing::warn!(check = name, %detail, "health check failed");
            Check {
                name,
                ok: false,
                detail,
                elapsed_ms,
            }
        }
    }
}

/// Set the catalog's gauges (backups and restores by status, seconds since
/// each host's heartbeat) before the metrics are rendered; a process with
/// no catalog has none to set.
pub async fn refresh_catalog_metrics(ekko: &Ekko) -> Result<(), crate::db::DbError> {
    let Ok(db) = ekko.db() else {
        return Ok(());
    };
    // Hosts heard from within `[retention] retire_after`, at most
    // MAX_HOST_SERIES of them: a host names itself, so the names are not
    // the operator's to bound.
    let since = crate::db::now()
        - chrono::Duration::seconds(ekko.config.retention.retire_after.min(i64::MAX as u64) as i64);
    let (backups, restores, hosts) = db
        .run(move |c| {
            Ok((
                crate::db::backups::count_by_status(c)?,
                crate::db::restores::count_by_status(c)?,
                crate::db::hosts::alive_since(c, since)?,
            ))
        })
        .await?;
    let m = crate::metrics::metrics();
    // Messages waiting: the conductors' queues and each live host's job
    // and control queues (a broker that does not answer leaves them out).
    let topology = ekko.topology();
    let mut queues = vec![topology.status_queue(), topology.dead_letter_queue()];
    for h in hosts.iter().take(MAX_HOST_SERIES) {
        queues.push(topology.host_queue(&h.name));
        queues.push(topology.control_queue(&h.name));
    }
    m.queue_messages.clear();
    for q in queues {
        match ekko.queue.depth(&q).await {
            Ok(Some(n)) => {
                m.queue_messages
                    .get_or_create(&crate::metrics::labels(&[("queue", &q)]))
                    .set(n as i64);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(queue = %q, error = %e, "queue depth not read");
                break;
            }
        }
    }
    // Statuses no longer present read 0, not their last count.
    m.backups.clear();
    m.restores.clear();
    m.heartbeat_age_seconds.clear();
    for (status, n) in backups {
        m.backups
            .get_or_create(&crate::metrics::labels(&[("status", status.as_str())]))
            .set(n);
    }
    for (status, n) in restores {
        m.restores
            .get_or_create(&crate::metrics::labels(&[("status", status.as_str())]))
            .set(n);
    }
    let now = crate::db::now();
    for h in hosts.into_iter().take(MAX_HOST_SERIES) {
        let age = (now - h.heartbeat_at).num_seconds().max(0);
        m.heartbeat_age_seconds
            .get_or_create(&crate::metrics::labels(&[("host", &h.name)]))
            .set(age);
    }
    Ok(())
}
