//! Checks that involve several options of the second store
//! (`[replication]`, `[replica_s3]`, `[replica_local_store]`).

use super::{ConfigError, EkkoConfig, ReplicaBackend, StorageBackend};

fn invalid(section: &str, key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        origin: "configuration".into(),
        section: section.into(),
        key: key.into(),
        message,
    }
}

/// The second store's name, that it is another store than the first, and
/// that S3 can hold the bucket names it would get.
pub(super) fn replication(cfg: &EkkoConfig) -> Result<(), ConfigError> {
    let name = &cfg.replication.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(invalid(
            "replication",
            "name",
            format!("{name:?}: 1 to 64 letters, digits, '-' or '_'"),
        ));
    }
    // The second copy must be another store: the default directory of
    // `[replica_local_store]` is the first store's.
    let same_store = match cfg.replication.backend {
        ReplicaBackend::None => false,
        ReplicaBackend::Local => {
            cfg.storage.backend == StorageBackend::Local
                && std::path::Path::new(&cfg.replica_local_store.0.path)
                    == std::path::Path::new(&cfg.local_store.path)
        }
        ReplicaBackend::S3 => {
            if cfg.replica_s3.0.endpoint.trim().is_empty() {
                return Err(invalid(
                    "replica_s3",
                    "endpoint",
                    "[replication] backend = s3 needs the second store's endpoint".into(),
                ));
            }
            cfg.storage.backend == StorageBackend::S3
                && cfg.replica_s3.0.endpoint.trim_end_matches('/')
                    == cfg.s3.endpoint.trim_end_matches('/')
                && cfg.replica_s3.0.access_key == cfg.s3.access_key
        }
    };
    // Buckets are named `<container_prefix><project id>`: a prefix S3
    // cannot hold would fail every copy (and hold back the first store's
    // reclaim of compacted segments), so it is refused here.
    let prefix = &cfg.swift.container_prefix;
    let bucket_ok = prefix.len() <= 31
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && prefix
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if cfg.replication.backend == ReplicaBackend::S3 && !bucket_ok {
        return Err(invalid(
                "swift",
                "container_prefix",
                format!("{prefix:?} cannot begin S3 bucket names (the second store's): at most 31 of a-z, 0-9, '-', '.', starting with a letter or digit"),
            ));
    }
    if same_store {
        return Err(invalid(
                "replication",
                "backend",
                "the second store is the first one; give [replica_local_store] path or [replica_s3] endpoint of another store".into(),
            ));
    }
    Ok(())
}
