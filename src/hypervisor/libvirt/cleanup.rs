//! What a backup leaves behind and how it goes: our backup job, the
//! instance's scratch directory, checkpoint metadata, and bitmaps nobody
//! needs. All blocking (libvirt calls and files).
//!
//! The ledger (`<state_path>/libvirt/<uuid>.json`) lists the checkpoints
//! whose metadata Ekko removed from libvirt while their bitmap may still be
//! in the qcow2 images, with the XML to define them again. At the next
//! backup every entry but the catalog's checkpoint is defined again and
//! deleted for real (the domain runs: libvirt removes the bitmaps). So a
//! bitmap of an attempt whose outcome the catalog never took, or of a
//! checkpoint the catalog moved past, is removed without ever touching
//! QEMU's monitor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::{Shared, CHECKPOINT_PREFIX};
use crate::extract::ExtractError;
use crate::libvirt::{
    checkpoint_create, checkpoint_delete, checkpoint_without_parent, checkpoint_xml, parse_backup,
    Domain, LibvirtError,
};

/// Checkpoints whose metadata is gone from libvirt, by name, with their XML.
pub(super) type Ledger = BTreeMap<String, String>;

fn ledger_path(shared: &Shared, uuid: &str) -> PathBuf {
    shared.ledger_dir.join(format!("{uuid}.json"))
}

pub(super) fn load_ledger(shared: &Shared, uuid: &str) -> Ledger {
    let path = ledger_path(shared, uuid);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "unreadable checkpoint ledger, ignored");
            Ledger::new()
        }),
        Err(_) => Ledger::new(),
    }
}

