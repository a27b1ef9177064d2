//! Ekko: block-based backup for OpenStack instances.
//!
//! Tenants ask ekko-api for backups; jobs travel over the message bus to the
//! ekko-backup worker on the instance's compute host, which reads only the
//! blocks written since the last backup (QEMU dirty bitmaps over QMP/NBD),
//! cuts them into chunks, hashes (SHA-256), compresses (zstd) and packs them
//! into segment objects. ekko-retention expires backups and reclaims space.
//! `docs/design.md` describes the data model and its invariants.
//!
//! Module map: a module imports only from the layers above it in this table.
//!
//! | layer | module | owns |
//! |---|---|---|
//! | L0 | [`config`] | oslo-style INI → one typed struct per section; the sample file |
//! | L0 | [`telemetry`] | tracing subscriber set-up |
//! | L2 | [`db`] | diesel schema, migrations, one file per table family; the only SQL |
//! | L2 | [`store`] | `ObjectStore` trait; local directory (Swift later) |
//! | L2 | [`queue`] | `MessageQueue` trait; RabbitMQ (lapin) and in-process; versioned messages |
//! | L3 | [`ekko`] | `Ekko`, the composition root holding config, db, store and queue |
//! | L4 | [`auth`], [`policy`] | Keystone token validation (noauth for the embedded default); oslo.policy rules |
//! | L5 | [`api`] | ekko-api: actix-web handlers over the catalog and the queue |
//!
//! The binaries in `src/bin` only wire configuration to this library.

pub mod api;
pub mod auth;
pub mod backup;
pub mod chunk;
pub mod cli;
pub mod conductor;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod ekko;
pub mod extract;
pub mod failpoint;
pub mod format;
pub mod index;
pub mod inventory;
pub mod job;
pub mod keyring;
pub mod keystone;
pub mod libvirt;
pub mod manifest;
pub mod nbd;
pub mod operator;
pub mod policy;
pub mod qmp;
pub mod queue;
pub mod rebuild;
pub mod retention;
pub mod schedule;
pub mod segment;
pub mod service;
pub mod standalone;
pub mod store;
pub mod telemetry;
pub mod timeline;
pub mod worker;

pub use ekko::Ekko;

/// The version every binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
