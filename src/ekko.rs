//! The composition root: one [`Ekko`] holds the configuration and the three
//! seams (catalog database, object store, message queue). Every binary
//! builds it once with [`Ekko::connect`] and passes it down; no other module
//! reads configuration files or the environment.

use std::sync::Arc;

use crate::config::EkkoConfig;
use crate::db::{Db, DbError};
use crate::keyring::Keyring;
use crate::queue::{MessageQueue, QueueError};
use crate::store::{ObjectStore, Replica, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Keys(#[from] crate::keyring::KeyringError),
}

/// An entire Ekko: configuration, catalog, object store and message bus.
#[derive(Clone)]
pub struct Ekko {
    pub config: Arc<EkkoConfig>,
    /// The catalog (MariaDB or SQLite); `None` on compute hosts, which
    /// hold no database credentials and report over the message bus.
    db: Option<Db>,
    /// Segments and manifests (Swift, S3 or a local directory).
    pub store: Arc<dyn ObjectStore>,
    /// The second store of `[replication]`, if one is configured.
    pub replica: Option<Replica>,
    /// Jobs and results (RabbitMQ or in-process).
    pub queue: Arc<dyn MessageQueue>,
    /// This process's keys and the projects' keys (`[encryption]`).
    pub keyring: Arc<Keyring>,
    /// Glance, made on first use (only restores into images need it).
    glance: Arc<tokio::sync::OnceCell<Arc<crate::glance::Glance>>>,
}

/// How a process uses the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catalog {
    /// Open it and refuse a schema older than the code (services).
    Required,
    /// Open it without the schema check (`db sync`, `ekko init`).
    Unchecked,
    /// Do not open it (ekko-backup on a compute host).
    None,
}

impl Ekko {
    /// Connect the seams this process uses.
    pub async fn connect(config: EkkoConfig, catalog: Catalog) -> Result<Ekko, ConnectError> {
        let db = if catalog == Catalog::None {
            None
        } else {
            let db_opts = config.database.clone();
            let db = tokio::task::spawn_blocking(move || Db::open(&db_opts))
                .await
                .map_err(|e| DbError::Task(e.to_string()))??;
            if catalog == Catalog::Required {
                let check = db.clone();
                tokio::task::spawn_blocking(move || check.check_schema())
                    .await
                    .map_err(|e| DbError::Task(e.to_string()))??;
            }
            Some(db)
        };
        let store = crate::store::open(&config)?;
        let replica = crate::store::open_replica(&config)?;
        let keyring = Arc::new(Keyring::load(&config, db.clone(), store.clone())?);
        if catalog == Catalog::Required {
            // Fail early and loudly on the wrong master key.
            keyring.check_catalog().await?;
        }
        let role = if catalog == Catalog::None {
            crate::queue::BusRole::Host
        } else {
            crate::queue::BusRole::Controller
        };
        let queue = crate::queue::connect(
            &config.default.transport_url,
            &config.default.control_exchange,
            role,
        )
        .await?;
        Ok(Ekko {
            config: Arc::new(config),
            db,
            store,
            replica,
            queue,
            keyring,
            glance: Default::default(),
        })
    }

    /// This Ekko reading and writing `store` instead of its own (its keys
    /// read from there too): a catalog rebuild from the second store.
    pub fn reading_from(&self, store: Arc<dyn ObjectStore>) -> Result<Ekko, ConnectError> {
        let keyring = Arc::new(Keyring::load(&self.config, self.db.clone(), store.clone())?);
        Ok(Ekko {
            store,
            keyring,
            ..self.clone()
        })
    }

    /// The catalog, or an error saying this process has none.
    pub fn db(&self) -> Result<&Db, DbError> {
        self.db.as_ref().ok_or_else(|| {
            DbError::Unavailable(
                "this process has no catalog access (compute hosts report over the message bus)"
                    .into(),
            )
        })
    }

    /// Glance, acting with tenants' tokens and the service user of
    /// `[keystone_authtoken]` (see [`crate::glance`]).
    pub async fn glance(&self) -> Result<Arc<crate::glance::Glance>, crate::glance::GlanceError> {
        self.glance
            .get_or_try_init(|| async {
                let session = crate::keystone::ServiceSession::new(
                    &self.config.keystone_authtoken,
                    std::time::Duration::from_secs(self.config.glance.timeout.max(1)),
                )
                .map_err(|e| crate::glance::GlanceError::NotConfigured(format!("{e:#}")))?;
                crate::glance::Glance::new(Arc::new(session), &self.config.glance)
                    .map(Arc::new)
                    .map_err(|e| crate::glance::GlanceError::NotConfigured(format!("{e:#}")))
            })
            .await
            .cloned()
    }

