//! Encryption at rest: the key hierarchy and the sealing of records.
//!
//! * A **master key** (32 bytes, from `[encryption] master_key_file`) only
//!   wraps project keys; its id is a key-check value (an HMAC of a fixed
//!   label), so a wrong master key is refused by name before any data is
//!   touched.
//! * A **project secret** (32 random bytes per project) is stored wrapped
//!   by the master key (AES-256-GCM, the project id as associated data, so
//!   a wrapped key moved to another project does not open). Rotating the
//!   master key rewraps project secrets; no data is rewritten.
//! * From the secret, HKDF-SHA256 derives the project's **identity key**
//!   (HMAC-SHA256: chunk identities reveal nothing about content, and equal
//!   plaintext in two projects has two identities) and its **data key**
//!   (AES-256-GCM for records).
//! * A sealed record uses a fresh random 96-bit nonce (never a counter: two
//!   writers of one project share the key) and binds, as associated data,
//!   the format version, its kind, codec, plaintext length and identity:
//!   a record swapped, truncated or replayed under another identity fails
//!   to open.
//!
//! The primitives are ring's, the crypto provider rustls already links.

use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, hkdf, hmac};
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkDigest;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = aead::NONCE_LEN;
pub const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key file {path}: {why}")]
    MasterKeyFile { path: String, why: String },
    #[error(
        "project key of {project} is wrapped by master key {wrapped_by}, but the configured master key is {configured}: wrong [encryption] master_key_file?"
    )]
    WrongMasterKey {
        project: String,
        wrapped_by: String,
        configured: String,
    },
    #[error("{0}: authentication failed (tampered, swapped or truncated data, or the wrong key)")]
    Unauthentic(String),
    #[error("{0}")]
    Malformed(String),
    #[error("the system random generator failed")]
    Random,
}

fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CryptoError::Random)?;
    Ok(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn aead_key(bytes: &[u8; KEY_LEN]) -> aead::LessSafeKey {
    // 32 bytes is exactly AES-256's key length: cannot fail.
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, bytes)
        .unwrap_or_else(|_| unreachable!("AES-256 takes 32-byte keys"));
    aead::LessSafeKey::new(unbound)
}

/// The key that wraps project keys.
pub struct MasterKey {
    key: aead::LessSafeKey,
    id: String,
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> MasterKey {
        let check = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"ekko master key check v1",
        );
        MasterKey {
            key: aead_key(bytes),
            id: hex(&check.as_ref()[..8]),
        }
    }

    /// A file holding the key as 64 hex digits (surrounding whitespace is
    /// ignored). It must not be readable by group or others.
    pub fn load(path: &Path) -> Result<MasterKey, CryptoError> {
        let err = |why: String| CryptoError::MasterKeyFile {
            path: path.display().to_string(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err("readable by group or others (chmod 600 it)".to_string()));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == KEY_LEN)
            .ok_or_else(|| err(format!("expected {} hex digits", 2 * KEY_LEN)))?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&bytes);
        Ok(MasterKey::from_bytes(&key))
    }

    /// A new random master key, as the hex text of a key file.
    pub fn generate_hex() -> Result<String, CryptoError> {
        Ok(hex(&random::<KEY_LEN>()?))
    }

    /// The key-check value that names this key.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn wrap(
        &self,
        project_id: &str,
        secret: &ProjectSecret,
    ) -> Result<WrappedKey, CryptoError> {
        let nonce = random::<NONCE_LEN>()?;
        let mut sealed = secret.0.to_vec();
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(wrap_aad(project_id)),
                &mut sealed,
            )
            .map_err(|_| CryptoError::Malformed("sealing a project key failed".into()))?;
        Ok(WrappedKey {
            master_key_id: self.id.clone(),
            nonce: hex(&nonce),
            sealed: hex(&sealed),
        })
    }

    /// Unwrap a project's secret; the wrong master key is named as such.
    pub fn unwrap(&self, project_id: &str, w: &WrappedKey) -> Result<ProjectSecret, CryptoError> {
        if w.master_key_id != self.id {
            return Err(CryptoError::WrongMasterKey {
                project: project_id.to_string(),
                wrapped_by: w.master_key_id.clone(),
                configured: self.id.clone(),
            });
        }
        let what = format!("project key of {project_id}");
        let nonce: [u8; NONCE_LEN] = unhex(&w.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| CryptoError::Malformed(format!("{what}: bad nonce")))?;
        let mut sealed =
            unhex(&w.sealed).ok_or_else(|| CryptoError::Malformed(format!("{what}: not hex")))?;
        let plain = self
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(wrap_aad(project_id)),
                &mut sealed,
            )
            .map_err(|_| CryptoError::Unauthentic(what.clone()))?;
        let secret: [u8; KEY_LEN] = plain
            .try_into()
            .map_err(|_| CryptoError::Malformed(format!("{what}: wrong length")))?;
        Ok(ProjectSecret(secret))
    }
}

