//! The use cases: what the API, the `ekko` command line and the daemons
//! ask Ekko to do. Each function takes the [`Ekko`] and, where a caller is
//! checked, its [`Caller`]; none knows HTTP. Each reads what it needs from
//! the catalog once per request.
//!
//! * [`backups`]: plan and submit a backup to its host, cancel, delete,
//!   show, list, update.
//! * [`restores`]: plan and submit a restore, cancel, show, list.
//! * [`reports`]: what the conductor records of the hosts' reports.
//! * [`housekeeping`]: stalled jobs and deadlines; due policies.
//! * [`policies`], [`instances`], [`quotas`], [`hosts`]: the other
//!   resources.
//! * [`local`]: what the `ekko` command line runs in its own process
//!   (back up an instance over its QMP socket, restore, verify, export).
//! * [`files`]: list and copy files out of a backup's ext filesystem
//!   through its export, never mounting it in the kernel.
//! * [`convert`]: wire messages ↔ catalog rows.
//! * [`health`]: can this process reach the catalog, the bus, the store.

pub mod backups;
pub mod convert;
pub mod exports;
pub mod files;
pub mod health;
pub mod hosts;
pub mod housekeeping;
pub mod images;
pub mod instances;
pub mod jobs;
pub mod local;
pub mod policies;
pub mod quotas;
pub mod reports;
pub mod restores;

use crate::db::{DbConnection, DbError, DbResult};
use crate::keyring::KeyringError;
pub use crate::policy::Caller;
use crate::policy::Denied;
use crate::queue::QueueError;
use crate::Ekko;

/// Why a use case did not do what it was asked. The API maps each to a
/// status and an error code in one place (`api::error`); the conductor
/// tells permanent errors (reject the message) from transient ones (retry).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller may not (or, for another project's resource, cannot
    /// even see it).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The request names something that cannot work (a bad request).
    #[error("{0}")]
    Invalid(String),
    /// A row the request needs does not exist.
    #[error("{0} could not be found")]
    NotFound(String),
    /// The state forbids it now (ended, protected, another one first).
    #[error("{0}")]
    Conflict(String),
    /// A quota would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// A service Ekko needs is down (catalog, bus, Keystone): try again.
    #[error("{0}")]
    Unavailable(String),
    /// A message from the bus that can never be handled.
    #[error("bad message: {0}")]
    BadMessage(String),
    /// A host's report that contradicts the catalog or its job as
    /// planned (see `reports`): never applied, never retried.
    #[error("report refused: {0}")]
    Refused(String),
    /// Anything else: a defect or an unexpected failure (store, engine).
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl From<DbError> for ServiceError {
    fn from(e: DbError) -> ServiceError {
        match e {
            DbError::NotFound(what) => ServiceError::NotFound(what),
            DbError::Conflict(why) => ServiceError::Conflict(why),
            DbError::LimitExceeded(why) => ServiceError::LimitExceeded(why),
            DbError::Pool(e) => {
                ServiceError::Unavailable(format!("the catalog is unavailable: {e}"))
            }
            DbError::Unavailable(why) => ServiceError::Unavailable(why),
            other => ServiceError::Internal(other.into()),
        }
    }
}

impl From<QueueError> for ServiceError {
    fn from(e: QueueError) -> ServiceError {
        match e {
            QueueError::BadMessage(why) => ServiceError::BadMessage(why),
            other => ServiceError::Unavailable(format!("the message bus is unavailable: {other}")),
        }
    }
}

impl From<KeyringError> for ServiceError {
    fn from(e: KeyringError) -> ServiceError {
        match e {
            // A host the controller has no host key for cannot take this
            // project's backups until the operator adds one: unavailable,
            // without the key's path (that goes to the log).
            k @ (KeyringError::NoKeyForHost { .. } | KeyringError::NoHostKey(_)) => {
                tracing::error!(error = %k, "no host key for a backup job");
                ServiceError::Unavailable(
                    "the instance's host cannot take encrypted backups now (no host key is configured for it); ask the operator".into(),
                )
            }
            KeyringError::Db(db) => db.into(),
            other => ServiceError::Internal(other.into()),
        }
    }
}

