//! The instances a compute host can back up, and their disks.
//!
//! Today instances are named by configuration (`[backup] instances`) or by
//! `<instance_id>.json` files in `[backup] discovery_dir`; a libvirt driver
//! for Nova instances implements [`InstanceSource`] the same way later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::EkkoConfig;
use crate::qmp::{commands, QmpClient};
use crate::wire::InventoryDisk;

/// One instance this host serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInstance {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub qmp_socket: PathBuf,
    pub agent_socket: Option<PathBuf>,
}

/// Where a host learns which instances it serves.
#[async_trait]
pub trait InstanceSource: Send + Sync {
    async fn instances(&self) -> anyhow::Result<Vec<LocalInstance>>;

    async fn find(&self, id: &str) -> anyhow::Result<Option<LocalInstance>> {
        Ok(self.instances().await?.into_iter().find(|i| i.id == id))
    }
}

/// A discovery file: `<discovery_dir>/<instance_id>.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryFile {
    project_id: String,
    #[serde(default)]
    name: Option<String>,
    qmp_socket: PathBuf,
    #[serde(default)]
    agent_socket: Option<PathBuf>,
}

/// Instances from `[backup] instances` and `[backup] discovery_dir`.
pub struct ConfiguredInstances {
    listed: Vec<LocalInstance>,
    discovery_dir: Option<PathBuf>,
}

/// Instance ids and project ids become object and queue names: keep them
/// to what OpenStack ids look like.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ConfiguredInstances {
    pub fn from_config(config: &EkkoConfig) -> anyhow::Result<ConfiguredInstances> {
        let mut listed = Vec::new();
        for entry in &config.backup.instances.0 {
            let mut parts = entry.splitn(3, ':');
            let (Some(id), Some(project), Some(socket)) =
                (parts.next(), parts.next(), parts.next())
            else {
                anyhow::bail!(
                    "[backup] instances: {entry:?} is not instance_id:project_id:qmp_socket"
                );
            };
            anyhow::ensure!(
                valid_id(id) && valid_id(project),
                "[backup] instances: {entry:?} has an invalid instance or project id"
            );
            listed.push(LocalInstance {
                id: id.to_string(),
                project_id: project.to_string(),
                name: id.to_string(),
                qmp_socket: PathBuf::from(socket),
                agent_socket: None,
            });
        }
        Ok(ConfiguredInstances {
            listed,
            discovery_dir: config.backup.discovery_dir.as_ref().map(PathBuf::from),
        })
    }

    fn discovered(dir: &Path) -> anyhow::Result<Vec<LocalInstance>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(anyhow::anyhow!("discovery_dir {}: {e}", dir.display())),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            // One bad file must not hide the other instances.
            let parsed = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<DiscoveryFile>(&b)?));
            match parsed {
                Ok(f) if valid_id(id) && valid_id(&f.project_id) => out.push(LocalInstance {
                    id: id.to_string(),
                    project_id: f.project_id,
                    name: f.name.unwrap_or_else(|| id.to_string()),
                    qmp_socket: f.qmp_socket,
                    agent_socket: f.agent_socket,
                }),
                Ok(_) => {
                    tracing::error!(file = %path.display(), "discovery file with an invalid instance or project id, ignored")
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "unreadable discovery file, ignored")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

#[async_trait]
impl InstanceSource for ConfiguredInstances {
    async fn instances(&self) -> anyhow::Result<Vec<LocalInstance>> {
        let mut all = self.listed.clone();
        if let Some(dir) = self.discovery_dir.clone() {
            let found = tokio::task::spawn_blocking(move || Self::discovered(&dir)).await??;
            let listed: Vec<String> = all.iter().map(|l| l.id.clone()).collect();
            all.extend(found.into_iter().filter(|f| !listed.contains(&f.id)));
        }
        Ok(all)
    }
}

/// The disks Ekko backs up behind a QMP connection: every qcow2 format
/// node except Ekko's own (fleecing) nodes.
pub async fn qcow2_disks(qmp: &QmpClient) -> anyhow::Result<Vec<InventoryDisk>> {
    Ok(commands::block_nodes(qmp)
        .await?
        .into_iter()
        .filter(|n| n.driver == "qcow2" && !n.node_name.starts_with("ekko-"))
        .map(|n| InventoryDisk {
            device: n.node_name.clone(),
            node_name: n.node_name,
            virtual_size: n.virtual_size.unwrap_or(0),
        })
        .collect())
}

/// Connect to an instance's QMP socket and list its disks.
pub async fn probe(instance: &LocalInstance) -> anyhow::Result<Vec<InventoryDisk>> {
    let qmp = QmpClient::connect(&instance.qmp_socket, Duration::from_secs(10)).await?;
    qcow2_disks(&qmp).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("inst-1.json"),
            r#"{"project_id": "p1", "qmp_socket": "/run/q1.sock", "name": "web"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
        std::fs::write(
            dir.path().join("x y.json"),
            r#"{"project_id": "p1", "qmp_socket": "/q"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let found = ConfiguredInstances::discovered(dir.path()).unwrap();
        assert_eq!(
            found,
            vec![LocalInstance {
                id: "inst-1".into(),
                project_id: "p1".into(),
                name: "web".into(),
                qmp_socket: "/run/q1.sock".into(),
                agent_socket: None,
            }]
        );
        assert!(ConfiguredInstances::discovered(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
        assert!(valid_id("0f6a-11_x") && !valid_id("../x") && !valid_id(""));
    }
}
