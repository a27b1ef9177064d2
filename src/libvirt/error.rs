//! libvirt's errors as Rust values: the C function that failed, libvirt's
//! error code (`virErrorNumber`) and domain (`virErrorDomain`), its message.

use std::fmt;

/// Error codes (`virErrorNumber` in `virterror.h`) Ekko looks at. Codes
/// below zero are Ekko's own (the library could not be used at all).
pub mod code {
    /// Ekko: `libvirt.so.0` could not be loaded, or lacks a function.
    pub const LOAD_FAILED: i32 = -1;
    /// Ekko: an argument cannot be passed to C (a NUL byte inside).
    pub const INVALID_STRING: i32 = -2;
    /// A failing call left no error behind (should not happen).
    pub const UNKNOWN: i32 = 0;
    pub const INTERNAL_ERROR: i32 = 1;
    pub const NO_SUPPORT: i32 = 3;
    pub const NO_CONNECT: i32 = 5;
    pub const INVALID_ARG: i32 = 8;
    pub const OPERATION_FAILED: i32 = 9;
    pub const XML_ERROR: i32 = 27;
    pub const SYSTEM_ERROR: i32 = 38;
    pub const RPC: i32 = 39;
    pub const NO_DOMAIN: i32 = 42;
    pub const AUTH_FAILED: i32 = 45;
    pub const OPERATION_INVALID: i32 = 55;
    pub const OPERATION_TIMEOUT: i32 = 68;
    pub const OPERATION_UNSUPPORTED: i32 = 84;
    /// `VIR_ERR_AGENT_UNRESPONSIVE`: "QEMU guest agent is not connected"
    /// (no agent in the guest, or not running) or not answering.
    pub const AGENT_UNRESPONSIVE: i32 = 86;
    pub const XML_INVALID_SCHEMA: i32 = 92;
    pub const NO_DOMAIN_CHECKPOINT: i32 = 103;
    pub const NO_DOMAIN_BACKUP: i32 = 104;
    /// `VIR_ERR_CHECKPOINT_INCONSISTENT`: e.g. a redefine with
    /// `REDEFINE_VALIDATE` whose bitmap is missing or broken.
    pub const CHECKPOINT_INCONSISTENT: i32 = 109;
    pub const AGENT_COMMAND_TIMEOUT: i32 = 112;
    pub const AGENT_COMMAND_FAILED: i32 = 113;
    /// Error domain (`virErrorDomain`) of libvirt's RPC layer.
    pub const FROM_RPC: i32 = 7;
}

/// A libvirt call that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtError {
    /// The C function (or Ekko step) that failed, e.g. `virDomainBackupBegin`.
    pub operation: &'static str,
    /// libvirt's `virErrorNumber` (see [`code`]).
    pub code: i32,
    /// libvirt's `virErrorDomain` (10 = QEMU driver, 7 = RPC, …).
    pub domain: i32,
    /// libvirt's message.
    pub message: String,
}

impl LibvirtError {
    pub(crate) fn new(operation: &'static str, code: i32, message: impl Into<String>) -> Self {
        LibvirtError {
            operation,
            code,
            domain: 0,
            message: message.into(),
        }
    }

    /// The domain (instance) does not exist (any more).
    pub fn is_no_domain(&self) -> bool {
        self.code == code::NO_DOMAIN
    }

    /// The named checkpoint is not known to libvirt.
    pub fn is_no_checkpoint(&self) -> bool {
        self.code == code::NO_DOMAIN_CHECKPOINT
    }

    /// No backup job runs on the domain.
    pub fn is_no_backup(&self) -> bool {
        self.code == code::NO_DOMAIN_BACKUP
    }

    /// The guest agent is absent, not connected or not answering: a backup
    /// can only be crash-consistent.
    pub fn is_agent_unavailable(&self) -> bool {
        matches!(
            self.code,
            code::AGENT_UNRESPONSIVE | code::AGENT_COMMAND_TIMEOUT
        )
    }

    /// A checkpoint (or its bitmap) cannot be trusted: the next backup must
    /// be a full read.
    pub fn is_checkpoint_inconsistent(&self) -> bool {
        self.code == code::CHECKPOINT_INCONSISTENT
    }

    /// The connection to the daemon is gone (libvirtd restarted or
    /// stopped): open a new [`super::Connection`]. A write on a connection
    /// whose daemon went away fails in the RPC layer with a system error
    /// ("Cannot write data: Broken pipe", code 38 in error domain 7).
    pub fn is_connection_lost(&self) -> bool {
        // After the first failure ("Cannot recv data"), every call on the
        // dead connection fails with "client socket is closed" (an
        // internal error of the RPC layer).
        matches!(self.code, code::NO_CONNECT | code::RPC)
            || (self.domain == code::FROM_RPC
                && matches!(self.code, code::SYSTEM_ERROR | code::INTERNAL_ERROR))
    }
}

impl fmt::Display for LibvirtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (libvirt error code {}, domain {})",
            self.operation, self.message, self.code, self.domain
        )
    }
}

impl std::error::Error for LibvirtError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_classification() {
        let e = LibvirtError {
            operation: "virDomainFSFreeze",
            code: code::AGENT_UNRESPONSIVE,
            domain: 10,
            message: "Guest agent is not responding: QEMU guest agent is not connected".into(),
        };
        assert!(e.is_agent_unavailable());
        assert!(!e.is_connection_lost());
        assert_eq!(
            e.to_string(),
            "virDomainFSFreeze: Guest agent is not responding: QEMU guest agent is not connected \
             (libvirt error code 86, domain 10)"
        );
        let e = LibvirtError::new("virDomainLookupByUUIDString", code::NO_DOMAIN, "gone");
        assert!(e.is_no_domain());
        let broken = LibvirtError {
            operation: "virDomainLookupByUUIDString",
            code: code::SYSTEM_ERROR,
            domain: code::FROM_RPC,
            message: "Cannot write data: Broken pipe".into(),
        };
        assert!(broken.is_connection_lost(), "libvirtd restarted under us");
        let closed = LibvirtError {
            operation: "virDomainGetJobStats",
            code: code::INTERNAL_ERROR,
            domain: code::FROM_RPC,
            message: "internal error: client socket is closed".into(),
        };
        assert!(
            closed.is_connection_lost(),
            "a call after the connection died"
        );
        assert_eq!(e.domain, 0);
    }
}
