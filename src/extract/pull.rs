//! Pull-mode backup of all disks of one QEMU instance at once
//! (shared/qemu recipe §3–4; `docs/design.md`):
//!
//! 1. clean up what a killed worker left (exports, jobs, fleece nodes) and
//!    put half-rotated bitmaps back (`merge new → old, enable old, remove new`);
//! 2. decide per disk: incremental (one enabled, persistent, consistent
//!    bitmap whose name the catalog expects, same size) or full read;
//! 3. one `transaction`: a new bitmap per disk, the previous one disabled,
//!    and a `sync: none` (copy-before-write) job into a fleece overlay, so the
//!    overlay is a point-in-time view while the guest keeps writing;
//! 4. export each overlay over NBD with the frozen bitmap; what to read is
//!    dirty ∩ not-zero;
//! 5. tear down in order (NBD, export, job, nodes, file, server); on success
//!    drop the old bitmaps, on failure restore the exact previous state.
//!
//! Node, job and export names are short (QEMU caps node names at 31 bytes)
//! and carry the `ekko-` prefix so leftovers can be found.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::agent::GuestAgent;
use super::scratch::{free_space, Watchdog, SCRATCH_MARGIN};
use super::throttle::RateLimiter;
use super::{DiskSnapshot, ExtractError, FullReason};
use crate::nbd::protocol::{ranges_where, STATE_DIRTY, STATE_ZERO};
use crate::nbd::NbdClient;
use crate::qmp::commands as cmd;
use crate::qmp::QmpClient;
pub use crate::status::Consistency;

mod decide;
mod recover;

/// Names of every node, job, export and bitmap Ekko makes in QEMU.
const PREFIX: &str = "ekko-";
/// NBD connections per disk when the export allows several (multi-conn).
/// Measured with benches/extract.rs on qemu-storage-daemon 10.0: a second
/// connection read slower (0.47 vs 0.59 of qemu-img in the same run), as
/// the daemon serves all connections from one thread; kept at one, and
/// tunable for other servers.
const NBD_CONNECTIONS: usize = 1;

fn nbd_connections() -> usize {
    // EKKO_NBD_CONNECTIONS is for benchmarking other counts.
    std::env::var("EKKO_NBD_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(NBD_CONNECTIONS)
        .max(1)
}

pub use super::DiskRequest;

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Names the new bitmaps (`ekko-<backup_id>`) and the scratch files.
    pub backup_id: String,
    pub scratch_dir: PathBuf,
    /// Largest total size of the fleece overlays; 0 = only free space.
    pub scratch_limit: u64,
    pub granularity: u32,
    pub requests_in_flight: usize,
    /// Bytes per second; 0 = unlimited.
    pub read_rate_limit: u64,
    pub qmp_timeout: Duration,
    pub agent_socket: Option<PathBuf>,
    pub agent_timeout: Duration,
    /// Use this NBD server socket when QEMU already runs a server.
    pub existing_nbd_socket: Option<PathBuf>,
    /// Names this instance's NBD sockets in the scratch directory, which
    /// a host's instances share: a stale socket is recognised as this
    /// instance's (its server left running by a killed backup), never
    /// another instance's (whose backup may be running).
    pub instance_key: String,
}

/// One disk of a running pull backup.
pub struct PulledDisk {
    pub device: String,
    pub node: String,
    pub size: u64,
    /// The bitmap created at this backup's instant.
    pub new_bitmap: String,
    /// The bitmap that was exported (disabled), dropped on success.
    pub old_bitmap: Option<String>,
    full_reason: Option<FullReason>,
    changed: Vec<(u64, u64)>,
    zeros: Vec<(u64, u64)>,
    /// Connections to the disk's export (several when the server allows).
    nbd: Vec<NbdClient>,
    fleece_node: String,
    fleece_path: PathBuf,
    job_id: String,
    export_id: String,
    limiter: Arc<RateLimiter>,
    depth: usize,
    scratch_exceeded: Arc<AtomicBool>,
}