    /// The container of a project's objects.
    pub fn container(&self, project_id: &str) -> String {
        crate::store::project_container(&self.config.swift.container_prefix, project_id)
    }

    /// The bus's queue names for this deployment.
    pub fn topology(&self) -> crate::wire::Topology {
        crate::wire::Topology::new(&self.config.default.control_exchange)
    }

    /// Remove the manifest of a backup that is not (or no longer)
    /// committed, so a catalog rebuild does not bring it back. Best
    /// effort: a failure is logged and the orphan sweep of ekko-retention
    /// removes it later.
    ///
    /// The second store's copy goes too (the sweep of that store, likewise).
    pub async fn remove_manifest(&self, project_id: &str, backup_id: &str) {
        let name = crate::manifest::object_name(backup_id);
        let container = self.container(project_id);
        let second = self.replica.as_ref().map(|r| &r.store);
        for store in std::iter::once(&self.store).chain(second) {
            match store.delete(&container, &name).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(error = %e, backup = backup_id, "manifest not removed"),
            }
        }
        if let (Some(_), Ok(db)) = (&self.replica, self.db()) {
            let (p, n) = (project_id.to_string(), name);
            if let Err(e) = db
                .run(move |c| crate::db::replicas::forget_everywhere(c, &p, &n))
                .await
            {
                tracing::warn!(error = %e, backup = backup_id, "second copy of the manifest not forgotten");
            }
        }
    }

    /// A reader of a project's records that follows compaction's
    /// relocations (reloaded from the catalog when a segment is gone).
    pub async fn project_reader(
        &self,
        project_id: &str,
    ) -> Result<crate::backup::reader::RecordReader, ConnectError> {
        use crate::backup::reader::{ReadLimits, RecordReader, RelocationSource};
        let source = CatalogRelocations {
            db: self.db()?.clone(),
            project_id: project_id.to_string(),
        };
        let relocations = source.load().await?;
        let keys = self.keyring.project_keys(project_id).await?;
        Ok(
            RecordReader::new(self.store.clone(), &self.container(project_id))
                .with_relocations(relocations)
                .with_relocation_source(Arc::new(source) as Arc<dyn RelocationSource>)
                .with_keys(keys)
                .with_limits(ReadLimits::from_config(&self.config.backup)),
        )
    }
}

impl Ekko {
    /// A reader of a backup's copy in the second store (`[replication]`);
    /// `None` if no second store is configured or it does not hold the
    /// backup whole yet.
    pub async fn second_copy_reader(
        &self,
        project_id: &str,
        backup_id: &str,
    ) -> Result<Option<crate::backup::reader::RecordReader>, ConnectError> {
        use crate::backup::reader::{ReadLimits, RecordReader};
        let Some(replica) = &self.replica else {
            return Ok(None);
        };
        let (key, b) = (replica.key.clone(), backup_id.to_string());
        if !self
            .db()?
            .run(move |c| crate::db::replicas::holds_backup(c, &key, &b))
            .await?
        {
            return Ok(None);
        }
        let keys = self.keyring.project_keys(project_id).await?;
        Ok(Some(
            // The second store keeps segments under their own ids: no
            // redirects to follow (see `replication`).
            RecordReader::new(replica.store.clone(), &self.container(project_id))
                .with_keys(keys)
                .with_limits(ReadLimits::from_config(&self.config.backup)),
        ))
    }
}

/// The catalog's relocations of one project.
struct CatalogRelocations {
    db: Db,
    project_id: String,
}

impl CatalogRelocations {
    async fn load(&self) -> Result<crate::backup::reader::Relocations, DbError> {
        let p = self.project_id.clone();
        let rows = self
            .db
            .run(move |c| crate::db::segments::relocations(c, &p))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(f, t)| (f as u64, t as u64))
            .collect())
    }
}

#[async_trait::async_trait]
impl crate::backup::reader::RelocationSource for CatalogRelocations {
    async fn relocations(
        &self,
    ) -> Result<crate::backup::reader::Relocations, crate::backup::EngineError> {
        self.load()
            .await
            .map_err(|e| crate::backup::EngineError::Other(format!("relocations: {e}")))
    }
}
