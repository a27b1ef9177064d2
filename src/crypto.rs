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

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, hkdf, hmac};
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkDigest;
use crate::format::{CIPHER_AES256_GCM, CIPHER_X25519_AES256_GCM, RECORD_CHUNK};

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

    /// Wrap a project's secret (its mode is sealed with it).
    pub fn wrap(
        &self,
        project_id: &str,
        secret: &ProjectSecret,
    ) -> Result<WrappedKey, CryptoError> {
        let mut plain = Vec::with_capacity(KEY_LEN + 1);
        if secret.mode == KeyMode::PublicKey {
            plain.push(PUBLIC_KEY_SECRET_TAG);
        }
        plain.extend_from_slice(&secret.bytes);
        let wrapped = self.seal_for(&wrap_aad(PROJECT_KEY_LABEL, project_id), &plain);
        wipe(&mut plain);
        wrapped
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
        let mut plain = self.open_for(&wrap_aad(PROJECT_KEY_LABEL, project_id), w, &what)?;
        let parsed = match plain.as_slice() {
            b if b.len() == KEY_LEN => Some((KeyMode::Symmetric, b)),
            [PUBLIC_KEY_SECRET_TAG, b @ ..] if b.len() == KEY_LEN => Some((KeyMode::PublicKey, b)),
            _ => None,
        }
        .map(|(mode, b)| {
            let mut bytes = [0u8; KEY_LEN];
            bytes.copy_from_slice(b);
            ProjectSecret { bytes, mode }
        });
        wipe(&mut plain);
        parsed.ok_or_else(|| CryptoError::Malformed(format!("{what}: wrong length")))
    }

    /// Wrap a public-key project's write keys for its jobs (this is the
    /// host key, not the master key: hosts hold it).
    pub fn wrap_write_keys(
        &self,
        project_id: &str,
        keys: &WriteKeys,
    ) -> Result<WrappedKey, CryptoError> {
        let mut plain = keys.to_bytes();
        let wrapped = self.seal_for(&wrap_aad(WRITE_KEYS_LABEL, project_id), &plain);
        wipe(&mut plain);
        wrapped
    }

    /// Open a job's write keys with the host key.
    pub fn unwrap_write_keys(
        &self,
        project_id: &str,
        w: &WrappedKey,
    ) -> Result<WriteKeys, CryptoError> {
        if w.master_key_id != self.id {
            return Err(CryptoError::WrongHostKey {
                project: project_id.to_string(),
                wrapped_by: w.master_key_id.clone(),
                configured: self.id.clone(),
            });
        }
        let what = format!("write keys of {project_id}");
        let mut plain = self.open_for(&wrap_aad(WRITE_KEYS_LABEL, project_id), w, &what)?;
        let keys = WriteKeys::from_bytes(&plain);
        wipe(&mut plain);
        keys.ok_or_else(|| CryptoError::Malformed(format!("{what}: wrong length")))
    }

    fn seal_for(&self, aad: &[u8], plain: &[u8]) -> Result<WrappedKey, CryptoError> {
        let nonce = random::<NONCE_LEN>()?;
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut sealed,
            )
            .map_err(|_| CryptoError::Malformed("wrapping a key failed".into()))?;
        Ok(WrappedKey {
            master_key_id: self.id.clone(),
            nonce: hex(&nonce),
            sealed: hex(&sealed),
        })
    }

    fn open_for(&self, aad: &[u8], w: &WrappedKey, what: &str) -> Result<Vec<u8>, CryptoError> {
        let nonce: [u8; NONCE_LEN] = unhex(&w.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| CryptoError::Malformed(format!("{what}: bad nonce")))?;
        let mut sealed =
            unhex(&w.sealed).ok_or_else(|| CryptoError::Malformed(format!("{what}: not hex")))?;
        let len = self
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut sealed,
            )
            .map_err(|_| CryptoError::Unauthentic(what.to_string()))?
            .len();
        sealed.truncate(len);
        Ok(sealed)
    }
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

