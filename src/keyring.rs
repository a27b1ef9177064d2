//! Where encryption keys come from: the master key named by the
//! configuration, and each encrypted project's key, wrapped by it, in the
//! catalog (`project_keys`) with a copy in the project's container
//! ([`KEY_OBJECT`]) so a catalog rebuilt from the store can still open it.
//!
//! Compute hosts hold no catalog: their jobs carry the keys they need
//! ([`JobKeys`]). For a symmetric project that is the wrapped project key,
//! which they open with the master key from their own configuration; for a
//! public-key project, only its write keys, wrapped by the host key, so a
//! compute host needs (and should have) no master key.

use std::path::Path;
use std::sync::Arc;

use std::collections::HashSet;
use std::sync::Mutex;

use crate::config::{EkkoConfig, EncryptionMode, EncryptionOptions};
use crate::crypto::{CryptoError, KeyMode, MasterKey, ProjectKeys, ProjectSecret, WrappedKey};
use crate::db::{keys, Db, DbError};
use crate::store::ObjectStore;

/// The store's copy of a project's wrapped key, in its container.
pub const KEY_OBJECT: &str = "keys/project.json";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("[encryption] enabled = true needs [encryption] master_key_file")]
    NoMasterKeyFile,
    #[error(
        "[encryption] host_key_file holds the master key: hosts would hold it too; generate a separate host key"
    )]
    HostKeyIsMasterKey,
    #[error(
        "project {0} is in public-key mode: its jobs need [encryption] host_key_file (the key compute hosts open their write keys with)"
    )]
    NoHostKey(String),
    #[error(
        "[encryption] mode = public_key: the controller needs [encryption] master_key_file, and host_key_file or host_keys_dir"
    )]
    ControllerNeedsKeys,
    #[error("no host key for host {host} ({path}): {reason}")]
    NoKeyForHost {
        host: String,
        path: String,
        reason: String,
    },
    #[error(
        "the catalog holds keys of encrypted projects, wrapped by master key(s) {wrapped_by}, \
         but {configured}: set [encryption] master_key_file to that key"
    )]
    CatalogNeedsKey {
        wrapped_by: String,
        configured: String,
    },
    #[error("project {0}'s data is encrypted and this process has no master key ([encryption] master_key_file)")]
    NoKeyForProject(String),
    #[error("{0}")]
    Store(String),
}

/// The keys of this process and the projects' keys it reaches: the
/// master key (controller, restore side), the host key (compute hosts of
/// public-key mode), and the catalog and store that hold project keys.
pub struct Keyring {
    encryption: EncryptionOptions,
    container_prefix: String,
    master_key: Option<Arc<MasterKey>>,
    host_key: Option<Arc<MasterKey>>,
    /// `None` on compute hosts (no catalog).
    db: Option<Db>,
    store: Arc<dyn ObjectStore>,
    /// Projects whose key this process knows the store holds a copy of.
    stored_keys: Mutex<HashSet<String>>,
}

