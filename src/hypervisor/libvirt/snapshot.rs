//! One backup of a domain through libvirt's backup API (see the parent
//! module's documentation for the steps): [`LibvirtSnapshot::begin`] runs
//! the libvirt part on the blocking pool, then connects to each disk's
//! export and maps what to read; `commit` and `abort` end the job and
//! settle the checkpoints.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::cleanup::{self, instance_dir};
use super::plan::{self, Base, DomainDisk, JobPlan};
use super::{backed_up_disks, blocking, our_checkpoint, Shared, CHECKPOINT_PREFIX};
use crate::extract::scratch::{free_space, Watchdog, SCRATCH_MARGIN};
use crate::extract::throttle::RateLimiter;
use crate::extract::{
    DiskRequest, DiskSnapshot, ExtractError, FullReason, InstanceSnapshot, SavedCheckpoint,
};
use crate::hypervisor::SnapshotOptions;
use crate::libvirt::{
    checkpoint_create, checkpoint_without_parent, code, dirty_bitmap_context, parse_backup,
    parse_domain, Domain, DomainInfo, LibvirtError,
};
use crate::nbd::protocol::{ranges_where, STATE_DIRTY, STATE_ZERO};
use crate::nbd::NbdClient;
use crate::status::Consistency;

/// One disk of a running libvirt backup job.
pub struct LibvirtDisk {
    device: String,
    size: u64,
    full_reason: Option<FullReason>,
    /// The new checkpoint's bitmap on this disk (qcow2 only).
    new_bitmap: Option<String>,
    changed: Vec<(u64, u64)>,
    zeros: Vec<(u64, u64)>,
    nbd: Option<NbdClient>,
    limiter: Arc<RateLimiter>,
    depth: usize,
    scratch_exceeded: Arc<AtomicBool>,
}

#[async_trait]
impl DiskSnapshot for LibvirtDisk {
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
        self.new_bitmap.as_deref()
    }
    fn read_ranges<'a>(
        &'a self,
        ranges: Vec<(u64, u64)>,
    ) -> BoxStream<'a, Result<(u64, Bytes), ExtractError>> {
        let Some(nbd) = self.nbd.as_ref() else {
            return futures::stream::once(async {
                Err(ExtractError::Other("disk is torn down".into()))
            })
            .boxed();
        };
        let (exceeded, limiter) = (self.scratch_exceeded.clone(), self.limiter.clone());
        crate::nbd::client::read_ranges_multi(std::slice::from_ref(nbd), &ranges, self.depth)
            .then(move |piece| {
                let (exceeded, limiter) = (exceeded.clone(), limiter.clone());
                async move {
                    let piece = piece?;
                    if exceeded.load(Ordering::Relaxed) {
                        return Err(ExtractError::Scratch(
                            "scratch space ran out during the backup; the backup job was ended to protect the guest".into(),
                        ));
                    }
                    limiter.acquire(piece.1.len() as u64).await;
                    Ok(piece)
                }
            })
            .boxed()
    }
}

/// What the blocking part of `begin` hands back.
struct Begun {
    plan: JobPlan,
    socket: PathBuf,
    scratch_files: Vec<PathBuf>,
    /// Export name and dirty-bitmap meta context per planned disk.
    exports: Vec<(String, Option<String>)>,
    new_checkpoint: SavedCheckpoint,
    base: Option<String>,
    consistency: Consistency,
}

/// A libvirt backup job in progress. End it with `commit` once the
/// catalog has the backup, or `abort`.
pub struct LibvirtSnapshot {
    shared: Arc<Shared>,
    uuid: String,
    disks: Vec<LibvirtDisk>,
    consistency: Consistency,
    new_checkpoint: SavedCheckpoint,
    /// The catalog's checkpoint the job was incremental from (defined in
    /// libvirt until the job ends).
    base: Option<String>,
    /// This instance's directory under the scratch directory.
    dir: PathBuf,
    watchdog: Option<Watchdog>,
}

impl Drop for LibvirtSnapshot {
    fn drop(&mut self) {
        // Neither committed nor aborted (the task was dropped): the next
        // backup's (or the worker's) recovery ends the job.
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
    }
}