/// A project's root secret; wiped from memory when dropped.
pub struct ProjectSecret {
    bytes: [u8; KEY_LEN],
    mode: KeyMode,
}

impl Drop for ProjectSecret {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

/// HKDF-SHA256 expansions of one input key.
struct Derive(hkdf::Prk);

impl Derive {
    fn new(salt: &[u8], ikm: &[u8]) -> Derive {
        Derive(hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm))
    }

    fn key(&self, info: &[&[u8]]) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        // 32 bytes from HKDF-SHA256: within its output limit.
        self.0
            .expand(info, OutLen)
            .and_then(|okm| okm.fill(&mut out))
            .unwrap_or_else(|_| unreachable!("HKDF-SHA256 yields 32 bytes"));
        out
    }
}

impl ProjectSecret {
    pub fn generate(mode: KeyMode) -> Result<ProjectSecret, CryptoError> {
        Ok(ProjectSecret {
            bytes: random::<KEY_LEN>()?,
            mode,
        })
    }

    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    fn derive(&self) -> Derive {
        Derive::new(b"ekko project keys v1", &self.bytes)
    }

    /// The keys records of the project are sealed, opened and named with.
    pub fn keys(&self) -> ProjectKeys {
        let d = self.derive();
        let mut id = d.key(&[b"chunk identity"]);
        let keys = match self.mode {
            KeyMode::Symmetric => {
                let mut data = d.key(&[b"record data"]);
                let k = ProjectKeys::new(&id, &data, Sealing::Symmetric);
                wipe(&mut data);
                k
            }
            KeyMode::PublicKey => {
                let mut index = d.key(&[b"index data"]);
                let private = x25519_dalek::StaticSecret::from(d.key(&[b"record private key"]));
                let public = x25519_dalek::PublicKey::from(&private);
                let k = ProjectKeys::new(&id, &index, Sealing::public(public, Some(private)));
                wipe(&mut index);
                k
            }
        };
        wipe(&mut id);
        keys
    }

    /// What a compute host gets to write backups of a public-key project
    /// (`None` for a symmetric project: its hosts need the whole key).
    pub fn write_keys(&self) -> Option<WriteKeys> {
        if self.mode != KeyMode::PublicKey {
            return None;
        }
        let d = self.derive();
        let private = x25519_dalek::StaticSecret::from(d.key(&[b"record private key"]));
        Some(WriteKeys {
            id: d.key(&[b"chunk identity"]),
            index: d.key(&[b"index data"]),
            public: x25519_dalek::PublicKey::from(&private).to_bytes(),
        })
    }
}

/// A public-key project's write keys: enough to name chunks, read and
/// write maps and manifests, and seal chunks to the public key; not
/// enough to open a chunk.
pub struct WriteKeys {
    id: [u8; KEY_LEN],
    index: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl Drop for WriteKeys {
    fn drop(&mut self) {
        wipe(&mut self.id);
        wipe(&mut self.index);
    }
}

impl WriteKeys {
    fn to_bytes(&self) -> Vec<u8> {
        [self.id, self.index, self.public].concat()
    }

    fn from_bytes(b: &[u8]) -> Option<WriteKeys> {
        if b.len() != 3 * KEY_LEN {
            return None;
        }
        let part = |i: usize| -> [u8; KEY_LEN] {
            let mut k = [0u8; KEY_LEN];
            k.copy_from_slice(&b[i * KEY_LEN..(i + 1) * KEY_LEN]);
            k
        };
        Some(WriteKeys {
            id: part(0),
            index: part(1),
            public: part(2),
        })
    }

