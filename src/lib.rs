//! Ekko: block-based backup for OpenStack instances.
//!
//! Tenants ask ekko-api for backups; jobs travel over the message bus to the
//! ekko-backup worker on the instance's compute host, which reads only the
//! blocks written since the last backup (QEMU dirty bitmaps over QMP/NBD),
//! cuts them into chunks, hashes (SHA-256), compresses (zstd) and packs them
//! into segment objects. ekko-retention expires backups and reclaims space.
//! `docs/design.md` describes the data model, its invariants and one
//! backup's path through these modules.
//!
//! # Module map
//!
//! A module imports only modules of lower layers, and of its own layer only
//! those its last column names. `tests/layers.rs` reads this table and every
//! file's `crate::` paths and fails on any other import (and on a module
//! missing from the table).
//!
//! | layer | module | owns | same-layer imports |
//! |---|---|---|---|
//! | L0 | [`format`] | every magic number and format version | |
//! | L0 | [`failpoint`] | crash points for tests (`EKKO_FAILPOINT`) | |
//! | L0 | [`ids`] | id newtypes, checked where they enter | |
//! | L0 | [`status`] | every status and kind as an enum | |
//! | L0 | [`config`] | oslo-style INI → one typed struct per section; URLs; the sample | `format`, `tls` |
//! | L0 | [`telemetry`] | tracing subscriber set-up | `config` |
//! | L0 | [`metrics`] | this process's Prometheus metrics | |
//! | L0 | [`systemd`] | readiness for `Type=notify` units | |
//! | L0 | [`schedule`] | cron schedules and time zones | |
//! | L0 | [`timeline`] | an instance's backups as a terminal chart | |
//! | L0 | [`tls`] | the TLS provider every client uses; a server's identity (exports) | |
//! | L1 | [`chunk`] | chunk digests, zero detection, zstd | |
//! | L1 | [`crypto`] | master and project keys, sealed records | `chunk` |
//! | L1 | [`index`] | a disk's map tree: pages and their shape | `chunk` |
//! | L1 | [`segment`] | segment objects: records, trailer, footer | `chunk`, `crypto` |
//! | L1 | [`manifest`] | a backup's manifest in the store | `chunk`, `crypto` |
//! | L2 | [`keystone`] | Ekko's own Keystone session | |
//! | L2 | [`glance`] | Glance v2 with a tenant's token and Ekko's service token | `keystone` |
//! | L2 | [`db`] | the catalog: diesel schema, one file per table family; the only SQL | |
//! | L2 | [`queue`] | the `MessageQueue` seam: RabbitMQ (lapin), in-process; envelopes | |
//! | L2 | [`store`] | the `ObjectStore` seam: local directory, Swift, S3 | `keystone` |
//! | L2 | [`qmp`] | QEMU's monitor protocol | |
//! | L2 | [`nbd`] | NBD protocol, client, and a read-only server for exports | |
//! | L2 | [`libvirt`] | libvirt loaded at run time: domains, backup jobs, checkpoints, XML | |
//! | L2 | [`auth`] | who calls: Keystone tokens, noauth | `keystone` |
//! | L2 | [`policy`] | oslo.policy rules; a caller checked against them | `auth` |
//! | L3 | [`wire`] | the bus: kinds, routing keys, queue names, versioned messages | |
//! | L3 | [`extract`] | the snapshot seam; pull-mode backup over QMP/NBD | |
//! | L3 | [`hypervisor`] | the hypervisor seam: instances, disks, snapshots (QMP) | `extract` |
//! | L3 | [`backup`] | the engine: disks to records, records back (restore seam, exports) | `extract` |
//! | L3 | [`keyring`] | this process's keys and the projects' keys | |
//! | L4 | [`ekko`] | `Ekko`, the composition root: config, catalog, store, bus, keys | |
//! | L5 | [`execution`] | the host side of a job: wire job → engine → wire report | |
//! | L5 | [`retention`] | expiry, garbage collection, compaction, scrub | `replication` |
//! | L5 | [`rebuild`] | a lost catalog rebuilt from the store (or the second one) | `replication` |
//! | L5 | [`replication`] | second copies of backups in another store | |
//! | L5 | [`service`] | the use cases the API, the CLI and the daemons call | `execution`, `retention`, `replication` |
//! | L6 | [`api`] | ekko-api: thin actix-web handlers over [`service`] | |
//! | L6 | [`worker`] | ekko-backup: consume, admit, run, report, journal | |
//! | L6 | [`daemon`] | the long-running roles (api + conductor, backup, retention) | `api`, `worker` |
//! | L6 | [`standalone`] | every role in one process (`ekko all-in-one`, `init`) | `daemon` |
//! | L6 | [`demo`] | the main job on this machine (`ekko demo`) | |
//! | L6 | [`cli`] | the `ekko` and `ekko-manage` commands | `demo`, `standalone` |
//!
//! The binaries in `src/bin` only call [`daemon`] or [`cli`].

pub mod api;
pub mod auth;
pub mod backup;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod ekko;
pub mod execution;
pub mod extract;
pub mod failpoint;
pub mod format;
pub mod glance;
pub mod hypervisor;
pub mod ids;
pub mod index;
pub mod keyring;
pub mod keystone;
pub mod libvirt;
pub mod manifest;
pub mod metrics;
pub mod nbd;
pub mod policy;
pub mod qmp;
pub mod queue;
pub mod rebuild;
pub mod replication;
pub mod retention;
pub mod schedule;
pub mod segment;
pub mod service;
pub mod standalone;
pub mod status;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod timeline;
pub mod tls;
pub mod wire;
pub mod worker;

pub use ekko::Ekko;

/// The version every binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