fn wrap_aad(project_id: &str) -> Vec<u8> {
    let mut aad = b"ekko project key v1\0".to_vec();
    aad.extend_from_slice(project_id.as_bytes());
    aad
}

/// A project key as stored (catalog and store): sealed by a master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub master_key_id: String,
    pub nonce: String,
    pub sealed: String,
}

/// A project's root secret; wiped from memory when dropped.
pub struct ProjectSecret([u8; KEY_LEN]);

impl Drop for ProjectSecret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a volatile write to memory we own, so the wipe is
            // not optimised away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl ProjectSecret {
    pub fn generate() -> Result<ProjectSecret, CryptoError> {
        Ok(ProjectSecret(random::<KEY_LEN>()?))
    }

    /// The keys records of the project are sealed and named with.
    pub fn keys(&self) -> ProjectKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"ekko project keys v1").extract(&self.0);
        let mut id = [0u8; KEY_LEN];
        let mut data = [0u8; KEY_LEN];
        for (info, out) in [
            (b"chunk identity".as_slice(), &mut id),
            (b"record data".as_slice(), &mut data),
        ] {
            let info = [info];
            // 32 bytes from HKDF-SHA256: within its output limit.
            prk.expand(&info, OutLen)
                .and_then(|okm| okm.fill(out))
                .unwrap_or_else(|_| unreachable!("HKDF-SHA256 yields 32 bytes"));
        }
        ProjectKeys {
            id: hmac::Key::new(hmac::HMAC_SHA256, &id),
            data: aead_key(&data),
        }
    }
}

struct OutLen;

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// What a sealed record's associated data binds.
#[derive(Debug, Clone, Copy)]
pub struct RecordBinding {
    pub version: u16,
    pub kind: u8,
    pub codec: u8,
    pub raw_len: u32,
    pub digest: ChunkDigest,
}

impl RecordBinding {
    fn aad(&self) -> [u8; 41] {
        let mut a = [0u8; 41];
        a[..2].copy_from_slice(&self.version.to_le_bytes());
        a[2] = self.kind;
        a[3] = self.codec;
        a[4..8].copy_from_slice(&self.raw_len.to_le_bytes());
        a[8] = 1; // cipher: AES-256-GCM
        a[9..41].copy_from_slice(&self.digest.0);
        a
    }
}

/// One project's identity and data keys.
pub struct ProjectKeys {
    id: hmac::Key,
    data: aead::LessSafeKey,
}

impl ProjectKeys {
    /// The keyed identity of a chunk or page: HMAC-SHA256 of its plaintext.
    pub fn digest(&self, plaintext: &[u8]) -> ChunkDigest {
        let tag = hmac::sign(&self.id, plaintext);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        ChunkDigest(out)
    }

    /// Seal a record's payload in place (the tag is appended); returns the
    /// nonce to store in its header.
    pub fn seal(
        &self,
        binding: &RecordBinding,
        payload: &mut Vec<u8>,
    ) -> Result<[u8; NONCE_LEN], CryptoError> {
        let nonce = random::<NONCE_LEN>()?;
        self.data
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(binding.aad()),
                payload,
            )
            .map_err(|_| CryptoError::Malformed("sealing a record failed".into()))?;
        Ok(nonce)
    }

    /// Open a sealed payload (ciphertext and tag); `what` names it in errors.
    pub fn open<'a>(
        &self,
        binding: &RecordBinding,
        nonce: [u8; NONCE_LEN],
        sealed: &'a mut [u8],
        what: &str,
    ) -> Result<&'a [u8], CryptoError> {
        self.data
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(binding.aad()),
                sealed,
            )
            .map(|p| &*p)
            .map_err(|_| CryptoError::Unauthentic(what.to_string()))
    }
}