    /// Keys that write (and read the maps of) the project, and open no
    /// chunk.
    pub fn keys(&self) -> ProjectKeys {
        let public = x25519_dalek::PublicKey::from(self.public);
        ProjectKeys::new(&self.id, &self.index, Sealing::public(public, None))
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
    fn aad(&self, cipher: u8) -> [u8; 41] {
        let mut a = [0u8; 41];
        a[..2].copy_from_slice(&self.version.to_le_bytes());
        a[2] = self.kind;
        a[3] = self.codec;
        a[4..8].copy_from_slice(&self.raw_len.to_le_bytes());
        a[8] = cipher;
        a[9..41].copy_from_slice(&self.digest.0);
        a
    }
}

/// Length of the writer's ephemeral X25519 public key that prefixes a
/// chunk sealed to a public key.
pub const EPHEMERAL_LEN: usize = 32;

/// How chunk records are sealed (one per project's keys, so the size of
/// the public-key variant does not matter).
#[allow(clippy::large_enum_variant)]
enum Sealing {
    /// With the data key, as pages and manifests.
    Symmetric,
    PublicKey {
        public: x25519_dalek::PublicKey,
        /// Only where the project secret was opened (the restore side).
        private: Option<x25519_dalek::StaticSecret>,
        /// This writer's ephemeral key and the record key it agrees on
        /// with the public key: one agreement per writer (per job), not
        /// per chunk.
        writer: OnceLock<Option<([u8; EPHEMERAL_LEN], aead::LessSafeKey)>>,
        /// Record keys of the writers met so far (restore side).
        opened: Mutex<HashMap<[u8; EPHEMERAL_LEN], Arc<aead::LessSafeKey>>>,
    },
}

impl Sealing {
    fn public(
        public: x25519_dalek::PublicKey,
        private: Option<x25519_dalek::StaticSecret>,
    ) -> Sealing {
        Sealing::PublicKey {
            public,
            private,
            writer: OnceLock::new(),
            opened: Mutex::new(HashMap::new()),
        }
    }
}

/// The AES-256-GCM key of chunks a writer with ephemeral key `e` sealed to
/// `public`: HKDF-SHA256 over X25519(e, public) (or, opening,
/// X25519(private, e)), bound to both public keys.
fn record_key(
    shared: &x25519_dalek::SharedSecret,
    ephemeral: &[u8; EPHEMERAL_LEN],
    public: &x25519_dalek::PublicKey,
    what: &str,
) -> Result<aead::LessSafeKey, CryptoError> {
    // A low-order point agrees on a key anyone knows.
    if !shared.was_contributory() {
        return Err(CryptoError::Unauthentic(format!(
            "{what}: degenerate ephemeral key"
        )));
    }
    let mut key = Derive::new(b"ekko sealed records v1", shared.as_bytes())
        .key(&[ephemeral.as_slice(), public.as_bytes().as_slice()]);
    let k = aead_key(&key);
    wipe(&mut key);
    Ok(k)
}

/// One project's keys: its identity key, its data (index) key, and how its
/// chunks are sealed.
pub struct ProjectKeys {
    id: hmac::Key,
    data: aead::LessSafeKey,
    sealing: Sealing,
}

impl ProjectKeys {
    fn new(id: &[u8; KEY_LEN], data: &[u8; KEY_LEN], sealing: Sealing) -> ProjectKeys {
        ProjectKeys {
            id: hmac::Key::new(hmac::HMAC_SHA256, id),
            data: aead_key(data),
            sealing,
        }
    }

    /// Whether these keys open the project's chunks (false: a host's
    /// write keys).
    pub fn can_open_chunks(&self) -> bool {
        !matches!(self.sealing, Sealing::PublicKey { private: None, .. })
    }

    /// The keyed identity of a chunk or page: HMAC-SHA256 of its plaintext.
    pub fn digest(&self, plaintext: &[u8]) -> ChunkDigest {
        let tag = hmac::sign(&self.id, plaintext);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        ChunkDigest(out)
    }

