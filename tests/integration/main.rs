//! Integration tests against the real services of `tools/test-env.sh`
//! (MariaDB, RabbitMQ, …) and the real binaries. One binary, one module per
//! area. With `EKKO_TEST_REQUIRE_SERVICES=1` (what tools/run-tests.sh sets)
//! a missing service fails the test instead of skipping it.

mod cluster;
mod helpers;
mod nova;
mod qsd;

mod api;
mod bus;
mod cli;
mod compaction;
mod conductor;
mod db;
mod distributed;
mod encryption;
mod engine;
mod export;
mod export_api;
mod extract;
mod forged;
mod image_restore;
mod libvirt;
mod libvirt_backup;
mod libvirt_cluster;
mod libvirt_hang;
mod operations;
mod qmp_peer;
mod queue;
mod replication;
mod restore_target;
mod retention;
mod scheduler;
mod store;