/// Write the ledger (atomically: a crash leaves the old or the new one).
pub(super) fn save_ledger(
    shared: &Shared,
    uuid: &str,
    ledger: &Ledger,
) -> Result<(), ExtractError> {
    let path = ledger_path(shared, uuid);
    if ledger.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ExtractError::Other(
                format!("checkpoint ledger {}: {e}", path.display()),
            )),
            _ => Ok(()),
        };
    }
    let io = |e: std::io::Error| {
        ExtractError::Other(format!("checkpoint ledger {}: {e}", path.display()))
    };
    std::fs::create_dir_all(&shared.ledger_dir).map_err(io)?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(ledger).map_err(|e| ExtractError::Other(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Add entries to the instance's ledger.
pub(super) fn remember(
    shared: &Shared,
    uuid: &str,
    entries: &[(String, String)],
) -> Result<(), ExtractError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut ledger = load_ledger(shared, uuid);
    for (name, xml) in entries {
        ledger.insert(name.clone(), xml.clone());
    }
    save_ledger(shared, uuid, &ledger)
}

fn frozen_marker(shared: &Shared, uuid: &str) -> PathBuf {
    shared.ledger_dir.join(format!("{uuid}.frozen"))
}

/// Say, durably, that a freeze of the guest may be outstanding (before
/// asking for it).
pub(super) fn mark_frozen(shared: &Shared, uuid: &str) -> Result<(), ExtractError> {
    let path = frozen_marker(shared, uuid);
    let io = |e: std::io::Error| ExtractError::Other(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(&shared.ledger_dir).map_err(io)?;
    let file = std::fs::File::create(&path).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The guest is thawed: no freeze outstanding. Back to libvirt's default
/// agent timeout for Nova's own agent calls.
pub(super) fn thawed(shared: &Shared, dom: &Domain, uuid: &str) {
    let _ = dom.set_agent_timeout(-1);
    let _ = std::fs::remove_file(frozen_marker(shared, uuid));
}

/// Thaw a guest a freeze of ours may have left frozen (the worker died
/// between freeze and thaw, or every thaw failed). Only where our marker
/// says so: never a freeze of Nova's own (a quiesced snapshot).
pub(super) fn thaw_if_left_frozen(shared: &Shared, dom: &Domain, uuid: &str) -> bool {
    if !frozen_marker(shared, uuid).exists() {
        return true;
    }
    if !dom.is_active().unwrap_or(false) {
        // A stopped guest is not frozen.
        thawed(shared, dom, uuid);
        return true;
    }
    tracing::warn!(
        instance = uuid,
        "thawing a guest an interrupted backup may have left frozen"
    );
    super::snapshot::thaw(shared, dom, uuid)
}

/// Take checkpoint `name` out of the instance's ledger (its bitmaps are
/// gone).
fn forget(shared: &Shared, uuid: &str, name: &str) -> Result<(), ExtractError> {
    let mut ledger = load_ledger(shared, uuid);
    if ledger.remove(name).is_some() {
        save_ledger(shared, uuid, &ledger)?;
    }
    Ok(())
}

/// The directory of one instance's backup job under the scratch directory.
pub(super) fn instance_dir(scratch_dir: &Path, uuid: &str) -> PathBuf {
    scratch_dir.join("libvirt").join(uuid)
}

/// A checkpoint's XML as Ekko keeps it: no domain copy, no parent.
pub(super) fn saved_xml(ck: &crate::libvirt::Checkpoint) -> Result<String, ExtractError> {
    let xml = ck.xml_desc(checkpoint_xml::NO_DOMAIN)?;
    checkpoint_without_parent(&xml).map_err(|e| ExtractError::Other(e.to_string()))
}

/// Forget checkpoint `name` in libvirt (metadata only: the bitmaps stay),
/// remembering it in the ledger first. Missing: nothing to do.
pub(super) fn drop_metadata(
    shared: &Shared,
    dom: &Domain,
    uuid: &str,
    name: &str,
) -> Result<(), ExtractError> {
    let Some(ck) = dom.checkpoint_lookup(name)? else {
        return Ok(());
    };
    remember(shared, uuid, &[(name.to_string(), saved_xml(&ck)?)])?;
    ck.delete(checkpoint_delete::METADATA_ONLY)?;
    Ok(())
}

/// Delete checkpoint `name` for real (its bitmaps go). Where libvirt cannot
/// (the domain stopped), forget its metadata and leave it to the ledger.
/// A checkpoint whose metadata is already gone (forgotten while its job
/// ran) is defined again from the ledger for the time of its deletion.
pub(super) fn delete_for_real(
    shared: &Shared,
    dom: &Domain,
    uuid: &str,
    name: &str,
) -> Result<(), ExtractError> {
    let Some(ck) = dom.checkpoint_lookup(name)? else {
        if let Some(xml) = load_ledger(shared, uuid).get(name) {
            if remove_bitmaps(dom, uuid, name, xml)? {
                forget(shared, uuid, name)?;
            }
        }
        return Ok(());
    };
    match ck.delete(0) {
        // Its bitmaps are gone: nothing left for the ledger to remove.
        Ok(()) => forget(shared, uuid, name),
        Err(e) if e.is_connection_lost() => Err(e.into()),
        Err(e) => {
            tracing::warn!(checkpoint = name, error = %e, "cannot delete the checkpoint's bitmaps now; forgetting its metadata, the next backup removes them");
            drop(ck);
            drop_metadata(shared, dom, uuid, name)
        }
    }
}

/// Every checkpoint of ours libvirt knows for the domain.
pub(super) fn our_checkpoints(dom: &Domain) -> Result<Vec<String>, LibvirtError> {
    Ok(dom
        .list_checkpoints(0)?
        .iter()
        .filter_map(|c| c.name().ok())
        .filter(|n| n.starts_with(CHECKPOINT_PREFIX))
        .collect())
}

/// The lock of instance `uuid`'s backup in this process: a backup's start,
/// its end and a recovery take it, so a recovery (after a cancel or a
/// deadline dropped a start still running in its thread) waits for the
/// start to finish, then ends the job it began instead of missing it.
pub(super) fn instance_lock(uuid: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks.retain(|_, l| Arc::strong_count(l) > 1);
    locks.entry(uuid.to_string()).or_default().clone()
}

/// Hold `lock` of instance `uuid`, waiting at most the shared step timeout
/// (a start or end of the same instance stuck in libvirt must not pile up
/// threads behind it, nor let a stale start freeze the guest long after
/// its caller gave up). A panic under it poisons nothing that matters: the
/// state is libvirt's and the files', both read again.
pub(super) fn hold<'a>(
    shared: &Shared,
    lock: &'a Mutex<()>,
    uuid: &str,
) -> Result<MutexGuard<'a, ()>, ExtractError> {
    let until = std::time::Instant::now() + shared.step_timeout();
    loop {
        match lock.try_lock() {
            Ok(held) => return Ok(held),
            Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {
                if std::time::Instant::now() >= until {
                    return Err(ExtractError::TimedOut(format!(
                        "instance {uuid}: an earlier start or end of its backup is still under way in libvirt"
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Undo what an interrupted backup of instance `uuid` left: our backup job
/// (its socket is in our scratch directory) is ended, every checkpoint of
/// ours is forgotten by libvirt (metadata only, remembered in the ledger,
/// so nothing a later incremental needs is lost), and the instance's
/// scratch directory is emptied.
pub(super) fn recover(shared: &Shared, uuid: &str) -> Result<(), ExtractError> {
    let lock = instance_lock(uuid);
    let _held = hold(shared, &lock, uuid)?;
    let dir = instance_dir(&shared.scratch_dir, uuid);
    if let Some(dom) = shared.domain_patiently(uuid)? {
        recover_domain(shared, &dom, uuid, &dir)?;
    }
    remove_dir(&dir)
}

pub(super) fn recover_domain(
    shared: &Shared,
    dom: &Domain,
    uuid: &str,
    dir: &Path,
) -> Result<(), ExtractError> {
    thaw_if_left_frozen(shared, dom, uuid);
    if dom.is_active()? {
        let stats = dom.job_stats()?;
        if stats.is_backup() {
            let job = parse_backup(&dom.backup_xml_desc()?)
                .map_err(|e| ExtractError::Other(e.to_string()))?;
            if job.socket.as_deref().is_some_and(|s| s.starts_with(dir)) {
                tracing::warn!(
                    instance = uuid,
                    "ending the backup job an interrupted backup left"
                );
                dom.abort_job_and_wait(shared.job_timeout())?;
            } else {
                return Err(ExtractError::Other(format!(
                    "instance {uuid}: another tool's backup job runs on the domain"
                )));
            }
        }
    }
    for name in our_checkpoints(dom)? {
        tracing::info!(instance = uuid, checkpoint = %name, "forgetting checkpoint metadata left by a backup");
        drop_metadata(shared, dom, uuid, &name)?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), ExtractError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ExtractError::Scratch(format!("{}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// Remove the bitmaps of every ledger entry except `keep` (the catalog's
/// checkpoint): each is defined again from its XML and deleted for real.
/// An entry whose checkpoint libvirt cannot define or delete (the domain
/// stopped) stays for the next backup; one whose bitmap is gone goes.
pub(super) fn remove_unneeded(
    shared: &Shared,
    dom: &Domain,
    uuid: &str,
    keep: Option<&str>,
) -> Result<(), ExtractError> {
    let mut ledger = load_ledger(shared, uuid);
    let names: Vec<String> = ledger
        .keys()
        .filter(|n| Some(n.as_str()) != keep)
        .cloned()
        .collect();
    for name in names {
        if remove_bitmaps(dom, uuid, &name, &ledger[&name])? {
            ledger.remove(&name);
        }
    }
    save_ledger(shared, uuid, &ledger)
}

/// Define checkpoint `name` again from `xml` and delete it for real, so its
/// bitmaps go. When that fails as a whole (a disk's bitmap is already
/// gone), each disk's bitmap is tried alone. Whether the entry is settled:
/// false only while the domain cannot delete bitmaps (it stopped).
fn remove_bitmaps(dom: &Domain, uuid: &str, name: &str, xml: &str) -> Result<bool, ExtractError> {
    let attempt = |doc: &str| -> Result<bool, ExtractError> {
        match dom.checkpoint_create(doc, checkpoint_create::REDEFINE) {
            Ok(ck) => match ck.delete(0) {
                Ok(()) => Ok(true),
                Err(e) if e.is_connection_lost() => Err(e.into()),
                Err(e) => {
                    let _ = ck.delete(checkpoint_delete::METADATA_ONLY);
                    tracing::debug!(instance = uuid, checkpoint = name, error = %e, "checkpoint not deleted");
                    Ok(false)
                }
            },
            Err(e) if e.is_connection_lost() => Err(e.into()),
            Err(e) => {
                tracing::debug!(instance = uuid, checkpoint = name, error = %e, "checkpoint not defined again");
                Ok(false)
            }
        }
    };
    if attempt(xml)? {
        tracing::info!(
            instance = uuid,
            checkpoint = name,
            "removed bitmaps no backup needs"
        );
        return Ok(true);
    }
    if !dom.is_active()? {
        return Ok(false);
    }
    let Ok(info) = crate::libvirt::parse_checkpoint(xml) else {
        return Ok(true);
    };
    for d in info.disks.iter().filter(|d| d.bitmap.is_some()) {
        if let Some(one) = info.redefinition_of_one(&d.name) {
            if attempt(&one)? {
                tracing::info!(instance = uuid, checkpoint = name, disk = %d.name, "removed a bitmap no backup needs");
            }
        }
    }
    Ok(true)
}