#[async_trait]
impl DiskSnapshot for PulledDisk {
    fn device(&self) -> &str {
        &self.device
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn full_reason(&self) -> Option<&FullReason> {
        self.full_reason.as_ref()
    }
    fn changed(&self) -> &[(u64, u64)] {
        &self.changed
    }
    fn zeros(&self) -> &[(u64, u64)] {
        &self.zeros
    }
    fn new_bitmap(&self) -> Option<&str> {
        Some(&self.new_bitmap)
    }
    fn read_ranges<'a>(
        &'a self,
        ranges: Vec<(u64, u64)>,
    ) -> BoxStream<'a, Result<(u64, Bytes), ExtractError>> {
        if self.nbd.is_empty() {
            return futures::stream::once(async {
                Err(ExtractError::Other("disk is torn down".into()))
            })
            .boxed();
        }
        let exceeded = self.scratch_exceeded.clone();
        let limiter = self.limiter.clone();
        crate::nbd::client::read_ranges_multi(&self.nbd, &ranges, self.depth)
            .then(move |piece| {
                let (exceeded, limiter) = (exceeded.clone(), limiter.clone());
                async move {
                    let piece = piece?;
                    if exceeded.load(Ordering::Relaxed) {
                        return Err(ExtractError::Scratch(
                            "scratch space ran out during the backup; the backup was cancelled to protect the guest".into(),
                        ));
                    }
                    limiter.acquire(piece.1.len() as u64).await;
                    Ok(piece)
                }
            })
            .boxed()
    }
}

/// A pull backup in progress. End it with [`PullBackup::commit`] after the
/// catalog committed the backup, or [`PullBackup::abort`] on any failure.
pub struct PullBackup {
    qmp: Arc<QmpClient>,
    opts: PullOptions,
    pub disks: Vec<PulledDisk>,
    pub consistency: Consistency,
    server_started: bool,
    nbd_socket: PathBuf,
    watchdog: Option<Watchdog>,
}

fn short_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect()
}

impl Drop for PullBackup {
    fn drop(&mut self) {
        // Without commit or abort (a crash of this task) the next backup's
        // recovery cleans QEMU up; only the watchdog must not outlive us.
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
    }
}

#[async_trait]
impl super::InstanceSnapshot for PullBackup {
    fn disks(&self) -> Vec<&dyn DiskSnapshot> {
        self.disks.iter().map(|d| d as &dyn DiskSnapshot).collect()
    }
    fn consistency(&self) -> Consistency {
        self.consistency
    }
    async fn commit(self: Box<Self>) -> Result<(), ExtractError> {
        PullBackup::commit(*self).await
    }
    async fn abort(self: Box<Self>) -> Result<(), ExtractError> {
        PullBackup::abort(*self).await
    }
}

impl PullBackup {
    /// Remove what a previous, interrupted backup left on this QEMU, and
    /// put its bitmaps back to the state before it started.
    pub async fn recover(qmp: &QmpClient, timeout: Duration) -> Result<(), ExtractError> {
        recover::recover(qmp, timeout).await
    }

