//! The hypervisor driver of a Nova compute host: the domains libvirt runs
//! are the instances, and a backup is a pull-mode backup job of libvirt's
//! backup API (`virDomainBackupBegin`) read with Ekko's own NBD client.
//! Nothing here talks to QEMU's monitor: libvirt owns it, and a
//! `qemu-monitor-command` would taint the domain.
//!
//! # Instances
//! A domain with Nova's `nova:instance` metadata is an instance: its UUID
//! is the server id, the metadata gives project, user, name and flavor.
//! Other domains are left alone unless `[libvirt] include_unmanaged`.
//! Stopped domains are listed too (a shut-off server keeps its backups
//! and its disks in service); only a running one can be backed up.
//! Disks are the `device='disk'` ones that are not read-only, named by
//! their target (`vda`), which is also the NBD export's name.
//!
//! # One backup ([`snapshot`])
//! 1. clean up what an interrupted backup of this instance left
//!    ([`cleanup`]): our backup job, scratch files, checkpoint metadata;
//! 2. define again the checkpoint the catalog keeps with the instance's
//!    last backup (`REDEFINE_VALIDATE`: libvirt checks each disk's bitmap)
//!    and decide per disk: incremental, or a full read with its reason
//!    ([`plan`]); checkpoints and bitmaps of ours nobody needs any more are
//!    deleted for real (the domain runs, so libvirt removes the bitmaps);
//! 3. freeze the guest if it has an agent, begin one backup job for all
//!    disks (one instant) with a new checkpoint `ekko-<tag>`, thaw;
//! 4. read each disk's export: dirty ∩ not-zero for an incremental disk,
//!    not-zero for a full one; the scratch files are watched;
//! 5. `commit`: end the job (pull mode has no completion), delete the old
//!    checkpoint for real (its bitmap goes) and the new one's metadata
//!    only (its bitmap tracks writes until the next backup); `abort`: end
//!    the job, delete the new checkpoint for real and the old one's
//!    metadata, so the next backup builds on the old one.
//!
//! # Checkpoints never in Nova's way
//! Between backups libvirt knows no checkpoint of ours: a stopped domain
//! with checkpoints cannot be undefined, which Nova does on delete, hard
//! reboot, resize and cold migration. The catalog keeps the checkpoint's
//! XML with the backup ([`SavedCheckpoint`]); the bitmaps live in the
//! qcow2 images. A small ledger per instance (`<state_path>/libvirt`)
//! remembers the checkpoints whose metadata Ekko dropped while their bitmap
//! may remain, so the bitmaps nobody needs are removed at the next backup.
//!
//! # Never stuck
//! Every call is bounded ([`bounded`]): a hung libvirtd or QEMU monitor
//! fails the calls that need it, not the worker. What backups left for
//! domains no longer on this host goes at the worker's start ([`sweep`]).

mod bounded;
mod cleanup;
mod plan;
mod snapshot;
mod sweep;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{valid_id, DiskInfo, Hypervisor, LocalInstance, SnapshotOptions};
use crate::config::{EkkoConfig, LibvirtOptions};
use crate::extract::{DiskRequest, ExtractError, InstanceSnapshot, SavedCheckpoint};
use crate::libvirt::{parse_domain, Connection, Domain, DomainInfo, Libvirt, LibvirtError};

/// Every checkpoint (and so bitmap) Ekko makes is named `ekko-<tag>`.
pub const CHECKPOINT_PREFIX: &str = "ekko-";

/// One domain as an instance, with what Nova says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NovaDomain {
    pub instance: LocalInstance,
    /// `nova:owner/nova:user/@uuid`.
    pub user_id: Option<String>,
    /// `nova:flavor/@name`.
    pub flavor: Option<String>,
    pub running: bool,
}

/// The disks of a domain that are backed up: not read-only, with a medium.
pub(crate) fn backed_up_disks(info: &DomainInfo) -> Vec<&crate::libvirt::DiskInfo> {
    use crate::libvirt::DiskSource;
    info.disks
        .iter()
        .filter(|d| !d.readonly && !matches!(d.source, DiskSource::Other(_)))
        .collect()
}

/// The catalog keeps names of at most this many bytes; Nova allows 255
/// characters.
const MAX_NAME_BYTES: usize = 255;

