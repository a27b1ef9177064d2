//! The worker over the in-process queue with a hypervisor that hangs or
//! fails on purpose.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::extract::{DiskRequest, ExtractError, InstanceSnapshot};
use crate::hypervisor::{DiskInfo, Hypervisor, LocalInstance, SnapshotOptions};
use crate::queue::{Consumer, Envelope};
use crate::wire::{
    control_routing_key, host_routing_key, BackupJob, CancelJob, JobFailed, BACKUP_RUN,
    HEARTBEAT_KIND, JOB_CANCEL, JOB_FAILED, JOB_STARTED,
};
use crate::Ekko;

const HOST: &str = "h1";
const INSTANCE: &str = "8c3f5a2e-1b7d-4e2a-9f10-3c4d5e6f7a8b";
const PROJECT: &str = "9f8e7d6c5b4a43210f1e2d3c4b5a6978";
const JOB: &str = "0b6a9f3e-5c1d-4e7a-8b2c-1d3e5f7a9b0c";
/// Longest wait for one message (the heartbeat comes every second).
const PATIENCE: Duration = Duration::from_secs(10);

fn instance() -> LocalInstance {
    LocalInstance {
        id: INSTANCE.into(),
        project_id: PROJECT.into(),
        name: "web".into(),
    }
}

/// `hang`: listing and probing never return (a hung QEMU monitor), and
/// neither does a snapshot. `list_failures`: listings that fail first.
#[derive(Default)]
struct TestHypervisor {
    hang: bool,
    cleans_up: bool,
    list_failures: AtomicUsize,
    listings: AtomicUsize,
    recovered: Mutex<Vec<String>>,
    sweeps: AtomicUsize,
}

