//! The long-running roles (the daemons), each a function over an [`Ekko`] that returns
//! when `shutdown` resolves. The binaries only call these.
//!
//! * ekko-backup (one per compute host, no database credentials) runs the
//!   jobs routed to its host and reports to the bus ([`crate::worker`]).
//! * ekko-api hosts the *conductor* ([`conductor`]): the consumer of
//!   `ekko.status` that records what the hosts report in the catalog (as
//!   nova-conductor does for nova-compute), fails stalled jobs and starts
//!   scheduled backups.
//! * ekko-retention runs retention passes on `[retention] interval`, and
//!   replication passes on `[replication] interval` ([`crate::replication`]).

pub mod conductor;
pub mod intake;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;
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

/// The conductor loop: record status messages until shutdown
/// ([`conductor`]: each in its own task, permanent failures dead-lettered,
/// transient ones retried), fail stalled jobs, start due policies. A
/// message is acknowledged only once it is handled. Deliveries come from
/// the [`intake`] task, so housekeeping runs on time with no message in
/// sight, and stalled jobs are failed only while the conductor keeps up
/// with the status queue (their progress is not waiting in it).
pub async fn run_conductor(
    ekko: Ekko,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    ekko.keyring
        .check_controller()
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    if !ekko.config.backup.host_bus_users {
        tracing::warn!("[backup] host_bus_users is off: compute hosts share a bus user, so a report is taken at its word about the host that sent it");
    } else if let Some(why) = conductor::shared_bus_user(&ekko.config) {
        tracing::warn!("{why}: with [backup] host_bus_users the controllers need a bus user no compute host holds (README, \"Message bus users\")");
    }
    let topology = ekko.topology();
    topology.declare_status(ekko.queue.as_ref()).await?;
    let max_report = crate::wire::max_report_size(&ekko.config);
    let consumer = ekko
        .queue
        .consume_bounded(
            &topology.status_queue(),
            conductor::CONCURRENCY as u16 * 2,
            usize::try_from(max_report).unwrap_or(usize::MAX),
        )
        .await?;
    let stall = Duration::from_secs(ekko.config.backup.job_stall_timeout.max(10));
    let counters = Arc::new(conductor::Counters::default());
    let retries = Arc::new(conductor::Retries::default());
    let catch_up = Arc::new(intake::CatchUp::default());
    // Two of the largest reports at once, parsed (a report's parsed form
    // can be many times its bytes).
    let gates = intake::Gates::new(conductor::CONCURRENCY, max_report.saturating_mul(2));
    let (to_loop, mut taken) = tokio::sync::mpsc::channel(1);
    let intake = tokio::spawn(intake::receive(consumer, gates, catch_up.clone(), to_loop));
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
    let mut kept = conductor::Housekeeping::default();
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    let ended = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = housekeeping.tick() => kept.tick(&ekko, stall, &catch_up, &retries).await,
            next = taken.recv() => match next {
                Some(Ok(intake::Taken { delivery, held })) => {
                    let (e, c, r) = (ekko.clone(), counters.clone(), retries.clone());
                    tasks.spawn(async move {
                        conductor::handle(e, delivery, c, r).await;
                        drop(held);
                    });
                }
                Some(Err(e)) => break Err(e.into()),
                None => break Ok(()),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    intake.abort();
    // Let the reports being recorded finish (they are short).
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    ended
}

/// ekko-api: the conductor (the REST API joins it here).
pub async fn run_api(ekko: Ekko, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    use futures::FutureExt;
    let shutdown = Box::pin(shutdown).shared();
    tracing::info!("starting the REST API and the conductor");
    let listener = metrics::start(
        &ekko,
        &ekko.config.metrics.api_listen,
        metrics::CatalogGauges::Refresh,
    )?;
    let http = crate::api::serve(ekko.clone(), shutdown.clone());
    let conductor = async {
        run_conductor(ekko, shutdown)
            .await
            .map_err(anyhow::Error::from)
    };
    let served = tokio::try_join!(http, conductor);
    metrics::stop(listener).await;
    served?;
    Ok(())
}

/// Refuse an API configuration that must not start (see
/// [`crate::api::bind`]), before any role runs.
pub fn check_api(ekko: &Ekko) -> anyhow::Result<()> {
    crate::api::bind::check(&ekko.config.api)
}

/// ekko-backup: see [`crate::worker`].
pub async fn run_backup(ekko: Ekko, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let listener = metrics::start(
        &ekko,
        &ekko.config.metrics.backup_listen,
        metrics::CatalogGauges::None,
    )
    .map_err(|e| DaemonError::Config(format!("{e:#}")))?;
    // Connected to the bus and the store (Ekko::connect).
    crate::systemd::notify_ready();
    let ran = crate::worker::run(ekko, shutdown).await;
    metrics::stop(listener).await;
    Ok(ran?)
}

/// ekko-retention: a retention pass (rules, then garbage collection) every
/// `[retention] interval`, and with `[replication]` a replication pass
/// every `[replication] interval`, each on its own. Several processes may
/// run: every step is conditional.
pub async fn run_retention(
    ekko: Ekko,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let listener = metrics::start(
        &ekko,
        &ekko.config.metrics.retention_listen,
        metrics::CatalogGauges::None,
    )
    .map_err(|e| DaemonError::Config(format!("{e:#}")))?;
    crate::systemd::notify_ready();
    let e = ekko.clone();
    let mut passes = vec![tokio::spawn(periodic(
        ekko.config.retention.interval,
        "retention",
        move || {
            let e = e.clone();
            async move { crate::retention::run_pass(&e, false).await.map(drop) }
        },
    ))];
    if ekko.replica.is_some() {
        let e = ekko.clone();
        passes.push(tokio::spawn(periodic(
            ekko.config.replication.interval,
            "replication",
            move || {
                let e = e.clone();
                async move { crate::replication::run_pass(&e).await.map(drop) }
            },
        )));
    }
    shutdown.await;
    for p in passes {
        p.abort();
    }
    metrics::stop(listener).await;
    Ok(())
}

/// Run `pass` every `seconds`, each in its own task: a defect that panics
/// in one pass is logged, and the next pass runs on time.
async fn periodic<F, Fut>(seconds: u64, what: &'static str, pass: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut ticker = tokio::time::interval(Duration::from_secs(seconds.max(1)));
    loop {
        ticker.tick().await;
        match tokio::spawn(pass()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(pass = what, error = %format!("{e:#}"), "pass failed; retrying next interval");
            }
            Err(e) => {
                tracing::error!(pass = what, error = %e, "pass panicked; retrying next interval");
            }
        }
    }
}
