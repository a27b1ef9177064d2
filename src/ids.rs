//! Identifiers that say what they name: a [`BackupId`] cannot be passed
//! where an [`InstanceId`] is expected.
//!
//! Each is a string newtype, serialized as the plain string (so the API, the
//! bus and the catalog see what they always saw) and stored as `TEXT`/
//! `VARCHAR` by diesel. Values from outside (a request, a host's report, a
//! file) go through `parse`, which checks the characters OpenStack ids use
//! and the length the catalog column holds; values Ekko makes itself come
//! from `generate`.

use std::fmt;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

/// Why an identifier from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: {why}")]
pub struct IdError {
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

/// OpenStack ids (UUIDs, Keystone's hex ids, host names) use letters,
/// digits, `-`, `_` and `.`; nothing that could act as a path or pattern.
fn check(what: &'static str, value: &str, max: usize, dots: bool) -> Result<(), IdError> {
    let why = if value.is_empty() {
        Some("empty")
    } else if value.len() > max {
        Some("too long")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.'))
    {
        Some("only letters, digits, '-' and '_' are allowed")
    } else if dots && (value.starts_with('.') || value.contains("..")) {
        Some("no leading dot or '..'")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(IdError {
            what,
            value: value.chars().take(80).collect(),
            why,
        }),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, max = $max:literal $(, dots = $dots:literal)?) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
            serde::Serialize, serde::Deserialize,
            diesel::AsExpression, diesel::FromSqlRow,
        )]
        #[serde(transparent)]
        #[diesel(sql_type = Text)]
        pub struct $name(String);

        impl $name {
            /// What the catalog column holds.
            pub const MAX_LEN: usize = $max;

            /// Check a value that comes from outside.
            pub fn parse(value: &str) -> Result<$name, IdError> {
                check($what, value, $max, false $(|| $dots)?)?;
                Ok($name(value.to_string()))
            }

            /// Wrap a value Ekko itself made or already checked (a catalog
            /// row, a constant). Prefer [`Self::parse`] for outside input.
            pub fn from_trusted(value: impl Into<String>) -> $name {
                $name(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl<DB: Backend> ToSql<Text, DB> for $name
        where
            str: ToSql<Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                <str as ToSql<Text, DB>>::to_sql(self.0.as_str(), out)
            }
        }

        impl<DB: Backend> FromSql<Text, DB> for $name
        where
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                Ok($name(String::from_sql(bytes)?))
            }
        }
    };
}

/// Ids Ekko makes: random UUIDs, as Nova's and Cinder's.
macro_rules! generated {
    ($($name:ident),*) => {$(
        impl $name {
            pub fn generate() -> $name {
                $name(uuid::Uuid::new_v4().to_string())
            }
        }
    )*};
}

string_id!(
    /// A Keystone project (tenant): the unit of ownership and isolation.
    ProjectId, "project id", max = 64
);
string_id!(
    /// A Keystone user.
    UserId, "user id", max = 64
);
string_id!(
    /// An instance (a Nova server id on a Nova cloud).
    InstanceId, "instance id", max = 36
);
string_id!(
    /// One disk of an instance as the catalog tracks it across backups.
    DiskId, "disk id", max = 36
);
string_id!(
    /// A backup of one instance (all its disks at one instant).
    BackupId, "backup id", max = 36
);
string_id!(
    /// A restore of one disk of a backup.
    RestoreId, "restore id", max = 36
);
string_id!(
    /// A unit of work sent to a compute host (a backup or a restore).
    JobId, "job id", max = 36
);
string_id!(
    /// A backup policy (schedule and retention rules).
    PolicyId, "policy id", max = 36
);
string_id!(
    /// A compute host as its ekko-backup names itself (`[DEFAULT] host`).
    HostName, "host name", max = 255, dots = true
);

generated!(DiskId, BackupId, RestoreId, JobId, PolicyId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_values_are_checked() {
        assert!(InstanceId::parse("0f6a1c2e-11aa-4bb0-9c1d-0123456789ab").is_ok());
        let long = InstanceId::parse(&"a".repeat(40)).unwrap_err();
        assert_eq!(long.why, "too long");
        assert!(ProjectId::parse(&"a".repeat(64)).is_ok());
        assert!(ProjectId::parse("").is_err());
        assert!(ProjectId::parse("../x").is_err());
        assert!(HostName::parse("compute-1.example.org").is_ok());
        assert!(HostName::parse("..").is_err());
        assert!(HostName::parse(".hidden").is_err());
        assert!(HostName::parse("a/b").is_err());
        assert!(BackupId::parse("a.b").is_err(), "dots only in host names");
    }

    #[test]
    fn serialized_as_plain_strings() {
        let id = BackupId::from_trusted("b-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"b-1\"");
        let back: BackupId = serde_json::from_str("\"b-1\"").unwrap();
        assert_eq!(back, id);
        assert_eq!(id, "b-1");
        assert_eq!(BackupId::generate().as_str().len(), 36);
    }
}
