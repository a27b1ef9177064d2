//! The object store seam: where segments and manifests live.
//!
//! Objects are write-once: [`ObjectStore::put`] makes an object visible
//! atomically and durably, or not at all. Each project's objects live in its
//! own container. Implementations: a local directory
//! ([`local::LocalStore`], the single-machine default), OpenStack Swift
//! ([`swift::SwiftStore`]) and S3-compatible stores ([`s3::S3Store`]: a
//! container is a bucket of the same name). `tests/integration/store.rs`
//! runs one conformance suite against every implementation.

pub mod local;
pub mod s3;
pub mod swift;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::config::{EkkoConfig, StorageBackend};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {container}/{name} not found")]
    NotFound { container: String, name: String },
    #[error("invalid object name {0:?}")]
    InvalidName(String),
    #[error("range {offset}+{length} is outside object {container}/{name} of {size} bytes")]
    BadRange {
        container: String,
        name: String,
        offset: u64,
        length: u64,
        size: u64,
    },
    #[error("object store I/O on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object {container}/{name} is {size} bytes, more than the {max} it may have")]
    TooLarge {
        container: String,
        name: String,
        size: u64,
        max: u64,
    },
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    #[error("object store backend {0} is not available in this build")]
    Unsupported(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A stream of object data.
pub type ByteStream = BoxStream<'static, StoreResult<Bytes>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub name: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Store an object; visible only once complete and durable.
    async fn put(&self, container: &str, name: &str, body: Bytes) -> StoreResult<()>;
    /// Store an object from a stream of parts; returns its size.
    async fn put_stream(&self, container: &str, name: &str, body: ByteStream) -> StoreResult<u64>;
    async fn get(&self, container: &str, name: &str) -> StoreResult<Bytes>;
    /// `length` bytes from `offset`; the range must lie inside the object.
    async fn get_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        length: u64,
    ) -> StoreResult<Bytes>;
    async fn get_stream(&self, container: &str, name: &str) -> StoreResult<ByteStream>;
    async fn head(&self, container: &str, name: &str) -> StoreResult<ObjectMeta>;

    /// The store's own clock: the time it stamps an object written now.
    /// Ages of stored objects are measured against it, never against the
    /// local clock (the two may differ).
    async fn now(&self, container: &str) -> StoreResult<DateTime<Utc>> {
        const PROBE: &str = "clock/probe";
        self.put(container, PROBE, Bytes::from_static(b"t")).await?;
        Ok(self.head(container, PROBE).await?.last_modified)
    }
    /// Objects whose name starts with `prefix`, in name order.
    async fn list(&self, container: &str, prefix: &str) -> StoreResult<Vec<ObjectMeta>>;
    /// Delete an object; `NotFound` if it was not there.
    async fn delete(&self, container: &str, name: &str) -> StoreResult<()>;
    /// Containers whose name starts with `prefix`, in name order (the
    /// catalog rebuild finds projects this way).
    async fn containers(&self, prefix: &str) -> StoreResult<Vec<String>>;
}

/// Largest manifest or relocation note read (a manifest of many disks is a
/// few KiB; a note lists at most a few thousand segment ids).
pub const SMALL_OBJECT_MAX: u64 = 1 << 20;

/// An object read whole only if it holds at most `max` bytes: HEAD first,
/// then a ranged GET of the size HEAD gave, so the store's answer cannot
/// size the buffer (an object written by a compute host is not trusted).
pub async fn get_capped(
    store: &dyn ObjectStore,
    container: &str,
    name: &str,
    max: u64,
) -> StoreResult<Bytes> {
    let meta = store.head(container, name).await?;
    if meta.size > max {
        return Err(StoreError::TooLarge {
            container: container.to_string(),
            name: name.to_string(),
            size: meta.size,
            max,
        });
    }
    if meta.size == 0 {
        return Ok(Bytes::new());
    }
    store.get_range(container, name, 0, meta.size).await
}

