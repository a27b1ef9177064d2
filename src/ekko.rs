//! The composition root: one [`Ekko`] holds the configuration and the three
//! seams (catalog database, object store, message queue). Every binary
//! builds it once with [`Ekko::connect`] and passes it down; no other module
//! reads configuration files or the environment.

use std::sync::Arc;

use crate::config::EkkoConfig;
use crate::db::{Db, DbError};
use crate::queue::{MessageQueue, QueueError};
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// An entire Ekko: configuration, catalog, object store and message bus.
#[derive(Clone)]
pub struct Ekko {
    pub config: Arc<EkkoConfig>,
    /// The catalog (MariaDB or SQLite).
    pub db: Db,
    /// Segments and manifests (Swift or a local directory).
    pub store: Arc<dyn ObjectStore>,
    /// Jobs and results (RabbitMQ or in-process).
    pub queue: Arc<dyn MessageQueue>,
}

impl Ekko {
    /// Connect all three seams. With `require_schema`, refuse a database
    /// whose schema is older than this code (services); `ekko-manage db
    /// sync` passes false.
    pub async fn connect(config: EkkoConfig, require_schema: bool) -> Result<Ekko, ConnectError> {
        let db_opts = config.database.clone();
        let db = tokio::task::spawn_blocking(move || Db::open(&db_opts))
            .await
            .map_err(|e| DbError::Task(e.to_string()))??;
        if require_schema {
            let check = db.clone();
            tokio::task::spawn_blocking(move || check.check_schema())
                .await
                .map_err(|e| DbError::Task(e.to_string()))??;
        }
        let store = crate::store::open(&config)?;
        let queue = crate::queue::connect(&config.default.transport_url, &config.default.control_exchange).await?;
        Ok(Ekko {
            config: Arc::new(config),
            db,
            store,
            queue,
        })
    }
}
