//! A project's keys: its root secret, the keys derived from it (chunk
//! identities, data sealing, public-key sealing) and the sealing of one
//! record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ring::{aead, hkdf, hmac};

use super::*;
use crate::chunk::ChunkDigest;
use crate::format::{CIPHER_AES256_GCM, CIPHER_X25519_AES256_GCM, RECORD_CHUNK};

/// A project's root secret; wiped from memory when dropped.
pub struct ProjectSecret {
    pub(super) bytes: [u8; KEY_LEN],
    pub(super) mode: KeyMode,
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
    pub(super) id: [u8; KEY_LEN],
    pub(super) index: [u8; KEY_LEN],
    pub(super) public: [u8; KEY_LEN],
}

impl Drop for WriteKeys {
    fn drop(&mut self) {
        wipe(&mut self.id);
        wipe(&mut self.index);
    }
}

impl WriteKeys {
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        [self.id, self.index, self.public].concat()
    }

    pub(super) fn from_bytes(b: &[u8]) -> Option<WriteKeys> {
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
