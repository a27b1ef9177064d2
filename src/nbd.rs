//! An NBD client: fixed newstyle handshake, structured replies, meta
//! contexts (`base:allocation`, `qemu:dirty-bitmap:NAME`), block status, and
//! reads with many requests in flight, over unix or TCP sockets.
//! No crate offers block status; this follows the NBD protocol document
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>).
//!
//! [`protocol`] is pure encoding and decoding; [`client`] does the I/O;
//! [`server`] serves a read-only export (a backup, as a block device).

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{NbdClient, NbdError};
pub use protocol::Extent;