fn domain_disks(dom: &Domain, info: &DomainInfo) -> Result<Vec<DomainDisk>, LibvirtError> {
    backed_up_disks(info)
        .into_iter()
        .map(|d| {
            Ok(DomainDisk {
                target: d.target.clone(),
                qcow2: d.is_qcow2(),
                size: dom.block_capacity(&d.target)?,
            })
        })
        .collect()
}

/// Define the catalog's checkpoint again (validated: libvirt checks each
/// disk's bitmap) and say what it is on this host.
fn define_base(
    shared: &Shared,
    dom: &Domain,
    uuid: &str,
    saved: Option<&SavedCheckpoint>,
) -> Result<Base, ExtractError> {
    let Some(saved) = saved else {
        return Ok(Base::None);
    };
    let Some(info) = our_checkpoint(saved) else {
        tracing::warn!(instance = uuid, checkpoint = %saved.name, "the catalog's checkpoint is not one Ekko made; reading in full");
        return Ok(Base::Moved);
    };
    if crate::libvirt::made_on(info.description.as_deref()) != Some(shared.host.trim()) {
        tracing::warn!(instance = uuid, checkpoint = %saved.name, made_on = ?info.description, "the checkpoint was made on another host; reading in full");
        return Ok(Base::Moved);
    }
    let xml =
        checkpoint_without_parent(&saved.xml).map_err(|e| ExtractError::Other(e.to_string()))?;
    let flags = checkpoint_create::REDEFINE | checkpoint_create::REDEFINE_VALIDATE;
    match dom.checkpoint_create(&xml, flags) {
        Ok(_) => Ok(Base::Defined {
            name: saved.name.clone(),
            bitmaps: info
                .disks
                .iter()
                .filter(|d| d.bitmap.is_some())
                .map(|d| d.name.clone())
                .collect(),
        }),
        Err(e) if e.is_connection_lost() => Err(e.into()),
        Err(e) => {
            tracing::warn!(instance = uuid, checkpoint = %saved.name, error = %e, "libvirt refused the catalog's checkpoint; reading in full");
            // Its bitmaps, if any are left, are useless now: the ledger
            // has them removed.
            cleanup::remember(shared, uuid, &[(saved.name.clone(), xml)])?;
            Ok(Base::Invalid)
        }
    }
}

/// The per-instance directory: QEMU (the domain's DAC user) creates the
/// NBD socket there; libvirt (root) the scratch files.
fn prepare_dir(
    scratch_dir: &Path,
    dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), ExtractError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |p: &Path, e: std::io::Error| ExtractError::Scratch(format!("{}: {e}", p.display()));
    let parent = scratch_dir.join("libvirt");
    std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
    // QEMU runs as another user: it must be able to pass through.
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| io(&parent, e))?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| io(dir, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| io(dir, e))?;
    }
    let free = free_space(dir).map_err(|e| io(dir, e))?;
    if free < SCRATCH_MARGIN * 2 {
        return Err(ExtractError::Scratch(format!(
            "only {} MiB free in {}",
            free >> 20,
            dir.display()
        )));
    }
    Ok(())
}