#[async_trait]
impl Hypervisor for TestHypervisor {
    async fn instances(&self) -> anyhow::Result<Vec<LocalInstance>> {
        self.listings.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        let failing = self
            .list_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        anyhow::ensure!(failing.is_err(), "hypervisor unreachable");
        Ok(vec![instance()])
    }
    async fn find(&self, id: &str) -> anyhow::Result<Option<LocalInstance>> {
        Ok((id == INSTANCE).then(instance))
    }
    async fn disks(&self, _: &LocalInstance) -> Result<Vec<DiskInfo>, ExtractError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(vec![])
    }
    async fn snapshot(
        &self,
        _: &LocalInstance,
        _: &[DiskRequest],
        _: &SnapshotOptions,
    ) -> Result<Box<dyn InstanceSnapshot>, ExtractError> {
        std::future::pending().await
    }
    async fn recover(&self, instance: &LocalInstance) -> Result<(), ExtractError> {
        crate::worker::lock(&self.recovered).push(instance.id.clone());
        Ok(())
    }
    fn cleans_up_at_start(&self) -> bool {
        self.cleans_up
    }
    async fn sweep(&self) -> Result<(), ExtractError> {
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Running {
    ekko: Ekko,
    status: Box<dyn Consumer>,
    shutdown: Option<oneshot::Sender<()>>,
    worker: tokio::task::JoinHandle<Result<(), super::WorkerError>>,
    _dir: tempfile::TempDir,
}

async fn start(hypervisor: Arc<TestHypervisor>) -> Running {
    let dir = tempfile::tempdir().expect("temporary directory");
    let conf = dir.path().join("ekko.conf");
    let text = format!(
        "[DEFAULT]\ntransport_url = memory://\nhost = {HOST}\nstate_path = {d}/state\n\
         [backup]\nheartbeat_interval = 1\nshutdown_timeout = 1\nscratch_dir = {d}/scratch\n\
         [local_store]\npath = {d}/store\n",
        d = dir.path().display()
    );
    std::fs::write(&conf, text).expect("write the configuration");
    let config = crate::config::EkkoConfig::load(&[conf], std::iter::empty()).expect("config");
    let ekko = Ekko::connect(config, crate::ekko::Catalog::None)
        .await
        .expect("connect");
    ekko.queue
        .declare_queue("test-status", &["status.#".to_string()])
        .await
        .expect("status queue");
    let status = ekko
        .queue
        .consume("test-status", 100)
        .await
        .expect("consume");
    let (tx, rx) = oneshot::channel::<()>();
    let worker = tokio::spawn(super::run_with(ekko.clone(), hypervisor, async move {
        let _ = rx.await;
    }));
    Running {
        ekko,
        status,
        shutdown: Some(tx),
        worker,
        _dir: dir,
    }
}

impl Running {
    /// The next report of kind `kind` (others are skipped).
    async fn next(&mut self, kind: &str) -> Envelope {
        let wait = async {
            loop {
                let d = self.status.next().await.expect("status message");
                let env = d.envelope.clone();
                let _ = d.ack().await;
                if env.kind == kind {
                    return env;
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no {kind} within {PATIENCE:?}"))
    }

    async fn send<T: serde::Serialize>(&self, key: &str, kind: &str, body: &T) {
        let env = Envelope::new(kind, body).expect("envelope");
        self.ekko.queue.publish(key, &env).await.expect("publish");
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let ended = tokio::time::timeout(PATIENCE, &mut self.worker).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "the worker did not shut down: {ended:?}"
        );
    }
}

fn job(job_id: &str) -> BackupJob {
    let now = chrono::Utc::now();
    BackupJob {
        job_id: job_id.into(),
        backup_id: "b-1".into(),
        project_id: PROJECT.into(),
        user_id: "u-1".into(),
        instance_id: INSTANCE.into(),
        instance_name: "web".into(),
        name: "nightly".into(),
        description: String::new(),
        created_at: now,
        full: true,
        disks: vec![],
        dedup_sources: vec![],
        relocations: vec![],
        bad_records: vec![],
        project_key: None,
        write_keys: None,
        deadline: now + chrono::Duration::hours(1),
        checkpoint: None,
    }
}

/// A hypervisor call that never returns (a hung libvirtd or QEMU monitor)
/// holds one inventory, not the worker: heartbeats go on, jobs are taken
/// and cancelled, and the worker shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_hypervisor_stops_neither_heartbeats_nor_jobs_nor_cancels() {
    let hypervisor = Arc::new(TestHypervisor {
        hang: true,
        ..Default::default()
    });
    let mut w = start(hypervisor.clone()).await;
    w.next(HEARTBEAT_KIND).await;
    // The first inventory hangs in the listing from now on.
    for _ in 0..2 {
        w.next(HEARTBEAT_KIND).await;
    }
    assert_eq!(
        hypervisor.listings.load(Ordering::SeqCst),
        1,
        "a tick skips the inventory while the previous one still runs"
    );
    w.send(&host_routing_key(HOST), BACKUP_RUN, &job(JOB)).await;
    w.next(JOB_STARTED).await;
    w.send(
        &control_routing_key(HOST),
        JOB_CANCEL,
        &CancelJob { job_id: JOB.into() },
    )
    .await;
    let failed: JobFailed = w
        .next(JOB_FAILED)
        .await
        .body_as(JOB_FAILED)
        .expect("job.failed");
    assert_eq!(failed.job_id, JOB);
    assert!(failed.error.contains("cancelled"), "{}", failed.error);
    w.next(HEARTBEAT_KIND).await;
    w.stop().await;
}

/// The cleanup after an earlier worker is tried again until the
/// hypervisor answers, then once only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_after_an_earlier_worker_is_retried_until_it_succeeds() {
    let hypervisor = Arc::new(TestHypervisor {
        cleans_up: true,
        list_failures: AtomicUsize::new(3),
        ..Default::default()
    });
    let mut w = start(hypervisor.clone()).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while hypervisor.sweeps.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cleanup was never retried"
        );
        w.next(HEARTBEAT_KIND).await;
    }
    assert_eq!(
        *crate::worker::lock(&hypervisor.recovered),
        [INSTANCE],
        "the instance was cleaned up once"
    );
    for _ in 0..3 {
        w.next(HEARTBEAT_KIND).await;
    }
    // Give the inventory of the last tick time to end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hypervisor.sweeps.load(Ordering::SeqCst), 1, "swept once");
    assert_eq!(crate::worker::lock(&hypervisor.recovered).len(), 1);
    w.stop().await;
}