impl From<crate::ekko::ConnectError> for ServiceError {
    fn from(e: crate::ekko::ConnectError) -> ServiceError {
        match e {
            crate::ekko::ConnectError::Db(db) => db.into(),
            crate::ekko::ConnectError::Keys(k) => k.into(),
            other => ServiceError::Internal(other.into()),
        }
    }
}

impl ServiceError {
    /// The caller's resource `what` `id` does not exist (or is not theirs).
    pub fn not_found(what: &'static str, id: &str) -> ServiceError {
        ServiceError::Denied(Denied::NotFound {
            what,
            id: id.to_string(),
        })
    }

    /// A resource named in a request body that does not exist (or is
    /// another project's) is the caller's mistake: 400, not 404.
    pub fn named_in_body(self, what: &str, id: &str) -> ServiceError {
        match self {
            ServiceError::Denied(Denied::NotFound { .. }) | ServiceError::NotFound(_) => {
                ServiceError::Invalid(format!("{what} {id} does not exist"))
            }
            other => other,
        }
    }
}

/// Load one row with `load`; a missing row is [`ServiceError::not_found`].
pub(crate) async fn find<T: Send + 'static>(
    ekko: &Ekko,
    what: &'static str,
    id: &str,
    load: fn(&mut DbConnection, &str) -> DbResult<T>,
) -> ServiceResult<T> {
    let owned = id.to_string();
    ekko.db()?
        .run(move |c| load(c, &owned))
        .await
        .map_err(|e| match e {
            DbError::NotFound(_) => ServiceError::not_found(what, id),
            other => ServiceError::from(other),
        })
}

/// A page of a list: at most `limit` items after `marker` (the id of the
/// previous page's last item) in `created_at` order. Pages are keyset
/// pages over `(created_at, id)`, so items created meanwhile never shift
/// a page.
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: i64,
    pub marker: Option<String>,
    pub ascending: bool,
}

impl Page {
    /// The marker's row, read with `get`; a marker of a project other than
    /// `project` (the caller's list scope) is as unknown as a missing one:
    /// a bad request.
    pub(crate) fn resolve<T>(
        &self,
        c: &mut DbConnection,
        project: Option<&str>,
        get: impl FnOnce(&mut DbConnection, &str) -> DbResult<T>,
        owner: impl Fn(&T) -> &str,
    ) -> DbResult<Option<T>> {
        let Some(m) = &self.marker else {
            return Ok(None);
        };
        match get(c, m) {
            Ok(row) if project.is_none_or(|p| p == owner(&row)) => Ok(Some(row)),
            Ok(_) | Err(DbError::NotFound(_)) => Err(DbError::Conflict(format!(
                "{MARKER_NOT_FOUND} {m} not found"
            ))),
            Err(e) => Err(e),
        }
    }
}

const MARKER_NOT_FOUND: &str = "marker";

/// A list's database error: an unknown marker is the caller's mistake.
pub(crate) fn marker_error(e: DbError) -> ServiceError {
    match e {
        DbError::Conflict(why) if why.starts_with(MARKER_NOT_FOUND) => ServiceError::Invalid(why),
        other => ServiceError::from(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_a_host_key_is_unavailable_and_its_path_stays_in_the_log() {
        let e = ServiceError::from(KeyringError::NoKeyForHost {
            host: "compute-9".into(),
            path: "/etc/ekko/host-keys/compute-9.key".into(),
            reason: "No such file or directory".into(),
        });
        assert!(
            matches!(&e, ServiceError::Unavailable(why) if !why.contains("/etc/ekko")),
            "{e:?}"
        );
        let other = ServiceError::from(KeyringError::NoMasterKeyFile);
        assert!(matches!(other, ServiceError::Internal(_)), "{other:?}");
    }

    #[test]
    fn things_named_in_a_body_are_bad_requests() {
        let e = ServiceError::not_found("instance", "i-1").named_in_body("instance", "i-1");
        assert!(matches!(&e, ServiceError::Invalid(w) if w == "instance i-1 does not exist"));
        let e = ServiceError::Conflict("busy".into()).named_in_body("instance", "i-1");
        assert!(matches!(e, ServiceError::Conflict(_)));
    }
}
