//! Messages on the bus are versioned JSON envelopes. The version is the
//! envelope's major version: a consumer refuses (and dead-letters) what is
//! newer than it understands instead of misreading it.

use serde::{Deserialize, Serialize};

use super::{QueueError, QueueResult};

/// Newest envelope format version this code understands.
pub const MESSAGE_VERSION: u32 = 2;
/// The version written by default: messages every Ekko since the first
/// understands.
pub const BASE_VERSION: u32 = 1;
/// The version of backup jobs that carry public-key write keys instead of
/// a project key: a worker older than public-key mode would find no key and
/// write plaintext, so it must refuse the job instead.
pub const WRITE_KEYS_VERSION: u32 = 2;
/// Kind of the stand-in a consumer is handed for a message it could not
/// read (not an Ekko message, newer than this Ekko, or over the consumer's
/// size bound; body: [`Unreadable`]). The consumer decides what becomes of
/// it (the conductor dead-letters it, a worker rejects it) instead of the
/// bus dropping it unseen. Never sent by Ekko.
pub const UNREADABLE_KIND: &str = "bus.unreadable";

/// Why a message could not be read, and how big it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    pub reason: String,
    /// Its size on the wire.
    pub bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    /// Unique per message; a redelivery keeps it.
    pub id: String,
    /// What the body is, e.g. `backup.run`, `backup.result`.
    pub kind: String,
    /// RFC 3339 UTC time of sending.
    pub sent_at: String,
    pub body: serde_json::Value,
    /// How often a consumer already tried and put the message back for a
    /// later retry (absent: never).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// The API request this message follows from (`req-<uuid>`), so its
    /// handling logs under the same id on every host. Anything else a
    /// sender puts here is dropped when the message is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `req-<uuid>`: the only request id a message may carry.
pub fn valid_request_id(v: &str) -> bool {
    v.strip_prefix("req-")
        .is_some_and(|u| u.len() == 36 && uuid::Uuid::parse_str(u).is_ok())
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Envelope {
    pub fn new<T: Serialize>(kind: &str, body: &T) -> QueueResult<Envelope> {
        Ok(Envelope {
            version: BASE_VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind.to_string(),
            sent_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            body: serde_json::to_value(body).map_err(|e| QueueError::BadMessage(e.to_string()))?,
            retries: 0,
            request_id: crate::telemetry::current_request_id(),
        })
    }

    /// The stand-in for a message that could not be read
    /// ([`UNREADABLE_KIND`]).
    pub fn unreadable(reason: String, bytes: usize) -> Envelope {
        let body = Unreadable { reason, bytes };
        Envelope {
            version: BASE_VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            kind: UNREADABLE_KIND.to_string(),
            sent_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            body: serde_json::to_value(&body).unwrap_or_default(),
            retries: 0,
            request_id: None,
        }
    }

    /// The same message, readable only by consumers of `version` or newer.
    pub fn requiring(mut self, version: u32) -> Envelope {
        self.version = self.version.max(version);
        self
    }

    pub fn to_bytes(&self) -> QueueResult<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| QueueError::BadMessage(e.to_string()))
    }

    pub fn from_bytes(bytes: &[u8]) -> QueueResult<Envelope> {
        let mut env: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| QueueError::BadMessage(format!("not an Ekko message: {e}")))?;
        if env
            .request_id
            .as_deref()
            .is_some_and(|r| !valid_request_id(r))
        {
            env.request_id = None;
        }
        if env.version > MESSAGE_VERSION {
            return Err(QueueError::BadMessage(format!(
                "message {} has version {}, newer than the {} this Ekko understands",
                env.id, env.version, MESSAGE_VERSION
            )));
        }
        Ok(env)
    }

    /// The body as `T`, checking the kind. Read from the body in place (a
    /// large report is not copied).
    pub fn body_as<T: for<'de> Deserialize<'de>>(&self, kind: &str) -> QueueResult<T> {
        if self.kind != kind {
            return Err(QueueError::BadMessage(format!(
                "expected a {kind} message, got {}",
                self.kind
            )));
        }
        T::deserialize(&self.body)
            .map_err(|e| QueueError::BadMessage(format!("{} message {}: {e}", self.kind, self.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let e = Envelope::new("test.ping", &serde_json::json!({"n": 1})).unwrap();
        let back = Envelope::from_bytes(&e.to_bytes().unwrap()).unwrap();
        assert_eq!(e, back);
        assert_eq!(
            back.body_as::<serde_json::Value>("test.ping").unwrap()["n"],
            1
        );
        assert!(back.body_as::<serde_json::Value>("other").is_err());
        let mut newer = e.clone();
        newer.version = MESSAGE_VERSION + 1;
        let err = Envelope::from_bytes(&newer.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("newer"));
        assert!(Envelope::from_bytes(b"{not json").is_err());
    }

    #[test]
    fn jobs_with_write_keys_need_a_consumer_that_knows_them() {
        let e = Envelope::new("backup.run", &serde_json::json!({})).unwrap();
        assert_eq!(
            e.version, BASE_VERSION,
            "old consumers read ordinary messages"
        );
        let e = e.requiring(WRITE_KEYS_VERSION);
        assert_eq!(e.version, WRITE_KEYS_VERSION);
        // A version-1 consumer refuses it.
        const { assert!(WRITE_KEYS_VERSION > BASE_VERSION) };
        assert_eq!(Envelope::from_bytes(&e.to_bytes().unwrap()).unwrap(), e);
    }
}
