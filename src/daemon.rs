//! The long-running roles (the daemons), each a function over an [`Ekko`] that returns
//! when `shutdown` resolves. The binaries only call these.
//!
//! * ekko-backup (one per compute host, no database credentials) runs the
//!   jobs routed to its host and reports to the bus ([`crate::worker`]).
//! * ekko-api hosts the *conductor* ([`crate::conductor`]): the consumer of
//!   `ekko.status` that records what the hosts report in the catalog (as
//!   nova-conductor does for nova-compute), fails stalled jobs and starts
//!   scheduled backups.
//! * ekko-retention runs retention passes on `[retention] interval`.

use std::future::Future;
use std::time::Duration;

use crate::queue::QueueError;
use crate::service::ServiceError;
use crate::Ekko;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("configuration: {0}")]
    Config(String),
}

/// How often the conductor looks for stalled jobs and due policies.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// The conductor loop: record status messages until shutdown, and fail
/// stalled jobs. A message is acknowledged only once it is in the catalog;
/// a database outage leaves it on the queue for the next try.
pub async fn run_conductor(
    ekko: Ekko,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    ekko.keyring
        .check_controller()
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    ekko.topology().declare_status(ekko.queue.as_ref()).await?;
    let mut consumer = ekko
        .queue
        .consume(&ekko.topology().status_queue(), 32)
        .await?;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
    let stall = Duration::from_secs(ekko.config.backup.job_stall_timeout.max(10));
    tokio::pin!(shutdown);
    loop {
        let delivery = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = housekeeping.tick() => {
                if let Err(e) = crate::service::housekeeping::reap_stalled(&ekko, stall).await {
                    tracing::warn!(error = %e, "stalled-job check failed");
                }
                if let Err(e) = crate::service::housekeeping::run_due_policies(&ekko).await {
                    tracing::warn!(error = %e, "scheduler pass failed");
                }
                continue;
            }
            d = consumer.next() => d?,
        };
        match crate::service::reports::record(&ekko, &delivery.envelope).await {
            Ok(()) => delivery.ack().await?,
            Err(ServiceError::BadMessage(why)) => {
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

/// Refuse an API configuration that must not start (see
/// [`crate::api::bind`]), before any role runs.
pub fn check_api(ekko: &Ekko) -> anyhow::Result<()> {
    crate::api::bind::check(&ekko.config.api)
}

/// ekko-backup: see [`crate::worker`].
pub async fn run_backup(ekko: Ekko, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    Ok(crate::worker::run(ekko, shutdown).await?)
}

/// ekko-retention: a retention pass (rules, then garbage collection) every
/// `[retention] interval`. Several may run: every step is conditional.
pub async fn run_retention(
    ekko: Ekko,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let mut ticker =
        tokio::time::interval(Duration::from_secs(ekko.config.retention.interval.max(1)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = ticker.tick() => {
                if let Err(e) = crate::retention::run_pass(&ekko, false).await {
                    tracing::error!(error = %format!("{e:#}"), "retention pass failed; retrying next interval");
                }
            }
        }
    }
}
