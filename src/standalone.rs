//! The single-machine default: every role in one process over SQLite, a
//! local directory store and the in-process queue (or whatever the
//! configuration names: the code paths are the same).

use std::fmt::Write;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::queue::Envelope;
use crate::Ekko;

/// Apply migrations and exercise each seam once; returns a report.
pub async fn init(ekko: &Ekko) -> anyhow::Result<String> {
    let mut out = String::new();
    let db = ekko.db()?.clone();
    let url = db.url.redacted();
    let applied = tokio::task::spawn_blocking(move || db.sync()).await??;
    let _ = writeln!(
        out,
        "catalog   {} ({})",
        url,
        if applied.is_empty() {
            "schema up to date".to_string()
        } else {
            format!("applied {}", applied.join(", "))
        }
    );

    let container = "ekko-selftest";
    let name = format!("selftest/{}", uuid::Uuid::new_v4());
    let payload = Bytes::from_static(b"ekko object store self-test");
    ekko.store.put(container, &name, payload.clone()).await?;
    let back = ekko.store.get(container, &name).await?;
    ekko.store.delete(container, &name).await?;
    anyhow::ensure!(back == payload, "object store returned different bytes");
    let _ = writeln!(
        out,
        "store     {:?} backend: put, get and delete work",
        ekko.config.storage.backend.as_str()
    );

    let queue = format!("ekko.selftest.{}", uuid::Uuid::new_v4());
    ekko.queue
        .declare_queue(&queue, std::slice::from_ref(&queue))
        .await?;
    let sent = Envelope::new("selftest.ping", &serde_json::json!({"hello": "ekko"}))?;
    ekko.queue.publish(&queue, &sent).await?;
    let mut consumer = ekko.queue.consume(&queue, 1).await?;
    let got = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await??;
    anyhow::ensure!(
        got.envelope == sent,
        "message bus returned a different message"
    );
    got.ack().await?;
    drop(consumer);
    ekko.queue.delete_queue(&queue).await?;
    let _ = writeln!(
        out,
        "queue     {:?}: publish, consume and ack work",
        ekko.config
            .default
            .transport_url
            .split("://")
            .next()
            .unwrap_or("?")
    );
    Ok(out)
}

/// Run the conductor, a backup worker for this host and the retention
/// worker together until `shutdown`.
pub async fn run_all(mut ekko: Ekko, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    use crate::config::AuthStrategy;
    let cfg = &ekko.config;
    if cfg.api.auth_strategy == AuthStrategy::Keystone && cfg.keystone_authtoken.auth_url.is_none()
    {
        // Nothing configured: the single-machine default. The API trusts
        // its callers' headers, so it listens on loopback only.
        tracing::warn!(
            "no [keystone_authtoken] auth_url: the API runs in noauth mode on 127.0.0.1 only"
        );
        let mut single = (**cfg).clone();
        single.api.auth_strategy = AuthStrategy::Noauth;
        single.api.bind_host = "127.0.0.1".into();
        ekko.config = std::sync::Arc::new(single);
    }
    // Refused before any role starts, not in the API's task alone.
    crate::daemon::check_api(&ekko)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = tokio::spawn(crate::daemon::run_api(ekko.clone(), stop(rx.clone())));
    let (e, r) = (ekko.clone(), rx.clone());
    let backup = tokio::spawn(async move {
        crate::daemon::run_backup(e, stop(r))
            .await
            .map_err(anyhow::Error::from)
    });
    let retention = tokio::spawn(async move {
        crate::daemon::run_retention(ekko, stop(rx))
            .await
            .map_err(anyhow::Error::from)
    });
    tracing::info!("all roles running in one process");
    shutdown.await;
    let _ = tx.send(true);
    for (name, task) in [
        ("api and conductor", api),
        ("backup", backup),
        ("retention", retention),
    ] {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(role = name, error = %e, "role failed"),
            Err(e) => tracing::error!(role = name, error = %e, "role panicked"),
        }
    }
    Ok(())
}
