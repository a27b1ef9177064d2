//! The hypervisor driver for QEMU instances Ekko reaches directly over
//! their QMP sockets (the embedded default, and hosts without libvirt):
//! instances named by configuration or discovery files, disks from
//! `query-named-block-nodes`, snapshots by pull-mode backup with
//! persistent dirty bitmaps ([`crate::extract::pull`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{valid_id, DiskInfo, Hypervisor, LocalInstance, SnapshotOptions};
use crate::config::EkkoConfig;
use crate::extract::pull::{PullBackup, PullOptions};
use crate::extract::{DiskRequest, ExtractError, InstanceSnapshot};
use crate::qmp::{commands, QmpClient};

/// How long QMP may take to answer (it answers in milliseconds unless
/// QEMU is stuck).
const QMP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest agent may take to freeze or thaw.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// One instance and where its QMP (and guest agent) sockets are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpInstance {
    pub instance: LocalInstance,
    pub qmp_socket: PathBuf,
    pub agent_socket: Option<PathBuf>,
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

/// QEMU instances whose QMP sockets Ekko is given: `[backup] instances`
/// and `<instance_id>.json` files in `[backup] discovery_dir`.
pub struct QmpHypervisor {
    listed: Vec<QmpInstance>,
    discovery_dir: Option<PathBuf>,
}

impl QmpHypervisor {
    pub fn from_config(config: &EkkoConfig) -> anyhow::Result<QmpHypervisor> {
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
            listed.push(QmpInstance {
                instance: LocalInstance {
                    id: id.to_string(),
                    project_id: project.to_string(),
                    name: id.to_string(),
                },
                qmp_socket: PathBuf::from(socket),
                agent_socket: None,
            });
        }
        Ok(QmpHypervisor {
            listed,
            discovery_dir: config.backup.discovery_dir.as_ref().map(PathBuf::from),
        })
    }

    fn discovered(dir: &Path) -> anyhow::Result<Vec<QmpInstance>> {
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
                Ok(f) if valid_id(id) && valid_id(&f.project_id) => out.push(QmpInstance {
                    instance: LocalInstance {
                        id: id.to_string(),
                        project_id: f.project_id,
                        name: f.name.unwrap_or_else(|| id.to_string()),
                    },
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
        out.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        Ok(out)
    }

    /// One instance behind one socket (the command line's `ekko backup`).
    pub fn single(instance: QmpInstance) -> QmpHypervisor {
        QmpHypervisor {
            listed: vec![instance],
            discovery_dir: None,
        }
    }

    async fn all(&self) -> anyhow::Result<Vec<QmpInstance>> {
        let mut all = self.listed.clone();
        if let Some(dir) = self.discovery_dir.clone() {
            let found = tokio::task::spawn_blocking(move || Self::discovered(&dir)).await??;
            let listed: Vec<String> = all.iter().map(|l| l.instance.id.clone()).collect();
            all.extend(
                found
                    .into_iter()
                    .filter(|f| !listed.contains(&f.instance.id)),
            );
        }
        Ok(all)
    }

    async fn find(&self, id: &str) -> Result<QmpInstance, ExtractError> {
        self.all()
            .await
            .map_err(|e| ExtractError::Other(format!("{e:#}")))?
            .into_iter()
            .find(|i| i.instance.id == id)
            .ok_or_else(|| ExtractError::Other(format!("instance {id} is not served here")))
    }
}

/// The disks Ekko backs up behind a QMP connection: every qcow2 format
/// node except Ekko's own (fleecing) nodes.
pub async fn qcow2_disks(qmp: &QmpClient) -> Result<Vec<DiskInfo>, ExtractError> {
    Ok(commands::block_nodes(qmp)
        .await?
        .into_iter()
        .filter(|n| n.driver == "qcow2" && !n.node_name.starts_with("ekko-"))
        .map(|n| DiskInfo {
            device: n.node_name.clone(),
            node_name: n.node_name,
            virtual_size: n.virtual_size.unwrap_or(0),
        })
        .collect())
}

#[async_trait]
impl Hypervisor for QmpHypervisor {
    async fn instances(&self) -> anyhow::Result<Vec<LocalInstance>> {
        Ok(self.all().await?.into_iter().map(|q| q.instance).collect())
    }

    async fn disks(&self, instance: &LocalInstance) -> Result<Vec<DiskInfo>, ExtractError> {
        let q = self.find(&instance.id).await?;
        let qmp = QmpClient::connect(&q.qmp_socket, Duration::from_secs(10)).await?;
        qcow2_disks(&qmp).await
    }

    async fn snapshot(
        &self,
        instance: &LocalInstance,
        disks: &[DiskRequest],
        opts: &SnapshotOptions,
    ) -> Result<Box<dyn InstanceSnapshot>, ExtractError> {
        let q = self.find(&instance.id).await?;
        let qmp = Arc::new(QmpClient::connect(&q.qmp_socket, Duration::from_secs(30)).await?);
        let pull = PullOptions {
            backup_id: opts.tag.clone(),
            scratch_dir: opts.scratch_dir.clone(),
            scratch_limit: opts.scratch_limit,
            granularity: 65536,
            requests_in_flight: opts.requests_in_flight,
            read_rate_limit: opts.read_rate_limit,
            qmp_timeout: QMP_TIMEOUT,
            agent_socket: q.agent_socket.clone(),
            agent_timeout: AGENT_TIMEOUT,
            existing_nbd_socket: None,
            instance_key: crate::chunk::ChunkDigest::of(instance.id.as_bytes()).to_hex()[..8]
                .to_string(),
        };
        Ok(Box::new(PullBackup::begin(qmp, disks, pull).await?))
    }

    async fn recover(&self, instance: &LocalInstance) -> Result<(), ExtractError> {
        let q = self.find(&instance.id).await?;
        let qmp = QmpClient::connect(&q.qmp_socket, Duration::from_secs(30)).await?;
        PullBackup::recover(&qmp, QMP_TIMEOUT).await
    }
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
        let found = QmpHypervisor::discovered(dir.path()).unwrap();
        assert_eq!(
            found,
            vec![QmpInstance {
                instance: LocalInstance {
                    id: "inst-1".into(),
                    project_id: "p1".into(),
                    name: "web".into(),
                },
                qmp_socket: "/run/q1.sock".into(),
                agent_socket: None,
            }]
        );
        assert!(QmpHypervisor::discovered(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
        assert!(valid_id("0f6a-11_x") && !valid_id("../x") && !valid_id(""));
    }
}
