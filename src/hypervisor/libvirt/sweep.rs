//! What backups left for domains that are no longer on this host (deleted,
//! or moved to another host): their scratch directories
//! (`<scratch_dir>/libvirt/<uuid>`) and checkpoint ledgers
//! (`<state_path>/libvirt/<uuid>.json`). Only names Ekko gives (a UUID as
//! libvirt writes it) are touched, and never those of a domain libvirt
//! knows, whether or not it is an instance: each is looked up again just
//! before its files go. Blocking.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::Shared;
use crate::extract::ExtractError;
use crate::libvirt::LibvirtError;

/// A UUID as libvirt writes it (lower case, with dashes).
fn is_uuid(name: &str) -> bool {
    uuid::Uuid::parse_str(name).is_ok_and(|u| u.hyphenated().to_string() == name)
}

/// The UUIDs of every domain libvirt knows, instance or not.
fn known_uuids(shared: &Shared) -> Result<HashSet<String>, LibvirtError> {
    Ok(super::LibvirtHypervisor::list(shared)?
        .into_iter()
        .map(|(uuid, _)| uuid)
        .collect())
}

/// Scratch directories and ledgers named after a domain: (uuid, path).
fn candidates(shared: &Shared) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let entries = |dir: &Path| -> Vec<(String, PathBuf, std::fs::FileType)> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some((name, e.path(), e.file_type().ok()?))
            })
            .collect()
    };
    for (name, path, kind) in entries(&shared.scratch_dir.join("libvirt")) {
        if kind.is_dir() && is_uuid(&name) {
            out.push((name, path));
        }
    }
    for (name, path, kind) in entries(&shared.ledger_dir) {
        if let Some(uuid) = name.strip_suffix(".json") {
            if kind.is_file() && is_uuid(uuid) {
                out.push((uuid.to_string(), path));
            }
        }
    }
    out
}

/// Remove the scratch directories and ledgers of domains libvirt does not
/// know.
pub(super) fn sweep(shared: &Shared) -> Result<(), ExtractError> {
    let known = known_uuids(shared)?;
    let mut failed = None;
    for (uuid, path) in candidates(shared) {
        // Defined since the listing (a migration coming in): not gone.
        if known.contains(&uuid) || shared.domain(&uuid)?.is_some() {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {
                tracing::info!(domain = %uuid, path = %path.display(), "removed what backups left for a domain no longer on this host")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove what backups left");
                failed = Some(ExtractError::Other(format!("{}: {e}", path.display())));
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::is_uuid;

    #[test]
    fn only_uuids_as_libvirt_writes_them_are_swept() {
        assert!(is_uuid("8c3f5a2e-1b7d-4e2a-9f10-3c4d5e6f7a8b"));
        for not in [
            "8C3F5A2E-1B7D-4E2A-9F10-3C4D5E6F7A8B",
            "8c3f5a2e1b7d4e2a9f103c4d5e6f7a8b",
            "8c3f5a2e-1b7d-4e2a-9f10-3c4d5e6f7a8b.tmp",
            "..",
            "jobs",
        ] {
            assert!(!is_uuid(not), "{not}");
        }
    }
}