/// `name` cut to at most `max` bytes on a character boundary (a long
/// display name must not keep an instance out of the inventory).
fn shortened(mut name: String, max: usize) -> String {
    if name.len() > max {
        let mut end = max;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// The instance a domain is, or None when it is left alone (no Nova
/// metadata and unmanaged domains not included, or ids Ekko cannot take).
pub fn instance_of(info: &DomainInfo, running: bool, opts: &LibvirtOptions) -> Option<NovaDomain> {
    let (project, name, user_id, flavor) = match &info.nova {
        Some(n) => (
            n.project_id.clone()?,
            n.name.clone().unwrap_or_else(|| info.name.clone()),
            n.user_id.clone(),
            n.flavor.clone(),
        ),
        None if opts.include_unmanaged && !opts.unmanaged_project_id.is_empty() => (
            opts.unmanaged_project_id.clone(),
            info.name.clone(),
            None,
            None,
        ),
        None => return None,
    };
    if !valid_id(&info.uuid) || !valid_id(&project) {
        tracing::warn!(domain = %info.name, uuid = %info.uuid, "domain with ids Ekko cannot take, ignored");
        return None;
    }
    Some(NovaDomain {
        instance: LocalInstance {
            id: info.uuid.clone(),
            project_id: project,
            name: shortened(name, MAX_NAME_BYTES),
        },
        user_id,
        flavor,
        running,
    })
}

/// What the driver's parts share: the library, one connection (opened
/// again after libvirtd restarted), the options and the directories.
pub(crate) struct Shared {
    lib: Libvirt,
    conn: Mutex<Option<Arc<Connection>>>,
    pub opts: LibvirtOptions,
    /// This host's name, written into each checkpoint (a checkpoint that
    /// followed its instance to another host is not trusted there).
    pub host: String,
    /// `<state_path>/libvirt`: the ledgers.
    pub ledger_dir: PathBuf,
    /// `[backup] scratch_dir`: each instance's backup job has a directory
    /// of its own there (NBD socket, scratch files).
    pub scratch_dir: PathBuf,
    /// Calls that timed out and have not returned yet ([`bounded`]).
    stuck: bounded::Stuck,
}

impl Shared {
    /// The connection, opened (again) when there is none or it died.
    /// Blocking.
    pub fn connection(&self) -> Result<Arc<Connection>, LibvirtError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_ref() {
            if c.is_alive() {
                return Ok(c.clone());
            }
            tracing::warn!(uri = %c.uri(), "libvirt connection lost; opening a new one");
        }
        let c = Arc::new(self.lib.open(&self.opts.connection_uri)?);
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Forget the connection after an error that says it is gone.
    pub fn forget_if_lost(&self, e: &LibvirtError) {
        if e.is_connection_lost() {
            *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// The domain of instance `uuid`, or None. Blocking. A connection
    /// found dead on the way (libvirtd restarted since it was opened) is
    /// opened again, once.
    pub fn domain(&self, uuid: &str) -> Result<Option<Domain>, LibvirtError> {
        match self.connection().and_then(|c| c.lookup_by_uuid(uuid)) {
            Err(e) if e.is_connection_lost() => {
                tracing::warn!(error = %e, "libvirt connection lost; connecting again");
                self.forget_if_lost(&e);
                self.connection()?.lookup_by_uuid(uuid)
            }
            r => r,
        }
    }

    /// [`Shared::domain`], waiting up to `[libvirt] job_timeout` while the
    /// daemon cannot be reached (restarting): ending a backup job must not
    /// give up because libvirtd was being restarted at that moment.
    pub fn domain_patiently(&self, uuid: &str) -> Result<Option<Domain>, LibvirtError> {
        let end = std::time::Instant::now() + self.job_timeout();
        let mut wait = Duration::from_millis(100);
        loop {
            match self.domain(uuid) {
                Err(e) if e.is_connection_lost() && std::time::Instant::now() < end => {
                    tracing::warn!(error = %e, "libvirtd unreachable; trying again");
                    self.forget_if_lost(&e);
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                r => return r,
            }
        }
    }

    /// How long a libvirt job may take to end.
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.opts.job_timeout.max(1))
    }
}

/// Run blocking libvirt work on tokio's blocking pool. Unbounded: the
/// driver's entry points bound it ([`bounded`]).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ExtractError> + Send + 'static,
) -> Result<T, ExtractError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ExtractError::Other(format!("libvirt task: {e}")))?
}