/// Object and container names: printable, no `..` segments, no leading `/`.
pub fn check_name(name: &str) -> StoreResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && !name.starts_with('/')
        && !name.ends_with('/')
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.starts_with(".tmp-"))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}

/// A container name: a valid name without `/`.
pub fn check_container(container: &str) -> StoreResult<()> {
    check_name(container)?;
    if container.contains('/') {
        return Err(StoreError::InvalidName(container.to_string()));
    }
    Ok(())
}

/// A container and an object name in it.
pub fn check_object(container: &str, name: &str) -> StoreResult<()> {
    check_container(container)?;
    check_name(name)
}

/// The container holding a project's objects.
pub fn project_container(prefix: &str, project_id: &str) -> String {
    format!("{prefix}{project_id}")
}

/// Open the store `[storage] backend` names.
pub fn open(config: &EkkoConfig) -> StoreResult<Arc<dyn ObjectStore>> {
    match config.storage.backend {
        StorageBackend::Local => Ok(Arc::new(local::LocalStore::new(
            &config.local_store.path,
            config.local_store.fsync,
        )?)),
        StorageBackend::Swift => Ok(Arc::new(swift::SwiftStore::new(config)?)),
        StorageBackend::S3 => Ok(Arc::new(s3::S3Store::new(&config.s3)?)),
    }
}

/// The second store of `[replication]`: where each backup's second copy is
/// kept.
#[derive(Clone)]
pub struct Replica {
    /// Its name in the API (`[replication] name`).
    pub name: String,
    /// Its key in the catalog: the name and a digest of the store's
    /// location (not of the credentials: compute hosts read it with a
    /// read-only key of their own), so copies recorded in one store are
    /// never believed of another that took its name.
    pub key: String,
    pub store: Arc<dyn ObjectStore>,
    /// Checked once per process: the second store is not the first one
    /// under another name (see [`Replica::check_distinct`]).
    distinct: Arc<tokio::sync::OnceCell<()>>,
}

impl Replica {
    /// Refuse a second store that is the first one seen through another
    /// door (Swift's s3api on the first store's account, another key of
    /// the same S3 account, a linked directory): a marker written to the
    /// first store must not appear in the second. Copying a segment "to the
    /// second store" and deleting it from the first would then delete the
    /// only copy. Checked once per process, again after a failure.
    pub async fn check_distinct(&self, first: &dyn ObjectStore, prefix: &str) -> StoreResult<()> {
        self.distinct
            .get_or_try_init(|| async {
                let container = format!("{prefix}replica-probe");
                let name = format!("probe/{}", uuid::Uuid::new_v4().simple());
                first
                    .put(&container, &name, Bytes::from_static(b"first store"))
                    .await?;
                let seen = self.store.head(&container, &name).await;
                let _ = first.delete(&container, &name).await;
                match seen {
                    Err(StoreError::NotFound { .. }) => Ok(()),
                    Ok(_) => Err(StoreError::Unavailable(format!(
                        "the second store {} is the first store under another name (a marker \
                         written to the first appeared in it): replication refused",
                        self.name
                    ))),
                    Err(e) => Err(e),
                }
            })
            .await
            .map(|_| ())
    }
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("key", &self.key).finish()
    }
}

