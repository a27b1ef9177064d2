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
//! * **Public-key mode** (a project key created with `[encryption] mode =
//!   public_key`): the secret also derives an **index key** (pages and
//!   manifests) and an X25519 key pair. Compute hosts get only the
//!   [`WriteKeys`] (identity key, index key, public key), wrapped by the
//!   host key: they name chunks, read earlier maps, dedup and write new
//!   backups, but every chunk they write is sealed to the public key
//!   (an ephemeral X25519 key per writer, HKDF-SHA256, AES-256-GCM), so no
//!   chunk, old or new, opens on a host. Opening needs the private key,
//!   derived from the secret wherever the master key is (the restore side).
//!
//! The primitives are ring's, the crypto provider rustls already links;
//! X25519 with a reusable private key is x25519-dalek's (ring only offers
//! ephemeral key agreement).

use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

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
    #[error(
        "write keys of {project} are wrapped by host key {wrapped_by}, but the configured host key is {configured}: wrong [encryption] host_key_file?"
    )]
    WrongHostKey {
        project: String,
        wrapped_by: String,
        configured: String,
    },
    #[error(
        "{0}: sealed to its project's public key; only the restore side (the master key) can open it, not a host with write keys"
    )]
    WriteOnly(String),
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

/// Associated data of wrapped keys: what the key is for (a write-keys blob
/// never opens as a project key, nor the reverse) and whose it is.
const PROJECT_KEY_LABEL: &[u8] = b"ekko project key v1\0";
const WRITE_KEYS_LABEL: &[u8] = b"ekko write keys v1\0";
/// First byte of a wrapped public-key project's secret (a symmetric
/// project's is the bare 32 bytes, as before public-key mode existed).
const PUBLIC_KEY_SECRET_TAG: u8 = 2;

fn wrap_aad(label: &[u8], project_id: &str) -> Vec<u8> {
    let mut aad = label.to_vec();
    aad.extend_from_slice(project_id.as_bytes());
    aad
}

/// Overwrite key material we own, so the wipe is not optimised away.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: a volatile write to memory we own.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// A project key as stored (catalog and store): sealed by a master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub master_key_id: String,
    pub nonce: String,
    pub sealed: String,
}

/// How a project's chunks are sealed; fixed when its key is created (its
/// maps and manifests would need rewriting to switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// One data key seals chunks, pages and manifests; whoever writes can
    /// read.
    #[default]
    Symmetric,
    /// Chunks are sealed to the project's X25519 public key: hosts with
    /// the write keys write backups they cannot read.
    PublicKey,
}

mod master_key;
mod project_keys;