    /// Seal a record's payload in place (the tag is appended; a chunk
    /// sealed to the public key is prefixed with the writer's ephemeral
    /// key); returns the cipher and the nonce to store in its header.
    pub fn seal(
        &self,
        binding: &RecordBinding,
        payload: &mut Vec<u8>,
    ) -> Result<(u8, [u8; NONCE_LEN]), CryptoError> {
        let nonce = random::<NONCE_LEN>()?;
        let failed = |_| CryptoError::Malformed("sealing a record failed".into());
        match (&self.sealing, binding.kind) {
            (Sealing::PublicKey { public, writer, .. }, RECORD_CHUNK) => {
                let (ephemeral, key) = writer
                    .get_or_init(|| {
                        let e = x25519_dalek::StaticSecret::from(random::<KEY_LEN>().ok()?);
                        let ephemeral = x25519_dalek::PublicKey::from(&e).to_bytes();
                        let key =
                            record_key(&e.diffie_hellman(public), &ephemeral, public, "").ok()?;
                        Some((ephemeral, key))
                    })
                    .as_ref()
                    .ok_or(CryptoError::Random)?;
                let cipher = CIPHER_X25519_AES256_GCM;
                key.seal_in_place_append_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(binding.aad(cipher)),
                    payload,
                )
                .map_err(failed)?;
                payload.splice(0..0, ephemeral.iter().copied());
                Ok((cipher, nonce))
            }
            _ => {
                let cipher = CIPHER_AES256_GCM;
                self.data
                    .seal_in_place_append_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(binding.aad(cipher)),
                        payload,
                    )
                    .map_err(failed)?;
                Ok((cipher, nonce))
            }
        }
    }

    /// Open a sealed payload (as [`ProjectKeys::seal`] left it) sealed
    /// with `cipher`; `what` names it in errors.
    pub fn open<'a>(
        &self,
        binding: &RecordBinding,
        cipher: u8,
        nonce: [u8; NONCE_LEN],
        sealed: &'a mut [u8],
        what: &str,
    ) -> Result<&'a [u8], CryptoError> {
        let nonce = aead::Nonce::assume_unique_for_key(nonce);
        let aad = aead::Aad::from(binding.aad(cipher));
        let unauthentic = |_| CryptoError::Unauthentic(what.to_string());
        match (&self.sealing, cipher, binding.kind) {
            // Pages and manifests, and a symmetric project's chunks.
            (Sealing::Symmetric, CIPHER_AES256_GCM, _) => self
                .data
                .open_in_place(nonce, aad, sealed)
                .map(|p| &*p)
                .map_err(unauthentic),
            (Sealing::PublicKey { .. }, CIPHER_AES256_GCM, kind) if kind != RECORD_CHUNK => self
                .data
                .open_in_place(nonce, aad, sealed)
                .map(|p| &*p)
                .map_err(unauthentic),
            (Sealing::PublicKey { private: None, .. }, CIPHER_X25519_AES256_GCM, RECORD_CHUNK) => {
                Err(CryptoError::WriteOnly(what.to_string()))
            }
            (
                Sealing::PublicKey {
                    public,
                    private: Some(private),
                    opened,
                    ..
                },
                CIPHER_X25519_AES256_GCM,
                RECORD_CHUNK,
            ) => {
                if sealed.len() < EPHEMERAL_LEN + TAG_LEN {
                    return Err(CryptoError::Unauthentic(what.to_string()));
                }
                let (head, body) = sealed.split_at_mut(EPHEMERAL_LEN);
                let mut ephemeral = [0u8; EPHEMERAL_LEN];
                ephemeral.copy_from_slice(head);
                let cached = opened.lock().ok().and_then(|m| m.get(&ephemeral).cloned());
                let key = match cached {
                    Some(k) => k,
                    None => {
                        let shared =
                            private.diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral));
                        let k = Arc::new(record_key(&shared, &ephemeral, public, what)?);
                        if let Ok(mut m) = opened.lock() {
                            m.insert(ephemeral, k.clone());
                        }
                        k
                    }
                };
                key.open_in_place(nonce, aad, body)
                    .map(|p| &*p)
                    .map_err(unauthentic)
            }
            // A cipher this project does not use for this kind: a
            // downgrade (or a record of another project's kind).
            (_, cipher, kind) => Err(CryptoError::Unauthentic(format!(
                "{what}: cipher {cipher} is not how this project seals records of kind {kind}"
            ))),
        }
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
