//! Whether this process can reach what it depends on: the catalog, the
//! message bus and the object store, each asked once with a deadline. The
//! detailed `/healthcheck` of ekko-api, the daemons' local health checks
//! and `ekko-status upgrade check` run these.

use std::time::{Duration, Instant};

use crate::Ekko;

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