/// Freeze the guest if it has an agent: Ok(true) when frozen. A failed
/// freeze is an error only when quiesce is required; either way a freeze
/// that may have taken effect (anything but "no agent") is thawed first.
/// A marker file says a freeze may be outstanding, so a worker killed
/// between freeze and thaw thaws the guest at its next start
/// ([`cleanup::recover_domain`]).
fn freeze(
    shared: &Shared,
    dom: &Domain,
    info: &DomainInfo,
    uuid: &str,
) -> Result<bool, ExtractError> {
    if !info.guest_agent {
        return Ok(false);
    }
    let required = shared.opts.require_quiesce;
    let attempt = if info.guest_agent_connected == Some(false) {
        // libvirt knows no agent answers: asking would fail (code 86) anyway.
        Err(LibvirtError {
            operation: "virDomainFSFreeze",
            code: code::AGENT_UNRESPONSIVE,
            domain: 0,
            message: "the guest agent channel is disconnected".into(),
        })
    } else {
        cleanup::mark_frozen(shared, uuid)?;
        let timeout = i32::try_from(shared.opts.quiesce_timeout.max(1)).unwrap_or(i32::MAX);
        dom.set_agent_timeout(timeout).and_then(|_| dom.fs_freeze())
    };
    match attempt {
        Ok(n) => {
            tracing::info!(instance = uuid, filesystems = n, "guest frozen");
            Ok(true)
        }
        Err(e) => {
            // A freeze that timed out may still take effect: thaw anyway.
            if !e.is_agent_unavailable() || e.code == code::AGENT_COMMAND_TIMEOUT {
                thaw(shared, dom, uuid);
            } else {
                cleanup::thawed(shared, dom, uuid);
            }
            if required {
                return Err(ExtractError::Agent(format!(
                    "[libvirt] require_quiesce: the guest could not be frozen: {e}"
                )));
            }
            tracing::warn!(instance = uuid, error = %e, "guest not frozen; the backup is crash-consistent");
            Ok(false)
        }
    }
}