/// The instances of the libvirt daemon `[libvirt] connection_uri` names.
pub struct LibvirtHypervisor {
    shared: Arc<Shared>,
    /// The instances at the last listing, by UUID.
    last_seen: Mutex<HashMap<String, NovaDomain>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LibvirtHypervisor {
    /// Load libvirt (an error names the package to install when it is
    /// missing); the daemon is reached at the first call.
    pub fn from_config(config: &EkkoConfig) -> anyhow::Result<LibvirtHypervisor> {
        let opts = config.libvirt.clone();
        anyhow::ensure!(
            !opts.include_unmanaged || valid_id(&opts.unmanaged_project_id),
            "[libvirt] include_unmanaged needs a valid unmanaged_project_id"
        );
        let lib = Libvirt::load()?;
        Ok(LibvirtHypervisor {
            shared: Arc::new(Shared {
                lib,
                conn: Mutex::new(None),
                opts,
                host: config.default.host.clone(),
                ledger_dir: PathBuf::from(&config.default.state_path).join("libvirt"),
                scratch_dir: PathBuf::from(&config.backup.scratch_dir),
                stuck: Default::default(),
            }),
            last_seen: Mutex::new(HashMap::new()),
        })
    }

    /// Every domain, with its UUID. Blocking.
    fn list(shared: &Shared) -> Result<Vec<(String, Domain)>, LibvirtError> {
        let listed = match shared.connection()?.list_all_domains(0) {
            Err(e) if e.is_connection_lost() => {
                shared.forget_if_lost(&e);
                shared.connection()?.list_all_domains(0)?
            }
            r => r?,
        };
        listed.into_iter().map(|d| Ok((d.uuid()?, d))).collect()
    }

    /// The instance a domain is, if any. Blocking.
    fn describe(shared: &Shared, dom: &Domain) -> Result<Option<NovaDomain>, LibvirtError> {
        // A domain undefined between the listing and now is just gone.
        let (xml, running) = match dom.xml_desc(0).and_then(|x| Ok((x, dom.is_active()?))) {
            Ok(v) => v,
            Err(e) if e.is_no_domain() => return Ok(None),
            Err(e) => return Err(e),
        };
        match parse_domain(&xml) {
            Ok(info) => Ok(instance_of(&info, running, &shared.opts)),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable domain XML, domain ignored");
                Ok(None)
            }
        }
    }

    /// The instances with Nova's details (user, flavor, state). Each
    /// domain is read in a call of its own: one that does not answer in
    /// time (the daemon waits for its hung QEMU) is listed as last seen.
    pub async fn nova_domains(&self) -> Result<Vec<NovaDomain>, ExtractError> {
        let limit = self.shared.job_timeout();
        let what = "listing the domains";
        let listed = bounded::call(&self.shared, bounded::LISTING, what, limit, |s| {
            Ok(Self::list(s)?)
        })
        .await?;
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for (uuid, dom) in listed {
            let what = format!("domain {uuid}: its description");
            let described = bounded::call(&self.shared, &uuid, &what, limit, move |s| {
                Ok(Self::describe(s, &dom)?)
            })
            .await;
            let d = match described {
                Ok(d) => d,
                Err(e @ ExtractError::TimedOut(_)) => {
                    tracing::warn!(domain = %uuid, error = %e, "domain not answering; listed as last seen");
                    lock(&self.last_seen).get(&uuid).cloned()
                }
                Err(e) => return Err(e),
            };
            if let Some(d) = d {
                seen.insert(uuid, d.clone());
                out.push(d);
            }
        }
        *lock(&self.last_seen) = seen;
        out.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        Ok(out)
    }

    /// Undo what backups of every instance left, and sweep what they left
    /// for domains no longer here: for a process where no backup runs.
    pub async fn recover_all(&self) -> Result<(), ExtractError> {
        for d in self.nova_domains().await? {
            if let Err(e) = self.recover(&d.instance).await {
                tracing::warn!(instance = %d.instance.id, error = %e, "cleaning up after an earlier backup failed");
            }
        }
        self.sweep().await
    }
}

#[async_trait]
impl Hypervisor for LibvirtHypervisor {
    async fn instances(&self) -> anyhow::Result<Vec<LocalInstance>> {
        Ok(self
            .nova_domains()
            .await?
            .into_iter()
            .map(|d| d.instance)
            .collect())
    }

