//! The master key: wraps each project's secret (and, in public-key mode,
//! the write keys hosts get), bound to the project id.

use std::path::Path;

use ring::{aead, hmac};

use super::*;

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
