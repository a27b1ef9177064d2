//! A QMP client for QEMU and qemu-storage-daemon.
//!
//! QMP is one JSON object per line. Replies carry the `id` of their command;
//! everything else is an event, and events may arrive before the reply of
//! the command that caused them. The reader here never fails on a message it
//! does not know: an unknown event, or an enum value newer than this code,
//! is passed on as JSON (the `qapi` crate's stream decoder closes the whole
//! connection on either). Commands are serialised from `qapi`'s generated
//! argument types where they fit ([`commands`]) and declared by hand where
//! QEMU 10 differs from its schema.
//!
//! QEMU accepts one client per monitor socket: hold one [`QmpClient`] per
//! socket.

pub mod client;
pub mod commands;
pub mod protocol;

pub use client::{QmpClient, QmpError};
pub use protocol::{Event, Message};