impl Keyring {
    /// Load the configured keys (see [`load_keys`]).
    pub fn load(
        config: &EkkoConfig,
        db: Option<Db>,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Keyring, KeyringError> {
        let (master_key, host_key) = load_keys(config)?;
        Ok(Keyring {
            encryption: config.encryption.clone(),
            container_prefix: config.swift.container_prefix.clone(),
            master_key,
            host_key,
            db,
            store,
            stored_keys: Mutex::new(HashSet::new()),
        })
    }

    pub fn master_key(&self) -> Option<&MasterKey> {
        self.master_key.as_deref()
    }

    pub fn host_key(&self) -> Option<&MasterKey> {
        self.host_key.as_deref()
    }

    fn db(&self) -> Result<&Db, KeyringError> {
        self.db.as_ref().ok_or_else(|| {
            KeyringError::Db(DbError::Unavailable(
                "this process has no catalog access".into(),
            ))
        })
    }

    fn container(&self, project: &str) -> String {
        crate::store::project_container(&self.container_prefix, project)
    }

    /// The key check: every project key in the catalog must be wrapped by the
    /// configured master key.
    pub async fn check_catalog(&self) -> Result<(), KeyringError> {
        let (db, master) = (self.db()?, self.master_key.as_deref());
        let ids = db.run(keys::master_key_ids).await?;
        let configured = master.map(|m| m.id().to_string());
        let foreign: Vec<String> = ids
            .into_iter()
            .filter(|id| Some(id) != configured.as_ref())
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        Err(KeyringError::CatalogNeedsKey {
            wrapped_by: foreign.join(", "),
            configured: match configured {
                Some(id) => format!("the configured master key is {id}"),
                None => "no master key is configured".into(),
            },
        })
    }

    /// A controller (the conductor, which plans jobs) in public-key mode must
    /// be able to give hosts write keys: refuse to start without both keys.
    pub fn check_controller(&self) -> Result<(), KeyringError> {
        let enc = &self.encryption;
        let wraps_for_hosts = self.host_key.is_some() || !enc.host_keys_dir.trim().is_empty();
        if enc.enabled
            && enc.mode == EncryptionMode::PublicKey
            && (self.master_key.is_none() || !wraps_for_hosts)
        {
            return Err(KeyringError::ControllerNeedsKeys);
        }
        Ok(())
    }

    fn master(&self, project: &str) -> Result<Arc<MasterKey>, KeyringError> {
        self.master_key
            .clone()
            .ok_or_else(|| KeyringError::NoKeyForProject(project.to_string()))
    }

    /// The wrapped key of a project whose data is (or, with encryption on,
    /// is about to be) encrypted; `None` for a plaintext project. Creates the
    /// key on first use, and makes sure the store holds its copy before any
    /// data sealed with it is written.
    pub async fn ensure_project_key(
        &self,
        project: &str,
    ) -> Result<Option<WrappedKey>, KeyringError> {
        let db = self.db()?.clone();
        let p = project.to_string();
        let row = match db.run(move |c| keys::get(c, &p)).await? {
            Some(row) => row,
            None if self.encryption.enabled => {
                let master = self.master(project)?;
                let mode = match self.encryption.mode {
                    EncryptionMode::Symmetric => KeyMode::Symmetric,
                    EncryptionMode::PublicKey => KeyMode::PublicKey,
                };
                let fresh = master.wrap(project, &ProjectSecret::generate(mode)?)?;
                let p = project.to_string();
                let row = db.run(move |c| keys::insert_or_get(c, &p, &fresh)).await?;
                tracing::info!(project, master_key = %row.master_key_id, ?mode, "project key created");
                row
            }
            None => return Ok(None),
        };
        let wrapped = row.wrapped_key()?;
        // The catalog's key is the one that stands (a racing creator's lost):
        // the store's copy always follows it, written once per process.
        let known = self
            .stored_keys
            .lock()
            .map(|s| s.contains(project))
            .unwrap_or(false);
        if !known {
            self.put_store_copy(project, &wrapped).await?;
            if let Ok(mut s) = self.stored_keys.lock() {
                s.insert(project.to_string());
            }
        }
        Ok(Some(wrapped))
    }

    async fn put_store_copy(
        &self,
        project: &str,
        wrapped: &WrappedKey,
    ) -> Result<(), KeyringError> {
        let cont = self.container(project);
        let body = serde_json::to_vec(wrapped).map_err(|e| KeyringError::Store(e.to_string()))?;
        self.store
            .put(&cont, KEY_OBJECT, body.into())
            .await
            .map_err(|e| KeyringError::Store(format!("{cont}/{KEY_OBJECT}: {e}")))
    }

    /// Open a wrapped project key with this process's master key.
    pub fn open(
        &self,
        project: &str,
        wrapped: &WrappedKey,
    ) -> Result<Arc<ProjectKeys>, KeyringError> {
        let secret = self.master(project)?.unwrap(project, wrapped)?;
        Ok(Arc::new(secret.keys()))
    }

    /// The key that wraps write keys for jobs run by `host`: its own key from
    /// `[encryption] host_keys_dir` when that is set, else the shared
    /// `host_key_file`.
    pub fn host_key_for(&self, project: &str, host: &str) -> Result<Arc<MasterKey>, KeyringError> {
        let dir = self.encryption.host_keys_dir.trim();
        if dir.is_empty() {
            return self
                .host_key
                .clone()
                .ok_or_else(|| KeyringError::NoHostKey(project.to_string()));
        }
        let path = Path::new(dir).join(format!("{host}.key"));
        let missing = |reason: String| KeyringError::NoKeyForHost {
            host: host.to_string(),
            path: path.display().to_string(),
            reason,
        };
        // Host names come from the hosts' own reports: never a path.
        if !valid_host_name(host) {
            return Err(missing("not a plain host name".into()));
        }
        let key = MasterKey::load(&path).map_err(|e| missing(e.to_string()))?;
        if self.master_key.as_ref().is_some_and(|m| m.id() == key.id()) {
            return Err(KeyringError::HostKeyIsMasterKey);
        }
        Ok(Arc::new(key))
    }

    /// The keys for a job of `project` run by `host`, created if encryption is
    /// on and the project has none. For a public-key project this process must
    /// hold the master key (to derive the write keys) and a host key for
    /// `host` (to wrap them).
    pub async fn job_keys(&self, project: &str, host: &str) -> Result<JobKeys, KeyringError> {
        let Some(wrapped) = self.ensure_project_key(project).await? else {
            return Ok(JobKeys::default());
        };
        // Without the master key the mode cannot be known, and forwarding the
        // project key could hand a public-key project's secret to a host.
        let master = self.master(project)?;
        let secret = master.unwrap(project, &wrapped)?;
        let Some(write) = secret.write_keys() else {
            return Ok(JobKeys {
                project_key: Some(wrapped),
                ..JobKeys::default()
            });
        };
        let host_key = self.host_key_for(project, host)?;
        Ok(JobKeys {
            project_key: Some(wrapped),
            write_keys: Some(host_key.wrap_write_keys(project, &write)?),
            public_key: true,
        })
    }

    /// Where restores of `project` that name no host go: `[encryption]
    /// restore_host` for a public-key project (its compute hosts cannot read
    /// its backups), else `None` (the instance's host).
    pub async fn default_restore_host(
        &self,
        project: &str,
    ) -> Result<Option<String>, KeyringError> {
        let host = self.encryption.restore_host.trim();
        let Some(master) = self.master_key.as_ref().filter(|_| !host.is_empty()) else {
            return Ok(None);
        };
        let p = project.to_string();
        let Some(row) = self.db()?.run(move |c| keys::get(c, &p)).await? else {
            return Ok(None);
        };
        let secret = master.unwrap(project, &row.wrapped_key()?)?;
        Ok((secret.mode() == KeyMode::PublicKey).then(|| host.to_string()))
    }

    /// The keys a host opens a job's data with: the write keys with its host
    /// key, or else the project key with its master key.
    pub fn open_job(
        &self,
        project: &str,
        project_key: Option<&WrappedKey>,
        write_keys: Option<&WrappedKey>,
    ) -> Result<Option<Arc<ProjectKeys>>, KeyringError> {
        if let Some(w) = write_keys {
            let host = self
                .host_key
                .as_ref()
                .ok_or_else(|| KeyringError::NoHostKey(project.to_string()))?;
            return Ok(Some(Arc::new(host.unwrap_write_keys(project, w)?.keys())));
        }
        project_key.map(|w| self.open(project, w)).transpose()
    }

    /// The keys of a project, from the catalog (`None`: plaintext project).
    pub async fn project_keys(
        &self,
        project: &str,
    ) -> Result<Option<Arc<ProjectKeys>>, KeyringError> {
        let p = project.to_string();
        let Some(row) = self.db()?.run(move |c| keys::get(c, &p)).await? else {
            return Ok(None);
        };
        Ok(Some(self.open(project, &row.wrapped_key()?)?))
    }

    /// The keys of a project from its container's copy (catalog rebuild).
    pub async fn project_keys_from_store(
        &self,
        container: &str,
        project: &str,
    ) -> Result<Option<(WrappedKey, Arc<ProjectKeys>)>, KeyringError> {
        let body = match self.store.get(container, KEY_OBJECT).await {
            Ok(b) => b,
            Err(crate::store::StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(KeyringError::Store(e.to_string())),
        };
        let wrapped: WrappedKey = serde_json::from_slice(&body)
            .map_err(|e| KeyringError::Store(format!("{container}/{KEY_OBJECT}: {e}")))?;
        let keys = self.open(project, &wrapped)?;
        Ok(Some((wrapped, keys)))
    }

    /// Open every project key in the catalog with this process's master
    /// key (`ekko-manage key check`); the number of keys opened.
    pub async fn check_all(&self) -> Result<usize, KeyringError> {
        let rows = self.db()?.run(keys::all).await?;
        for row in &rows {
            self.open(&row.project_id, &row.wrapped_key()?)?;
        }
        Ok(rows.len())
    }

    /// Master key rotation: rewrap every project key under `new`. The store's
    /// copies are written first, then the catalog in one transaction: a crash
    /// in between leaves the catalog on the old key, and a re-run finishes.
    /// Data is not touched. Run it with the services stopped, then start them
    /// with the new key (the key check refuses the old one). Returns the
    /// projects rewrapped.
    pub async fn rotate(&self, new: &MasterKey) -> Result<usize, KeyringError> {
        let db = self.db()?.clone();
        let rows = db.run(keys::all).await?;
        let mut rewrapped = Vec::new();
        for row in &rows {
            let wrapped = row.wrapped_key()?;
            let secret = self
                .master(&row.project_id)?
                .unwrap(&row.project_id, &wrapped)?;
            let again = new.wrap(&row.project_id, &secret)?;
            self.put_store_copy(&row.project_id, &again).await?;
            rewrapped.push((row.project_id.clone(), again));
        }
        let n = rewrapped.len();
        db.run(move |c| keys::rewrap_all(c, &rewrapped)).await?;
        tracing::info!(projects = n, master_key = new.id(), "master key rotated");
        Ok(n)
    }

    /// Insert a project key read from the store (catalog rebuild).
    pub async fn import(&self, project: &str, wrapped: WrappedKey) -> Result<(), KeyringError> {
        let p = project.to_string();
        self.db()?
            .run(move |c| keys::insert_or_get(c, &p, &wrapped).map(|_| ()))
            .await?;
        Ok(())
    }
}

/// The configured master key and host key, if any. The master key is
/// required when encryption is on, except on a compute host of public-key
/// mode (a host key and no master key). The host key must not be the master
/// key.
#[allow(clippy::type_complexity)]
fn load_keys(
    config: &EkkoConfig,
) -> Result<(Option<Arc<MasterKey>>, Option<Arc<MasterKey>>), KeyringError> {
    let load = |file: &str| -> Result<Option<Arc<MasterKey>>, KeyringError> {
        let file = file.trim();
        if file.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(MasterKey::load(Path::new(file))?)))
    };
    let enc = &config.encryption;
    let master = load(&enc.master_key_file)?;
    let host = load(&enc.host_key_file)?;
    let host_only = enc.mode == EncryptionMode::PublicKey && host.is_some();
    if master.is_none() && enc.enabled && !host_only {
        return Err(KeyringError::NoMasterKeyFile);
    }
    if let (Some(m), Some(h)) = (&master, &host) {
        if m.id() == h.id() {
            return Err(KeyringError::HostKeyIsMasterKey);
        }
    }
    Ok((master, host))
}

/// The keys a job carries to its host (see the module comment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobKeys {
    /// The project key wrapped by the master key (symmetric projects'
    /// backups, and every restore).
    pub project_key: Option<WrappedKey>,
    /// A public-key project's write keys wrapped by the host key.
    pub write_keys: Option<WrappedKey>,
    /// The project is in public-key mode (its restores need the master key).
    pub public_key: bool,
}

impl JobKeys {
    /// What a backup job carries: a public-key project's hosts get the
    /// write keys only.
    pub fn for_backup(&self) -> (Option<WrappedKey>, Option<WrappedKey>) {
        match &self.write_keys {
            Some(w) => (None, Some(w.clone())),
            None => (self.project_key.clone(), None),
        }
    }
}

/// A host name that is safe as a file name: letters, digits, `.`, `-`,
/// `_`, not starting with a dot.
fn valid_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && !host.starts_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::valid_host_name;

    #[test]
    fn host_key_file_names_are_plain_host_names() {
        for ok in ["compute-1", "cmp1.example.org", "host_b-7"] {
            assert!(valid_host_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "../master", "a/b", "a b", "x\0"] {
            assert!(!valid_host_name(bad), "{bad:?}");
        }
    }
}