/// The identity of a plaintext: SHA-256, or with a project's keys its keyed
/// identity.
pub fn identity(keys: Option<&ProjectKeys>, plaintext: &[u8]) -> ChunkDigest {
    match keys {
        Some(k) => k.digest(plaintext),
        None => ChunkDigest::of(plaintext),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(digest: ChunkDigest) -> RecordBinding {
        RecordBinding {
            version: 1,
            kind: 1,
            codec: 1,
            raw_len: 5,
            digest,
        }
    }

    #[test]
    fn project_keys_wrap_under_the_master_key_and_nowhere_else() {
        let master = MasterKey::from_bytes(&[7; KEY_LEN]);
        let other = MasterKey::from_bytes(&[8; KEY_LEN]);
        assert_ne!(master.id(), other.id());
        let secret = ProjectSecret::generate().unwrap();
        let w = master.wrap("p1", &secret).unwrap();
        assert_eq!(master.unwrap("p1", &w).unwrap().0, secret.0);
        // The wrong master key is named before anything is tried.
        assert!(matches!(
            other.unwrap("p1", &w),
            Err(CryptoError::WrongMasterKey { .. })
        ));
        // Bound to its project.
        assert!(matches!(
            master.unwrap("p2", &w),
            Err(CryptoError::Unauthentic(_))
        ));
        // Rotation: rewrap under the new master key, same secret.
        let rewrapped = other.wrap("p1", &master.unwrap("p1", &w).unwrap()).unwrap();
        assert_eq!(other.unwrap("p1", &rewrapped).unwrap().0, secret.0);
    }

    #[test]
    fn identities_are_keyed_per_project() {
        let a = ProjectSecret::generate().unwrap().keys();
        let b = ProjectSecret::generate().unwrap().keys();
        let data = b"the same plaintext";
        assert_eq!(a.digest(data), a.digest(data));
        assert_ne!(a.digest(data), b.digest(data));
        assert_ne!(a.digest(data), ChunkDigest::of(data));
    }

    #[test]
    fn sealed_records_detect_tampering_swaps_and_the_wrong_key() {
        let keys = ProjectSecret::generate().unwrap().keys();
        let d = keys.digest(b"hello");
        let mut payload = b"hello".to_vec();
        let nonce = keys.seal(&binding(d), &mut payload).unwrap();
        assert_eq!(payload.len(), 5 + TAG_LEN);
        assert_ne!(&payload[..5], b"hello");
        let mut ok = payload.clone();
        assert_eq!(
            keys.open(&binding(d), nonce, &mut ok, "r").unwrap(),
            b"hello"
        );
        // A flipped bit, a truncation, another identity, another key.
        let mut flipped = payload.clone();
        flipped[2] ^= 1;
        assert!(keys.open(&binding(d), nonce, &mut flipped, "r").is_err());
        let mut short = payload[..payload.len() - 1].to_vec();
        assert!(keys.open(&binding(d), nonce, &mut short, "r").is_err());
        let mut swapped = payload.clone();
        let other = keys.digest(b"other");
        assert!(keys
            .open(&binding(other), nonce, &mut swapped, "r")
            .is_err());
        let stranger = ProjectSecret::generate().unwrap().keys();
        let mut theirs = payload.clone();
        assert!(stranger.open(&binding(d), nonce, &mut theirs, "r").is_err());
        // Nonces are fresh per record.
        let mut again = b"hello".to_vec();
        assert_ne!(keys.seal(&binding(d), &mut again).unwrap(), nonce);
    }

    #[test]
    fn master_key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, MasterKey::generate_hex().unwrap() + "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            MasterKey::load(&path).is_err(),
            "world-readable key refused"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = MasterKey::load(&path).unwrap();
        assert_eq!(a.id().len(), 16);
        std::fs::write(&path, "abcd").unwrap();
        assert!(MasterKey::load(&path).is_err(), "short key refused");
    }
}