/// Open the second store `[replication] backend` names, if any.
pub fn open_replica(config: &EkkoConfig) -> StoreResult<Option<Replica>> {
    use crate::config::ReplicaBackend;
    use sha2::Digest;
    let (store, location): (Arc<dyn ObjectStore>, String) = match config.replication.backend {
        ReplicaBackend::None => return Ok(None),
        ReplicaBackend::Local => {
            let o = &config.replica_local_store.0;
            (
                Arc::new(local::LocalStore::new(&o.path, o.fsync)?),
                format!("local:{}", o.path.trim_end_matches('/')),
            )
        }
        ReplicaBackend::S3 => {
            let o = &config.replica_s3.0;
            (
                Arc::new(s3::S3Store::new(o)?),
                format!("s3:{}", o.endpoint.trim_end_matches('/')),
            )
        }
    };
    let digest = sha2::Sha256::digest(location.as_bytes());
    let name = config.replication.name.clone();
    Ok(Some(Replica {
        key: format!(
            "{name}@{}",
            digest[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        name,
        store,
        distinct: Default::default(),
    }))
}

// ---- shared by the HTTP stores (Swift, S3) ----

pub(crate) fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(what.to_string())
}

pub(crate) fn not_found(container: &str, name: &str) -> StoreError {
    StoreError::NotFound {
        container: container.to_string(),
        name: name.to_string(),
    }
}

/// An answer worth asking again: the server failed, was busy or timed out.
pub(crate) fn retryable(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode;
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// The pause before retry `attempt` (1, 2, …): exponential from 200 ms,
/// at most 5 s, plus up to 100 ms of jitter so that retries of parallel
/// requests spread out.
pub(crate) fn retry_delay(attempt: u32) -> std::time::Duration {
    let backoff = (100u64 << attempt.min(6)).min(5_000);
    let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u16) % 100;
    std::time::Duration::from_millis(backoff + jitter)
}

/// The bytes a ranged GET of `offset`+`length` answered, checked: a store
/// that ignored the range (not `partial`: the whole object) is sliced; a
/// partial answer shorter than asked means the range passed the object's
/// end (`total`: its size, when the answer gave it).
pub(crate) fn ranged_body(
    (container, name): (&str, &str),
    (offset, length): (u64, u64),
    partial: bool,
    total: Option<u64>,
    data: Bytes,
) -> StoreResult<Bytes> {
    let bad_range = |size: u64| StoreError::BadRange {
        container: container.into(),
        name: name.into(),
        offset,
        length,
        size,
    };
    if !partial {
        return match data.get(offset as usize..(offset + length) as usize) {
            Some(slice) => Ok(data.slice_ref(slice)),
            None => Err(bad_range(data.len() as u64)),
        };
    }
    if data.len() as u64 != length {
        return Err(bad_range(total.unwrap_or(offset + data.len() as u64)));
    }
    Ok(data)
}

/// A range of no bytes: empty if `offset` lies inside the object or at its
/// end (HTTP cannot ask for zero bytes).
pub(crate) async fn empty_range(
    store: &dyn ObjectStore,
    container: &str,
    name: &str,
    offset: u64,
) -> StoreResult<Bytes> {
    let size = store.head(container, name).await?.size;
    if offset <= size {
        Ok(Bytes::new())
    } else {
        Err(StoreError::BadRange {
            container: container.into(),
            name: name.into(),
            offset,
            length: 0,
            size,
        })
    }
}

/// What a `416 Range Not Satisfiable` means: the range passed the object's
/// end (its size from a HEAD), or the HEAD's own error.
pub(crate) async fn unsatisfiable(
    store: &dyn ObjectStore,
    container: &str,
    name: &str,
    (offset, length): (u64, u64),
) -> StoreError {
    match store.head(container, name).await {
        Ok(meta) => StoreError::BadRange {
            container: container.into(),
            name: name.into(),
            offset,
            length,
            size: meta.size,
        },
        Err(e) => e,
    }
}

/// The object size of a `Content-Range: bytes a-b/size` header.
pub(crate) fn content_range_size(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get("Content-Range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('/').next())
        .and_then(|s| s.parse::<u64>().ok())
}

/// An HTTP date header (`Last-Modified`, `Date`) as a time; the epoch when
/// absent or unreadable.
pub(crate) fn http_date(headers: &reqwest::header::HeaderMap, name: &str) -> DateTime<Utc> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// The `Content-Length` header, for a HEAD.
pub(crate) fn content_length(headers: &reqwest::header::HeaderMap, what: &str) -> StoreResult<u64> {
    headers
        .get("Content-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| unavailable(format!("{what}: no Content-Length")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["segments/00ff", "manifests/a-b_c.json", "x"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/abs", "a/../b", "a//b", "a/", "sp ace", ".tmp-x", "a/./b", "ü",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