    /// Start the backup of `disks` (see the module documentation).
    pub async fn begin(
        qmp: Arc<QmpClient>,
        disks: &[DiskRequest],
        opts: PullOptions,
    ) -> Result<PullBackup, ExtractError> {
        let timeout = opts.qmp_timeout;
        Self::recover(&qmp, timeout).await?;
        std::fs::create_dir_all(&opts.scratch_dir).map_err(|e| {
            ExtractError::Scratch(format!("cannot create {}: {e}", opts.scratch_dir.display()))
        })?;
        let free = free_space(&opts.scratch_dir)
            .map_err(|e| ExtractError::Scratch(format!("{}: {e}", opts.scratch_dir.display())))?;
        if free < SCRATCH_MARGIN * 2 {
            return Err(ExtractError::Scratch(format!(
                "only {} MiB free in {}",
                free >> 20,
                opts.scratch_dir.display()
            )));
        }

        // ---- decide, per disk
        let nodes = cmd::block_nodes(&qmp).await?;
        let new_bitmap = format!("{PREFIX}{}", opts.backup_id);
        let tag = short_id(&opts.backup_id);
        let mut planned = Vec::new();
        for (i, d) in disks.iter().enumerate() {
            let node = nodes
                .iter()
                .find(|n| n.node_name == d.node)
                .ok_or_else(|| {
                    ExtractError::NoSuchDisk(format!("{} (node {})", d.device, d.node))
                })?;
            let size = node
                .virtual_size
                .ok_or_else(|| ExtractError::Other(format!("node {} reports no size", d.node)))?;
            let decision = decide::decide(d, &node.bitmaps, size);
            for name in &decision.remove {
                tracing::warn!(node = %d.node, bitmap = %name, reason = ?decision.reason, "removing untrusted bitmap");
                cmd::bitmap_remove_now(&qmp, &d.node, name).await?;
            }
            let fleece_node = format!("ekko-fl{i}-{tag}");
            planned.push(PulledDisk {
                device: d.device.clone(),
                node: d.node.clone(),
                size,
                new_bitmap: new_bitmap.clone(),
                old_bitmap: decision.base,
                full_reason: decision.reason,
                changed: Vec::new(),
                zeros: Vec::new(),
                nbd: Vec::new(),
                fleece_path: opts
                    .scratch_dir
                    .join(format!("ekko-fleece-{}-{i}.qcow2", opts.backup_id)),
                fleece_node,
                job_id: format!("ekko-job{i}-{tag}"),
                export_id: format!("ekko-exp{i}-{tag}"),
                limiter: Arc::new(RateLimiter::new(opts.read_rate_limit)),
                depth: opts.requests_in_flight.max(1),
                scratch_exceeded: Arc::new(AtomicBool::new(false)),
            });
        }

        let mut backup = PullBackup {
            qmp,
            opts,
            disks: planned,
            consistency: Consistency::Crash,
            server_started: false,
            nbd_socket: PathBuf::new(),
            watchdog: None,
        };
        match backup.start().await {
            Ok(()) => Ok(backup),
            Err(e) => {
                if let Err(t) = backup.teardown(true).await {
                    tracing::error!(error = %t, "teardown after a failed start");
                }
                Err(e)
            }
        }
    }