pub use master_key::MasterKey;
pub use project_keys::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkDigest;
    use crate::format::{CIPHER_AES256_GCM, RECORD_CHUNK};

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
        let secret = ProjectSecret::generate(KeyMode::Symmetric).unwrap();
        let w = master.wrap("p1", &secret).unwrap();
        assert_eq!(master.unwrap("p1", &w).unwrap().bytes, secret.bytes);
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
        assert_eq!(other.unwrap("p1", &rewrapped).unwrap().bytes, secret.bytes);
    }

    #[test]
    fn identities_are_keyed_per_project() {
        let a = ProjectSecret::generate(KeyMode::Symmetric).unwrap().keys();
        let b = ProjectSecret::generate(KeyMode::Symmetric).unwrap().keys();
        let data = b"the same plaintext";
        assert_eq!(a.digest(data), a.digest(data));
        assert_ne!(a.digest(data), b.digest(data));
        assert_ne!(a.digest(data), ChunkDigest::of(data));
    }

    #[test]
    fn sealed_records_detect_tampering_swaps_and_the_wrong_key() {
        let keys = ProjectSecret::generate(KeyMode::Symmetric).unwrap().keys();
        let d = keys.digest(b"hello");
        let mut payload = b"hello".to_vec();
        let (cipher, nonce) = keys.seal(&binding(d), &mut payload).unwrap();
        assert_eq!(cipher, CIPHER_AES256_GCM);
        assert_eq!(payload.len(), 5 + TAG_LEN);
        assert_ne!(&payload[..5], b"hello");
        let mut ok = payload.clone();
        assert_eq!(
            keys.open(&binding(d), cipher, nonce, &mut ok, "r").unwrap(),
            b"hello"
        );
        // A flipped bit, a truncation, another identity, another key.
        let mut flipped = payload.clone();
        flipped[2] ^= 1;
        assert!(keys
            .open(&binding(d), cipher, nonce, &mut flipped, "r")
            .is_err());
        let mut short = payload[..payload.len() - 1].to_vec();
        assert!(keys
            .open(&binding(d), cipher, nonce, &mut short, "r")
            .is_err());
        let mut swapped = payload.clone();
        let other = keys.digest(b"other");
        assert!(keys
            .open(&binding(other), cipher, nonce, &mut swapped, "r")
            .is_err());
        let stranger = ProjectSecret::generate(KeyMode::Symmetric).unwrap().keys();
        let mut theirs = payload.clone();
        assert!(stranger
            .open(&binding(d), cipher, nonce, &mut theirs, "r")
            .is_err());
        // Nonces are fresh per record.
        let mut again = b"hello".to_vec();
        assert_ne!(keys.seal(&binding(d), &mut again).unwrap().1, nonce);
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

    #[test]
    fn public_key_secrets_keep_their_mode_and_write_keys_are_scoped() {
        let master = MasterKey::from_bytes(&[7; KEY_LEN]);
        let host = MasterKey::from_bytes(&[9; KEY_LEN]);
        let secret = ProjectSecret::generate(KeyMode::PublicKey).unwrap();
        let w = master.wrap("p1", &secret).unwrap();
        let back = master.unwrap("p1", &w).unwrap();
        assert_eq!(back.mode(), KeyMode::PublicKey);
        assert_eq!(back.bytes, secret.bytes);
        assert!(ProjectSecret::generate(KeyMode::Symmetric)
            .unwrap()
            .write_keys()
            .is_none());
        // Write keys travel wrapped by the host key, bound to the project,
        // and never open as a project key (nor a project key as them).
        let write = secret.write_keys().unwrap();
        let ww = host.wrap_write_keys("p1", &write).unwrap();
        assert_eq!(
            host.unwrap_write_keys("p1", &ww).unwrap().to_bytes(),
            write.to_bytes()
        );
        assert!(host.unwrap_write_keys("p2", &ww).is_err());
        assert!(matches!(
            master.unwrap_write_keys("p1", &ww),
            Err(CryptoError::WrongHostKey { .. })
        ));
        assert!(
            host.unwrap("p1", &ww).is_err(),
            "write keys are no project key"
        );
        let as_host = host.wrap("p1", &secret).unwrap();
        assert!(host.unwrap_write_keys("p1", &as_host).is_err());
        // No 32-byte value the host holds is the secret or the private key.
        let full = secret.keys();
        let d = full.digest(b"x");
        for part in [write.id, write.index, write.public] {
            assert_ne!(part, secret.bytes);
            for mode in [KeyMode::Symmetric, KeyMode::PublicKey] {
                let guess = ProjectSecret { bytes: part, mode }.keys();
                let mut payload = b"chunk".to_vec();
                let b = RecordBinding {
                    version: 1,
                    kind: RECORD_CHUNK,
                    codec: 0,
                    raw_len: 5,
                    digest: d,
                };
                let (cipher, nonce) = write.keys().seal(&b, &mut payload).unwrap();
                // (A failed open leaves its buffer unspecified: try a copy.)
                let mut again = payload.clone();
                assert!(guess.open(&b, cipher, nonce, &mut payload, "r").is_err());
                assert_eq!(
                    full.open(&b, cipher, nonce, &mut again, "r").unwrap(),
                    b"chunk"
                );
            }
        }
    }

    #[test]
    fn each_writer_agrees_on_its_own_record_key() {
        let secret = ProjectSecret::generate(KeyMode::PublicKey).unwrap();
        let full = secret.keys();
        let (w1, w2) = (
            secret.write_keys().unwrap().keys(),
            secret.write_keys().unwrap().keys(),
        );
        let b = RecordBinding {
            version: 1,
            kind: RECORD_CHUNK,
            codec: 0,
            raw_len: 3,
            digest: full.digest(b"abc"),
        };
        let seal = |k: &ProjectKeys| {
            let mut p = b"abc".to_vec();
            let (c, n) = k.seal(&b, &mut p).unwrap();
            (c, n, p)
        };
        let ((c1, n1, p1), (_, _, p1b), (c2, n2, p2)) = (seal(&w1), seal(&w1), seal(&w2));
        assert_eq!(
            p1[..EPHEMERAL_LEN],
            p1b[..EPHEMERAL_LEN],
            "one ephemeral key per writer"
        );
        assert_ne!(p1[..EPHEMERAL_LEN], p2[..EPHEMERAL_LEN]);
        for (c, n, mut p) in [(c1, n1, p1), (c2, n2, p2)] {
            assert_eq!(full.open(&b, c, n, &mut p, "r").unwrap(), b"abc");
        }
        // A low-order ephemeral key (all zeros) is refused, not trusted.
        let mut p = vec![0u8; EPHEMERAL_LEN + TAG_LEN + 3];
        let err = full.open(&b, c1, n1, &mut p, "r").unwrap_err().to_string();
        assert!(err.contains("degenerate"), "{err}");
    }
}
