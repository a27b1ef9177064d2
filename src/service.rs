//! The long-running roles, each a function over an [`Ekko`] that returns
//! when `shutdown` resolves. The binaries only call these.
//!
//! * ekko-backup (one per compute host, no database credentials) consumes
//!   the jobs routed to its host and reports to the bus: heartbeats now,
//!   progress and results as the engine lands.
//! * ekko-api hosts the *conductor*: the consumer of `ekko.status` that
//!   records what the hosts report in the catalog (as nova-conductor does
//!   for nova-compute), so compute hosts never touch the database.
//! * ekko-retention runs retention passes on `[retention] interval`.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queue::{Envelope, QueueError};
use crate::Ekko;

/// Queue the conductor consumes; every status message is routed to it.
pub const STATUS_QUEUE: &str = "ekko.status";
/// Routing key of host heartbeats.
pub const HEARTBEAT_KEY: &str = "status.host.heartbeat";
pub const HEARTBEAT_KIND: &str = "host.heartbeat";

/// Queue of one compute host's jobs.
pub fn host_queue(host: &str) -> String {
    format!("ekko.backup.{host}")
}

/// Routing key of jobs for one compute host.
pub fn host_routing_key(host: &str) -> String {
    format!("backup.{host}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host: String,
    pub version: String,
    /// Backups this host runs at once.
    pub capacity: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// Declare the queues every role relies on (idempotent).
pub async fn declare_topology(ekko: &Ekko) -> Result<(), QueueError> {
    ekko.queue
        .declare_queue(STATUS_QUEUE, &["status.#".to_string()])
        .await
}

/// Handle one status message in the catalog. Unknown kinds are an error so
/// the caller can reject them instead of losing them silently.
pub async fn record_status(ekko: &Ekko, message: &Envelope) -> Result<(), ServiceError> {
    match message.kind.as_str() {
        HEARTBEAT_KIND => {
            let hb: Heartbeat = message.body_as(HEARTBEAT_KIND)?;
            let capacity = i32::try_from(hb.capacity).unwrap_or(i32::MAX);
            ekko.db()?
                .run(move |c| crate::db::hosts::heartbeat(c, &hb.host, &hb.version, capacity))
                .await?;
            Ok(())
        }
        other => {
            Err(QueueError::BadMessage(format!("unknown status message kind {other:?}")).into())
        }
    }
}

/// The conductor loop: record status messages until shutdown. A message is
/// acknowledged only once it is in the catalog; a database outage leaves it
/// on the queue for the next try.
pub async fn run_conductor(
    ekko: Ekko,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    declare_topology(&ekko).await?;
    let mut consumer = ekko.queue.consume(STATUS_QUEUE, 32).await?;
    tokio::pin!(shutdown);
    loop {
        let delivery = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            d = consumer.next() => d?,
        };
        match record_status(&ekko, &delivery.envelope).await {
            Ok(()) => delivery.ack().await?,
            Err(ServiceError::Queue(QueueError::BadMessage(why))) => {
                tracing::error!(id = %delivery.envelope.id, %why, "rejecting status message");
                delivery.nack(false).await?;
            }
            Err(e) => {
                tracing::warn!(id = %delivery.envelope.id, error = %e, "cannot record status yet, requeueing");
                delivery.nack(true).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// ekko-api: the conductor (the REST API joins it here).
pub async fn run_api(ekko: Ekko, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    use futures::FutureExt;
    let shutdown = Box::pin(shutdown).shared();
    tracing::info!("starting the REST API and the conductor");
    let http = crate::api::serve(ekko.clone(), shutdown.clone());
    let conductor = async {
        run_conductor(ekko, shutdown)
            .await
            .map_err(anyhow::Error::from)
    };
    tokio::try_join!(http, conductor)?;
    Ok(())
}

/// ekko-backup: heartbeat, and take this host's jobs off its queue.
pub async fn run_backup(
    ekko: Ekko,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let host = ekko.config.default.host.clone();
    declare_topology(&ekko).await?;
    let queue = host_queue(&host);
    ekko.queue
        .declare_queue(&queue, &[host_routing_key(&host)])
        .await?;
    let mut jobs = ekko
        .queue
        .consume(
            &queue,
            ekko.config.backup.max_concurrent_backups.clamp(1, 64) as u16,
        )
        .await?;
    let beat = Heartbeat {
        host: host.clone(),
        version: crate::VERSION.to_string(),
        capacity: ekko.config.backup.max_concurrent_backups,
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(
        ekko.config.backup.heartbeat_interval.max(1),
    ));
    tracing::info!(%host, %queue, "ekko-backup ready");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = ticker.tick() => {
                let msg = Envelope::new(HEARTBEAT_KIND, &beat)?;
                if let Err(e) = ekko.queue.publish(HEARTBEAT_KEY, &msg).await {
                    tracing::warn!(error = %e, "heartbeat not sent");
                }
            }
            d = jobs.next() => {
                let d = d?;
                // No job kinds are implemented by this worker yet: reject
                // without requeue so nothing loops, and say so.
                tracing::error!(id = %d.envelope.id, kind = %d.envelope.kind, "rejecting job of unknown kind");
                d.nack(false).await?;
            }
        }
    }
}

/// ekko-retention: periodic passes (retention rules, GC and compaction
/// arrive with the retention engine).
pub async fn run_retention(
    ekko: Ekko,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let mut ticker =
        tokio::time::interval(Duration::from_secs(ekko.config.retention.interval.max(1)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = ticker.tick() => {
                let hosts = ekko.db()?.run(crate::db::hosts::list).await?;
                tracing::info!(hosts = hosts.len(), "retention pass: nothing to expire");
            }
        }
    }
}