    /// Overlays, the transaction, exports and NBD connections. On error the
    /// caller tears down; the transaction is atomic, so the bitmaps are
    /// either all rotated (and `abort` puts them back) or untouched.
    async fn start(&mut self) -> Result<(), ExtractError> {
        let qmp = self.qmp.clone();
        let timeout = self.opts.qmp_timeout;
        for d in &self.disks {
            let path = d.fleece_path.to_string_lossy().into_owned();
            cmd::add_overlay(&qmp, &d.fleece_node, &path, d.size, &d.node, timeout).await?;
        }
        let socket = self.opts.scratch_dir.join(format!(
            "{}{}.sock",
            self.socket_prefix(),
            short_id(&self.opts.backup_id)
        ));
        let mut started = cmd::nbd_server_start(&qmp, &socket.to_string_lossy()).await?;
        if !started && self.stop_stale_server().await? {
            started = cmd::nbd_server_start(&qmp, &socket.to_string_lossy()).await?;
        }
        let socket = if started {
            self.server_started = true;
            socket
        } else {
            self.opts.existing_nbd_socket.clone().ok_or_else(|| {
                ExtractError::Other(
                    "QEMU already runs an NBD server whose socket is not configured".into(),
                )
            })?
        };

        self.nbd_socket = socket.clone();
        let mut actions = Vec::new();
        for d in &self.disks {
            actions.push(cmd::bitmap_add(
                &d.node,
                &d.new_bitmap,
                self.opts.granularity,
            ));
            if let Some(old) = &d.old_bitmap {
                actions.push(cmd::bitmap_disable(&d.node, old));
            }
            actions.push(cmd::fleece_job(&d.job_id, &d.node, &d.fleece_node)?);
        }
        // Freeze the guest around the transaction only.
        let mut agent = match &self.opts.agent_socket {
            Some(path) => match GuestAgent::connect(path, self.opts.agent_timeout).await {
                Ok(mut a) => match a.freeze().await {
                    Ok(n) => {
                        tracing::info!(filesystems = n, "guest frozen");
                        Some(a)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "guest freeze failed; the backup is crash-consistent");
                        let _ = a.thaw().await;
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "guest agent unreachable; the backup is crash-consistent");
                    None
                }
            },
            None => None,
        };
        // One transaction makes all disks' snapshots and bitmap rotations
        // atomic. `completion-mode: grouped` is not used: QEMU refuses it
        // for bitmap actions ("Action 'block-dirty-bitmap-add' does not
        // support transaction property completion-mode = grouped", checked
        // on 10.0), and `sync: none` jobs never complete on their own
        // anyway; they end when we cancel them at teardown.
        let result = cmd::transaction(&qmp, actions).await;
        if let Some(a) = agent.as_mut() {
            match a.thaw().await {
                Ok(_) if result.is_ok() => self.consistency = Consistency::Application,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "GUEST LEFT FROZEN: thaw failed"),
            }
        }
        if let Err(e) = result {
            // Nothing was rotated: forget the bitmaps so teardown does not
            // try to undo a transaction that did not happen.
            for d in &mut self.disks {
                d.old_bitmap = None;
                d.new_bitmap.clear();
            }
            return Err(e.into());
        }

        self.watchdog = Some(self.spawn_watchdog());
        for (i, d) in self.disks.iter_mut().enumerate() {
            let name = format!("ekko-{i}");
            cmd::export_add(
                &qmp,
                &d.export_id,
                &d.fleece_node,
                &name,
                d.old_bitmap.as_deref(),
            )
            .await?;
            let mut contexts = vec!["base:allocation".to_string()];
            let dirty_ctx = d
                .old_bitmap
                .as_ref()
                .map(|b| format!("qemu:dirty-bitmap:{b}"));
            contexts.extend(dirty_ctx.clone());
            let nbd = NbdClient::connect_unix(&socket, &name, &contexts).await?;
            let alloc = nbd.block_status("base:allocation", 0, d.size).await?;
            d.zeros = ranges_where(&alloc, |f| f & STATE_ZERO != 0);
            d.changed = match (&d.full_reason, &dirty_ctx) {
                (None, Some(ctx)) => ranges_where(&nbd.block_status(ctx, 0, d.size).await?, |f| {
                    f & STATE_DIRTY != 0
                }),
                _ => vec![(0, d.size)],
            };
            let mut conns = vec![nbd];
            if conns[0].can_multi_conn() {
                for _ in 1..nbd_connections() {
                    conns.push(NbdClient::connect_unix(&socket, &name, &[]).await?);
                }
            }
            d.nbd = conns;
        }
        Ok(())
    }

    /// The start of this instance's NBD socket names.
    fn socket_prefix(&self) -> String {
        format!("ekko-nbd-{}-", short_id(&self.opts.instance_key))
    }

    /// A server is running: if a socket of this instance is in the
    /// scratch directory, a killed backup started it; stop it (our sockets
    /// only ever serve our exports). Returns whether it did.
    async fn stop_stale_server(&self) -> Result<bool, ExtractError> {
        let prefix = self.socket_prefix();
        let stale: Vec<PathBuf> = std::fs::read_dir(&self.opts.scratch_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".sock"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if stale.is_empty() {
            return Ok(false);
        }
        tracing::warn!(sockets = ?stale, "stopping the NBD server an interrupted backup left running");
        cmd::nbd_server_stop(&self.qmp).await?;
        for s in stale {
            let _ = std::fs::remove_file(s);
        }
        Ok(true)
    }

    /// Cancel the fleecing jobs before the overlays outgrow the scratch
    /// limit or the filesystem: a copy-before-write that fails would fail
    /// the guest's write; a cancelled backup fails only the backup.
    fn spawn_watchdog(&self) -> Watchdog {
        let qmp = self.qmp.clone();
        let files: Vec<PathBuf> = self.disks.iter().map(|d| d.fleece_path.clone()).collect();
        let jobs: Vec<String> = self.disks.iter().map(|d| d.job_id.clone()).collect();
        let flags: Vec<Arc<AtomicBool>> = self
            .disks
            .iter()
            .map(|d| d.scratch_exceeded.clone())
            .collect();
        let timeout = self.opts.qmp_timeout;
        Watchdog::spawn(
            files,
            self.opts.scratch_dir.clone(),
            self.opts.scratch_limit,
            flags,
            async move {
                for j in &jobs {
                    if let Err(e) = cmd::job_cancel(&qmp, j, timeout).await {
                        tracing::warn!(job = %j, error = %e, "cancel");
                    }
                }
            },
        )
    }

    /// The NBD URI of disk `i`'s point-in-time export (for tools such as
    /// `qemu-img`, and for tests that check what the worker reads).
    pub fn nbd_uri(&self, i: usize) -> String {
        format!("nbd+unix:///ekko-{i}?socket={}", self.nbd_socket.display())
    }

    /// Whether the watchdog had to cancel this backup.
    pub fn scratch_exceeded(&self) -> bool {
        self.disks
            .iter()
            .any(|d| d.scratch_exceeded.load(Ordering::Relaxed))
    }

    async fn teardown(&mut self, hard: bool) -> Result<(), ExtractError> {
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        let qmp = self.qmp.clone();
        let timeout = self.opts.qmp_timeout;
        let mut first_err: Option<ExtractError> = None;
        let mut note = |r: Result<(), ExtractError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "teardown step failed");
                first_err.get_or_insert(e);
            }
        };
        let exports = cmd::export_ids(&qmp).await.unwrap_or_default();
        let jobs: Vec<String> = cmd::jobs(&qmp)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|j| j.0)
            .collect();
        let nodes: Vec<String> = cmd::block_nodes(&qmp)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.node_name)
            .collect();
        for d in &mut self.disks {
            for nbd in std::mem::take(&mut d.nbd) {
                if let Err(e) = nbd.disconnect().await {
                    tracing::debug!(error = %e, "NBD disconnect");
                }
            }
            if exports.contains(&d.export_id) {
                let r = match cmd::export_del(&qmp, &d.export_id, hard, timeout).await {
                    Err(_) if !hard => cmd::export_del(&qmp, &d.export_id, true, timeout).await,
                    r => r,
                };
                note(r.map_err(Into::into));
            }
            if jobs.contains(&d.job_id) {
                note(
                    cmd::job_cancel(&qmp, &d.job_id, timeout)
                        .await
                        .map_err(Into::into),
                );
            }
            if nodes.contains(&d.fleece_node) {
                note(
                    cmd::blockdev_del(&qmp, &d.fleece_node)
                        .await
                        .map_err(Into::into),
                );
            }
            let file_node = format!("{}-file", d.fleece_node);
            if nodes.contains(&file_node) {
                note(
                    cmd::blockdev_del(&qmp, &file_node)
                        .await
                        .map_err(Into::into),
                );
            }
            match std::fs::remove_file(&d.fleece_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => note(Err(
                    ExtractError::Scratch(format!("{}: {e}", d.fleece_path.display())),
                )),
                _ => {}
            }
        }
        if self.server_started {
            note(cmd::nbd_server_stop(&qmp).await.map_err(Into::into));
            self.server_started = false;
            let _ = std::fs::remove_file(&self.nbd_socket);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// All data was read: tear down and drop the old bitmaps; the new ones
    /// now track writes since this backup. Call it once the catalog has
    /// committed the backup. If the snapshot was broken meanwhile (scratch
    /// space ran out), this restores the bitmaps instead and fails.
    pub async fn commit(mut self) -> Result<(), ExtractError> {
        if self.scratch_exceeded() {
            self.abort_in_place().await?;
            return Err(ExtractError::Scratch(
                "scratch space ran out during the backup; it was cancelled to protect the guest"
                    .into(),
            ));
        }
        self.teardown(false).await?;
        for d in &self.disks {
            if let Some(old) = &d.old_bitmap {
                cmd::bitmap_remove_now(&self.qmp, &d.node, old).await?;
            }
        }
        Ok(())
    }

    /// The backup failed: tear down and restore the exact bitmap state
    /// from before it started, so no guest write is missed.
    pub async fn abort(self) -> Result<(), ExtractError> {
        let mut this = self;
        this.abort_in_place().await
    }

    async fn abort_in_place(&mut self) -> Result<(), ExtractError> {
        let teardown = self.teardown(true).await;
        let mut actions = Vec::new();
        for d in &self.disks {
            if d.new_bitmap.is_empty() {
                continue;
            }
            if let Some(old) = &d.old_bitmap {
                actions.push(cmd::bitmap_merge(&d.node, old, &[&d.new_bitmap]));
                actions.push(cmd::bitmap_enable(&d.node, old));
            }
            actions.push(cmd::bitmap_remove(&d.node, &d.new_bitmap));
        }
        if !actions.is_empty() {
            cmd::transaction(&self.qmp, actions).await?;
        }
        teardown
    }
}