/// Thaw, retried: a guest left frozen is an outage. If every try fails the
/// marker stays, and the job's end and the next recovery try again.
pub(super) fn thaw(shared: &Shared, dom: &Domain, uuid: &str) -> bool {
    for attempt in 0..3 {
        match dom.fs_thaw() {
            Ok(_) => {
                cleanup::thawed(shared, dom, uuid);
                return true;
            }
            Err(e) => {
                tracing::error!(instance = uuid, attempt, error = %e, "guest thaw failed");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    tracing::error!(
        instance = uuid,
        "GUEST LEFT FROZEN: thaw failed three times; tried again when the job ends"
    );
    false
}

/// The libvirt part of a backup, up to a running job (blocking), under
/// the instance's lock ([`cleanup::instance_lock`]).
fn begin_blocking(
    shared: &Shared,
    uuid: &str,
    requests: &[DiskRequest],
    opts: &SnapshotOptions,
) -> Result<Begun, ExtractError> {
    let lock = cleanup::instance_lock(uuid);
    let _held = cleanup::hold(shared, &lock, uuid)?;
    begin_locked(shared, uuid, requests, opts)
}

fn begin_locked(
    shared: &Shared,
    uuid: &str,
    requests: &[DiskRequest],
    opts: &SnapshotOptions,
) -> Result<Begun, ExtractError> {
    let t0 = std::time::Instant::now();
    let mut marks: Vec<(&str, u128)> = Vec::new();
    let mut mark = |what: &'static str| marks.push((what, t0.elapsed().as_millis()));
    let dom = shared
        .domain(uuid)?
        .ok_or_else(|| ExtractError::Other(format!("instance {uuid}: no such domain")))?;
    if !dom.is_active()? {
        return Err(ExtractError::Other(format!(
            "instance {uuid} is not running: libvirt backs up running domains only"
        )));
    }
    let dir = instance_dir(&opts.scratch_dir, uuid);
    cleanup::recover_domain(shared, &dom, uuid, &dir)?;
    mark("recovered");
    let _ = std::fs::remove_dir_all(&dir);
    let info = parse_domain(&dom.xml_desc(0)?).map_err(|e| ExtractError::Other(e.to_string()))?;
    let base = define_base(shared, &dom, uuid, opts.checkpoint.as_ref())?;
    mark("base defined");
    let keep = match &base {
        Base::Defined { name, .. } => Some(name.clone()),
        _ => None,
    };
    // From here on the base is defined: whatever fails forgets it again.
    let started = (|| {
        cleanup::remove_unneeded(shared, &dom, uuid, keep.as_deref())?;
        mark("ledger settled");
        let plan = plan::plan(
            requests,
            &domain_disks(&dom, &info)?,
            &info.other_targets,
            &base,
        )?;
        mark("planned");
        prepare_dir(&opts.scratch_dir, &dir, info.dac_owner)?;
        let socket = dir.join("nbd.sock");
        let scratch = |t: &str| dir.join(format!("{t}.scratch.qcow2"));
        let spec = plan.backup_spec(socket.clone(), scratch);
        let name = format!("{CHECKPOINT_PREFIX}{}", opts.tag);
        let ck = plan.checkpoint_spec(&name, &shared.host);
        let frozen = freeze(shared, &dom, &info, uuid)?;
        mark("frozen");
        let begun = dom.backup_begin(&spec.to_xml(), Some(&ck.to_xml()), 0);
        mark("job begun");
        let thawed = frozen && thaw(shared, &dom, uuid);
        begun?;
        Ok((
            plan,
            socket,
            spec.disks
                .iter()
                .map(|d| d.scratch.clone())
                .collect::<Vec<_>>(),
            name,
            thawed,
        ))
    })();
    let (plan, socket, scratch_files, name, thawed) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(b) = &keep {
                if let Err(t) = cleanup::drop_metadata(shared, &dom, uuid, b) {
                    tracing::error!(instance = uuid, error = %t, "forgetting the base checkpoint after a failed start");
                }
            }
            return Err(e);
        }
    };
    // The job runs: from here on, a failure ends it.
    let described = (|| -> Result<_, ExtractError> {
        let job = parse_backup(&dom.backup_xml_desc()?)
            .map_err(|e| ExtractError::Other(e.to_string()))?;
        let exports = plan
            .disks
            .iter()
            .map(|d| {
                let j = job.disks.iter().find(|j| j.name == d.target);
                let export = j
                    .and_then(|j| j.export_name.clone())
                    .unwrap_or_else(|| d.target.clone());
                let dirty = (plan.incremental.is_some() && d.full.is_none()).then(|| {
                    j.and_then(|j| j.export_bitmap.as_ref())
                        .map(|b| format!("qemu:dirty-bitmap:{b}"))
                        .unwrap_or_else(|| dirty_bitmap_context(&d.target))
                });
                (export, dirty)
            })
            .collect();
        let ck = dom.checkpoint_lookup(&name)?.ok_or_else(|| {
            ExtractError::Other(format!("checkpoint {name} missing after the backup began"))
        })?;
        Ok((exports, cleanup::saved_xml(&ck)?))
    })();
    match described {
        Ok((exports, xml)) => {
            mark("job described");
            // Nova's undefine (delete, hard reboot, resize, cold migration)
            // refuses a domain with checkpoints: both are forgotten while
            // the job runs (metadata only, kept in the ledger; libvirt 11
            // allows it during a pull job, whose export bitmap is already
            // made). The job's end settles them from the ledger.
            for n in std::iter::once(name.as_str()).chain(keep.as_deref()) {
                if let Err(e) = cleanup::drop_metadata(shared, &dom, uuid, n) {
                    tracing::error!(instance = uuid, checkpoint = n, error = %e, "checkpoint metadata kept while the job runs: Nova cannot undefine the domain until it ends");
                }
            }
            mark("checkpoints forgotten");
            tracing::debug!(
                instance = uuid,
                ?marks,
                "libvirt backup job running (ms since the start)"
            );
            Ok(Begun {
                plan,
                socket,
                scratch_files,
                exports,
                new_checkpoint: SavedCheckpoint { name, xml },
                base: keep,
                consistency: if thawed {
                    Consistency::Application
                } else {
                    Consistency::Crash
                },
            })
        }
        Err(e) => {
            // (libvirtd may have restarted: end_job reconnects.) Once the
            // job is over, its scratch goes too.
            if end_job(shared, &dom, uuid, &name, keep.as_deref(), false) {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(e)
        }
    }
}

/// End the job and settle the checkpoints (blocking). Kept (`commit`): the
/// base goes for real, the new one's metadata only. Not kept (`abort`):
/// the new one goes for real, the base's metadata only. Errors are logged:
/// whatever is left, the next backup's recovery and the ledger handle.
fn end_job(
    shared: &Shared,
    dom: &Domain,
    uuid: &str,
    new: &str,
    base: Option<&str>,
    keep_new: bool,
) -> bool {
    let t0 = std::time::Instant::now();
    // The handle's connection may have died with libvirtd (restarted
    // mid-backup): settle through a fresh one, waiting for the daemon.
    let fresh;
    let dom = match dom.job_stats() {
        Err(e) if e.is_connection_lost() => match shared.domain_patiently(uuid) {
            Ok(Some(d)) => {
                fresh = d;
                &fresh
            }
            _ => dom,
        },
        _ => dom,
    };
    let mut clean = cleanup::thaw_if_left_frozen(shared, dom, uuid);
    let mut step = |what: &str, r: Result<(), ExtractError>| {
        if let Err(e) = r {
            tracing::error!(instance = uuid, error = %e, "{what}");
            clean = false;
        }
    };
    let ended = dom.job_stats().map_err(ExtractError::from).and_then(|s| {
        if s.is_active() {
            dom.abort_job_and_wait(shared.job_timeout())
                .map(|_| ())
                .map_err(Into::into)
        } else {
            Ok(())
        }
    });
    step("ending the backup job", ended);
    let job_ended = t0.elapsed().as_millis();
    let (gone, forgotten) = if keep_new {
        (base, Some(new))
    } else {
        (Some(new), base)
    };
    if let Some(g) = gone {
        step(
            "deleting a checkpoint",
            cleanup::delete_for_real(shared, dom, uuid, g),
        );
    }
    if let Some(f) = forgotten {
        step(
            "forgetting a checkpoint's metadata",
            cleanup::drop_metadata(shared, dom, uuid, f),
        );
    }
    tracing::debug!(
        instance = uuid,
        job_ended,
        settled = t0.elapsed().as_millis() as u64,
        keep_new,
        "libvirt backup job ended (ms)"
    );
    clean
}

impl LibvirtSnapshot {
    pub(super) async fn begin(
        shared: Arc<Shared>,
        uuid: &str,
        requests: Vec<DiskRequest>,
        opts: SnapshotOptions,
    ) -> Result<LibvirtSnapshot, ExtractError> {
        let (s, id, o) = (shared.clone(), uuid.to_string(), opts.clone());
        let begun = blocking(move || begin_blocking(&s, &id, &requests, &o)).await?;
        for (d, _) in begun.plan.disks.iter().zip(&begun.exports) {
            if let Some(why) = &d.full {
                tracing::info!(instance = uuid, disk = %d.target, reason = why.as_str(), "disk read in full");
            }
        }
        let flags: Vec<Arc<AtomicBool>> = begun
            .plan
            .disks
            .iter()
            .map(|_| Arc::new(AtomicBool::new(false)))
            .collect();
        let mut snap = LibvirtSnapshot {
            shared: shared.clone(),
            uuid: uuid.to_string(),
            disks: Vec::new(),
            consistency: begun.consistency,
            new_checkpoint: begun.new_checkpoint.clone(),
            base: begun.base.clone(),
            dir: instance_dir(&opts.scratch_dir, uuid),
            watchdog: Some(Self::watchdog(&shared, uuid, &begun, &opts, flags.clone())),
        };
        match snap.connect(&begun, &opts, flags).await {
            Ok(()) => Ok(snap),
            Err(e) => {
                if let Err(t) = snap.finish(false).await {
                    tracing::error!(instance = uuid, error = %t, "ending the job after a failed start");
                }
                Err(e)
            }
        }
    }

    /// End the libvirt job before the scratch files outgrow the limit or
    /// the filesystem: a failed copy-before-write would fail the guest's
    /// write; an ended job fails only the backup.
    fn watchdog(
        shared: &Arc<Shared>,
        uuid: &str,
        begun: &Begun,
        opts: &SnapshotOptions,
        flags: Vec<Arc<AtomicBool>>,
    ) -> Watchdog {
        let (shared, uuid) = (shared.clone(), uuid.to_string());
        Watchdog::spawn(
            begun.scratch_files.clone(),
            opts.scratch_dir.clone(),
            opts.scratch_limit,
            flags,
            async move {
                let ended = blocking(move || {
                    if let Some(dom) = shared.domain(&uuid)? {
                        dom.abort_job_and_wait(shared.job_timeout())?;
                    }
                    Ok(())
                })
                .await;
                if let Err(e) = ended {
                    tracing::warn!(error = %e, "ending the backup job for lack of scratch space");
                }
            },
        )
    }

    /// Connect to each export and map what to read.
    async fn connect(
        &mut self,
        begun: &Begun,
        opts: &SnapshotOptions,
        flags: Vec<Arc<AtomicBool>>,
    ) -> Result<(), ExtractError> {
        for ((d, (export, dirty)), flag) in begun.plan.disks.iter().zip(&begun.exports).zip(flags) {
            let mut contexts = vec!["base:allocation".to_string()];
            contexts.extend(dirty.clone());
            let nbd = NbdClient::connect_unix(&begun.socket, export, &contexts).await?;
            if nbd.size() != d.size {
                return Err(ExtractError::Other(format!(
                    "disk {}: the export has {} bytes, libvirt said {}",
                    d.target,
                    nbd.size(),
                    d.size
                )));
            }
            let alloc = nbd.block_status("base:allocation", 0, d.size).await?;
            let changed = match dirty {
                Some(ctx) => ranges_where(&nbd.block_status(ctx, 0, d.size).await?, |f| {
                    f & STATE_DIRTY != 0
                }),
                None => vec![(0, d.size)],
            };
            self.disks.push(LibvirtDisk {
                device: d.target.clone(),
                size: d.size,
                full_reason: d.full.clone(),
                new_bitmap: d.qcow2.then(|| begun.new_checkpoint.name.clone()),
                changed,
                zeros: ranges_where(&alloc, |f| f & STATE_ZERO != 0),
                nbd: Some(nbd),
                limiter: Arc::new(RateLimiter::new(opts.read_rate_limit)),
                depth: opts.requests_in_flight.max(1),
                scratch_exceeded: flag,
            });
        }
        Ok(())
    }

    fn scratch_exceeded(&self) -> bool {
        self.disks
            .iter()
            .any(|d| d.scratch_exceeded.load(Ordering::Relaxed))
    }

    /// Disconnect, then end the job and settle the checkpoints.
    async fn finish(&mut self, keep_new: bool) -> Result<(), ExtractError> {
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        for d in &mut self.disks {
            if let Some(nbd) = d.nbd.take() {
                if let Err(e) = nbd.disconnect().await {
                    tracing::debug!(error = %e, "NBD disconnect");
                }
            }
        }
        let (shared, uuid) = (self.shared.clone(), self.uuid.clone());
        let (new, base) = (self.new_checkpoint.name.clone(), self.base.clone());
        let dir = self.dir.clone();
        blocking(move || {
            let lock = cleanup::instance_lock(&uuid);
            let _held = cleanup::hold(&shared, &lock, &uuid)?;
            let Some(dom) = shared.domain_patiently(&uuid)? else {
                tracing::warn!(instance = %uuid, "the domain is gone; nothing to end");
                return Ok(());
            };
            if end_job(&shared, &dom, &uuid, &new, base.as_deref(), keep_new) {
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            } else {
                Err(ExtractError::Other(format!("instance {uuid}: the backup job did not end cleanly (see the log); the next backup cleans up")))
            }
        })
        .await
    }
}

#[async_trait]
impl InstanceSnapshot for LibvirtSnapshot {
    fn disks(&self) -> Vec<&dyn DiskSnapshot> {
        self.disks.iter().map(|d| d as &dyn DiskSnapshot).collect()
    }
    fn consistency(&self) -> Consistency {
        self.consistency
    }
    fn checkpoint(&self) -> Option<SavedCheckpoint> {
        Some(self.new_checkpoint.clone())
    }
    async fn commit(mut self: Box<Self>) -> Result<(), ExtractError> {
        if self.scratch_exceeded() {
            self.finish(false).await?;
            return Err(ExtractError::Scratch(
                "scratch space ran out during the backup; the job was ended to protect the guest"
                    .into(),
            ));
        }
        self.finish(true).await
    }
    async fn abort(mut self: Box<Self>) -> Result<(), ExtractError> {
        self.finish(false).await
    }
}