    async fn disks(&self, instance: &LocalInstance) -> Result<Vec<DiskInfo>, ExtractError> {
        let id = instance.id.clone();
        let what = format!("instance {id}: its disks");
        let limit = self.shared.job_timeout();
        bounded::call(&self.shared, &instance.id, &what, limit, move |shared| {
            let dom = shared
                .domain(&id)?
                .ok_or_else(|| ExtractError::Other(format!("instance {id}: no such domain")))?;
            let info = parse_domain(&dom.xml_desc(0)?)
                .map_err(|e| ExtractError::Other(format!("instance {id}: {e}")))?;
            backed_up_disks(&info)
                .into_iter()
                .map(|d| {
                    Ok(DiskInfo {
                        device: d.target.clone(),
                        node_name: d.target.clone(),
                        virtual_size: dom.block_capacity(&d.target)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn snapshot(
        &self,
        instance: &LocalInstance,
        disks: &[DiskRequest],
        opts: &SnapshotOptions,
    ) -> Result<Box<dyn InstanceSnapshot>, ExtractError> {
        bounded::begin(
            self.shared.clone(),
            &instance.id,
            disks.to_vec(),
            opts.clone(),
        )
        .await
    }

    async fn recover(&self, instance: &LocalInstance) -> Result<(), ExtractError> {
        let id = instance.id.clone();
        let what = format!("instance {id}: cleaning up after a backup");
        let limit = self.shared.step_timeout();
        bounded::call(&self.shared, &instance.id, &what, limit, move |shared| {
            cleanup::recover(shared, &id)
        })
        .await
    }

    fn cleans_up_at_start(&self) -> bool {
        true
    }

    async fn sweep(&self) -> Result<(), ExtractError> {
        let limit = self.shared.step_timeout();
        let what = "removing what backups left for domains no longer here";
        bounded::call(&self.shared, bounded::LISTING, what, limit, sweep::sweep).await
    }
}

/// The checkpoint a job names, if it is one of ours: its name carries
/// Ekko's prefix and its XML names it (anything else is never given to
/// libvirt).
pub(crate) fn our_checkpoint(saved: &SavedCheckpoint) -> Option<crate::libvirt::CheckpointInfo> {
    if !saved.name.starts_with(CHECKPOINT_PREFIX) {
        return None;
    }
    crate::libvirt::parse_checkpoint(&saved.xml)
        .ok()
        .filter(|c| c.name == saved.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::{DiskSource, NovaInstance};

    fn domain(nova: Option<NovaInstance>) -> DomainInfo {
        DomainInfo {
            uuid: "8c3f5a2e-1b7d-4e2a-9f10-3c4d5e6f7a8b".into(),
            name: "instance-0000002a".into(),
            nova,
            disks: vec![],
            other_targets: vec![],
            guest_agent: false,
            guest_agent_connected: None,
            dac_owner: None,
        }
    }

    #[test]
    fn nova_domains_are_instances_and_others_are_left_alone() {
        let opts = LibvirtOptions::default();
        let nova = NovaInstance {
            name: Some("web".into()),
            flavor: Some("m1.small".into()),
            user_id: Some("u1".into()),
            project_id: Some("9f8e7d6c5b4a43210f1e2d3c4b5a6978".into()),
            ..NovaInstance::default()
        };
        let d = instance_of(&domain(Some(nova.clone())), true, &opts).expect("an instance");
        assert_eq!(d.instance.id, "8c3f5a2e-1b7d-4e2a-9f10-3c4d5e6f7a8b");
        assert_eq!(d.instance.project_id, "9f8e7d6c5b4a43210f1e2d3c4b5a6978");
        assert_eq!(d.instance.name, "web");
        assert_eq!(
            (d.user_id.as_deref(), d.flavor.as_deref()),
            (Some("u1"), Some("m1.small"))
        );
        assert!(instance_of(&domain(None), true, &opts).is_none());
        let no_project = NovaInstance {
            project_id: None,
            ..nova
        };
        assert!(instance_of(&domain(Some(no_project)), true, &opts).is_none());
        let unmanaged = LibvirtOptions {
            include_unmanaged: true,
            unmanaged_project_id: "ops".into(),
            ..opts
        };
        let d = instance_of(&domain(None), false, &unmanaged).expect("included");
        assert_eq!((d.instance.project_id.as_str(), d.running), ("ops", false));
        assert_eq!(d.instance.name, "instance-0000002a");
        let long = "名".repeat(100);
        let cut = shortened(long.clone(), MAX_NAME_BYTES);
        assert!(cut.len() <= MAX_NAME_BYTES && long.starts_with(&cut) && cut.len() > 250);
    }

    #[test]
    fn read_only_and_empty_disks_are_not_backed_up() {
        let disk = |t: &str, readonly: bool, source: DiskSource| crate::libvirt::DiskInfo {
            target: t.into(),
            bus: None,
            source,
            format: Some("raw".into()),
            backing_chain: vec![],
            readonly,
        };
        let mut info = domain(None);
        info.disks = vec![
            disk("vda", false, DiskSource::File("/d".into())),
            disk("vdb", true, DiskSource::File("/c".into())),
            disk("vdc", false, DiskSource::Other("none".into())),
            disk("vdd", false, DiskSource::Block("/dev/sdb".into())),
        ];
        let t: Vec<&str> = backed_up_disks(&info)
            .iter()
            .map(|d| d.target.as_str())
            .collect();
        assert_eq!(t, ["vda", "vdd"]);
    }

    #[test]
    fn only_our_checkpoints_are_taken_from_a_job() {
        let xml = |n: &str| format!("<domaincheckpoint><name>{n}</name></domaincheckpoint>");
        let ok = SavedCheckpoint {
            name: "ekko-b1".into(),
            xml: xml("ekko-b1"),
        };
        assert!(our_checkpoint(&ok).is_some());
        let other = SavedCheckpoint {
            name: "nightly".into(),
            xml: xml("nightly"),
        };
        assert!(our_checkpoint(&other).is_none());
        let lying = SavedCheckpoint {
            name: "ekko-b1".into(),
            xml: xml("ekko-b2"),
        };
        assert!(our_checkpoint(&lying).is_none());
    }
}
