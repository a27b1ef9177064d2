//! The backup manifest: the catalog's record of one backup, copied to the
//! object store (`manifests/<backup id>.json`) before the catalog commit,
//! so `ekko-manage catalog rebuild` can recreate the catalog from the store
//! alone. The layout is in `docs/format.md`.

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkDigest, ChunkRef};
use crate::crypto::{ProjectKeys, RecordBinding, NONCE_LEN, TAG_LEN};
use crate::format::MANIFEST_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {name}: {why}")]
    Invalid { name: String, why: String },
    #[error("manifest {name} has version {version}; this Ekko reads up to {MANIFEST_VERSION}")]
    TooNew { name: String, version: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub backup_id: String,
    pub project_id: String,
    #[serde(default)]
    pub user_id: String,
    pub instance_id: String,
    #[serde(default)]
    pub instance_name: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `full` or `incremental`.
    pub kind: String,
    /// `crash` or `application`.
    pub consistency: String,
    /// UTC, when the backup was requested.
    pub created_at: NaiveDateTime,
    pub disks: Vec<ManifestDisk>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestDisk {
    pub disk_id: String,
    pub device: String,
    #[serde(default)]
    pub node_name: String,
    /// Position of this record in the disk's history.
    pub seq: i64,
    pub size: u64,
    pub chunk_size: u64,
    /// Root page of the disk's map: digest (hex) and segment (16 hex).
    pub root_digest: String,
    pub root_segment: String,
    #[serde(default)]
    pub full_read: bool,
    #[serde(default)]
    pub read_bytes: u64,
    #[serde(default)]
    pub new_bytes: u64,
    #[serde(default)]
    pub stored_bytes: u64,
}

impl ManifestDisk {
    pub fn root(&self) -> Option<ChunkRef> {
        Some(ChunkRef {
            digest: ChunkDigest::from_hex(&self.root_digest)?,
            segment: u64::from_str_radix(&self.root_segment, 16).ok()?,
        })
    }
}

/// The object name of a backup's manifest.
pub fn object_name(backup_id: &str) -> String {
    format!("manifests/{backup_id}.json")
}

/// A sealed manifest: this magic, a 96-bit nonce, then the JSON sealed with
/// the project's data key (bound to the object's name).
const SEALED_MAGIC: &[u8; 8] = b"EKKOMNF1";

fn sealed_binding(keys: &ProjectKeys, name: &str, len: usize) -> RecordBinding {
    RecordBinding {
        version: MANIFEST_VERSION as u16,
        kind: crate::format::RECORD_MANIFEST,
        codec: 0,
        raw_len: len as u32,
        digest: keys.digest(name.as_bytes()),
    }
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The object's bytes: sealed when the project is encrypted.
    pub fn encode_for(&self, keys: Option<&ProjectKeys>) -> Result<Vec<u8>, ManifestError> {
        let json = self.encode();
        let Some(keys) = keys else { return Ok(json) };
        let name = object_name(&self.backup_id);
        let mut sealed = json.clone();
        let (_, nonce) = keys
            .seal(&sealed_binding(keys, &name, json.len()), &mut sealed)
            .map_err(|e| ManifestError::Invalid {
                name: name.clone(),
                why: e.to_string(),
            })?;
        let mut out = SEALED_MAGIC.to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Parse a manifest object, opening it with `keys` if it is sealed.
    pub fn decode_with(
        name: &str,
        bytes: &[u8],
        keys: Option<&ProjectKeys>,
    ) -> Result<Manifest, ManifestError> {
        let Some(rest) = bytes.strip_prefix(SEALED_MAGIC) else {
            return Manifest::decode(name, bytes);
        };
        let invalid = |why: String| ManifestError::Invalid {
            name: name.to_string(),
            why,
        };
        let keys = keys.ok_or_else(|| invalid("sealed, and no key for its project".into()))?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(invalid("sealed manifest truncated".into()));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| invalid("bad nonce".into()))?;
        let mut sealed = sealed.to_vec();
        let len = sealed.len() - TAG_LEN;
        let json = keys
            .open(
                &sealed_binding(keys, name, len),
                crate::format::CIPHER_AES256_GCM,
                nonce,
                &mut sealed,
                name,
            )
            .map_err(|e| invalid(e.to_string()))?
            .to_vec();
        Manifest::decode(name, &json)
    }

    /// Parse and check a manifest read from object `name`.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let invalid = |why: String| ManifestError::Invalid {
            name: name.to_string(),
            why,
        };
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if v.version > MANIFEST_VERSION {
            return Err(ManifestError::TooNew {
                name: name.to_string(),
                version: v.version,
            });
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if object_name(&m.backup_id) != name {
            return Err(invalid(format!("names backup {}", m.backup_id)));
        }
        if let Some(d) = m.disks.iter().find(|d| d.root().is_none()) {
            return Err(invalid(format!("disk {} has a malformed root", d.device)));
        }
        // Guard what a reader allocates from: a chunk size Ekko can write
        // (power of two, 4 KiB-16 MiB, as the configuration allows) and a disk of at most 1 PiB.
        if let Some(d) = m.disks.iter().find(|d| {
            !d.chunk_size.is_power_of_two()
                || !(crate::format::MIN_CHUNK_SIZE..=crate::format::MAX_CHUNK_SIZE)
                    .contains(&d.chunk_size)
                || d.size > 1 << 50
        }) {
            return Err(invalid(format!(
                "disk {} has an impossible size {} or chunk size {}",
                d.device, d.size, d.chunk_size
            )));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            backup_id: "b1".into(),
            project_id: "p".into(),
            user_id: "u".into(),
            instance_id: "i".into(),
            instance_name: "vm".into(),
            host: "h".into(),
            name: "n".into(),
            description: String::new(),
            kind: "full".into(),
            consistency: "crash".into(),
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0)
                .unwrap()
                .naive_utc(),
            disks: vec![ManifestDisk {
                disk_id: "d".into(),
                device: "vda".into(),
                node_name: "vda".into(),
                seq: 1,
                size: 1 << 30,
                chunk_size: 1 << 18,
                root_digest: ChunkDigest::of(b"x").to_hex(),
                root_segment: format!("{:016x}", 42u64),
                full_read: true,
                read_bytes: 1,
                new_bytes: 2,
                stored_bytes: 3,
            }],
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let m = sample();
        let back = Manifest::decode("manifests/b1.json", &m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.disks[0].root().unwrap().segment, 42);
        // Stored under another backup's name: refused.
        assert!(Manifest::decode("manifests/b2.json", &m.encode()).is_err());
        let mut newer = m.clone();
        newer.version = MANIFEST_VERSION + 1;
        assert!(matches!(
            Manifest::decode("manifests/b1.json", &newer.encode()),
            Err(ManifestError::TooNew { .. })
        ));
        for (size, chunk) in [(1 << 30, 0), (1 << 30, 3 << 18), (1 << 60, 1 << 18)] {
            let mut odd = m.clone();
            odd.disks[0].size = size;
            odd.disks[0].chunk_size = chunk;
            assert!(
                Manifest::decode("manifests/b1.json", &odd.encode()).is_err(),
                "size {size} chunk {chunk}"
            );
        }
        let mut bad = m;
        bad.disks[0].root_segment = "zz".into();
        assert!(Manifest::decode("manifests/b1.json", &bad.encode()).is_err());
        assert!(Manifest::decode("manifests/b1.json", b"{").is_err());
    }
}
