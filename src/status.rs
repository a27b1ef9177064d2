//! Every status and kind Ekko records, as enums. The catalog stores their
//! names as text; a name it does not know is refused when the row is read
//! (diesel's `FromSql`), so past the catalog boundary no code compares
//! status strings.

use std::fmt;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize,
            diesel::AsExpression, diesel::FromSqlRow,
        )]
        #[diesel(sql_type = Text)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                $name::parse(s).ok_or_else(|| format!(
                    "{s:?} is not a {}: expected one of {}",
                    stringify!($name),
                    [$($text),+].join(", ")
                ))
            }
        }

        impl<DB: Backend> ToSql<Text, DB> for $name
        where
            str: ToSql<Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                <str as ToSql<Text, DB>>::to_sql(self.as_str(), out)
            }
        }

        impl<DB: Backend> FromSql<Text, DB> for $name
        where
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                let s = String::from_sql(bytes)?;
                Ok(s.parse::<$name>()?)
            }
        }
    };
}

text_enum!(
    /// Where a backup is in its life.
    ///
    /// ```text
    ///  queued ──► running ──► available ──► deleting ──► deleted
    ///    │           │                         ▲
    ///    └───────────┴──► error ───────────────┘
    /// ```
    BackupStatus {
        Queued = "queued",
        Running = "running",
        Available = "available",
        Error = "error",
        Deleting = "deleting",
        Deleted = "deleted",
    }
);

impl BackupStatus {
    /// The states a backup may be in to move to `self`.
    pub fn allowed_from(self) -> &'static [BackupStatus] {
        use BackupStatus::*;
        match self {
            Queued => &[Error],
            Running => &[Queued],
            Available => &[Running],
            Error => &[Queued, Running],
            Deleting => &[Queued, Running, Available, Error],
            Deleted => &[Deleting],
        }
    }

    /// Queued or running: a job may still change it.
    pub fn is_active(self) -> bool {
        matches!(self, BackupStatus::Queued | BackupStatus::Running)
    }
}

text_enum!(
    /// Where a restore is in its life.
    RestoreStatus {
        Queued = "queued",
        Running = "running",
        Completed = "completed",
        Error = "error",
    }
);

impl RestoreStatus {
    pub fn is_active(self) -> bool {
        matches!(self, RestoreStatus::Queued | RestoreStatus::Running)
    }
}

text_enum!(
    /// Where an export is in its life: `starting` until its host listens,
    /// `active` while it serves, `ending` once asked to stop, then `ended`
    /// (or `error`) for good.
    ExportStatus {
        Starting = "starting",
        Active = "active",
        Ending = "ending",
        Ended = "ended",
        Error = "error",
    }
);

impl ExportStatus {
    /// Still served, or about to be.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ExportStatus::Starting | ExportStatus::Active | ExportStatus::Ending
        )
    }
}

text_enum!(
    /// A job sent to a compute host.
    JobStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
);

impl JobStatus {
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

text_enum!(
    /// What a job does (also its message kind on the bus).
    JobKind {
        Backup = "backup.run",
        Restore = "restore.run",
    }
);

text_enum!(
    /// A segment object's life (docs/design.md §4): `live` while counted,
    /// `condemned` when no record needs it, `deleting` once a retention
    /// worker claimed it; compaction makes a segment `relocated` (its
    /// records live on in another segment, the object stays for readers
    /// that loaded their map before) and then `moved` (object deleted; the
    /// row is a redirect until no record names it).
    SegmentStatus {
        Live = "live",
        Condemned = "condemned",
        Deleting = "deleting",
        Relocated = "relocated",
        Moved = "moved",
    }
);

text_enum!(
    /// Whether a host still reports an instance.
    InstanceStatus {
        Active = "active",
        Gone = "gone",
    }
);

text_enum!(
    /// What a backup request asks for.
    BackupMode {
        /// Incremental where the disk's bitmap can be trusted.
        Auto = "auto",
        /// Read every disk in full.
        Full = "full",
    }
);

text_enum!(
    /// What a backup turned out to be.
    BackupKind {
        /// At least one disk was read in full.
        Full = "full",
        Incremental = "incremental",
    }
);

text_enum!(
    /// What the instant of a backup guarantees.
    Consistency {
        /// As if the power was cut: what a journaling filesystem recovers.
        Crash = "crash",
        /// The guest's filesystems were frozen through its agent.
        Application = "application",
    }
);

text_enum!(
    /// The file format of a restored disk.
    ImageFormat {
        Raw = "raw",
        Qcow2 = "qcow2",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in BackupStatus::ALL {
            assert_eq!(BackupStatus::parse(s.as_str()), Some(*s));
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(JobKind::Backup.as_str(), "backup.run");
        assert!("bogus".parse::<SegmentStatus>().is_err());
        assert!(BackupStatus::Queued.is_active() && !BackupStatus::Error.is_active());
    }
}
